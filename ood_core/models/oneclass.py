"""One-class models for novelty and anomaly detection: Deep SVDD, a convolutional autoencoder,
geometric-transformation classification (GeoTrans) and the raw-pixel identity.

Each is an nn.Module with `kind = "one_class"`, `features(x) -> (n, D)` and `anomaly_score(x) -> (n,)`
(higher = more anomalous; None for the pixel identity). Everything needed at scoring time (the Deep SVDD
centre and its preprocessing's bounds) is a registered buffer, so the checkpoint cache (state_dict) restores it. Each
trainer `(spec, bench, progress, device) -> TrainResult` (device None: device.default_device()) draws every random
number (initial weights, dropout, batch order, shifts) from a generator seeded by spec.seed + 10007 * member, and has
its own
fixed hyper-parameters (the module constants below): the Spec's TrainConfig defaults are tuned for the
classifier, so a one-class trainer uses spec.training only for `member` (and the seed). The bottom of the module
registers each model (models.registry), its trainer checking a cancel event after every epoch.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import Benchmark
from ..device import grad_scaler, resolve_device, training_autocast
from ..spec import ONE_CLASS_SETTINGS, Spec
from .cnn import SmallCNN
from .preprocess import ContrastMinMax
from .registry import InputContract, ModelEntry, epochwise, register_model
from .reproducible import seeded_init_, use_generator
from .train import Progress, TrainResult, training_generator

ProgressFn = Optional[Callable[[Progress], None]]

# Hyper-parameters of each trainer (documented in its docstring), chosen on the normal training split only, except
# where the comment says they were chosen on validation splits (GeoTrans, Deep SVDD with and without pretraining).
# Deep SVDD: 15 epochs at lr 3e-3, not 30 at 1e-3: on the validation splits of all 10 digits of the MNIST sample at
# 28 px (scripts/bench_oneclass_gen.py --select deep_svdd ..., docs/bench/oneclass_deep_svdd_validation.json) the mean
# AUROC was 93.2 at 30 epochs of lr 1e-3 (93.0/93.5/93.6 at 15/60/100), 95.1/95.0/95.3/94.8 at 15/30/60/100 epochs of
# lr 3e-3 (lr 2e-3: 94.7/94.5/95.1 at 15/30/60; 5e-3: 93.6; 1e-2: 88.3; lr 3e-4: 91.8): the cheapest within 0.4 of the
# best.
SVDD_HP = dict(epochs=15, batch_size=32, lr=3e-3, weight_decay=1e-5, pretrain_epochs=0, shift=0)
# Deep SVDD as Ruff et al.'s code, scaled to the sample: autoencoder pretraining (lr 1e-4), then the one-class
# objective (lr 1e-3), each divided by 10 after epoch 40 of 50, weight decay 5e-7 (the "deep_svdd_pretrained" model).
# The pretraining's settings were chosen over others on validation AUROC (scripts/bench_oneclass_ssl.py --only svdd),
# then the one-class phase's lr (--select deep_svdd_pretrained ..., docs/bench/oneclass_deep_svdd_validation.json):
# 93.7/94.1/93.3 at 1e-4/1e-3/3e-3 (with pretraining at lr 1e-3: 93.3/92.5). About 10x SVDD_HP's training.
# Longer phases gain little: 94.4 with 100 one-class epochs (drop after 80), 94.7 with 150 pretraining epochs (drop
# after 120; twice the training; 94.7 again at pretraining lr 3e-4, 94.2 with 300), 94.2 with Ruff et al.'s 150 + 150
# (drops after 50): none reaches plain Deep SVDD's 95.1 on the sample's 300 images per class, so the cheaper default
# stays.
SVDD_PRETRAIN_HP = dict(epochs=50, batch_size=32, lr=1e-3, weight_decay=5e-7, milestones=(40,), pretrain_epochs=50,
                        pretrain_lr=1e-4, pretrain_milestones=(40,), shift=0)
AE_HP = dict(epochs=30, batch_size=32, lr=3e-3, weight_decay=1e-5, shift=1)
# GeoTrans: 30 epochs, not 14: on the validation splits of digits 0, 2, 5, 8 of the MNIST sample at 28 px (each
# normal class's validation images vs the other digits'; scripts/bench_oneclass_gen.py --select geotrans ...,
# docs/bench/oneclass_geotrans_validation.json) the mean AUROC after 14/30/60/120 epochs at lr 5e-3 was
# 92.2/93.1/93.4/93.1 (lr 2e-3: 91.5 at 14, 92.7 at 30; lr 1e-2: 92.9 at 60). 30: within 0.3 of the best at half
# the cost of 60 (the rule AnoGAN's search length was chosen by: the cheapest within 0.4 of the best).
GEO_HP = dict(epochs=30, batch_size=64, lr=5e-3, weight_decay=5e-4, shift=0, schedule="onecycle")
SVDD_REP_DIM = 32
SVDD_WIDTHS = (16, 32)
SVDD_SLOPE = 0.01  # LeakyReLU's negative slope, as Ruff et al.'s code (F.leaky_relu's default)
GEO_WIDTH = 8  # SmallCNN width of the transformation classifier
GEO_TRANSLATION = 0.25  # a translation step, as a fraction of the image side (Golan: 8 px of 32)
SVDD_CENTER_EPS = 0.1  # Ruff et al.'s code: centre entries with |c_i| < eps are pushed to +-eps
AE_LATENT = 32


def _init(model: nn.Module, gen: torch.Generator, device: str) -> nn.Module:
    """A freshly built model's weights drawn from the training call's generator (never global state)."""
    model = seeded_init_(model, gen)
    use_generator(model, gen)
    return model.to(device)


def random_shift(x: torch.Tensor, gen: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Each image shifted by its own random offset of up to `pad` pixels, filled with the background (the minimum)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    xp = nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.amin()))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            sel = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            if sel.any():
                out[sel] = xp[sel, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: str, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def epoch_loop(model: nn.Module, n: int, hp: dict, gen: torch.Generator, step: Callable[[torch.Tensor], float],
               epoch_end: Callable[[int], tuple[float, float, dict]], progress: ProgressFn, t0: float,
               history: Optional[list] = None) -> list[dict]:
    """The one-class trainers' loop: hp["epochs"] passes over n samples in seeded random batches of
    hp["batch_size"] (one torch.randperm from gen per epoch; a last batch of a single sample is skipped when there
    are more, as BatchNorm needs two). step(idx) trains on the batch of those indices and returns its mean loss;
    after each epoch, in eval mode, epoch_end(epoch) -> (train accuracy or nan, validation quality or nan, extra
    history keys), and a Progress (loss = the epoch's mean step loss) is appended to history and sent to progress.
    """
    history = [] if history is None else history
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, total = 0.0, 0
        for i in range(0, n, hp["batch_size"]):
            idx = perm[i:i + hp["batch_size"]]
            if len(idx) < 2 and n > 1:  # BatchNorm needs more than one sample per batch
                continue
            loss_sum += step(idx) * len(idx)
            total += len(idx)
        model.eval()
        train_acc, val_q, extra = epoch_end(epoch)
        p = Progress(epoch, hp["epochs"], loss_sum / max(1, total), train_acc, val_q, time.perf_counter() - t0)
        history.append({**p.__dict__, **extra})
        if progress is not None:
            progress(p)
    model.eval()
    return history


def _fit(model: nn.Module, loss_fn: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
         x: torch.Tensor, y: Optional[torch.Tensor], hp: dict, gen: torch.Generator, device: str,
         progress: ProgressFn, epoch_end: Callable[[], tuple[float, float, dict]], params=None,
         t0: Optional[float] = None, history: Optional[list] = None) -> list[dict]:
    """epoch_loop with Adam and weight decay (optionally a one-cycle schedule, or the learning rate divided by 10 at
    each epoch of hp["milestones"] as Ruff et al.'s code) and random shifts of up to hp["shift"] pixels. On CUDA
    each step's loss runs in mixed precision.

    loss_fn(xb, yb) -> scalar loss; epoch_end() -> (train accuracy or nan, val accuracy or nan, extra history keys).
    """
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=hp["lr"],
                           weight_decay=hp["weight_decay"])
    scaler = grad_scaler(device)  # float16 on CUDA needs loss scaling; disabled otherwise (a plain step)
    steps = hp["epochs"] * -(-len(x) // hp["batch_size"])
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=steps)
             if hp.get("schedule") == "onecycle" else None)
    milestones = tuple(hp.get("milestones", ()))

    def step(idx: torch.Tensor) -> float:
        xb = random_shift(x[idx], gen, hp.get("shift", 0)).to(device)
        yb = None if y is None else y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        with training_autocast(device):
            loss = loss_fn(xb, yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        return float(loss.detach())

    def end(epoch: int) -> tuple[float, float, dict]:
        if epoch in milestones:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        return epoch_end()

    return epoch_loop(model, len(x), hp, gen, step, end, progress,
                      time.perf_counter() if t0 is None else t0, history)


# --- Deep SVDD ----------------------------------------------------------------------------------------

class DeepSVDD(nn.Module):
    """Deep SVDD, one-class objective (Ruff et al., ICML 2018): S(x) = ||phi(x) - c||^2.

    The input is first preprocessed as theirs (`scaling`: global contrast normalisation, L1, then min-max scaling
    with bounds fitted on the normal training data). phi: a bias-free CNN (conv 5x5 - BatchNorm(eps=1e-4,
    affine=False) - LeakyReLU(0.01) - max-pool, twice; then a bias-free linear map to rep_dim = 32). No bias and no
    affine BatchNorm, so phi cannot collapse onto c by a constant. The centre c and the scaling bounds are buffers
    (saved in the state_dict), fixed before training.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, rep_dim: int = SVDD_REP_DIM,
                 widths: tuple[int, int] = SVDD_WIDTHS):
        super().__init__()
        w1, w2 = widths
        side = image_size // 4
        self.scaling = ContrastMinMax()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w1, 5, padding=2, bias=False), nn.BatchNorm2d(w1, eps=1e-4, affine=False),
            nn.LeakyReLU(SVDD_SLOPE), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 5, padding=2, bias=False), nn.BatchNorm2d(w2, eps=1e-4, affine=False),
            nn.LeakyReLU(SVDD_SLOPE), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(w2 * side * side, rep_dim, bias=False),
        )
        self.register_buffer("c", torch.zeros(rep_dim))
        self.rep_dim = rep_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.scaling(x))

    forward = features

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.features(x) - self.c) ** 2).sum(dim=1)


class _SVDDDecoder(nn.Module):
    """Bias-free mirror of the Deep SVDD encoder, for the autoencoder pretraining of Ruff et al."""

    def __init__(self, in_channels: int, image_size: int, rep_dim: int, widths: tuple[int, int] = SVDD_WIDTHS):
        super().__init__()
        w1, w2 = widths
        self.side = image_size // 4
        self.w2 = w2
        self.fc = nn.Linear(rep_dim, w2 * self.side * self.side, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(w2, eps=1e-4, affine=False), nn.LeakyReLU(SVDD_SLOPE), nn.Upsample(scale_factor=2),
            nn.Conv2d(w2, w1, 5, padding=2, bias=False), nn.BatchNorm2d(w1, eps=1e-4, affine=False),
            nn.LeakyReLU(SVDD_SLOPE), nn.Upsample(scale_factor=2),
            nn.Conv2d(w1, in_channels, 5, padding=2, bias=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(-1, self.w2, self.side, self.side))


@torch.no_grad()
def init_center(net: nn.Module, x: torch.Tensor, device: Optional[str] = None, eps: float = SVDD_CENTER_EPS
                ) -> torch.Tensor:
    """c = mean of phi(x) over the training data (eval mode); entries with |c_i| < eps set to -eps or +eps by sign."""
    net.eval()
    c = _batched(net.features, x, resolve_device(device)).double().mean(dim=0).float()
    small = c.abs() < eps
    c[small & (c < 0)] = -eps
    c[small & (c >= 0)] = eps
    return c


def deep_svdd_initial(spec: Spec, bench: Benchmark, device: Optional[str] = None, hp: Optional[dict] = None,
                      progress: ProgressFn = None, history: Optional[list] = None):
    """The seeded Deep SVDD network before the one-class objective (after autoencoder pretraining, if any): (net, gen)."""
    hp = {**SVDD_HP, **(hp or {})}
    device = resolve_device(device)
    gen = training_generator(spec)
    c_in, side = bench.input_shape[0], bench.input_shape[-1]
    net = _init(DeepSVDD(c_in, side), gen, device)
    x = torch.from_numpy(bench.train.x)
    net.scaling.fit(x)  # the preprocessing's bounds: from the training (normal) data only
    if hp["pretrain_epochs"] > 0:
        dec = _init(_SVDDDecoder(c_in, side, net.rep_dim), gen, device)
        xv = torch.from_numpy(bench.val.x)

        def reconstruction_error(xb):  # per sample, of the preprocessed input (what the autoencoder sees)
            return ((dec(net.features(xb)) - net.scaling(xb)) ** 2).flatten(1).mean(1)

        def loss_fn(xb, _):
            return reconstruction_error(xb).mean()

        def epoch_end():
            v = float(_batched(reconstruction_error, xv, device).mean()) if len(xv) else float("nan")
            return float("nan"), float("nan"), {"phase": "pretrain", "val_loss": v}

        # both modules switch between train and eval mode together (their BatchNorm statistics)
        pre = {**hp, "epochs": hp["pretrain_epochs"], "lr": hp.get("pretrain_lr", hp["lr"]),
               "milestones": hp.get("pretrain_milestones", ())}
        _fit(nn.ModuleList([net, dec]), loss_fn, x, None, pre, gen, device, progress, epoch_end, history=history)
    net.eval()
    return net, gen


def train_deep_svdd(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
                    hp: Optional[dict] = None) -> TrainResult:
    """Deep SVDD: fix c from an initial forward pass, then minimise mean ||phi(x) - c||^2 with Adam + weight decay.

    Defaults (SVDD_HP): 15 epochs, batch 32, lr 3e-3, weight decay 1e-5, no augmentation (as Ruff et al.), no
    autoencoder pretraining. SVDD_PRETRAIN_HP (the "deep_svdd_pretrained" model) follows Ruff et al.'s code: first
    50 epochs of autoencoder pretraining (encoder + bias-free mirrored decoder, MSE on the preprocessed images) with
    Adam at lr 1e-4, then 50 epochs of the one-class objective at lr 1e-3, each divided by 10 after epoch 40, weight
    decay 5e-7.
    Progress: loss = train objective; val_accuracy = nan; history also holds "val_loss" = mean ||phi(x) - c||^2
    on the (normal) validation split.
    """
    hp = {**SVDD_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    history: list[dict] = []
    net, gen = deep_svdd_initial(spec, bench, device, hp, progress, history)
    x = torch.from_numpy(bench.train.x)
    xv = torch.from_numpy(bench.val.x)
    net.c.copy_(init_center(net, x, device).to(net.c.device))

    def loss_fn(xb, _):
        return ((net.features(xb) - net.c) ** 2).sum(dim=1).mean()

    def epoch_end():
        v = float(_batched(net.anomaly_score, xv, device).mean()) if len(xv) else float("nan")
        return float("nan"), float("nan"), {"phase": "svdd", "val_loss": v}

    # the pretraining epochs (if any) are numbered separately; the one-class phase restarts at epoch 1
    _fit(net, loss_fn, x, None, hp, gen, device, progress, epoch_end, params=net.parameters(), t0=t0, history=history)
    return TrainResult(net.eval(), history, time.perf_counter() - t0, False)


# --- Convolutional autoencoder ------------------------------------------------------------------------

class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder: S(x) = mean over pixels of (x - D(E(x)))^2, in normalised input space.

    E: conv3x3(16)-BN-ReLU-pool, conv3x3(32)-BN-ReLU-pool, linear to a 32-d latent (the features);
    D: linear, then (nearest 2x upsampling, conv3x3) twice back to the input size.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, latent: int = AE_LATENT,
                 widths: tuple[int, int] = (16, 32)):
        super().__init__()
        w1, w2 = widths
        self.side = image_size // 4
        self.w2 = w2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.BatchNorm2d(w2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(w2 * self.side * self.side, latent),
        )
        self.fc = nn.Linear(latent, w2 * self.side * self.side)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w2, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w1, in_channels, 3, padding=1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc(z).view(-1, self.w2, self.side, self.side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return ((self(x) - x) ** 2).flatten(1).mean(dim=1)


def train_autoencoder(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
                      hp: Optional[dict] = None) -> TrainResult:
    """Minimise the mean squared reconstruction error on the normal training data (Adam + weight decay).

    Defaults (AE_HP): 30 epochs, batch 32, lr 3e-3, weight decay 1e-5, random 1-pixel shifts.
    Progress: loss = train MSE; val_accuracy = nan; history also holds "val_loss" = MSE on the validation split.
    """
    hp = {**AE_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    gen = training_generator(spec)
    model = _init(ConvAutoencoder(bench.input_shape[0], bench.input_shape[-1]), gen, device)
    x = torch.from_numpy(bench.train.x)
    xv = torch.from_numpy(bench.val.x)

    def loss_fn(xb, _):
        return ((model(xb) - xb) ** 2).mean()

    def epoch_end():
        v = float(_batched(model.anomaly_score, xv, device).mean()) if len(xv) else float("nan")
        return float("nan"), float("nan"), {"val_loss": v}

    history = _fit(model, loss_fn, x, None, hp, gen, device, progress, epoch_end, t0=t0)
    return TrainResult(model.eval(), history, time.perf_counter() - t0, False)


# --- Geometric transformations (GeoTrans) -------------------------------------------------------------

# (horizontal flip, translation dx, translation dy in steps of GEO_TRANSLATION * image side, quarter turns)
# 12 = 4 rotations x {no translation, a quarter side right, a quarter side down}. On digits (one-vs-all, normal
# training split only) the translations matter most: rotations alone gave 90.8% mean AUROC, rotations x flip 92.6%,
# these 12 about 98%; adding the flip (24, same number of training samples) did not help (97.9%) and doubles the
# scoring cost, so Golan's 72 (flip x 3 x 3 translations x rotations) are not used.
GEO_TRANSFORMS: tuple[tuple[int, int, int, int], ...] = tuple(
    (0, tx, ty, k) for (tx, ty) in ((0, 0), (1, 0), (0, 1)) for k in range(4))


def apply_transform(x: torch.Tensor, t: tuple[int, int, int, int]) -> torch.Tensor:
    """T_t(x): optional horizontal flip, translation (reflect padding, as Golan & El-Yaniv), then k quarter turns."""
    flip, tx, ty, k = t
    if flip:
        x = torch.flip(x, dims=(3,))
    if tx or ty:
        s = max(1, int(round(x.shape[-1] * GEO_TRANSLATION)))
        dx, dy = tx * s, ty * s
        p = abs(dx) + abs(dy)
        h, w = x.shape[-2:]
        xp = nn.functional.pad(x, (p, p, p, p), mode="reflect")
        x = xp[:, :, p - dy:p - dy + h, p - dx:p - dx + w]
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    return x


class GeoTrans(nn.Module):
    """Golan & El-Yaniv (NeurIPS 2018): a classifier f predicts which transformation T_t was applied.

    S(x) = -(1/T) sum_t log softmax(f(T_t(x)))_t  (the simplified score, close to their Dirichlet one).
    f is a SmallCNN with one output per transformation; features = its penultimate features of x itself.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16, transforms: Optional[tuple] = None,
                 width: Optional[int] = None):
        super().__init__()
        self.transforms = tuple(GEO_TRANSFORMS if transforms is None else transforms)
        self.net = SmallCNN(in_channels=in_channels, num_classes=len(self.transforms),
                            width=GEO_WIDTH if width is None else width)

    @property
    def num_transforms(self) -> int:
        return len(self.transforms)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the transformations, (n, T)."""
        return self.net(x)

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """All transformed copies, transform-major: rows t*n .. (t+1)*n - 1 are T_t(x)."""
        return torch.cat([apply_transform(x, t) for t in self.transforms])

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        n, nt = len(x), self.num_transforms
        logp = self.net(self.transformed(x)).log_softmax(dim=1).view(nt, n, nt)
        t = torch.arange(nt, device=logp.device)
        own = logp[t, :, t]  # (T, n): log p(t | T_t(x))
        return -own.mean(dim=0)


def train_geotrans(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None,
                   hp: Optional[dict] = None) -> TrainResult:
    """Cross-entropy of predicting t from T_t(x) over every normal training image and every transformation.

    Transformations: the 12 of GEO_TRANSFORMS (4 rotations x {none, right, down} translations by a quarter of the
    side with reflect padding); f = SmallCNN of width 8. Defaults (GEO_HP): 30 epochs over the 12-fold transformed
    training set, batch 64, Adam with weight decay 5e-4 and a one-cycle schedule peaking at lr 5e-3, no shifts.
    Progress: loss = train cross-entropy; train_accuracy = accuracy of predicting the transformation on the
    epoch's training batches (running, in train mode); val_accuracy = the same on the transformed validation images.
    """
    hp = {**GEO_HP, **(hp or {})}
    device = resolve_device(device)
    t0 = time.perf_counter()
    gen = training_generator(spec)
    model = _init(GeoTrans(bench.input_shape[0], bench.input_shape[-1]), gen, device)
    nt = model.num_transforms

    def expand(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(x)
        return model.transformed(xt), torch.arange(nt).repeat_interleave(len(xt))

    x, y = expand(bench.train.x)
    xv, yv = expand(bench.val.x)

    running = [0, 0]  # correct, seen: the training batches' accuracy (train mode), as the classifier reports it

    def loss_fn(xb, yb):
        logits = model(xb)
        running[0] += int((logits.detach().argmax(1) == yb).sum())
        running[1] += len(yb)
        return nn.functional.cross_entropy(logits, yb)

    def epoch_end():
        train_acc = running[0] / running[1] if running[1] else float("nan")
        running[:] = [0, 0]
        val_acc = float((_batched(model, xv, device).argmax(1) == yv).float().mean()) if len(xv) else float("nan")
        return train_acc, val_acc, {}

    history = _fit(model, loss_fn, x, y, hp, gen, device, progress, epoch_end, t0=t0)
    return TrainResult(model.eval(), history, time.perf_counter() - t0, False)


# --- Raw pixels ---------------------------------------------------------------------------------------

class PixelIdentity(nn.Module):
    """The identity on raw (normalised) pixels: features = x flattened, no score of its own.

    With it, raw-pixel baselines (1-NN distance, OCSVM, isolation forest, LOF) are feature detectors.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16):
        super().__init__()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)

    forward = features

    def anomaly_score(self, x: torch.Tensor) -> None:
        return None


def train_pixels(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None
                 ) -> TrainResult:
    """Nothing to learn: returns the identity at once, with an empty history."""
    model = PixelIdentity(bench.input_shape[0], bench.input_shape[-1]).to(resolve_device(device)).eval()
    return TrainResult(model, [], 0.0, False)


SMOOTH_SIGMA_AT_28 = 1.0  # the blur's standard deviation in pixels at 28 px (scaled with the side)
SMOOTH_TRUNCATE = 4.0  # the kernel reaches 4 standard deviations, as scipy.ndimage.gaussian_filter's default


class SmoothedPixels(nn.Module):
    """Raw pixels in [0, 1], blurred by a Gaussian of standard deviation side/28 pixels, as features.

    Template matching on blurred images tolerates the small shifts and stroke-width changes that separate two
    drawings of one digit, which plain pixel distances punish (the idea behind tangent distance and blurred nearest
    neighbours in handwriting recognition). The pixels are un-normalised first (the benchmark's mean and std, kept as
    buffers), so a cosine distance compares the strokes themselves rather than deviations from the mean image's
    level. The standard deviation (1 px at 28 px) was chosen on the MNIST sample's one-vs-all validation splits
    (validation AUROC of cosine 1-NN for 0, 0.5, 1, 1.5 and 2 px: 96.6, 97.2, 97.8, 97.6, 97.0%), never on test data.
    """

    kind = "one_class"

    def __init__(self, in_channels: int = 1, image_size: int = 16):
        super().__init__()
        sigma = SMOOTH_SIGMA_AT_28 * image_size / 28
        radius = max(1, int(SMOOTH_TRUNCATE * sigma + 0.5))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-0.5 * (t / sigma) ** 2)
        g = g / g.sum()
        self.in_channels = in_channels
        self.radius = radius
        self.register_buffer("kernel", (g[:, None] * g[None, :]).expand(in_channels, 1, -1, -1).contiguous())
        self.register_buffer("mean", torch.zeros(in_channels, 1, 1))
        self.register_buffer("std", torch.ones(in_channels, 1, 1))

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> "SmoothedPixels":
        """Remember the benchmark's per-channel normalisation, to recover pixels in [0, 1]."""
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(self.mean.shape))
        self.std.copy_(torch.as_tensor(np.asarray(std), dtype=torch.float32).reshape(self.std.shape))
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * self.std + self.mean
        return F.conv2d(raw, self.kernel, padding=self.radius, groups=self.in_channels).reshape(len(x), -1)

    forward = features

    def anomaly_score(self, x: torch.Tensor) -> None:
        return None


def train_smoothed_pixels(spec: Spec, bench: Benchmark, progress: ProgressFn = None, device: Optional[str] = None
                          ) -> TrainResult:
    """Nothing to learn but the benchmark's normalisation: returns the blur at once, with an empty history."""
    model = SmoothedPixels(bench.input_shape[0], bench.input_shape[-1]).set_normalisation(bench.mean, bench.std)
    return TrainResult(model.to(resolve_device(device)).eval(), [], 0.0, False)


def _one_class(name: str, title: str, short: str, description: str, cls: type, trainer: Callable, seconds: float,
               own_score: bool = True, multiple_of: int = 1, size_overhead: float = 0.0) -> None:
    """Register a one-class model of this module: it serves ND and AD, takes any channel count, and is built for the
    side it is given (its constructor is (in_channels, image_size); no classes)."""
    register_model(ModelEntry(
        name=name, title=title, short=short, description=description, kind="one_class", settings=ONE_CLASS_SETTINGS,
        contract=InputContract(min_side=8, multiple_of=multiple_of), build=lambda c, k, side: cls(c, side),
        train=epochwise(trainer), train_seconds=seconds, own_score=own_score, size_overhead=size_overhead))


# train_seconds: a whole training per normal training image at 16 px, one training thread; size_overhead: the share
# of it that does not grow with the image area. Both from scripts/bench_size_cost.py (docs/bench/size_cost.json: the
# MNIST sample's digit 0, 300 images, at 16, 28 and 40 px, alone on the 2 cores).
# multiple_of=4: two 2x poolings, then a linear map of side/4 (Deep SVDD); decodes side/4 back up (the autoencoder)
_one_class("deep_svdd", "Deep SVDD (Ruff et al. 2018)", "Deep SVDD",
           "Maps the normal class into a small hypersphere; the score is the distance to its centre.",
           DeepSVDD, train_deep_svdd, 0.0015, multiple_of=4, size_overhead=0.25)
_one_class("deep_svdd_pretrained", "Deep SVDD with autoencoder pretraining (Ruff et al. 2018)", "Deep SVDD (pretrained)",
           "Deep SVDD as in the paper's code: an autoencoder is trained first and its encoder starts the hypersphere "
           "mapping (about 10 times the training of plain Deep SVDD).",
           DeepSVDD, functools.partial(train_deep_svdd, hp=SVDD_PRETRAIN_HP), 0.019, multiple_of=4,
           size_overhead=0.3)
_one_class("autoencoder", "Convolutional autoencoder (reconstruction error)", "Autoencoder",
           "Learns to reconstruct normal images; the score is the reconstruction error.",
           ConvAutoencoder, train_autoencoder, 0.0053, multiple_of=4, size_overhead=0.35)
_one_class("geotrans", "Geometric transformations (Golan & El-Yaniv 2018)", "GeoTrans",
           "Learns which of 12 rotations and translations was applied to a normal image; unfamiliar images make "
           "that prediction uncertain.", GeoTrans, train_geotrans, 0.030, size_overhead=0.25)
_one_class("pixels", "Raw pixels (identity)", "raw pixels",
           "No learning: the flattened pixels are the features, for the raw-pixel baselines (k-NN, OCSVM, ...).",
           PixelIdentity, train_pixels, 0.0, own_score=False)
_one_class("pixels_smooth", "Smoothed pixels (Gaussian blur of side/28 px)", "smoothed pixels",
           "No learning: pixels in [0, 1] blurred by a small Gaussian, so nearest-neighbour baselines forgive small "
           "shifts and stroke widths.", SmoothedPixels, train_smoothed_pixels, 0.0, own_score=False)
