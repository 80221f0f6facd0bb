"""Synthetic OOD sets made in pixel space [0, 1] (after Hendrycks et al.'s outlier-exposure code).

Every function returns an array of shape (n, channels, side, side), float32, values in [0, 1].
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def gaussian_noise(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """N(0.5, 0.5^2) per pixel, clipped to [0, 1]."""
    x = rng.normal(0.5, 0.5, size=(n, channels, side, side))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def rademacher_noise(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Each pixel 0 or 1 with p = 0.5 (the +-1 signs of the [-1, 1] recipe, mapped to [0, 1])."""
    return rng.integers(0, 2, size=(n, channels, side, side)).astype(np.float32)


def blobs(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli(0.7) pixels, Gaussian blur (sigma 1.5 at 32 px, scaled with the side), values < 0.75 set to 0."""
    x = rng.binomial(1, 0.7, size=(n, channels, side, side)).astype(np.float64)
    sigma = 1.5 * side / 32.0
    # blur each image spatially only (no mixing across samples or channels)
    x = gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="reflect")
    x[x < 0.75] = 0.0
    return x.astype(np.float32)


def uniform_noise(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """U[0, 1] per pixel."""
    return rng.uniform(0.0, 1.0, size=(n, channels, side, side)).astype(np.float32)


def rotated(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ID images rotated by 90 degrees counter-clockwise."""
    return np.ascontiguousarray(np.rot90(x, k=1, axes=(-2, -1)))


def flipped(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ID images mirrored left-right."""
    return np.ascontiguousarray(x[..., ::-1])


def inverted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ID images with intensities inverted: 1 - x."""
    return (1.0 - x).astype(np.float32)


def pixel_permuted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ID images whose pixels are shuffled by one fixed random permutation (same for every image)."""
    n, c, h, w = x.shape
    perm = rng.permutation(h * w)
    return np.ascontiguousarray(x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w))
