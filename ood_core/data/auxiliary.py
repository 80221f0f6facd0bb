"""Auxiliary outliers for outlier exposure, made from ID *training* images only.

They must be disjoint from every test OOD set (DESIGN.md): no noise recipe and no whole-image transform that a
test set uses. Two recipes, each a different kind of "not a clean digit":
- mixup: the pixel-wise blend of two training images of different classes, lambda ~ U(0.35, 0.65);
- jigsaw: a training image cut into a 4x4 grid of tiles whose positions are shuffled.
"""
from __future__ import annotations

import numpy as np

AUX_RECIPES = {
    "mixup": "blends of two ID training images of different classes (λ ~ U(0.35, 0.65))",
    "jigsaw": "ID training images cut into 4×4 tiles shuffled in place",
}


def mixup_outliers(pixels: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    i = rng.integers(0, len(pixels), n)
    j = rng.integers(0, len(pixels), n)
    same = labels[i] == labels[j]
    while same.any():  # redraw partners of the same class
        j[same] = rng.integers(0, len(pixels), int(same.sum()))
        same = labels[i] == labels[j]
    lam = rng.uniform(0.35, 0.65, size=(n, 1, 1, 1)).astype(np.float32)
    return (lam * pixels[i] + (1 - lam) * pixels[j]).astype(np.float32)


def jigsaw_outliers(pixels: np.ndarray, n: int, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    idx = rng.integers(0, len(pixels), n)
    x = pixels[idx].copy()
    _, c, h, w = x.shape
    th, tw = h // grid, w // grid
    for k in range(n):
        tiles = [x[k, :, r * th:(r + 1) * th, q * tw:(q + 1) * tw].copy() for r in range(grid) for q in range(grid)]
        order = rng.permutation(len(tiles))
        for pos, t in enumerate(order):
            r, q = divmod(pos, grid)
            x[k, :, r * th:(r + 1) * th, q * tw:(q + 1) * tw] = tiles[t]
    return x


def make_auxiliary(pixels: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n auxiliary outliers in pixel space, half mixup and half jigsaw, seeded."""
    if len(np.unique(labels)) < 2:
        raise ValueError("outlier exposure needs at least two ID classes to build its auxiliary outliers")
    rng = np.random.default_rng([seed, 271828])
    half = n // 2
    return np.concatenate([mixup_outliers(pixels, labels, half, rng), jigsaw_outliers(pixels, n - half, rng)])
