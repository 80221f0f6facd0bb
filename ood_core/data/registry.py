"""Registries of ID datasets and OOD sets; later datasets join by calling `register_*`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import synthetic


@dataclass(frozen=True)
class OODSetInfo:
    """An OOD recipe: `kind` is "synthetic" (made from noise) or "transformed" (made from ID test images)."""

    name: str
    kind: str
    description: str
    make: Callable


OOD_SETS: dict[str, OODSetInfo] = {}


def register_ood_set(name: str, kind: str, description: str, make: Callable) -> None:
    if name in OOD_SETS:
        raise ValueError(f"an OOD set named {name!r} is already registered")
    if kind not in ("synthetic", "transformed"):
        raise ValueError(f"OOD set kind must be 'synthetic' or 'transformed', got {kind!r}")
    OOD_SETS[name] = OODSetInfo(name, kind, description, make)


register_ood_set("gaussian", "synthetic", "Gaussian noise N(0.5, 0.5²) clipped to [0, 1]", synthetic.gaussian_noise)
register_ood_set("rademacher", "synthetic", "Rademacher noise: each pixel 0 or 1 with p = 0.5", synthetic.rademacher_noise)
register_ood_set("blobs", "synthetic", "Blobs: blurred Bernoulli(0.7) pixels, thresholded at 0.75", synthetic.blobs)
register_ood_set("uniform", "synthetic", "Uniform noise U[0, 1]", synthetic.uniform_noise)
register_ood_set("rotated", "transformed", "ID test images rotated by 90°", synthetic.rotated)
register_ood_set("flipped", "transformed", "ID test images mirrored left-right", synthetic.flipped)
register_ood_set("inverted", "transformed", "ID test images with inverted intensities (1 − x)", synthetic.inverted)
register_ood_set("permuted", "transformed", "ID test images with pixels shuffled by a fixed permutation", synthetic.pixel_permuted)

DEFAULT_OOD_SETS = tuple(OOD_SETS)


def stream_id(name: str) -> int:
    """A stable 63-bit number per name (SHA-256), to seed each OOD set's own random stream."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def make_ood_set(name: str, id_test_pixels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Build OOD set `name` in pixel space at the ID image shape, `n` samples, seeded."""
    if name not in OOD_SETS:
        raise KeyError(f"unknown OOD set {name!r}; known: {', '.join(OOD_SETS)}")
    info = OOD_SETS[name]
    # a distinct, stable stream per set so adding a set never changes the others (and anagrams differ)
    rng = np.random.default_rng([seed, stream_id(name)])
    _, c, h, w = id_test_pixels.shape
    if info.kind == "synthetic":
        return info.make(n, c, h, rng)
    idx = rng.choice(len(id_test_pixels), size=min(n, len(id_test_pixels)), replace=False)
    return info.make(id_test_pixels[np.sort(idx)], rng).astype(np.float32)
