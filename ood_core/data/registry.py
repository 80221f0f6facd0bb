"""Registries of ID datasets and OOD sets; later datasets join by calling `register_*`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import synthetic


@dataclass(frozen=True)
class OODSetInfo:
    """An OOD set. `kind` is "synthetic" (made from noise: make(n, channels, side, rng)), "transformed" (made
    from ID test images: make(images, rng)) or "natural" (real images read from disk: make(n, channels, side,
    rng) draws n of them, converted to the ID channels and size); `available()` says whether its files exist."""

    name: str
    kind: str
    description: str
    make: Callable
    available: Callable[[], bool] = lambda: True


OOD_SETS: dict[str, OODSetInfo] = {}


OOD_KINDS = ("synthetic", "transformed", "natural")


def register_ood_set(name: str, kind: str, description: str, make: Callable,
                     available: Optional[Callable[[], bool]] = None, replace: bool = False) -> None:
    if name in OOD_SETS and not replace:
        raise ValueError(f"an OOD set named {name!r} is already registered")
    if kind not in OOD_KINDS:
        raise ValueError(f"OOD set kind must be one of {', '.join(OOD_KINDS)}, got {kind!r}")
    OOD_SETS[name] = OODSetInfo(name, kind, description, make, available or (lambda: True))


def ood_set_available(name: str) -> bool:
    """Whether the set can be made here (a natural set needs its files)."""
    return name in OOD_SETS and bool(OOD_SETS[name].available())


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
    if info.kind in ("synthetic", "natural"):
        return info.make(n, c, h, rng)
    idx = rng.choice(len(id_test_pixels), size=min(n, len(id_test_pixels)), replace=False)
    return info.make(id_test_pixels[np.sort(idx)], rng).astype(np.float32)


# --- natural OOD sets: another dataset's test images, or an unlabelled folder / zip / npz of the user's ----------

def natural_from_pixels(pixels) -> Callable:
    """A natural set's `make` over float pixels (n, c, h, w) in [0, 1] (an array, or data.images.Images of pixels):
    n drawn by rng, at the ID channels/size."""

    def make(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
        from .datasets import resize, to_channels

        idx = np.sort(rng.choice(len(pixels), size=min(n, len(pixels)), replace=False))
        return resize(to_channels(pixels[idx], channels), side)

    return make


def natural_from_dataset(dataset: str) -> Callable:
    """A natural set made of another registered dataset's test split (all of it when it has no official split)."""

    def make(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
        from .datasets import load_dataset

        d = load_dataset(dataset, side)
        images = d.images if d.is_train is None else d.images.take(~d.is_train)  # uint8: only the drawn rows convert
        return natural_from_pixels(images)(n, channels, side, rng)

    return make


def register_dataset_as_ood(dataset: str, name: Optional[str] = None) -> str:
    """Register ID dataset `dataset` as natural OOD set `name` (default: the dataset's name)."""
    from .datasets import get_info

    info = get_info(dataset)
    name = name or dataset
    register_ood_set(name, "natural", f"{info.title} test images ({info.description})", natural_from_dataset(dataset),
                     available=lambda: info.found(), replace=True)
    return name


def register_user_ood_set(name: str, path_or_bytes, filename: Optional[str] = None) -> str:
    """A user's unlabelled images (folder, .zip or .npz) as natural OOD set `name`; decoded now (DataError if refused).

    A user's set never takes the name of a built-in one: `gaussian.npz` becomes "user-gaussian", not a replacement
    of the synthetic Gaussian set. Returns the name it was registered under."""
    from . import sources
    from .datasets import to_float

    if name in OOD_SETS and name not in _USER_SETS:
        name = f"user-{name}"
    _USER_SETS.add(name)

    raw = sources.read_user_images(path_or_bytes, filename, labelled=False)
    pixels = to_float(raw)
    register_ood_set(name, "natural", f"your images: {len(pixels):,} from {raw.source}", natural_from_pixels(pixels),
                     replace=True)
    return name


_USER_SETS: set[str] = set()  # names registered by register_user_ood_set (they may be replaced by the user)

NATURAL_DATASETS = ("mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn")


def natural_from_folder(relative: str) -> Callable:
    """A natural set read (once, then kept) from an unlabelled image folder under the data root."""
    cache: dict = {}

    def make(n: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
        from . import sources
        from .datasets import data_root, to_float

        key = str(data_root() / relative)
        if key not in cache:
            cache.clear()
            cache[key] = to_float(sources.read_image_folder(key, labelled=False, size=side))
        return natural_from_pixels(cache[key])(n, channels, side, rng)

    return make


# unlabelled folders the OOD literature uses, read when present under the data root (sub-folders allowed)
FOLDER_SETS = {
    "tinyimagenet": ("tiny-imagenet-200/test", "TinyImageNet test images (a folder; near OOD for CIFAR)"),
    "textures": ("dtd/images", "Describable Textures (DTD) images (a folder)"),
    "places": ("places365", "Places365 images (a folder)"),
}

# the survey's benchmark pairs (its Table 6 and OpenOOD v1.5): near and far OOD sets per ID dataset
SURVEY_PAIRS: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {"near": ("fashion-mnist", "kmnist"), "far": ("gaussian", "rademacher", "blobs", "uniform")},
    "mnist-sample": {"near": ("fashion-mnist", "kmnist"), "far": ("gaussian", "rademacher", "blobs", "uniform")},
    "fashion-mnist": {"near": ("mnist", "kmnist"), "far": ("gaussian", "uniform")},
    "cifar10": {"near": ("cifar100", "tinyimagenet"), "far": ("svhn", "mnist", "textures", "places")},
    "cifar100": {"near": ("cifar10", "tinyimagenet"), "far": ("svhn", "mnist", "textures", "places")},
}


def survey_sets(dataset: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(near, far) OOD sets of the survey's pairs for `dataset`; ((), ()) when it has none."""
    pair = SURVEY_PAIRS.get(dataset, {})
    return tuple(pair.get("near", ())), tuple(pair.get("far", ()))


def _register_natural() -> None:
    from .datasets import data_root

    for ds in NATURAL_DATASETS:
        register_dataset_as_ood(ds)
    for name, (relative, description) in FOLDER_SETS.items():
        register_ood_set(name, "natural", description, natural_from_folder(relative),
                         available=lambda r=relative: (data_root() / r).is_dir(), replace=True)
