"""ID datasets: each loader returns pixels in [0, 1] as (n, channels, side, side) float32 plus labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    load: Callable[[int], tuple[np.ndarray, np.ndarray, list[str]]]  # image_size -> (pixels, labels, class names)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, load: Callable) -> None:
    if name in DATASETS:
        raise ValueError(f"a dataset named {name!r} is already registered")
    DATASETS[name] = DatasetInfo(name, description, load)


def resize(pixels: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of (n, c, h, w) images to side x side, values kept in [0, 1]."""
    if pixels.shape[-1] == side and pixels.shape[-2] == side:
        return pixels.astype(np.float32)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    out = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
    return out.clamp_(0.0, 1.0).numpy()


def load_digits(image_size: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    pixels = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return resize(pixels, image_size), d.target.astype(np.int64), [str(i) for i in range(10)]


register_dataset("digits", "scikit-learn's bundled handwritten digits (8×8, 1,797 images, 10 classes), offline", load_digits)
