"""Open-set recognition protocols: which classes are known, and where the unknowns come from, in each split.

Two ways to choose the known classes (`Spec.osr_splits`):

- "random" (the default): split i draws K of the dataset's N classes with seed i (`known_classes_for`);
- "literature": the fixed known-class lists the OSR literature has shared since Neal et al. 2018, used by
  Chen et al. (RPL/ARPL) and Vaze et al. 2022, so that numbers compare with the papers'. The seed picks the
  published split (seed i -> split i, which the protocol's split i uses) and still seeds the training.

and two protocols (`Spec.osr_protocol`):

- "standard": K known classes of one dataset; the unknowns are its other classes (test images of those classes);
- "cifar+10" / "cifar+50" (Neal et al. 2018): 4 CIFAR-10 classes are known (training and closed-set test on
  CIFAR-10's official splits); the unknowns are CIFAR-100 test images of 10 or 50 other classes. In "random" mode
  the known classes are CIFAR-10's four non-animal classes (airplane, automobile, ship, truck) and the unknown
  classes are drawn per split (by the seed) from CIFAR-100's animal classes, as the paper describes.

The published lists were copied from iCGY96/ARPL `split.py` (`splits_2020`, commit 4bc4fae), identical to
sgvaze/osr_closed_set_all_you_need `data/open_set_splits/osr_splits.py`; class indices are torchvision's (MNIST and
SVHN digits, CIFAR label order, TinyImageNet wnids sorted as ImageFolder sorts them). Vaze et al. take split i as
list i (ARPL's `osr.py` walks the same lists from the last); we follow Vaze et al.

Note that the shared CIFAR+N lists do not follow the paper's description: their known classes (e.g. [4, 7, 9, 1]:
deer, horse, truck, automobile) include animals, and their unknown CIFAR-100 classes include objects and scenes
(e.g. couch, bottle, sea). "literature" mode reproduces the lists as published, which is what the later papers'
numbers were measured on; "random" mode follows the paper's definition.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..spec import Spec

# iCGY96/ARPL split.py (splits_2020) == sgvaze/osr_closed_set_all_you_need data/open_set_splits/osr_splits.py
# (keys there: mnist, svhn, cifar10 / cifar-10-10, cifar100 / cifar-10-100, cifar100-10 / cifar-10-100-10,
# cifar100-50 / cifar-10-100-50, tiny_imagenet / tinyimagenet)
LITERATURE_SPLITS: dict[str, list[list[int]]] = {
    "mnist": [
        [2, 4, 5, 9, 8, 3],
        [3, 2, 6, 9, 4, 0],
        [5, 8, 3, 2, 4, 6],
        [3, 7, 8, 4, 0, 5],
        [6, 3, 4, 9, 8, 2],
    ],
    "svhn": [
        [5, 3, 7, 2, 8, 6],
        [3, 8, 7, 6, 2, 5],
        [8, 9, 4, 7, 2, 1],
        [3, 8, 2, 5, 0, 6],
        [4, 9, 2, 7, 1, 0],
    ],
    "cifar10": [
        [0, 6, 4, 9, 1, 7],
        [7, 6, 4, 9, 0, 1],
        [1, 5, 7, 3, 9, 4],
        [8, 6, 1, 9, 0, 7],
        [2, 4, 1, 7, 9, 6],
    ],
    # CIFAR+N: the 4 known CIFAR-10 classes of each split
    "cifar+known": [
        [4, 7, 9, 1],
        [6, 7, 1, 9],
        [9, 6, 1, 7],
        [6, 4, 9, 1],
        [1, 0, 9, 8],
    ],
    # CIFAR+10 and CIFAR+50: the unknown CIFAR-100 classes of each split
    "cifar+10": [
        [30, 25, 1, 9, 8, 0, 46, 52, 49, 71],
        [41, 9, 49, 40, 73, 60, 48, 30, 95, 71],
        [8, 9, 49, 40, 73, 60, 48, 95, 30, 71],
        [95, 60, 30, 73, 46, 49, 68, 99, 8, 71],
        [33, 2, 3, 97, 46, 21, 64, 63, 88, 43],
    ],
    "cifar+50": [
        [27, 94, 29, 77, 88, 26, 69, 48, 75, 5, 59, 93, 39, 57, 45, 40, 78, 20, 98, 47, 66, 70, 91, 76, 41, 83, 99, 32,
         53, 72, 2, 95, 21, 73, 84, 68, 35, 11, 55, 60, 30, 25, 1, 9, 8, 0, 46, 52, 49, 71],
        [65, 97, 86, 24, 45, 67, 2, 3, 91, 98, 79, 29, 62, 82, 33, 76, 0, 35, 5, 16, 54, 11, 99, 52, 85, 1, 25, 66, 28,
         84, 23, 56, 75, 46, 21, 72, 55, 68, 8, 69, 41, 9, 49, 40, 73, 60, 48, 30, 95, 71],
        [20, 83, 65, 97, 94, 2, 93, 16, 67, 29, 62, 33, 24, 98, 5, 86, 35, 54, 0, 91, 52, 66, 85, 84, 56, 11, 1, 76, 25,
         55, 21, 99, 72, 41, 23, 75, 28, 68, 69, 46, 8, 9, 49, 40, 73, 60, 48, 95, 30, 71],
        [92, 82, 77, 64, 5, 33, 62, 56, 70, 0, 20, 28, 67, 14, 84, 53, 91, 29, 85, 2, 52, 83, 75, 35, 11, 21, 72, 98,
         55, 1, 41, 76, 25, 66, 69, 9, 48, 54, 40, 23, 95, 60, 30, 73, 46, 49, 68, 99, 8, 71],
        [47, 6, 19, 0, 62, 93, 59, 65, 54, 70, 34, 55, 23, 38, 72, 76, 53, 31, 78, 96, 77, 27, 92, 18, 82, 50, 98, 32,
         1, 75, 83, 4, 51, 35, 80, 11, 74, 66, 36, 42, 33, 2, 3, 97, 46, 21, 64, 63, 88, 43],
    ],
    "tinyimagenet": [
        [108, 147, 17, 58, 193, 123, 72, 144, 75, 167, 134, 14, 81, 171, 44, 197, 152, 66, 1, 133],
        [198, 161, 91, 59, 57, 134, 61, 184, 90, 35, 29, 23, 199, 38, 133, 19, 186, 18, 85, 67],
        [177, 0, 119, 26, 78, 80, 191, 46, 134, 92, 31, 152, 27, 60, 114, 50, 51, 133, 162, 93],
        [98, 36, 158, 177, 189, 157, 170, 191, 82, 196, 138, 166, 43, 13, 152, 11, 75, 174, 193, 190],
        [95, 6, 145, 153, 0, 143, 31, 23, 189, 81, 20, 21, 89, 26, 36, 170, 102, 177, 108, 169],
    ],
}
# the registered datasets the published lists index (the MNIST sample keeps MNIST's digit labels)
LITERATURE_LISTS = {"mnist": "mnist", "mnist-sample": "mnist", "svhn": "svhn", "cifar10": "cifar10",
                    "tinyimagenet": "tinyimagenet"}

# Neal et al.'s code (lwneal/counterfactual-open-set src/datasets/download_cifar10.py, is_animal): CIFAR-10's
# animals are bird, cat, deer, dog, frog, horse; the other four are CIFAR+N's known classes.
CIFAR10_NON_ANIMALS = (0, 1, 8, 9)  # airplane, automobile, ship, truck
# ... and (src/datasets/download_cifar100.py, ANIMAL_CATEGORIES) CIFAR-100's animal classes are those of these ten
# superclasses: 50 fine classes, exactly CIFAR+50's unknowns
CIFAR100_ANIMAL_SUPERCLASSES = (
    "aquatic_mammals", "fish", "insects", "large_carnivores", "large_omnivores_and_herbivores", "medium_mammals",
    "non-insect_invertebrates", "people", "reptiles", "small_mammals",
)
CIFAR_PLUS = {"cifar+10": 10, "cifar+50": 50}
PROTOCOL_TITLES = {"standard": "K known classes of the dataset, its other classes unknown",
                   "cifar+10": "CIFAR+10: 4 CIFAR-10 classes known, 10 CIFAR-100 animal classes unknown",
                   "cifar+50": "CIFAR+50: 4 CIFAR-10 classes known, 50 CIFAR-100 animal classes unknown"}
# the survey's Table 8 protocol on TinyImageNet: 20 known classes, 10 trials
DEFAULT_KNOWN = {"tinyimagenet": 20}
DEFAULT_RANDOM_SPLITS = {"tinyimagenet": 10}


def known_classes_for(seed: int, n_classes: int, k: int) -> list[int]:
    """The K known classes of a random OSR split, drawn by `seed` (sorted)."""
    if not 2 <= k <= n_classes - 1:
        raise ValueError(f"known classes K must be in 2..{n_classes - 1} for a dataset with {n_classes} classes, got {k}")
    rng = np.random.default_rng([seed, 104729])
    return sorted(int(c) for c in rng.choice(n_classes, size=k, replace=False))


def literature_key(dataset: str, protocol: str = "standard") -> Optional[str]:
    """The LITERATURE_SPLITS list of known classes for a dataset and protocol; None when none is published."""
    if protocol in CIFAR_PLUS:
        return "cifar+known" if dataset == "cifar10" else None
    return LITERATURE_LISTS.get(dataset)


def has_literature_splits(dataset: str, protocol: str = "standard") -> bool:
    return literature_key(dataset, protocol) is not None


def default_known(dataset: str, protocol: str = "standard") -> int:
    """K the CLI and the Experiment page start from: 4 in CIFAR+N, 20 on TinyImageNet (Table 8), else 6."""
    return 4 if protocol in CIFAR_PLUS else DEFAULT_KNOWN.get(dataset, 6)


def default_splits(dataset: str, mode: str = "random", protocol: str = "standard") -> int:
    """How many splits a protocol runs by default: every published list in literature mode, 10 trials on
    TinyImageNet (the survey's Table 8), else 5."""
    key = literature_key(dataset, protocol)
    if mode == "literature" and key is not None:
        return len(LITERATURE_SPLITS[key])
    return DEFAULT_RANDOM_SPLITS.get(dataset, 5)


def splits_left(spec: Spec) -> Optional[int]:
    """In literature mode, how many published splits there are from the spec's seed on (seed i picks split i), at
    least 0; None in random mode (any number of seeded splits). What a page offering "N splits" caps N at."""
    key = literature_key(spec.dataset, spec.osr_protocol)
    if spec.osr_splits != "literature" or key is None:
        return None
    return max(0, len(LITERATURE_SPLITS[key]) - spec.seed)


def _literature(key: str, seed: int, what: str) -> list[int]:
    lists = LITERATURE_SPLITS[key]
    if not 0 <= seed < len(lists):
        raise ValueError(f"the literature shares {len(lists)} splits for {what} (seeds 0..{len(lists) - 1} pick "
                         f"them); seed {seed} has none: use a lower seed or fewer splits, or random splits")
    return sorted(lists[seed])


def check_protocol(spec: Spec) -> None:
    """Refuse a protocol that does not apply to the spec's dataset, in one sentence."""
    if spec.osr_protocol in CIFAR_PLUS and spec.dataset != "cifar10":
        raise ValueError(f"the {spec.osr_protocol.upper()} protocol trains on CIFAR-10's known classes: choose the "
                         f"dataset cifar10, not {spec.dataset}")
    if spec.osr_splits == "literature" and literature_key(spec.dataset, spec.osr_protocol) is None:
        have = ", ".join(sorted(LITERATURE_LISTS))
        raise ValueError(f"the OSR literature shares no fixed splits for {spec.dataset} (it does for {have}); "
                         f"use random splits")


def known_classes_of(spec: Spec, n_classes: int) -> list[int]:
    """The known classes (sorted indices of the spec's dataset) of the spec's OSR split; reads no file."""
    check_protocol(spec)
    if spec.osr_splits == "literature":
        key = literature_key(spec.dataset, spec.osr_protocol)
        known = _literature(key, spec.seed, spec.dataset if spec.osr_protocol == "standard" else spec.osr_protocol)
        if len(known) != spec.known_classes:
            raise ValueError(f"the published splits of {spec.dataset} have {len(known)} known classes; "
                             f"set K = {len(known)}, not {spec.known_classes}")
        if max(known) >= n_classes:
            raise ValueError(f"the published splits of {spec.dataset} index {max(known) + 1} classes or more; "
                             f"this dataset has {n_classes}")
        return known
    if spec.osr_protocol in CIFAR_PLUS:
        return list(CIFAR10_NON_ANIMALS)
    return known_classes_for(spec.seed, n_classes, spec.known_classes)


def unknown_classes_of(spec: Spec, n_classes: int) -> tuple[str, list[int]]:
    """(dataset the unknowns come from, their sorted classes) of the spec's OSR split. The standard protocol's
    unknowns are the dataset's other classes; CIFAR+N's are CIFAR-100 classes (random mode reads CIFAR-100's
    superclass labels once to know its animal classes)."""
    known = known_classes_of(spec, n_classes)
    if spec.osr_protocol not in CIFAR_PLUS:
        return spec.dataset, [c for c in range(n_classes) if c not in known]
    if spec.osr_splits == "literature":
        return "cifar100", _literature(spec.osr_protocol, spec.seed, spec.osr_protocol)
    n = CIFAR_PLUS[spec.osr_protocol]
    animals = cifar100_animal_classes()
    if len(animals) < n:
        raise ValueError(f"CIFAR-100 has {len(animals)} animal classes here; {spec.osr_protocol} needs {n}")
    rng = np.random.default_rng([spec.seed, 104729, n])
    return "cifar100", sorted(int(c) for c in rng.choice(animals, size=n, replace=False))


_ANIMALS: dict[tuple, list[int]] = {}
_ANIMALS_LOCK = threading.Lock()


def cifar100_animal_classes(root: Path | str | None = None) -> list[int]:
    """CIFAR-100's fine classes whose superclass is one of CIFAR100_ANIMAL_SUPERCLASSES, from the files' own
    coarse labels (read once per data root and file version; DataError when CIFAR-100 is absent)."""
    from . import sources
    from .datasets import _files_stamp, data_root, get_info

    root = data_root(root)
    info = get_info("cifar100")
    key = (str(root), _files_stamp(info, root))
    with _ANIMALS_LOCK:
        if key in _ANIMALS:
            return list(_ANIMALS[key])
    if not info.found(root):
        raise sources.DataError(f"the CIFAR+N protocols take their unknowns from CIFAR-100, which is "
                                f"{info.status(root)}")
    folder = root / "cifar-100-python"
    names = sources._names(folder / "meta", sources.load_pickle(folder / "meta"), "coarse_label_names")
    test = sources.load_pickle(folder / "test")  # every fine class has test images; both labels are in it
    try:
        fine, coarse = (np.asarray(test[k], np.int64) for k in ("fine_labels", "coarse_labels"))
    except (KeyError, TypeError, ValueError):
        raise sources.DataError(f"{folder / 'test'}: no fine and coarse labels") from None
    wanted = [i for i, name in enumerate(names) if name in CIFAR100_ANIMAL_SUPERCLASSES]
    animals = sorted(int(c) for c in np.unique(fine[np.isin(coarse, wanted)]))
    with _ANIMALS_LOCK:
        _ANIMALS[key] = animals
    return list(animals)


def describe(spec: Spec) -> str:
    """One line for pages and the CLI: the protocol and how its splits are chosen."""
    how = ("the published splits of the OSR literature (Neal et al. 2018; seed i = split i)"
           if spec.osr_splits == "literature" else "random splits drawn by the seed")
    return f"{PROTOCOL_TITLES[spec.osr_protocol]}; {how}"


def fixed_known(dataset: str, mode: str, protocol: str = "standard") -> Optional[int]:
    """K when the protocol fixes it (the published lists' length; 4 in CIFAR+N), else None (the user's choice)."""
    key = literature_key(dataset, protocol)
    if mode == "literature" and key is not None:
        return len(LITERATURE_SPLITS[key][0])
    return 4 if protocol in CIFAR_PLUS else None
