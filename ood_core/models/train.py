"""Seeded training with a progress callback and a cancel event (the checkpoint cache is in checkpoint.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..data import Benchmark
from ..device import grad_scaler, resolve_device, training_autocast
from ..jobs import check_cancelled
from ..spec import CLOSEDSET_RECIPE_REGIMES, Spec
from .openset import RECIPROCAL_REGIMES, ReciprocalPoints
from .openset_generative import (ConfusingSamples, HierarchicalReconstruction, extra_epochs, gopenmax_stages,
                                 osrci_stages)
from .recipes import cosine_warmup_schedule, random_affine
from .registry import build_model, get_entry
from .reproducible import seeded_init_, training_threads, use_generator


@dataclass
class Progress:
    """What the progress callback receives after each epoch."""

    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # one dict per epoch, as Progress fields
    seconds: float = 0.0
    from_cache: bool = False
    note: str = ""  # what the cache did, in plain words ("" when nothing to report): a damaged file, no cache
    provenance: dict = field(default_factory=dict)  # torch, threads, device, written_utc, train_seconds


def training_generator(spec: Spec) -> torch.Generator:
    """The generator a training call owns: seeded by spec.seed and the ensemble member, never global state."""
    return torch.Generator().manual_seed(spec.seed + 10007 * spec.training.member)


def new_model(spec: Spec, bench: Benchmark, gen: torch.Generator, device: Optional[str] = None) -> nn.Module:
    """spec.model built for the benchmark's input and classes, its weights drawn from `gen`, its dropout seeded by it,
    on `device` (default: device.default_device())."""
    model = seeded_init_(build_model(spec.model, bench.input_shape[0], bench.num_classes, bench.input_shape[-1]), gen)
    use_generator(model, gen)
    return model.to(resolve_device(device))


@torch.no_grad()
def accuracy(model: nn.Module, x, y: np.ndarray, device: Optional[str] = None, batch_size: int = 512) -> float:
    """The fraction of (x, y) the model classifies right, in eval mode (the model must be on `device`); `x` an array
    or a split's compact data.images.Images (read a batch at a time)."""
    device = resolve_device(device)
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[i:i + batch_size]).to(device)
        correct += int((model(xb).argmax(1).cpu().numpy() == y[i:i + batch_size]).sum())
    return correct / max(1, len(x))


OE_WEIGHT = 0.5  # lambda of Hendrycks et al. 2019
LOGITNORM_TAU = 0.04  # tau of Wei et al. 2022 (their CIFAR-10 value)
CLOSEDSET_SMOOTHING = 0.1  # label smoothing of the closed-set recipe (its other pieces: recipes.py)


def regime_loss(regime: str, logits: torch.Tensor, targets: torch.Tensor,
                aux_logits: Optional[torch.Tensor] = None,
                reciprocal: Optional[ReciprocalPoints] = None) -> torch.Tensor:
    """The training loss of a classifier regime.

    ce: cross-entropy. logitnorm: cross-entropy of f / (tau ||f||). oe: cross-entropy on ID plus
    OE_WEIGHT times the cross-entropy from the auxiliary outliers' softmax to the uniform distribution.
    rpl / arpl / arpl_cs (and rpl_closedset / arpl_closedset): cross-entropy on the distances to the reciprocal points plus the open-space term
    (models.openset.reciprocal_loss), from the features `reciprocal` caught in the model's last forward pass.
    crosr, osrci, gopenmax: cross-entropy here; their other terms come from models.openset_generative (the
    reconstruction, added by train_classifier; the generated unknowns, in the stages after the epochs).
    """
    if regime in RECIPROCAL_REGIMES:
        if reciprocal is None:
            raise ValueError(f"the {regime} regime needs its reciprocal points (models.openset.ReciprocalPoints)")
        return reciprocal.loss(targets)
    if regime == "logitnorm":
        norms = logits.norm(p=2, dim=1, keepdim=True) + 1e-7
        return nn.functional.cross_entropy(logits / (norms * LOGITNORM_TAU), targets)
    if regime == "closedset":
        return nn.functional.cross_entropy(logits, targets, label_smoothing=CLOSEDSET_SMOOTHING)
    loss = nn.functional.cross_entropy(logits, targets)
    if regime == "oe":
        if aux_logits is None:
            raise ValueError("outlier exposure needs auxiliary outliers")
        loss = loss + OE_WEIGHT * -(aux_logits.log_softmax(dim=1).mean(dim=1)).mean()
    return loss


def train_model(spec: Spec, bench: Benchmark, progress: Optional[Callable[[Progress], None]] = None,
                device: Optional[str] = None, cancel=None) -> TrainResult:
    """Train spec.model on bench.train with the trainer of its registry entry (models.registry), on `device`
    (default: device.default_device()).

    `cancel` (a threading.Event, or None): when set, training stops with jobs.Cancelled — a classifier between
    batches, a one-class model after its current epoch — and returns nothing to cache. Checking it draws no random
    number, so a training that is not cancelled gives the same weights with or without it.
    """
    entry = get_entry(spec.model)
    device = resolve_device(device)
    with training_threads(device):
        check_cancelled(cancel)
        result = entry.train(spec, bench, progress, device, cancel)
    use_generator(result.model, None)  # later dropout (MC dropout) brings its own generator
    return result


def train_classifier(spec: Spec, bench: Benchmark, progress: Optional[Callable[[Progress], None]] = None,
                     device: Optional[str] = None, cancel=None) -> TrainResult:
    """AdamW in the regime of spec.training, the trainer of every registered classifier: a one-cycle schedule and
    1-pixel shifts of each batch; in the closedset regime (and rpl_closedset, arpl_closedset: spec.CLOSEDSET_RECIPE_REGIMES)
    a linear warm-up then cosine decay, and each image's own random shift, rotation and zoom (recipes.py).

    On CUDA the forward pass and loss run in mixed precision (device.training_autocast); on the CPU in float32.
    rpl / arpl / arpl_cs train the reciprocal points and radius instead of the head, and keep the head equal to the
    points' linear form (models.openset); arpl_cs also trains the confusing samples' GAN, one step per batch, crosr
    a reconstruction decoder beside the classifier; osrci runs its GAN, counterfactual search and fine-tuning after
    the epochs, gopenmax its conditional GAN and fine-tuning (models.openset_generative), each of their passes
    reported as one more epoch.
    `cancel` is checked before every batch (jobs.Cancelled when set)."""
    device = resolve_device(device)
    cfg = spec.training
    gen = training_generator(spec)
    model = new_model(spec, bench, gen, device)
    aux = None
    if cfg.regime == "oe":
        from ..data.auxiliary import make_auxiliary

        aux_pixels = make_auxiliary(bench.to_pixels(bench.train.x), bench.train.y, len(bench.train), spec.seed)
        aux = torch.from_numpy(bench.normalise(aux_pixels))
    reciprocal = ReciprocalPoints(model, cfg.regime, gen) if cfg.regime in RECIPROCAL_REGIMES else None
    channels, side = bench.input_shape[0], bench.input_shape[-1]
    confusing = (ConfusingSamples(channels, side, bench.mean, bench.std, gen, device) if cfg.regime == "arpl_cs"
                 else None)
    reconstruction = (HierarchicalReconstruction(model, channels, side, gen, device) if cfg.regime == "crosr"
                      else None)
    trained = [p for p in model.parameters() if p.requires_grad] + (reciprocal.parameters() if reciprocal else []) \
        + (reconstruction.parameters() if reconstruction else [])
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(device)  # float16 on CUDA needs loss scaling; disabled otherwise (a plain step)
    steps_per_epoch = int(np.ceil(len(bench.train) / cfg.batch_size))
    closedset = cfg.regime in CLOSEDSET_RECIPE_REGIMES  # schedule and augmentation; the loss is the regime's
    sched = (cosine_warmup_schedule(opt, cfg.epochs * steps_per_epoch) if closedset else
             torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch))
    images = bench.train.images  # compact: each batch is converted to normalised float32 when drawn
    y_all = torch.from_numpy(bench.train.y)
    history: list[dict] = []
    total_epochs = cfg.epochs + extra_epochs(cfg.regime)
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), cfg.batch_size):
            check_cancelled(cancel)
            idx = perm[i:i + cfg.batch_size]
            xb = torch.from_numpy(images[idx.numpy()])
            xb = random_affine(xb, gen) if closedset else _augment(xb, gen)
            xb, yb = xb.to(device), y_all[idx].to(device)
            fakes = confusing.step(model, xb, gen) if confusing is not None else None
            opt.zero_grad(set_to_none=True)
            with training_autocast(device):
                # the confusing samples' pass first: the reciprocal points' hook keeps the real batch's features
                fake_term = confusing.classifier_loss(model, fakes) if confusing is not None else None
                if aux is not None:
                    aux_idx = torch.randint(0, len(aux), (len(idx),), generator=gen)
                    both = model(torch.cat([xb, aux[aux_idx].to(device)]))
                    out, aux_out = both[:len(idx)], both[len(idx):]
                else:
                    out, aux_out = model(xb), None
                loss = regime_loss(cfg.regime, out, yb, aux_out, reciprocal)
                if fake_term is not None:
                    loss = loss + fake_term
                if reconstruction is not None:
                    loss = loss + reconstruction.loss(xb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if reciprocal is not None:
                reciprocal.write_head()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        p = Progress(epoch, total_epochs, loss_sum / total, correct / total,
                     accuracy(model, bench.val.images, bench.val.y, device), time.perf_counter() - t0)
        history.append(p.__dict__.copy())
        if progress is not None:
            progress(p)
    if reciprocal is not None:
        reciprocal.detach()
    if reconstruction is not None:
        reconstruction.detach()
    if cfg.regime in ("osrci", "gopenmax"):
        stages = osrci_stages if cfg.regime == "osrci" else gopenmax_stages
        x_all = torch.from_numpy(bench.train.x)  # the GAN stages draw from the whole (known-class) training set
        for epoch, (_, stage_loss) in enumerate(stages(model, x_all, y_all, bench.mean, bench.std, gen, device,
                                                       cfg.lr, cfg.weight_decay, cfg.batch_size, cancel),
                                                start=cfg.epochs + 1):
            p = Progress(epoch, total_epochs, stage_loss, history[-1]["train_accuracy"],
                         accuracy(model, bench.val.images, bench.val.y, device), time.perf_counter() - t0)
            history.append(p.__dict__.copy())
            if progress is not None:
                progress(p)
    model.eval()
    return TrainResult(model, history, time.perf_counter() - t0, False)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel (padding with the background value), seeded."""
    pad = 1
    bg = float(x.amin())
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=bg)
    n, _, h, w = x.shape
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return xp[:, :, dy:dy + h, dx:dx + w].contiguous()

