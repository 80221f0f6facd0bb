"""The pieces of the "closedset" training recipe, after Vaze et al. (ICLR 2022), "Open-Set Recognition: a Good
Closed-Set Classifier is All You Need": a learning rate with a linear warm-up and a cosine decay, and random affine
augmentation of each image (shifts, small rotations and scalings; no flips, which would turn digits into other
symbols). Label smoothing, the third piece, is in train.regime_loss. train.train_classifier uses them when
spec.training.regime == "closedset"; every random number comes from the training call's generator.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The recipe at this project's scale (28 px digits, a small CNN, 2 CPU cores); measured by scripts/bench_quality.py.
CLOSEDSET_WARMUP = 0.05  # fraction of all optimiser steps spent warming up linearly to the peak learning rate
CLOSEDSET_MAX_SHIFT = 3.0  # pixels per axis at the image's own size, uniform in [-3, 3]
CLOSEDSET_MAX_ROTATION = 10.0  # degrees, uniform in [-10, 10]
CLOSEDSET_MAX_SCALE = 0.1  # relative zoom, uniform in [0.9, 1.1]


def cosine_warmup_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate at optimiser step `step` (0-based) of `total`, as a fraction of the peak.

    Linear warm-up (step + 1) / warmup for the first `warmup` steps, then a cosine decay from 1 to 0:
    0.5 (1 + cos(pi (step - warmup) / (total - warmup)))."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def cosine_warmup_schedule(opt: torch.optim.Optimizer, total: int,
                           warmup_fraction: float = CLOSEDSET_WARMUP) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepping cosine_warmup_factor over `total` steps, with warm-up over a fraction of them (>= 1 step)."""
    warmup = max(1, int(round(warmup_fraction * total)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_warmup_factor(step, total, warmup))


def random_affine(x: torch.Tensor, gen: torch.Generator, max_shift: float = CLOSEDSET_MAX_SHIFT,
                  max_rotation: float = CLOSEDSET_MAX_ROTATION, max_scale: float = CLOSEDSET_MAX_SCALE) -> torch.Tensor:
    """Each image of x (n, c, h, w) rotated, scaled and shifted by its own random amounts (bilinear), seeded by `gen`.

    Angle uniform in [-max_rotation, max_rotation] degrees, zoom in [1 - max_scale, 1 + max_scale], shift in
    [-max_shift, max_shift] pixels per axis; what enters from outside the image is the background (the batch's
    minimum, the normalised black). Labels are unchanged: the caller keeps them."""
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_rotation)
    zoom = 1 + (torch.rand(n, generator=gen) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of s pixels is 2 s / side there
    theta = torch.stack([torch.stack([cos, -sin, -2 * shift[:, 0] / w], 1),
                         torch.stack([sin, cos, -2 * shift[:, 1] / h], 1)], 1).to(x.dtype)
    grid = nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    bg = x.amin()
    return nn.functional.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg
