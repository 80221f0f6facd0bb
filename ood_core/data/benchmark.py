"""Build a Benchmark from a Spec: ID train/val/test splits and named OOD test sets, normalised alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from ..spec import Spec
from .datasets import DATASETS
from .registry import DEFAULT_OOD_SETS, OOD_SETS, make_ood_set

# fractions of the ID data; the rest is the test split
TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.1


@dataclass
class Split:
    """One set of samples: normalised inputs `x` (n, c, h, w) float32 and integer labels (-1 for OOD)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Benchmark:
    spec: Spec
    class_names: list[str]
    mean: float
    std: float
    train: Split
    val: Split
    test: Split
    ood: dict[str, Split] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    def splits(self) -> dict[str, Split]:
        """All splits by name: train, val, test, then the OOD sets."""
        return {"train": self.train, "val": self.val, "test": self.test, **self.ood}

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Undo the normalisation: back to pixel space [0, 1] for display."""
        return np.clip(x * self.std + self.mean, 0.0, 1.0)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels - self.mean) / self.std).astype(np.float32)


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/val/test indices (60/10/30)."""
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=TRAIN_FRACTION, stratify=labels, random_state=seed)
    val_share = VAL_FRACTION / (1.0 - TRAIN_FRACTION)
    val, test = train_test_split(rest, train_size=val_share, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def build_benchmark(spec: Spec, ood_sets: tuple[str, ...] = DEFAULT_OOD_SETS, ood_fraction: float = 0.2) -> Benchmark:
    """ID splits of `spec.dataset` and each OOD set (a fifth of the ID test size by default)."""
    if spec.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {spec.dataset!r}; available: {', '.join(DATASETS)}")
    unknown = [s for s in ood_sets if s not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {', '.join(unknown)}; available: {', '.join(OOD_SETS)}")
    pixels, labels, names = DATASETS[spec.dataset].load(spec.image_size)
    tr, va, te = split_indices(labels, spec.seed)
    # normalisation statistics from ID train pixels only
    mean = float(pixels[tr].mean())
    std = float(pixels[tr].std()) or 1.0

    def norm(p: np.ndarray) -> np.ndarray:
        return ((p - mean) / std).astype(np.float32)

    n_ood = max(1, int(round(ood_fraction * len(te))))
    ood = {}
    for name in ood_sets:
        p = make_ood_set(name, pixels[te], n_ood, spec.seed)
        ood[name] = Split(norm(p), np.full(len(p), -1, dtype=np.int64))
    return Benchmark(
        spec=spec,
        class_names=names,
        mean=mean,
        std=std,
        train=Split(norm(pixels[tr]), labels[tr]),
        val=Split(norm(pixels[va]), labels[va]),
        test=Split(norm(pixels[te]), labels[te]),
        ood=ood,
    )
