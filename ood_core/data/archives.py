"""The user's own images, read safely: a folder of image files, a .zip of them, or an .npz of arrays.

Everything a file declares is checked before anything is decoded: the archive's size, its member count and
total uncompressed size (from the zip's directory), every member's path (no zip-slip), every image's pixel
count (from its header). Zip members are read in memory, never extracted. Images of mixed sizes and modes
are converted to one target (channels, side). Refusals are DataError with one line for the user.

The shared types of the data sources (DataError, RawData, Limits) live here; `ood_core.data.sources`
re-exports them, and that is where callers import them from.
"""
from __future__ import annotations

import io
import os
import re
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, Union

import numpy as np


class DataError(ValueError):
    """A dataset/archive that cannot be used; str(e) is ONE line meant for the user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class RawData:
    """Decoded images as stored on disk, before any split, scaling or normalisation."""

    images: np.ndarray  # uint8, (n, c, h, w), c in {1, 3}; one h, w for the whole set
    labels: np.ndarray  # int64 (n,); -1 for unlabelled images
    class_names: list[str]  # [] for unlabelled sets
    is_train: Optional[np.ndarray]  # bool (n,): the official train split; None when the source has none
    source: str  # where it was read from, for messages and provenance

    def __post_init__(self):
        im, lab = self.images, self.labels
        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 4 and im.shape[1] in (1, 3)):
            raise DataError(f"{self.source}: images must be uint8 (n, 1 or 3, h, w), got "
                            f"{getattr(im, 'dtype', type(im).__name__)} {getattr(im, 'shape', '')}")
        if not (isinstance(lab, np.ndarray) and lab.dtype == np.int64 and lab.shape == (im.shape[0],)):
            raise DataError(f"{self.source}: labels must be int64 ({im.shape[0]},), got "
                            f"{getattr(lab, 'dtype', type(lab).__name__)} {getattr(lab, 'shape', '')}")
        if self.is_train is not None and not (isinstance(self.is_train, np.ndarray) and self.is_train.dtype == bool
                                              and self.is_train.shape == (im.shape[0],)):
            raise DataError(f"{self.source}: is_train must be bool ({im.shape[0]},) or None")


@dataclass(frozen=True)
class Limits:
    """What a folder or archive may declare; enforced BEFORE decoding anything.

    max_total_uncompressed also bounds the decoded image array (n * c * side * side bytes).
    """

    max_archive_bytes: int = 200 * 2**20
    max_members: int = 100_000
    max_total_uncompressed: int = 2 * 2**30
    max_image_pixels: int = 4096 * 4096  # per image (decompression bombs)
    min_side: int = 4


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
# Only these decoders may run: PIL would otherwise try every plugin it has (EPS, for one, runs Ghostscript).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_KINDS = "PNG, JPEG, BMP, GIF, TIFF, WebP, PPM"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,} bytes"


# --- member names ----------------------------------------------------------------------------------------

def _safe_parts(name: str) -> Optional[tuple[str, ...]]:
    """The path components of an archive member, or None when it could land outside the archive (zip-slip)."""
    p = name.replace("\\", "/")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or "\x00" in p:
        return None
    parts = tuple(s for s in p.split("/") if s not in ("", "."))
    if any(s == ".." or re.match(r"^[A-Za-z]:$", s) for s in parts):
        return None
    return parts


def _ignored(parts: tuple[str, ...]) -> bool:
    """Junk that archivers and file browsers add: macOS resource forks, hidden dot-files, Windows thumbnails."""
    return parts[0] == "__MACOSX" or any(s.startswith(".") for s in parts) or parts[-1].lower() == "thumbs.db"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# --- decoding ----------------------------------------------------------------------------------------------

@dataclass
class _Member:
    name: str  # shown in messages: the member's path inside the archive / folder
    parts: tuple[str, ...]
    open: Callable[[], object]  # a binary file object positioned at the start


def _formats() -> tuple[str, ...]:
    """PIL_FORMATS this Pillow can open (a build without WebP, say, has no WEBP opener)."""
    from PIL import Image

    Image.init()
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)


def _header(m: _Member, source: str, limits: Limits) -> tuple[int, int, str]:
    """(width, height, mode) from the image's header alone; refuses bombs and tiny images before decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with m.open() as f, Image.open(f, formats=_formats()) as im:
                w, h = im.size
                mode = im.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{source}: {m.name} declares more than {limits.max_image_pixels:,} pixels "
                        f"(the limit per image); refused as a possible decompression bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as e:
        raise DataError(f"{source}: {m.name} could not be read as an image ({_KINDS}): {e}") from None
    if w * h > limits.max_image_pixels:
        raise DataError(f"{source}: {m.name} is {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{limits.max_image_pixels:,} pixels per image; refused as a possible decompression bomb")
    if min(w, h) < limits.min_side:
        raise DataError(f"{source}: {m.name} is {w}x{h} px; images must be at least "
                        f"{limits.min_side}x{limits.min_side}")
    return w, h, mode


def _decode(m: _Member, source: str):
    """A PIL image in mode "L" or "RGB": transparency flattened on white, 16-bit and float greys to 8 bits."""
    from PIL import Image

    try:
        with m.open() as f, Image.open(f, formats=_formats()) as im:
            im.load()  # decode now, so truncated files fail here
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                a = np.asarray(im, dtype=np.float64)
                top = float(a.max()) if a.size else 0.0
                if im.mode.startswith("I;16"):  # 16-bit greys: full scale 65535, however dark the image
                    scale = 65535.0
                elif im.mode == "F" and top <= 1.0:  # floats in [0, 1]
                    scale = 1.0
                else:  # 32-bit ints / floats: 8-bit values stored wide stay, 16-bit ones scale, else by the max
                    scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
                return Image.fromarray(np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8), "L")
            if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                return flat.convert("L" if im.mode in ("LA", "La") else "RGB")
            if im.mode in ("1", "L"):
                return im.convert("L")
            return im.convert("RGB")
    except (OSError, SyntaxError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{source}: {m.name} is damaged or truncated and could not be decoded: {e}") from None


def _is_colour(im) -> bool:
    if im.mode != "RGB":
        return False
    a = np.asarray(im)
    return not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def _most_common_side(sizes: list[tuple[int, int]]) -> int:
    counts = Counter(s for wh in sizes for s in wh)
    return max(counts, key=lambda s: (counts[s], s))  # ties: the larger side keeps more detail


def _check_target(source: str, channels, size, limits: Limits) -> None:
    if channels not in (None, 1, 3):
        raise DataError(f"{source}: channels must be 1 or 3, got {channels!r}")
    if size is not None and (not isinstance(size, (int, np.integer)) or size < limits.min_side
                             or size * size > limits.max_image_pixels):
        raise DataError(f"{source}: size must be a side of at least {limits.min_side} px, got {size!r}")


def decode_images(members: list[_Member], source: str, channels: Optional[int], size: Optional[int],
                  limits: Limits) -> np.ndarray:
    """Decode members into one uint8 (n, c, side, side) array.

    Target: `channels` if given, else 3 when any image has colour (channels that differ after flattening),
    else 1; `size` if given, else the most common side; square bilinear resize (PIL). Headers are all checked
    first, so a bomb or a tiny image is refused before any pixel is decoded.
    """
    from PIL import Image

    headers = [_header(m, source, limits) for m in members]
    side = int(size) if size is not None else _most_common_side([(w, h) for w, h, _ in headers])
    maybe_colour = any(mode not in _GREY_MODES for _, _, mode in headers)
    work = channels if channels is not None else (3 if maybe_colour else 1)
    need = len(members) * work * side * side
    if need > limits.max_total_uncompressed:
        raise DataError(f"{source}: {len(members):,} images of {work}x{side}x{side} would take "
                        f"{human_bytes(need)} decoded; the limit is {human_bytes(limits.max_total_uncompressed)}")
    out = np.empty((len(members), work, side, side), dtype=np.uint8)
    any_colour = False
    for i, m in enumerate(members):
        im = _decode(m, source)
        any_colour = any_colour or _is_colour(im)
        im = im.convert("L" if work == 1 else "RGB")
        if im.size != (side, side):
            im = im.resize((side, side), Image.Resampling.BILINEAR)
        a = np.asarray(im)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if channels is None and work == 3 and not any_colour:
        out = np.ascontiguousarray(out[:, :1])  # grey content in colour files: R = G = B = the grey value
    return out


# --- labelled sets ------------------------------------------------------------------------------------------

def _labelled(members: list[_Member], source: str, labelled: bool) -> tuple[list[_Member], np.ndarray, list[str]]:
    """Members in a fixed order (by path) with their labels: one class per first-level folder, as
    torchvision's ImageFolder does (class names sorted); one wrapping top-level folder is looked through."""
    if not members:
        raise DataError(f"{source}: no images found ({_KINDS})")
    members = sorted(members, key=lambda m: m.parts)
    if not labelled:
        return members, np.full(len(members), -1, dtype=np.int64), []
    depth = 0
    while all(len(m.parts) - depth > 2 for m in members) and len({m.parts[depth] for m in members}) == 1:
        depth += 1  # look through a single top-level folder ("mydata/cat/1.png")
    loose = [m for m in members if len(m.parts) - depth < 2]
    if loose:
        raise DataError(f"{source}: {loose[0].name} is not inside a class folder; a labelled set needs one "
                        f"folder per class (cat/1.png, dog/2.png, ...)")
    names = sorted({m.parts[depth] for m in members})
    if len(names) < 2:
        raise DataError(f"{source}: a labelled set needs at least 2 class folders; found {len(names)} "
                        f"({', '.join(names)})")
    index = {c: i for i, c in enumerate(names)}
    return members, np.array([index[m.parts[depth]] for m in members], dtype=np.int64), names


def _finish(members, source, labelled, channels, size, limits) -> RawData:
    _check_target(source, channels, size, limits)
    members, labels, names = _labelled(members, source, labelled)
    images = decode_images(members, source, channels, size, limits)
    return RawData(images, labels, names, None, source)


# --- folders --------------------------------------------------------------------------------------------------

def _walk(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders are not followed
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        rel = Path(dirpath).relative_to(root).parts
        for f in sorted(filenames):
            yield Path(dirpath) / f, rel + (f,)


def read_image_folder(path, labelled: bool = True, channels: Optional[int] = None, size: Optional[int] = None,
                      limits: Limits = Limits()) -> RawData:
    """Images from a folder: one sub-folder per class when labelled (class names = sorted folder names, like
    torchvision's ImageFolder), else every image under it (recursive) with label -1."""
    root = Path(path).expanduser()
    source = str(root)
    if not root.is_dir():
        raise DataError(f"{source}: no such folder")
    real_root = root.resolve()
    members, total = [], 0
    for p, parts in _walk(root):
        if _ignored(parts):
            continue
        name = "/".join(parts)
        try:
            st = p.stat()
        except OSError as e:
            raise DataError(f"{source}: {name} cannot be read: {e.strerror}") from None
        if p.is_symlink() and not p.resolve().is_relative_to(real_root):
            raise DataError(f"{source}: {name} is a link to a file outside the folder; refused")
        if not stat.S_ISREG(st.st_mode) or not _is_image_name(name):
            raise DataError(f"{source}: {name} is not an image ({_KINDS}); remove it or choose another folder")
        members.append(_Member(name, parts, lambda p=p: open(p, "rb")))
        total += st.st_size
        if len(members) > limits.max_members:
            raise DataError(f"{source}: more than {limits.max_members:,} images; the limit is "
                            f"{limits.max_members:,}")
        if total > limits.max_total_uncompressed:
            raise DataError(f"{source}: the images take more than {human_bytes(limits.max_total_uncompressed)} "
                            f"on disk, the limit")
    return _finish(members, source, labelled, channels, size, limits)


# --- archives --------------------------------------------------------------------------------------------------

def _archive_source(data, name: str, limits: Limits):
    """A seekable binary file for the archive, after checking its size."""
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.is_file():
            raise DataError(f"{name}: no such file")
        n = p.stat().st_size
        if n > limits.max_archive_bytes:
            raise DataError(f"{name}: the archive is {human_bytes(n)}; the limit is "
                            f"{human_bytes(limits.max_archive_bytes)}")
        return open(p, "rb")
    stream = False
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif hasattr(data, "getvalue"):  # an upload (io.BytesIO, Streamlit's UploadedFile)
        raw = data.getvalue()
    elif hasattr(data, "read"):  # read only up to one byte past the limit
        raw, stream = data.read(limits.max_archive_bytes + 1), True
    else:
        raise DataError(f"{name}: expected the archive's bytes or a path, got {type(data).__name__}")
    if len(raw) > limits.max_archive_bytes:
        raise DataError(f"{name}: the archive is {'over ' if stream else ''}"
                        f"{human_bytes(len(raw) - stream)}; the limit is {human_bytes(limits.max_archive_bytes)}")
    if not raw:
        raise DataError(f"{name}: the file is empty")
    return io.BytesIO(raw)


def _check_directory(zf: zipfile.ZipFile, source: str, limits: Limits) -> list[zipfile.ZipInfo]:
    """The zip's member list, checked from its directory alone: count, total size, paths, encryption, links."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DataError(f"{source}: {len(infos):,} members; the limit is {limits.max_members:,}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_uncompressed:
        raise DataError(f"{source}: {human_bytes(total)} uncompressed; the limit is "
                        f"{human_bytes(limits.max_total_uncompressed)}")
    for i in infos:
        if _safe_parts(i.filename) is None:
            raise DataError(f"{source}: the member path {i.filename!r} points outside the archive (absolute, "
                            f"'..' or a drive letter); refused")
    for i in infos:
        if i.flag_bits & 0x1:
            raise DataError(f"{source}: {i.filename} is encrypted; use an archive without a password")
        if stat.S_ISLNK(i.external_attr >> 16):
            raise DataError(f"{source}: {i.filename} is a symbolic link; refused")
    return infos


def _read_zip(f, source, labelled, channels, size, limits) -> RawData:
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{source}: not a readable zip archive ({e})") from None
    with zf:
        members = []
        for info in _check_directory(zf, source, limits):
            parts = _safe_parts(info.filename)
            if info.is_dir() or not parts or _ignored(parts):
                continue
            if not _is_image_name(info.filename):
                raise DataError(f"{source}: {info.filename} is not an image ({_KINDS}); remove it from the archive")
            members.append(_Member(info.filename, parts, lambda info=info: zf.open(info)))
        try:
            return _finish(members, source, labelled, channels, size, limits)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
            raise DataError(f"{source}: a member could not be read from the archive ({e})") from None


def _to_uint8(a: np.ndarray, source: str) -> np.ndarray:
    """uint8 as is; integers in [0, 255]; floats in [0, 1] (max <= 1) or [0, 255]; converted in chunks."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind not in "iuf" or a.size == 0:
        raise DataError(f"{source}: 'images' must be uint8, integers in [0, 255] or floats in [0, 1] or [0, 255]; "
                        f"got {a.dtype}")
    lo, hi = a.min(), a.max()
    if a.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{source}: 'images' holds NaN or infinite values")
    if lo < 0 or hi > 255:
        raise DataError(f"{source}: 'images' values span [{lo:g}, {hi:g}]; they must lie in [0, 1] or [0, 255]")
    scale = 255.0 if (a.dtype.kind == "f" and hi <= 1.0) else 1.0
    out = np.empty(a.shape, dtype=np.uint8)
    for s in range(0, len(a), 1024):
        out[s:s + 1024] = np.rint(a[s:s + 1024].astype(np.float64) * scale)
    return out


def _nchw(a: np.ndarray, source: str) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        first, last = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
        if first and not last:
            return a
        if last and not first:
            return a.transpose(0, 3, 1, 2)
    raise DataError(f"{source}: 'images' has shape {a.shape}; expected (n, h, w), (n, h, w, c) or (n, c, h, w) "
                    f"with c = 1 or 3 and sides of at least 4")


def _npz_labels(z, source: str, n: int) -> tuple[np.ndarray, list[str]]:
    if "labels" not in z.files:
        raise DataError(f"{source}: a labelled .npz needs an array 'labels' beside 'images' (found: "
                        f"{', '.join(z.files)})")
    y = z["labels"]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{source}: 'labels' has shape {y.shape}; expected ({n},), one per image")
    given = None
    if "class_names" in z.files:
        cn = z["class_names"]
        if cn.ndim != 1 or cn.dtype.kind not in "US":
            raise DataError(f"{source}: 'class_names' must be a 1-d array of strings, got {cn.dtype} {cn.shape}")
        given = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in cn.tolist()]
    if y.dtype.kind in "US":  # labels given as names
        names = given or sorted(set(y.tolist()))
        index = {c: i for i, c in enumerate(names)}
        missing = sorted(set(y.tolist()) - set(index))
        if missing:
            raise DataError(f"{source}: label {missing[0]!r} is not in 'class_names'")
        labels = np.array([index[c] for c in y.tolist()], dtype=np.int64)
    elif y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        y = y.astype(np.int64)
        if given is not None:
            if y.min() < 0 or y.max() >= len(given):
                raise DataError(f"{source}: labels span [{y.min()}, {y.max()}] but there are {len(given)} "
                                f"class names; labels must lie in [0, {len(given) - 1}]")
            labels, names = y, given
        else:  # the distinct values, in order, become classes 0..K-1 named by their value
            values, labels = np.unique(y, return_inverse=True)
            labels, names = labels.astype(np.int64), [str(v) for v in values]
    else:
        raise DataError(f"{source}: 'labels' must be integers or strings, got {y.dtype}")
    if len(set(labels.tolist())) < 2:
        raise DataError(f"{source}: a labelled set needs at least 2 classes; the labels hold "
                        f"{len(set(labels.tolist()))}")
    return labels, names


def _read_npz(f, source, labelled, channels, size, limits) -> RawData:
    try:
        with zipfile.ZipFile(f) as zf:
            _check_directory(zf, source, limits)
    except zipfile.BadZipFile as e:
        raise DataError(f"{source}: not a readable .npz file ({e})") from None
    f.seek(0)
    _check_target(source, channels, size, limits)
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"{source}: no array 'images' (found: {', '.join(z.files) or 'none'})")
            a = z["images"]
            labels, names = (_npz_labels(z, source, len(a)) if labelled
                             else (np.full(len(a), -1, dtype=np.int64), []))
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{source}: holds pickled object arrays, which are never loaded; save plain "
                            f"numeric arrays") from None
        raise DataError(f"{source}: not a readable .npz file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{source}: not a readable .npz file ({e})") from None
    if len(a) == 0:
        raise DataError(f"{source}: 'images' is empty")
    a = _nchw(a, source)
    if min(a.shape[2:]) < limits.min_side:
        raise DataError(f"{source}: the images are {a.shape[3]}x{a.shape[2]} px; they must be at least "
                        f"{limits.min_side}x{limits.min_side}")
    if a.shape[2] * a.shape[3] > limits.max_image_pixels:
        raise DataError(f"{source}: the images have {a.shape[2] * a.shape[3]:,} pixels each, over the limit of "
                        f"{limits.max_image_pixels:,}")
    n, c, h, w = a.shape
    need = n * (channels or c) * (size or h) * (size or w)
    if need > limits.max_total_uncompressed:
        raise DataError(f"{source}: the converted images would take {human_bytes(need)}; the limit is "
                        f"{human_bytes(limits.max_total_uncompressed)}")
    images = convert_array(_to_uint8(a, source), channels, size)
    return RawData(np.ascontiguousarray(images), labels, names, None, source)


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 (n, 3, h, w) -> (n, 1, h, w) grey, exactly as PIL's convert("L") (ITU-R 601-2, fixed point)."""
    r, g, b = (rgb[:, i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def convert_array(images: np.ndarray, channels: Optional[int], size: Optional[int]) -> np.ndarray:
    """uint8 (n, c, h, w) to the target channels and square side, with the same conversions as image files."""
    from PIL import Image

    if channels == 1 and images.shape[1] == 3:
        images = luma(images)
    elif channels == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    if size is None or images.shape[2:] == (size, size):
        return images
    out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
    for i, a in enumerate(images):
        im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        r = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = r[None] if r.ndim == 2 else r.transpose(2, 0, 1)
    return out


def read_archive(name: str, data: Union[bytes, str, os.PathLike], labelled: bool, channels: Optional[int] = None,
                 size: Optional[int] = None, limits: Limits = Limits()) -> RawData:
    """Images from an archive named `name` (its extension decides): .zip of image files (class folders when
    labelled, possibly under one top-level folder) or .npz with arrays 'images' [, 'labels', 'class_names']."""
    source = PurePosixPath(str(name).replace("\\", "/")).name or str(name)
    ext = source.lower().rsplit(".", 1)[-1] if "." in source else ""
    if ext not in ("zip", "npz"):
        raise DataError(f"{source}: unsupported file type; use a .zip of images or an .npz of arrays")
    f = _archive_source(data, source, limits)
    with f:
        reader = _read_zip if ext == "zip" else _read_npz
        return reader(f, source, labelled, channels, size, limits)


def read_user_images(data, filename: Optional[str] = None, labelled: bool = True, size: Optional[int] = None) -> RawData:
    """The user's images from a folder (class sub-folders when labelled) or a .zip / .npz (a path or its bytes)."""
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        return read_image_folder(data, labelled=labelled, size=size)
    return read_archive(filename or str(data), data, labelled=labelled, size=size)
