"""Build a Benchmark from a Spec: ID train/val/test splits and named OOD test sets, normalised alike."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
from sklearn.model_selection import train_test_split

from ..spec import Spec
from .datasets import load_dataset
from .images import Images
from .osr_splits import known_classes_for, known_classes_of, unknown_classes_of  # noqa: F401  (re-exported)
from .sources import DataError
from .registry import DEFAULT_OOD_SETS, OOD_SETS, make_ood_set, ood_set_available

# fractions of the ID data; the rest is the test split
TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.1
OFFICIAL_VAL_FRACTION = 0.1  # of the official train split, when the dataset has one


class Split:
    """One set of samples: normalised inputs (n, c, h, w) float32 and integer labels `y` (-1 for OOD).

    The inputs live in `images` (data.images.Images): the benchmark's ID splits keep the decoded uint8 pixels and
    the normalisation, so a batch read from them (`images[a:b]`, `images[idx]`, `batches`) is converted alone; `x`
    is the whole float32 array, made on each read (a split built from an array returns that array itself), for
    callers that want everything at once. Both give the same float32 numbers, bit for bit."""

    def __init__(self, x, y: np.ndarray):
        self.images = x if isinstance(x, Images) else Images(np.asarray(x, dtype=np.float32))
        self.y = y

    @property
    def x(self) -> np.ndarray:
        """All the normalised inputs (n, c, h, w) float32 (converted now unless stored as such)."""
        return self.images.materialise()

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, labels) of consecutive batches of `batch_size` samples."""
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.y[i:i + batch_size]

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split({self.images!r}, {len(self.y)} labels)"


@dataclass
class Benchmark:
    """`mean` and `std` are per channel, shape (channels, 1, 1), from the ID training pixels; `fingerprint` names
    the data the splits were made from (part of every cache key that depends on the data)."""

    spec: Spec
    class_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    train: Split
    val: Split
    test: Split
    ood: dict[str, Split] = field(default_factory=dict)
    # setting details: known/unknown classes (OSR), normal class and contamination (ND, AD), ...
    meta: dict = field(default_factory=dict)
    fingerprint: str = ""
    # the setting's natural OOD set drawn from the validation split (OSR's unknown classes, ND/AD's other classes):
    # OOD *validation* data for tuning parameters (tuning.py), never a test image
    val_ood: dict[str, Split] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def splits(self) -> dict[str, Split]:
        """All splits by name: train, val, test, then the OOD sets."""
        return {"train": self.train, "val": self.val, "test": self.test, **self.ood}

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Undo the normalisation: back to pixel space [0, 1] for display."""
        return np.clip(x * self.std + self.mean, 0.0, 1.0)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels - self.mean) / self.std).astype(np.float32)


def split_indices(labels: np.ndarray, seed: int, is_train: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/val/test indices.

    Without an official split: 60/10/30 of all samples. With one (`is_train`): the official test split is the
    test split, and the validation split is carved from the official train split (a tenth, stratified)."""
    idx = np.arange(len(labels))
    if is_train is not None:
        official = idx[is_train]
        n = len(official)
        train, val = _stratified(official, labels, n - math.ceil(OFFICIAL_VAL_FRACTION * n), seed)
        return np.sort(train), np.sort(val), idx[~is_train]
    train, rest = _stratified(idx, labels, math.floor(TRAIN_FRACTION * len(idx)), seed, second_per_class=2)
    val_share = VAL_FRACTION / (1.0 - TRAIN_FRACTION)
    val, test = _stratified(rest, labels, math.floor(val_share * len(rest)), seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _stratified(idx: np.ndarray, labels: np.ndarray, n_first: int, seed: int, second_per_class: int = 1
                ) -> tuple[np.ndarray, np.ndarray]:
    """idx cut in two by sklearn's stratified, seeded split, the first part of `n_first` samples (the sizes sklearn
    derives from the fractions, so every split it could make is unchanged). Stratifying needs a part at least as
    large as the number of classes: a smaller part (a few images per class of many classes) is enlarged to that;
    when the data are too few even so, a DataError says so in words instead of sklearn's message."""
    k, n = len(np.unique(labels[idx])), len(idx)
    n_first = min(max(n_first, k), n - second_per_class * k)
    try:
        if n_first < k:
            raise ValueError(f"{n} images cannot give every one of the {k} classes an image in each split")
        return train_test_split(idx, train_size=n_first, test_size=n - n_first, stratify=labels[idx],
                                random_state=seed)
    except ValueError as e:
        raise DataError(f"too few images per class to split them into training, validation and test sets "
                        f"stratified by class ({n} images, {k} classes): {e}") from None


def subsample_per_class(idx: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most `per_class` indices of each class from `idx`, drawn by `seed` (all of a class that has fewer)."""
    if per_class <= 0:
        return idx
    rng = np.random.default_rng([seed, 4099])
    keep = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        keep.append(members if len(members) <= per_class else rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(keep))


def build_benchmark(spec: Spec, ood_sets: tuple[str, ...] = DEFAULT_OOD_SETS, ood_fraction: float = 0.2) -> Benchmark:
    """ID splits of `spec.dataset` for the spec's setting, plus the OOD sets (a fifth of the ID test size each).

    - ood: ID = all classes; OOD = the synthetic and transformed sets.
    - osr: ID = K known classes (labels remapped to 0..K-1); OOD set "unknown" = test samples of the other classes,
      or in CIFAR+N CIFAR-100 test images of the split's unknown classes (osr_splits.py says which classes).
    - nd: ID = the normal class alone (label 0); OOD set "novel" = test samples of every other class.
    - ad: as nd, but the training split is contaminated with unlabelled samples of the other classes.
    The synthetic and transformed sets are built from the ID test images and join every setting.
    """
    unknown = [s for s in ood_sets if s not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {', '.join(unknown)}; available: {', '.join(OOD_SETS)}")
    data = load_dataset(spec.dataset, spec.image_size)
    labels, names = data.labels, data.class_names
    n_classes = len(names)
    tr, va, te = split_indices(labels, spec.seed, data.is_train)
    tr = subsample_per_class(tr, labels, spec.train_per_class, spec.seed)
    meta: dict = {"setting": spec.setting, "n_dataset_classes": n_classes, "dataset_source": data.source,
                  "official_split": data.is_train is not None}
    extra_ood: dict[str, np.ndarray] = {}  # name -> dataset indices of a natural OOD set
    val_ood: dict[str, np.ndarray] = {}  # name -> dataset indices of its validation draw (from the validation split)
    class_names = names
    remap = np.arange(n_classes)
    # name -> (another dataset, its indices) for the test set and for the validation draw of a natural OOD set
    foreign: dict[str, tuple] = {}
    foreign_val: dict[str, tuple] = {}
    fingerprint = data.fingerprint
    if spec.setting == "osr":
        known = known_classes_of(spec, n_classes)
        source, unknown_cls = unknown_classes_of(spec, n_classes)
        is_known = np.isin(labels, known)
        remap = np.full(n_classes, -1)
        remap[known] = np.arange(len(known))
        class_names = [names[c] for c in known]
        if source == spec.dataset:
            unknown_names = [names[c] for c in unknown_cls]
            extra_ood["unknown"] = te[~is_known[te]]
            val_ood["unknown"] = va[~is_known[va]]
        else:  # CIFAR+N: the unknowns are another dataset's images (its test split; validation from its train split)
            other = load_dataset(source, spec.image_size)
            unknown_names = [other.class_names[c] for c in unknown_cls]
            is_unknown = np.isin(other.labels, unknown_cls)
            official = other.is_train if other.is_train is not None else np.zeros(len(other.labels), bool)
            test_idx = np.flatnonzero(is_unknown & ~official)
            pool = np.flatnonzero(is_unknown & official)
            val_idx = _stratified(pool, other.labels, math.ceil(OFFICIAL_VAL_FRACTION * len(pool)), spec.seed)[0] \
                if len(pool) else pool
            foreign["unknown"] = (other, test_idx)
            foreign_val["unknown"] = (other, np.sort(val_idx))
            fingerprint = hashlib.sha256(f"{data.fingerprint}:{other.fingerprint}".encode()).hexdigest()[:16]
        meta.update(known_classes=known, unknown_classes=unknown_cls, known_names=class_names,
                    unknown_names=unknown_names, unknown_source=source, osr_splits=spec.osr_splits,
                    osr_protocol=spec.osr_protocol)
        tr, va, te = tr[is_known[tr]], va[is_known[va]], te[is_known[te]]
    elif spec.setting in ("nd", "ad"):
        c = spec.normal_class
        if not 0 <= c < n_classes:
            raise ValueError(f"normal class {c} does not exist: {spec.dataset} has classes 0..{n_classes - 1}")
        normal = labels == c
        remap = np.full(n_classes, -1)
        remap[c] = 0
        class_names = [names[c]]
        name = "novel" if spec.setting == "nd" else "anomalous"
        extra_ood[name] = te[~normal[te]]
        val_ood[name] = va[~normal[va]]
        tr_normal = tr[normal[tr]]
        contaminants = np.zeros(0, dtype=int)
        if spec.setting == "ad" and spec.contamination > 0:
            others = tr[~normal[tr]]
            # ratio of contaminants in the final training set: m / (n + m) = contamination
            m = int(round(spec.contamination / (1 - spec.contamination) * len(tr_normal)))
            rng = np.random.default_rng([spec.seed, c, 7331])
            contaminants = np.sort(rng.choice(others, size=min(m, len(others)), replace=False))
        meta.update(normal_class=c, normal_name=names[c], contamination=float(spec.contamination) if spec.setting == "ad" else 0.0,
                    n_contaminants=int(len(contaminants)), contaminant_labels=labels[contaminants].tolist())
        meta["train_is_contaminant"] = np.r_[np.zeros(len(tr_normal), bool), np.ones(len(contaminants), bool)]
        # contaminants are unlabelled: they carry the normal label 0, like every training sample
        tr = np.r_[tr_normal, contaminants]
        va, te = va[normal[va]], te[normal[te]]
    # normalisation statistics per channel from the (ID) training pixels only
    mean, std = channel_stats(data.images, tr)

    def norm(p: np.ndarray) -> np.ndarray:
        return ((p - mean) / std).astype(np.float32)

    def stored(idx: np.ndarray, source=data) -> Images:  # a dataset's uint8 rows, normalised batch by batch when read
        return Images(source.stored[idx], source.side, source.max_value, mean, std)

    def id_labels(idx: np.ndarray) -> np.ndarray:
        y = remap[labels[idx]].astype(np.int64)
        if spec.setting in ("nd", "ad"):
            y[:] = 0
        return y

    ood = {}
    for name, idx in extra_ood.items():
        # natural OOD sets keep their original class in meta, label -1 like every OOD sample
        ood[name] = Split(stored(idx), np.full(len(idx), -1, dtype=np.int64))
        meta[f"{name}_original_labels"] = labels[idx].tolist()
    for name, (other, idx) in foreign.items():
        ood[name] = Split(stored(idx, other), np.full(len(idx), -1, dtype=np.int64))
        meta[f"{name}_original_labels"] = other.labels[idx].tolist()
    n_ood = max(1, int(round(ood_fraction * len(te))))
    skipped = []
    test_pixels = None  # float pixels of the ID test split, made once for the sets that need them
    for name in ood_sets:
        if not ood_set_available(name):
            skipped.append(name)  # a natural set whose files are absent: noted, not an error
            continue
        if test_pixels is None:
            test_pixels = data.images[te]
        p = make_ood_set(name, test_pixels, n_ood, spec.seed)  # a fifth of the test size: kept as float inputs
        ood[name] = Split(norm(p), np.full(len(p), -1, dtype=np.int64))
    del test_pixels
    return Benchmark(
        spec=spec,
        class_names=class_names,
        mean=mean,
        std=std,
        train=Split(stored(tr), id_labels(tr)),
        val=Split(stored(va), id_labels(va)),
        test=Split(stored(te), id_labels(te)),
        ood=ood,
        meta={**meta, "skipped_ood_sets": skipped},
        fingerprint=fingerprint,
        val_ood={**{name: Split(stored(idx), np.full(len(idx), -1, dtype=np.int64)) for name, idx in val_ood.items()},
                 **{name: Split(stored(idx, other), np.full(len(idx), -1, dtype=np.int64))
                    for name, (other, idx) in foreign_val.items()}},
    )


def channel_stats(pixels, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of pixels[idx] as float32 arrays of shape (c, 1, 1) (numpy's float32 pairwise
    sums, one channel at a time: for one channel exactly the statistics of all the pixels).

    `pixels`: a float array (n, c, h, w) in [0, 1], or an Images of pixels (uint8 stored): then one channel of the
    rows is converted at a time (every image and channel converts on its own: the same values as the whole array)."""
    c = pixels.shape[1]
    mean = np.empty((c, 1, 1), np.float32)
    std = np.empty((c, 1, 1), np.float32)
    for ch in range(c):
        if isinstance(pixels, Images):
            one = Images(pixels.stored[idx, ch:ch + 1], pixels.side, pixels.max_value)
            block = one.materialise()[:, 0]
        else:
            block = pixels[idx, ch]
        mean[ch] = float(block.mean())
        std[ch] = float(block.std()) or 1.0
    return mean, std
