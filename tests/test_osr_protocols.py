"""The OSR literature's protocols (ood_core/data/osr_splits.py): published splits beside seeded random ones,
CIFAR+10 / CIFAR+50, TinyImageNet 20/180, OSR on SVHN, and one read of each dataset per protocol run.

Fixtures write small files in the real formats (CIFAR-10 and CIFAR-100 pickled batches with CIFAR-100's real class
and superclass names, SVHN .mat files, a tiny-imagenet-200 folder of JPEGs) under a temporary data root; no
network. Trainings are one epoch at 8 px: the splits and the bookkeeping are under test, not the models."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ood_core import Spec, TrainConfig, cli, protocols
from ood_core.data import DATASETS, OOD_SETS, DataError, build_benchmark, datasets, load_dataset, sources
from ood_core.data import osr_splits
from ood_core.data.osr_splits import known_classes_for, known_classes_of, unknown_classes_of

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TrainConfig(epochs=1, batch_size=32)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's superclasses and their fine classes (the dataset's published table, https://www.cs.toronto.edu/~kriz/
# cifar.html); fine and coarse labels are the names' positions in alphabetical order, as in the real `meta` file
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(n for names in SUPERCLASSES.values() for n in names)
COARSE = sorted(SUPERCLASSES)
COARSE_OF = {n: COARSE.index(s) for s, names in SUPERCLASSES.items() for n in names}
ANIMAL_SUPER = ["aquatic_mammals", "fish", "insects", "large_carnivores", "large_omnivores_and_herbivores",
                "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals"]
ANIMALS = sorted(FINE.index(n) for s in ANIMAL_SUPER for n in SUPERCLASSES[s])
C10_PER_CLASS_BATCH, C10_TEST = 2, 4  # per class: 2 in each of the 5 train batches, 4 test images
C100_TRAIN, C100_TEST = 4, 3
TIN_CLASSES, TIN_TRAIN, TIN_VAL = 200, 3, 1


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path) -> None:
    """CIFAR-10 batches with the real class names; the red plane of every image holds 20 * its class."""
    r = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"

    def batch(per_class: int) -> dict:
        y = r.permutation(np.repeat(np.arange(10), per_class))
        x = r.integers(0, 256, (len(y), 3, 1024), dtype=np.uint8)
        x[:, 0, :] = 20 * y[:, None]
        return {"labels": y.tolist(), "data": x.reshape(-1, 3072)}

    for f in sources.CIFAR10_TRAIN:
        dump(folder / f, batch(C10_PER_CLASS_BATCH))
    dump(folder / "test_batch", batch(C10_TEST))
    dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES})


def write_cifar100(root: Path) -> None:
    """CIFAR-100 with the real fine and coarse names and labels; the red plane holds the fine label (flat)."""
    r = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    for split, k in (("train", C100_TRAIN), ("test", C100_TEST)):
        y = r.permutation(np.repeat(np.arange(100), k))
        x = r.integers(0, 256, (len(y), 3, 1024), dtype=np.uint8)
        x[:, 0, :] = y[:, None]
        dump(folder / split, {"fine_labels": y.tolist(), "coarse_labels": [COARSE_OF[FINE[c]] for c in y],
                              "data": x.reshape(-1, 3072)})
    dump(folder / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})


def write_svhn(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's two .mat files: X (32, 32, 3, n), y in 1..10 (10 is the digit 0). Returns the per-digit counts."""
    import scipy.io

    r = np.random.default_rng(2)
    counts = {"train": np.arange(3, 13), "test": np.full(10, 2)}  # digit d: 3 + d train images
    for split, per in counts.items():
        digits = r.permutation(np.repeat(np.arange(10), per))
        x = r.integers(0, 256, (32, 32, 3, len(digits)), dtype=np.uint8)
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return counts["train"], counts["test"]


def wnid(i: int) -> str:
    return f"n{9_000_000 - 7 * i:08d}"  # descending with i: the sorted order differs from the writing order


def write_tiny_imagenet(root: Path) -> list[str]:
    """tiny-imagenet-200 as the official zip unpacks: train/<wnid>/images/*.JPEG, val/images/*.JPEG with
    val_annotations.txt, words.txt. Each image is one flat colour whose red value is its class's sorted position
    (JPEG keeps a flat colour almost exactly); class 3's validation image is a greyscale JPEG."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    ids = [wnid(i) for i in range(TIN_CLASSES)]
    order = {w: k for k, w in enumerate(sorted(ids))}
    lines = []
    for w in ids:
        colour = (order[w], 100, 200)
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        for j in range(TIN_TRAIN):
            Image.new("RGB", (64, 64), colour).save(folder / f"{w}_{j}.JPEG", quality=95)
        name = f"val_{order[w]}.JPEG"
        (base / "val" / "images").mkdir(parents=True, exist_ok=True)
        im = Image.new("L", (64, 64), order[w]) if order[w] == 3 else Image.new("RGB", (64, 64), colour)
        im.save(base / "val" / "images" / name, quality=95)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {order[w]}, other name" for w in ids) + "\n")
    return sorted(ids)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with CIFAR-10, CIFAR-100, SVHN and TinyImageNet in their real layouts."""
    root = tmp_path_factory.mktemp("osr-root")
    write_cifar10(root)
    write_cifar100(root)
    svhn = write_svhn(root)
    wnids = write_tiny_imagenet(root)
    return {"path": root, "svhn": svhn, "wnids": wnids}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, root):
    """Every test reads the fixture root; registries are restored afterwards."""
    monkeypatch.setenv("OOD_DATA_ROOT", str(root["path"]))
    saved_ds, saved_ood = dict(DATASETS), dict(OOD_SETS)
    yield
    DATASETS.clear(), DATASETS.update(saved_ds)
    OOD_SETS.clear(), OOD_SETS.update(saved_ood)


def red(bench, split) -> np.ndarray:
    """The red value (0..255) of each image of a split, from its normalised pixels (flat in the fixtures)."""
    return np.rint(bench.to_pixels(split.x)[:, 0].mean(axis=(1, 2)) * 255).astype(int)


def osr(dataset: str, **kw) -> Spec:
    return Spec(setting="osr", dataset=dataset, image_size=8, training=TINY, **kw)


# --- the published lists --------------------------------------------------------------------------------------------

# spot checks copied from iCGY96/ARPL split.py (splits_2020), the same lists as sgvaze/osr_closed_set_all_you_need
# data/open_set_splits/osr_splits.py; split i = list i
@pytest.mark.parametrize("dataset, seed, published", [
    ("mnist", 0, [2, 4, 5, 9, 8, 3]),
    ("mnist-sample", 4, [6, 3, 4, 9, 8, 2]),
    ("svhn", 3, [3, 8, 2, 5, 0, 6]),
    ("cifar10", 2, [1, 5, 7, 3, 9, 4]),
    ("tinyimagenet", 1, [198, 161, 91, 59, 57, 134, 61, 184, 90, 35, 29, 23, 199, 38, 133, 19, 186, 18, 85, 67]),
])
def test_literature_known_classes_are_the_published_lists(dataset, seed, published):
    n = 200 if dataset == "tinyimagenet" else 10
    spec = Spec(setting="osr", dataset=dataset, seed=seed, known_classes=len(published), osr_splits="literature")
    assert known_classes_of(spec, n) == sorted(published)
    assert unknown_classes_of(spec, n) == (dataset, sorted(set(range(n)) - set(published)))


def test_literature_cifar_plus_lists_are_the_published_ones():
    s0 = Spec(setting="osr", dataset="cifar10", known_classes=4, osr_splits="literature", osr_protocol="cifar+10")
    assert known_classes_of(s0, 10) == sorted([4, 7, 9, 1])
    assert unknown_classes_of(s0, 10) == ("cifar100", sorted([30, 25, 1, 9, 8, 0, 46, 52, 49, 71]))
    s4 = s0.replace(seed=4, osr_protocol="cifar+50")
    assert known_classes_of(s4, 10) == sorted([1, 0, 9, 8])
    source, unknown = unknown_classes_of(s4, 10)
    assert source == "cifar100" and len(unknown) == 50 and unknown[:5] == [0, 1, 2, 3, 4] and 96 in unknown
    # the shared lists are not the paper's description: split 0 knows deer and horse, and its unknowns hold a couch
    assert {CIFAR10_NAMES[c] for c in known_classes_of(s0, 10)} == {"automobile", "deer", "horse", "truck"}
    assert "couch" in {FINE[c] for c in unknown_classes_of(s0, 10)[1]}


def test_literature_refusals_are_one_sentence():
    with pytest.raises(ValueError, match="shares 5 splits for cifar10 .* seed 5 has none"):
        known_classes_of(Spec(setting="osr", dataset="cifar10", seed=5, osr_splits="literature"), 10)
    with pytest.raises(ValueError, match="no fixed splits for fashion-mnist .* use random splits"):
        known_classes_of(Spec(setting="osr", dataset="fashion-mnist", osr_splits="literature"), 10)
    with pytest.raises(ValueError, match="published splits of cifar10 have 6 known classes; set K = 6, not 5"):
        known_classes_of(Spec(setting="osr", dataset="cifar10", known_classes=5, osr_splits="literature"), 10)
    with pytest.raises(ValueError, match="protocol trains on CIFAR-10's known classes: choose the dataset cifar10"):
        known_classes_of(Spec(setting="osr", dataset="mnist", known_classes=4, osr_protocol="cifar+10"), 10)
    with pytest.raises(ValueError, match="CIFAR\\+50 protocol has 4 known classes; set K = 4, not 6"):
        Spec(setting="osr", dataset="cifar10", osr_protocol="cifar+50")
    with pytest.raises(ValueError, match="OSR splits must be one of random, literature"):
        Spec(setting="osr", osr_splits="fixed")


def test_a_literature_split_of_cifar10_trains_on_its_known_classes(root):
    bench = build_benchmark(osr("cifar10", seed=3, osr_splits="literature"), ood_sets=())
    known = sorted([8, 6, 1, 9, 0, 7])
    assert bench.meta["known_classes"] == known and bench.class_names == [CIFAR10_NAMES[c] for c in known]
    assert set(red(bench, bench.train) // 20) == set(known) and set(red(bench, bench.test) // 20) == set(known)
    assert set(red(bench, bench.ood["unknown"]) // 20) == {2, 3, 4, 5}
    assert len(bench.ood["unknown"]) == 4 * C10_TEST


# --- seeded random splits: unchanged ----------------------------------------------------------------------------------

def test_random_splits_and_keys_are_those_of_before():
    """Values computed on main before the literature splits existed (commit 567024b)."""
    assert [known_classes_for(s, 10, 6) for s in range(5)] == [
        [0, 2, 3, 5, 8, 9], [1, 4, 5, 6, 8, 9], [2, 3, 5, 6, 8, 9], [2, 3, 5, 6, 7, 9], [0, 2, 4, 5, 7, 8]]
    assert known_classes_of(Spec(setting="osr", seed=2), 10) == [2, 3, 5, 6, 8, 9]
    assert Spec(setting="osr").key() == "f2875dcc2a0822da"
    assert Spec(setting="osr", dataset="cifar10", image_size=32, seed=3).model_key() == "f5e42dab21951138"
    # the new fields join the key only where they are not the defaults, and only in OSR
    lit = Spec(setting="osr", osr_splits="literature")
    assert lit.key() != Spec(setting="osr").key() and lit.replace(setting="ood").key() == Spec().key()


def test_a_link_carries_the_osr_protocol_and_splits():
    spec = Spec(setting="osr", dataset="cifar10", known_classes=4, osr_splits="literature", osr_protocol="cifar+50")
    query = spec.to_query()
    assert query["osr_splits"] == "literature" and query["osr_protocol"] == "cifar+50"
    assert Spec.from_query(query) == spec
    assert "osr_splits" not in Spec(setting="osr").to_query()  # the defaults keep old links as they were


# --- CIFAR+10 / CIFAR+50 ----------------------------------------------------------------------------------------------

def test_cifar_plus_10_knows_the_four_vehicles_and_draws_ten_cifar100_animals_per_split(root):
    spec = osr("cifar10", known_classes=4, osr_protocol="cifar+10")
    bench = build_benchmark(spec, ood_sets=())
    assert bench.meta["known_classes"] == [0, 1, 8, 9]
    assert bench.class_names == ["airplane", "automobile", "ship", "truck"]
    assert set(red(bench, bench.train) // 20) == {0, 1, 8, 9}  # ID: CIFAR-10's official train split, known only
    assert len(bench.test) == 4 * C10_TEST and set(red(bench, bench.test) // 20) == {0, 1, 8, 9}
    unknown = bench.meta["unknown_classes"]
    assert len(unknown) == 10 and set(unknown) <= set(ANIMALS) and bench.meta["unknown_source"] == "cifar100"
    assert bench.meta["unknown_names"] == [FINE[c] for c in unknown]
    # the unknowns are CIFAR-100 *test* images of those classes (the red plane holds the fine label)
    ood = bench.ood["unknown"]
    assert len(ood) == 10 * C100_TEST and sorted(set(red(bench, ood))) == unknown
    assert sorted(set(bench.meta["unknown_original_labels"])) == unknown
    # validation unknowns come from CIFAR-100's train split: a tenth, stratified, so at least one of each class
    assert len(bench.val_ood["unknown"]) == max(int(np.ceil(0.1 * 10 * C100_TRAIN)), 10)
    assert sorted(red(bench, bench.val_ood["unknown"])) == unknown
    other = build_benchmark(spec.replace(seed=1), ood_sets=())
    assert other.meta["unknown_classes"] != unknown and set(other.meta["unknown_classes"]) <= set(ANIMALS)
    assert build_benchmark(spec, ood_sets=()).meta["unknown_classes"] == unknown  # same seed, same draw
    assert bench.fingerprint != load_dataset("cifar10", 8).fingerprint  # CIFAR-100's data join the outputs' key


def test_cifar_plus_50_takes_every_animal_class_of_cifar100(root):
    assert osr_splits.cifar100_animal_classes() == ANIMALS and len(ANIMALS) == 50
    bench = build_benchmark(osr("cifar10", known_classes=4, osr_protocol="cifar+50"), ood_sets=())
    assert bench.meta["unknown_classes"] == ANIMALS and len(bench.ood["unknown"]) == 50 * C100_TEST


def test_cifar_plus_without_cifar100_is_a_clear_error(root, tmp_path, monkeypatch, capsys):
    only10 = tmp_path / "only-cifar10"
    write_cifar10(only10)
    monkeypatch.setenv("OOD_DATA_ROOT", str(only10))
    with pytest.raises(DataError, match="CIFAR\\+N protocols take their unknowns from CIFAR-100, which is not found"):
        build_benchmark(osr("cifar10", known_classes=4, osr_protocol="cifar+10"), ood_sets=())
    rc = cli.main(["run", "--dataset", "cifar10", "--data-root", str(only10), "--setting", "osr", "--osr-protocol",
                   "cifar+50", "--osr-splits", "literature", "--image-size", "8", "--quiet",
                   "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --osr-protocol cifar+50 takes its unknowns from CIFAR-100, which is "
                                      "not found") and "\n" not in err


# --- TinyImageNet 20/180 --------------------------------------------------------------------------------------------

def test_tiny_imagenet_reads_the_official_layout_in_imagefolder_order(root):
    info = DATASETS["tinyimagenet"]
    assert info.found() and info.num_classes == 200 and info.native_size == 64 and info.channels == 3
    data = load_dataset("tinyimagenet", 64)
    assert data.num_classes == TIN_CLASSES and len(data.labels) == TIN_CLASSES * (TIN_TRAIN + TIN_VAL)
    assert data.is_train.sum() == TIN_CLASSES * TIN_TRAIN
    assert data.class_names[:2] == ["thing 0", "thing 1"]  # words.txt, classes in sorted-wnid order
    reds = np.rint(data.pixels[:, 0].mean(axis=(1, 2)) * 255).astype(int)
    assert np.abs(reds - data.labels).max() <= 1  # each image's colour names its class (JPEG: within 1 level)
    grey = data.pixels[~data.is_train][data.labels[~data.is_train] == 3][0]
    assert np.allclose(grey[0], grey[1]) and np.allclose(grey[1], grey[2])  # a greyscale JPEG became RGB


def test_tiny_imagenet_osr_defaults_to_20_known_over_10_trials_and_takes_the_published_splits(root):
    args = cli.build_parser().parse_args(["run", "--dataset", "tinyimagenet", "--setting", "osr"])
    cli.check_options(args)
    assert (args.known, args.splits) == (20, 10)
    args = cli.build_parser().parse_args(["run", "--dataset", "tinyimagenet", "--setting", "osr", "--osr-splits",
                                          "literature"])
    cli.check_options(args)
    assert (args.known, args.splits) == (20, 5)
    bench = build_benchmark(osr("tinyimagenet", known_classes=20, osr_splits="literature", seed=0), ood_sets=())
    published = [108, 147, 17, 58, 193, 123, 72, 144, 75, 167, 134, 14, 81, 171, 44, 197, 152, 66, 1, 133]
    assert bench.meta["known_classes"] == sorted(published)
    assert len(bench.ood["unknown"]) == 180 * TIN_VAL  # the other 180 classes' validation images
    assert len(bench.test) == 20 * TIN_VAL and len(bench.train) + len(bench.val) == 20 * TIN_TRAIN


def test_tiny_imagenet_missing_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_DATA_ROOT", str(tmp_path))
    assert not DATASETS["tinyimagenet"].found()
    with pytest.raises(DataError, match="tiny-imagenet-200/train"):
        load_dataset("tinyimagenet", 32)


# --- SVHN -------------------------------------------------------------------------------------------------------------

def test_osr_on_svhn_keeps_the_official_splits_and_the_digit_zero(root):
    train_counts, test_counts = root["svhn"]
    data = load_dataset("svhn", 8)
    assert data.num_classes == 10 and DATASETS["svhn"].num_classes == 10
    assert np.bincount(data.labels[data.is_train], minlength=10).tolist() == train_counts.tolist()
    assert np.bincount(data.labels[~data.is_train], minlength=10).tolist() == test_counts.tolist()
    bench = build_benchmark(osr("svhn", seed=0, osr_splits="literature"), ood_sets=())
    assert bench.meta["known_classes"] == [2, 3, 5, 6, 7, 8]  # published split 0: [5, 3, 7, 2, 8, 6]
    assert sorted(set(bench.meta["unknown_original_labels"])) == [0, 1, 4, 9]  # 10 on disk is the digit 0
    assert len(bench.test) == 6 * 2 and len(bench.ood["unknown"]) == 4 * 2
    assert len(bench.train) + len(bench.val) == sum(train_counts[[2, 3, 5, 6, 7, 8]])


# --- one read per dataset across the splits ------------------------------------------------------------------------

def test_a_cifar_plus_protocol_reads_each_dataset_once_across_its_splits(root, cache_dir, monkeypatch):
    reads = {"cifar10": 0, "cifar100": 0}

    def counting(name, fn):
        def read(r):
            reads[name] += 1
            return fn(r)
        return read

    monkeypatch.setattr(sources, "read_cifar10", counting("cifar10", sources.read_cifar10))
    monkeypatch.setattr(sources, "read_cifar100", counting("cifar100", sources.read_cifar100))
    with datasets._LOCK:
        datasets._LOADED.clear()
    base = osr("cifar10", known_classes=4, osr_protocol="cifar+10")
    res = protocols.run_osr(base, splits=3, detectors=["msp"], cache_dir=cache_dir, device="cpu")
    assert len(res.accuracies) == 3 and reads == {"cifar10": 1, "cifar100": 1}
    assert len({tuple(r["known_classes"]) for r in res.rows}) == 1  # the four vehicles in every split


# --- the CLI end to end -----------------------------------------------------------------------------------------------

def test_cli_runs_cifar_plus_10_on_the_literature_splits(root, tmp_path, cache_dir, capsys):
    out = tmp_path / "osr.json"
    rc = cli.main(["run", "--dataset", "cifar10", "--setting", "osr", "--osr-protocol", "cifar+10", "--osr-splits",
                   "literature", "--splits", "2", "--epochs", "1", "--image-size", "8", "--detectors", "msp",
                   "--quiet", "--cache-dir", str(cache_dir), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "CIFAR+10: 4 CIFAR-10 classes known, 10 CIFAR-100 animal classes unknown; the published splits" in text
    assert "OSR on cifar10: 4 known classes, 2 split(s)" in text
    doc = json.loads(out.read_text())
    assert doc["spec"]["osr_protocol"] == "cifar+10" and doc["spec"]["osr_splits"] == "literature"
    by_split = {r["split"]: r["known_classes"] for r in doc["results"]}
    assert by_split == {0: [1, 4, 7, 9], 1: [1, 6, 7, 9]}  # published [4, 7, 9, 1] and [6, 7, 1, 9]


@pytest.mark.parametrize("argv, message", [
    (["--setting", "ood", "--osr-splits", "literature"], "--osr-splits does not apply to --setting ood"),
    (["--setting", "osr", "--osr-protocol", "cifar+10", "--known", "6"], "protocol has 4 known classes"),
    (["--setting", "osr", "--osr-splits", "literature", "--splits", "6"], "shares 5 splits for cifar10"),
])
def test_cli_refuses_bad_osr_options_in_one_line_before_training(argv, message, tmp_path, capsys):
    rc = cli.main(["run", "--dataset", "cifar10", "--image-size", "8", "--quiet", "--cache-dir",
                   str(tmp_path / "cache"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err
    assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing was trained


def test_splits_left_counts_the_published_splits_from_the_seed():
    """Literature mode: seed i picks published split i, so from seed s there are len(lists) - s left (MNIST and
    CIFAR+10 publish 5); random mode has no limit."""
    assert osr_splits.splits_left(Spec(dataset="mnist-sample", setting="osr", osr_splits="literature")) == 5
    assert osr_splits.splits_left(Spec(dataset="mnist-sample", setting="osr", osr_splits="literature", seed=3)) == 2
    assert osr_splits.splits_left(Spec(dataset="mnist-sample", setting="osr", osr_splits="literature", seed=9)) == 0
    assert osr_splits.splits_left(Spec(dataset="mnist-sample", setting="osr")) is None


def test_the_setting_diagram_draws_cifar_plus_unknowns_as_another_dataset():
    """CIFAR+N: the unknowns are CIFAR-100 classes, so CIFAR-10's other classes are not used (grey at test too) and
    the extra tile at test is the unknowns (red, named), not "other data"."""
    from ood_core import figures

    def fill(fig, x0, y0):
        return next(s.fillcolor for s in fig.layout.shapes if s.x0 == x0 and s.y0 == y0)

    known = [0, 1, 8, 9]
    plus = figures.setting_diagram("osr", 10, known=known, external_unknowns="10 CIFAR-100 classes")
    plain = figures.setting_diagram("osr", 10, known=known)
    red, grey = "#d62728", "#eeeeee"
    assert fill(plain, 2, 0) == red and fill(plus, 2, 0) == grey  # class 2 at test
    assert fill(plus, 0, 0) == fill(plain, 0, 0) != grey  # a known class is known in both
    assert fill(plus, 10.3, 0) == red and fill(plain, 10.3, 0) != red  # the extra tile at test
    texts = [a.text for a in plus.layout.annotations]
    assert "10 CIFAR-100 classes" in texts and "other data" not in texts
    assert any("CIFAR-100" in (t.name or "") for t in plus.data)
