"""TinyImageNet (Le & Yang 2015; 200 ImageNet classes at 64x64 px) read from its own folder under the data root.

The layout is the one the official zip unpacks to, `DATA_ROOT/tiny-imagenet-200/`:

    train/<wnid>/images/<wnid>_<i>.JPEG      500 per class: the official train split
    val/images/val_<i>.JPEG                  10,000 images, 50 per class: the official test split here
    val/val_annotations.txt                  "<file>\\t<wnid>\\t<box>" per validation image
    words.txt                                optional: "<wnid>\\t<names>", for readable class names

Validation images already moved into class folders (val/images/<wnid>/ or val/<wnid>/images/, as Vaze et al.'s
`create_val_img_folder` and other scripts do) are found too. The test/ folder has no labels; the natural OOD set
"tinyimagenet" reads it (registry.FOLDER_SETS). Classes are the wnids sorted, the order of torchvision's
ImageFolder, which the OSR literature's TinyImageNet splits index (osr_splits.LITERATURE_SPLITS).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .archives import DataError, RawData

FOLDER = "tiny-imagenet-200"
SIDE = 64
MAX_PIXELS = 4096 * 4096  # a larger header is refused before decoding (decompression bombs)


def expected_files(root: Path | str) -> list[Path]:
    """What must exist under the data root: the train folder and the validation annotations."""
    base = Path(root) / FOLDER
    return [base / "train", base / "val" / "val_annotations.txt"]


def is_present(root: Path | str) -> bool:
    train, annotations = expected_files(root)
    return train.is_dir() and annotations.is_file()


def _class_names(base: Path, wnids: list[str]) -> list[str]:
    """The first name words.txt gives each wnid ("goldfish, Carassius auratus" -> "goldfish"), else the wnid."""
    words: dict[str, str] = {}
    path = base / "words.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            if text:
                words[wnid.strip()] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def _decode(path: Path) -> np.ndarray:
    """One image as uint8 (3, 64, 64): greyscale JPEGs (TinyImageNet has some) become RGB; another size is resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=("JPEG", "PNG")) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise DataError(f"{path}: {im.size[0]}x{im.size[1]} px is over the limit of {MAX_PIXELS:,} pixels")
            im = im.convert("RGB")
            if im.size != (SIDE, SIDE):
                im = im.resize((SIDE, SIDE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: could not be read as a JPEG or PNG image ({e})") from None


def _train_files(train: Path, wnid: str) -> list[Path]:
    folder = train / wnid / "images"
    folder = folder if folder.is_dir() else train / wnid
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def _val_file(val: Path, name: str, wnid: str) -> Path:
    for p in (val / "images" / name, val / "images" / wnid / name, val / wnid / "images" / name, val / wnid / name):
        if p.is_file():
            return p
    raise DataError(f"{val / 'images' / name}: listed in val_annotations.txt but not found (nor in a folder {wnid}/)")


def read_tiny_imagenet(root: Path | str) -> RawData:
    """TinyImageNet's train split (official train) then its validation split (the test split here), uint8
    (n, 3, 64, 64), labels = positions of the wnids sorted. DataError naming the expected paths when absent."""
    base = Path(root) / FOLDER
    if not is_present(root):
        raise DataError(f"TinyImageNet not found: put the folder at {base} (with train/<wnid>/images/ and "
                        f"val/val_annotations.txt, as the official zip unpacks)")
    train, val = base / "train", base / "val"
    wnids = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(wnids) < 2:
        raise DataError(f"{train}: expected one folder per class (200 wnids), found {len(wnids)}")
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for w in wnids:
        got = _train_files(train, w)
        files += got
        labels += [index[w]] * len(got)
    n_train = len(files)
    for line in (val / "val_annotations.txt").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip():
            continue
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DataError(f"{val / 'val_annotations.txt'}: {name} is of class {wnid}, which has no train folder")
        files.append(_val_file(val, name, wnid))
        labels.append(index[wnid])
    if n_train == 0 or len(files) == n_train:
        raise DataError(f"{base}: found {n_train} training and {len(files) - n_train} validation images; both are "
                        f"needed")
    images = np.empty((len(files), 3, SIDE, SIDE), np.uint8)
    # Pillow decodes JPEGs outside the GIL: threads use every core on the 110,000 files
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(_decode, files)):
            images[i] = image
    return RawData(images, np.asarray(labels, np.int64), _class_names(base, wnids),
                   np.arange(len(files)) < n_train, str(base))
