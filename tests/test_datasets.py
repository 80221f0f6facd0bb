"""Real datasets in the library (ood_core/data/datasets.py, registry.py, benchmark.py, the CLI's data options):
known answers on small files written in the real layouts (idx, CIFAR pickles, npz) under a temporary data root.
No network: nothing here fetches. Trained weights are never compared; only splits, shapes, values and keys."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ood_core import Spec, TrainConfig, cli
from ood_core.data import DATASETS, OOD_SETS, build_benchmark, datasets, load_dataset, registry, sources
from ood_core.data.benchmark import channel_stats, known_classes_for, split_indices, subsample_per_class
from ood_core.data.datasets import fingerprint, register_user_dataset
from ood_core.data.sources import DataError, RawData
from ood_core.models.checkpoint import checkpoint_path, trained_key

pytestmark = pytest.mark.usefixtures("one_thread")

# the fixture data root: MNIST (grey 12 px, unequal classes), CIFAR-10 (per-channel-distinct train pixels, test
# images each one flat colour), CIFAR-100 (every class present, its index in the red plane)
MNIST_SIDE = 12
MNIST_TRAIN = np.array([20, 21, 22, 23, 24, 25, 26, 27, 28, 29])  # images per class in the official train split
MNIST_TEST = np.array([3, 4, 3, 4, 3, 4, 3, 4, 3, 4])
CIFAR10_PER_BATCH = 24
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [40, 200, 90], [250, 20, 160]], np.uint8)
LUMA = PALETTE.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
C100_TRAIN, C100_TEST = 10, 2


# --- writers of the real layouts (as in tests/test_sources.py) --------------------------------------------------------

def write_idx(path: Path, arr: np.ndarray) -> None:
    """An idx file of unsigned bytes, gzipped (read here, not through torchvision)."""
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))


def write_mnist(root: Path, seed: int = 0, train=MNIST_TRAIN, test=MNIST_TEST, side=MNIST_SIDE):
    """MNIST's four idx files under root/MNIST/raw; labels interleaved (not sorted), pixels random. Returns x, y."""
    r = np.random.default_rng(seed)
    ytr, yte = (r.permutation(np.repeat(np.arange(10), counts)) for counts in (train, test))
    xtr = r.integers(0, 256, (len(ytr), side, side), dtype=np.uint8)
    xte = r.integers(0, 256, (len(yte), side, side), dtype=np.uint8)
    for name, arr in zip(sources.IDX_FILES, (xtr, ytr, xte, yte)):
        write_idx(root / "MNIST" / "raw" / name, arr)
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte]).astype(np.int64), len(ytr)


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, seed: int = 0):
    """CIFAR-10 batches: train planes R in 0..99, G in 100..255, B in 0..255 (per-channel statistics differ from
    the global ones); test images each one flat colour of PALETTE. Returns train images (n, 3, 32, 32), labels."""
    r = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    xs = []
    for f in sources.CIFAR10_TRAIN:
        planes = [r.integers(lo, hi, (CIFAR10_PER_BATCH, 1024), dtype=np.uint8)
                  for lo, hi in ((0, 100), (100, 256), (0, 256))]
        x = np.concatenate(planes, axis=1)
        dump(folder / f, {"labels": [i % 10 for i in range(CIFAR10_PER_BATCH)], "data": x})
        xs.append(x)
    colours = PALETTE[np.arange(CIFAR10_PER_BATCH) % len(PALETTE)]
    test = np.repeat(colours, 1024, axis=1).astype(np.uint8)  # (n, 3072): 1024 R, then G, then B values
    dump(folder / "test_batch", {"labels": [i % 10 for i in range(CIFAR10_PER_BATCH)], "data": test})
    dump(folder / "batches.meta", {"label_names": [f"k{i}" for i in range(10)]})
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.tile(np.arange(CIFAR10_PER_BATCH) % 10, 5)


def write_cifar100(root: Path, seed: int = 0) -> None:
    """CIFAR-100 with C100_TRAIN + C100_TEST images per fine class; the red plane holds the class index (flat)."""
    r = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    for split, k in (("train", C100_TRAIN), ("test", C100_TEST)):
        y = r.permutation(np.repeat(np.arange(100), k))
        x = r.integers(0, 256, (len(y), 3, 1024), dtype=np.uint8)
        x[:, 0, :] = y[:, None]
        dump(folder / split, {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                              "data": x.reshape(-1, 3072)})
    dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                           "coarse_label_names": [f"s{i}" for i in range(20)]})


def write_npz(path: Path, images: np.ndarray, labels=None) -> Path:
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(path, **arrays)
    return path


def three_class_images(per_class=(12, 14, 10), side=8, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Grey images whose top-left pixel is 40 * (class + 1): the class can be read back from any split."""
    r = np.random.default_rng(seed)
    y = r.permutation(np.repeat(np.arange(len(per_class)), per_class)).astype(np.int64)
    x = r.integers(0, 256, (len(y), 1, side, side), dtype=np.uint8)
    x[:, 0, 0, 0] = 40 * (y + 1)
    return x, y


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One data root with MNIST, CIFAR-10 and CIFAR-100 in torchvision's layouts."""
    root = tmp_path_factory.mktemp("data-root")
    mnist = write_mnist(root)
    cifar = write_cifar10(root)
    write_cifar100(root)
    return {"path": root, "mnist": mnist, "cifar10": cifar}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Every test reads an empty data root unless it points elsewhere; registries and $OOD_DATA_ROOT (which the CLI
    sets) are restored afterwards, so datasets and OOD sets registered here never leak into other tests."""
    empty = tmp_path / "empty-root"
    empty.mkdir()
    monkeypatch.setenv("OOD_DATA_ROOT", str(empty))
    saved_ds, saved_ood = dict(DATASETS), dict(OOD_SETS)
    yield
    DATASETS.clear(), DATASETS.update(saved_ds)
    OOD_SETS.clear(), OOD_SETS.update(saved_ood)


def use_root(monkeypatch, root) -> Path:
    monkeypatch.setenv("OOD_DATA_ROOT", str(root["path"]))
    return root["path"]


def pixels_of(bench, split) -> np.ndarray:
    return bench.to_pixels(split.x)


# --- fingerprint ------------------------------------------------------------------------------------------------------

def test_fingerprint_is_the_data_one_pixel_changes_it():
    x, y = three_class_images()
    a = RawData(x.copy(), y.copy(), ["a", "b", "c"], None, "here")
    same = RawData(x.copy(), y.copy(), ["a", "b", "c"], None, "elsewhere")  # the source is not the data
    assert fingerprint(a) == fingerprint(same) and len(fingerprint(a)) == 16
    x2 = x.copy()
    x2[5, 0, 3, 4] ^= 1
    assert fingerprint(RawData(x2, y.copy(), ["a", "b", "c"], None, "here")) != fingerprint(a)
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    assert fingerprint(RawData(x.copy(), y2, ["a", "b", "c"], None, "here")) != fingerprint(a)
    split = np.arange(len(y)) < 20
    assert fingerprint(RawData(x.copy(), y.copy(), ["a", "b", "c"], split, "here")) != fingerprint(a)


def test_a_user_dataset_reregistered_with_other_data_gets_another_checkpoint(tmp_path):
    x, y = three_class_images()
    register_user_dataset("mine", write_npz(tmp_path / "a.npz", x, y))
    spec = Spec(dataset="mine", image_size=8)
    first = checkpoint_path(spec, tmp_path)
    assert checkpoint_path(spec, tmp_path) == first  # stable
    x2 = x.copy()
    x2[0, 0, 5, 5] ^= 1  # one pixel
    register_user_dataset("mine", write_npz(tmp_path / "b.npz", x2, y))
    assert load_dataset("mine", 8).fingerprint != fingerprint(RawData(x, y, ["0", "1", "2"], None, ""))
    second = checkpoint_path(spec, tmp_path)
    assert second != first and second.parent == first.parent
    register_user_dataset("mine", write_npz(tmp_path / "c.npz", x, y))  # the first data again: its model again
    assert checkpoint_path(spec, tmp_path) == first


def test_a_loader_returning_28px_under_a_registered_name_does_not_reuse_the_16px_model(tmp_path):
    """The issue's bug: the Spec (dataset name, image_size 16) is the same; the data the loader gives is not."""
    r = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 15)

    def loader(side):
        return lambda size: (r.random((30, 1, side, side), dtype=np.float32), y, ["a", "b"])

    datasets.register_dataset("loader-x", "", loader(16), replace=True)
    spec = Spec(dataset="loader-x", image_size=16)
    at16 = checkpoint_path(spec, tmp_path)
    datasets.register_dataset("loader-x", "", loader(28), replace=True)
    assert load_dataset("loader-x", 16).pixels.shape == (30, 1, 16, 16)  # resized to the spec's size ...
    assert checkpoint_path(spec, tmp_path) != at16  # ... but other data: another model


def test_files_changed_on_disk_under_the_same_root_give_another_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_DATA_ROOT", str(tmp_path))
    write_mnist(tmp_path, seed=0, train=[10] * 10, test=[2] * 10, side=8)
    spec = Spec(dataset="mnist", image_size=8)
    before, key = load_dataset("mnist", 8).fingerprint, trained_key(spec)
    write_mnist(tmp_path, seed=1, train=[10] * 10, test=[2] * 10, side=8)  # the same names and sizes, other images
    for f in (tmp_path / "MNIST" / "raw").iterdir():  # written a second later (file times are coarser than this test)
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert load_dataset("mnist", 8).fingerprint != before
    assert trained_key(spec) != key


# --- the official split -----------------------------------------------------------------------------------------------

def test_the_official_test_split_is_the_test_split_and_val_is_carved_from_train(root, monkeypatch):
    use_root(monkeypatch, root)
    x, y, n_train = root["mnist"]
    data = load_dataset("mnist", MNIST_SIDE)
    assert data.is_train.tolist() == [True] * n_train + [False] * (len(y) - n_train)
    tr, va, te = split_indices(data.labels, 0, data.is_train)
    assert te.tolist() == list(range(n_train, len(y)))  # exactly the official test images, in their order
    assert set(tr) | set(va) == set(range(n_train)) and not set(tr) & set(va)
    assert len(va) == int(np.ceil(0.1 * n_train))
    # stratified: each class's share of train and of val within one sample of its share of the official train
    share = MNIST_TRAIN / n_train
    for part in (tr, va):
        counts = np.bincount(y[part], minlength=10)
        assert np.all(np.abs(counts - share * len(part)) <= 1), counts
    # seeded
    again = split_indices(data.labels, 0, data.is_train)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    other = split_indices(data.labels, 1, data.is_train)
    assert not np.array_equal(other[1], va) and np.array_equal(other[2], te)
    # the benchmark's splits are those images, normalised
    bench = build_benchmark(Spec(dataset="mnist", image_size=MNIST_SIDE), ood_sets=())
    assert bench.meta["official_split"] is True
    np.testing.assert_allclose(pixels_of(bench, bench.test)[:, 0], x[te] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(bench.test.y, y[te])
    np.testing.assert_allclose(pixels_of(bench, bench.train)[:, 0], x[tr] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(bench.val.y, y[va])


def test_subsample_per_class_keeps_at_most_k_of_each_class_seeded():
    labels = np.repeat([0, 1, 2], [5, 2, 10])
    idx = np.arange(len(labels))[::-1].copy()  # any order in, sorted out
    kept = subsample_per_class(idx, labels, 3, seed=0)
    assert np.bincount(labels[kept]).tolist() == [3, 2, 3]
    assert set(np.flatnonzero(labels == 1)) <= set(kept)  # a class with fewer than k: all of it
    assert kept.tolist() == sorted(kept) and set(kept) <= set(idx)
    assert np.array_equal(subsample_per_class(idx, labels, 3, seed=0), kept)
    assert any(not np.array_equal(subsample_per_class(idx, labels, 3, seed=s), kept) for s in (1, 2, 3))
    assert np.array_equal(subsample_per_class(idx, labels, 0, seed=0), idx)  # 0 = all


def test_train_per_class_gives_those_counts_and_leaves_val_and_test(root, monkeypatch):
    use_root(monkeypatch, root)
    full = build_benchmark(Spec(dataset="mnist", image_size=MNIST_SIDE), ood_sets=())
    few = build_benchmark(Spec(dataset="mnist", image_size=MNIST_SIDE, train_per_class=4), ood_sets=())
    assert np.bincount(few.train.y, minlength=10).tolist() == [4] * 10
    np.testing.assert_allclose(pixels_of(few, few.test), pixels_of(full, full.test), atol=1e-6)
    np.testing.assert_array_equal(few.val.y, full.val.y)
    np.testing.assert_array_equal(few.test.y, full.test.y)
    # the four of each class are among the full training split's images of that class
    full_px = pixels_of(full, full.train).reshape(len(full.train), -1)
    for img in pixels_of(few, few.train).reshape(len(few.train), -1):
        assert np.abs(full_px - img).max(axis=1).min() < 1e-5


# --- per-channel normalisation ----------------------------------------------------------------------------------------

def test_per_channel_statistics_are_those_of_the_training_pixels(root, monkeypatch):
    use_root(monkeypatch, root)
    train_images, _ = root["cifar10"]
    bench = build_benchmark(Spec(dataset="cifar10", image_size=32), ood_sets=())
    data = load_dataset("cifar10", 32)
    tr, _, _ = split_indices(data.labels, 0, data.is_train)
    px = train_images[tr].astype(np.float64) / 255.0  # reference: numpy in float64 on the raw uint8 images
    assert bench.mean.shape == (3, 1, 1) and bench.std.shape == (3, 1, 1) and bench.mean.dtype == np.float32
    np.testing.assert_allclose(bench.mean[:, 0, 0], px.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bench.std[:, 0, 0], px.std(axis=(0, 2, 3)), rtol=1e-5)
    assert bench.mean[0, 0, 0] < 0.25 < 0.5 < bench.mean[1, 0, 0]  # per channel, not one global value
    p = data.pixels[:20]
    np.testing.assert_allclose(bench.to_pixels(bench.normalise(p)), p, atol=1e-6)
    # the training split has mean 0 and std 1 in every channel
    np.testing.assert_allclose(bench.train.x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(bench.train.x.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_channel_stats_of_a_flat_channel_is_std_one():
    pixels = np.zeros((4, 2, 3, 3), np.float32)
    pixels[:, 1] = np.arange(4, dtype=np.float32)[:, None, None] / 4
    mean, std = channel_stats(pixels, np.arange(4))
    assert mean[:, 0, 0].tolist() == [0.0, 0.375] and std[0, 0, 0] == 1.0  # no division by zero
    assert std[1, 0, 0] == pytest.approx(np.std([0, 0.25, 0.5, 0.75]))


# --- any input shape --------------------------------------------------------------------------------------------------

def test_a_colour_32px_dataset_gets_every_default_ood_set_at_its_shape(root, monkeypatch):
    use_root(monkeypatch, root)
    bench = build_benchmark(Spec(dataset="cifar10", image_size=32))
    assert bench.input_shape == (3, 32, 32)
    assert set(bench.ood) == set(registry.DEFAULT_OOD_SETS) and not bench.meta["skipped_ood_sets"]
    n = round(0.2 * len(bench.test))
    for name, split in bench.ood.items():
        assert split.x.shape == (n, 3, 32, 32) and split.x.dtype == np.float32, name
        assert np.all(split.y == -1)
        px = bench.to_pixels(split.x)
        assert np.isfinite(split.x).all() and px.min() >= 0 and px.max() <= 1
    # the transformed sets are transforms of the (flat-coloured) test images: still flat in each channel
    assert np.ptp(pixels_of(bench, bench.ood["flipped"]), axis=(2, 3)).max() < 1e-5


def test_a_grey_dataset_gets_a_colour_natural_set_as_luma_at_its_size(root, monkeypatch):
    use_root(monkeypatch, root)
    bench = build_benchmark(Spec(dataset="mnist", image_size=MNIST_SIDE), ood_sets=("cifar10",))
    ood = bench.ood["cifar10"]
    assert ood.x.shape == (round(0.2 * len(bench.test)), 1, MNIST_SIDE, MNIST_SIDE)
    px = pixels_of(bench, ood)
    assert np.ptp(px, axis=(1, 2, 3)).max() < 1e-5  # each image one flat grey (32 px resized to 12)
    values = px[:, 0, 0, 0]
    # ITU-R 601 luma of each image's colour, never the mean of the channels (pure red: 0.299, not 0.333)
    assert np.abs(values[:, None] - LUMA[None, :]).min(axis=1).max() < 1e-5
    means = PALETTE.astype(np.float64).mean(axis=1) / 255
    assert np.abs(values[:, None] - means[None, :]).min(axis=1).min() > 1e-3


def test_image_size_28_on_the_digits_resizes_8_to_28_bilinearly():
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_dataset("digits", 28)
    assert d.pixels.shape == (1797, 1, 28, 28) and d.pixels.dtype == np.float32
    raw = torch.from_numpy(load_digits().images[:50, None].astype(np.float32) / 16)
    ref = F.interpolate(raw, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    np.testing.assert_allclose(d.pixels[:50], ref, atol=1e-6)
    bench = build_benchmark(Spec(image_size=28), ood_sets=("gaussian", "rotated"))
    assert bench.input_shape == (1, 28, 28)
    assert all(s.x.shape[1:] == (1, 28, 28) for s in bench.ood.values())


# --- class counts -----------------------------------------------------------------------------------------------------

def class_of_grey(bench, split) -> np.ndarray:
    """The original class of each image of the three-class set (top-left pixel 40 * (class + 1))."""
    return np.rint(pixels_of(bench, split)[:, 0, 0, 0] * 255 / 40).astype(int) - 1


def class_of_red(bench, split) -> np.ndarray:
    """The original CIFAR-100 class of each image (its flat red plane)."""
    return np.rint(pixels_of(bench, split)[:, 0].mean(axis=(1, 2)) * 255).astype(int)


def test_a_three_class_user_dataset_in_osr_and_nd(tmp_path):
    x, y = three_class_images()
    info = register_user_dataset("three", write_npz(tmp_path / "three.npz", x, y))
    assert (info.num_classes, info.channels, info.native_size, info.default_size) == (3, 1, 8, 8)
    osr = build_benchmark(Spec(setting="osr", dataset="three", image_size=8, known_classes=2), ood_sets=())
    known = known_classes_for(0, 3, 2)
    (missing,) = set(range(3)) - set(known)
    assert osr.meta["known_classes"] == known and osr.meta["unknown_classes"] == [missing]
    assert osr.num_classes == 2 and osr.class_names == [str(c) for c in known]
    for split in (osr.train, osr.val, osr.test):
        orig = class_of_grey(osr, split)
        assert set(orig) == set(known)
        np.testing.assert_array_equal(split.y, [known.index(c) for c in orig])  # remapped to 0..K-1
    assert set(class_of_grey(osr, osr.ood["unknown"])) == {missing}
    assert osr.meta["unknown_original_labels"] == [missing] * len(osr.ood["unknown"])
    _, _, te = split_indices(y, 0)
    assert len(osr.ood["unknown"]) == int((y[te] == missing).sum())

    nd = build_benchmark(Spec(setting="nd", dataset="three", image_size=8, normal_class=2), ood_sets=())
    assert nd.class_names == ["2"] and nd.meta["normal_class"] == 2
    for split in (nd.train, nd.val, nd.test):
        assert set(class_of_grey(nd, split)) == {2} and np.all(split.y == 0)
    assert set(class_of_grey(nd, nd.ood["novel"])) == {0, 1}
    with pytest.raises(ValueError, match="normal class 3 does not exist: three has classes 0..2"):
        build_benchmark(Spec(setting="nd", dataset="three", image_size=8, normal_class=3), ood_sets=())
    with pytest.raises(ValueError, match="known classes K must be in 2..2"):
        build_benchmark(Spec(setting="osr", dataset="three", image_size=8, known_classes=3), ood_sets=())


def test_a_hundred_class_cifar100_in_osr_and_nd(root, monkeypatch):
    use_root(monkeypatch, root)
    osr = build_benchmark(Spec(setting="osr", dataset="cifar100", image_size=8, known_classes=60), ood_sets=())
    known = known_classes_for(0, 100, 60)
    unknown = sorted(set(range(100)) - set(known))
    assert osr.meta["known_classes"] == known and osr.meta["unknown_classes"] == unknown
    assert osr.num_classes == 60 and osr.class_names == [f"f{c}" for c in known] and osr.input_shape == (3, 8, 8)
    assert len(osr.test) == 60 * C100_TEST and len(osr.ood["unknown"]) == 40 * C100_TEST
    assert len(osr.train) + len(osr.val) == 60 * C100_TRAIN
    for split in (osr.train, osr.val, osr.test):
        np.testing.assert_array_equal(split.y, [known.index(c) for c in class_of_red(osr, split)])
    assert sorted(set(class_of_red(osr, osr.ood["unknown"]))) == unknown
    assert sorted(set(osr.meta["unknown_original_labels"])) == unknown

    nd = build_benchmark(Spec(setting="nd", dataset="cifar100", image_size=8, normal_class=99), ood_sets=())
    assert nd.class_names == ["f99"] and len(nd.test) == C100_TEST
    assert set(class_of_red(nd, nd.train)) == {99} and np.all(nd.train.y == 0)
    assert len(nd.ood["novel"]) == 99 * C100_TEST and 99 not in set(class_of_red(nd, nd.ood["novel"]))
    with pytest.raises(ValueError, match="normal class 100 does not exist: cifar100 has classes 0..99"):
        build_benchmark(Spec(setting="nd", dataset="cifar100", image_size=8, normal_class=100), ood_sets=())


def test_a_hundred_classes_with_a_few_images_each_still_split(tmp_path, monkeypatch):
    """5 official train images per class: a tenth (50) is fewer than the 100 classes; every class still gets a
    validation image (one each) rather than a refusal from the stratified split."""
    monkeypatch.setenv("OOD_DATA_ROOT", str(tmp_path))
    r = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    for split, k in (("train", 5), ("test", 1)):
        y = np.repeat(np.arange(100), k)
        dump(folder / split, {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                              "data": r.integers(0, 256, (len(y), 3072), dtype=np.uint8)})
    dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                           "coarse_label_names": [f"s{i}" for i in range(20)]})
    bench = build_benchmark(Spec(dataset="cifar100", image_size=8), ood_sets=())
    assert np.bincount(bench.val.y, minlength=100).tolist() == [1] * 100
    assert np.bincount(bench.train.y, minlength=100).tolist() == [4] * 100
    assert len(bench.test) == 100


def test_splits_sklearn_can_make_are_sklearns_own(root, monkeypatch):
    """The reference: the two stratified train_test_split calls with the fractions (60/10/30 of all; a tenth of the
    official train), for the digits and for an official split, several seeds."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    use_root(monkeypatch, root)
    digits = load_digits().target
    mnist = load_dataset("mnist", MNIST_SIDE)
    for seed in range(4):
        tr, rest = train_test_split(np.arange(len(digits)), train_size=0.6, stratify=digits, random_state=seed)
        va, te = train_test_split(rest, train_size=0.25, stratify=digits[rest], random_state=seed)
        got = split_indices(digits, seed)
        assert all(np.array_equal(a, np.sort(b)) for a, b in zip(got, (tr, va, te)))
        official = np.flatnonzero(mnist.is_train)
        tr, va = train_test_split(official, test_size=0.1, stratify=mnist.labels[official], random_state=seed)
        got = split_indices(mnist.labels, seed, mnist.is_train)
        assert np.array_equal(got[0], np.sort(tr)) and np.array_equal(got[1], np.sort(va))


def test_too_few_images_for_any_split_is_a_clear_data_error():
    labels = np.repeat(np.arange(4), [1, 5, 5, 5])  # a class with one image cannot be in train, val and test
    with pytest.raises(DataError, match="too few images"):
        split_indices(labels, 0)


# --- absent data ------------------------------------------------------------------------------------------------------

def test_a_missing_torchvision_set_names_the_expected_path(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", 32, root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(e.value)
    assert "\n" not in str(e.value)
    assert not DATASETS["cifar10"].found(tmp_path)
    assert DATASETS["cifar10"].status(tmp_path).startswith("not found: expected ")


def test_an_absent_natural_set_is_skipped_and_recorded():
    bench = build_benchmark(Spec(image_size=8), ood_sets=("gaussian", "svhn", "textures"))
    assert list(bench.ood) == ["gaussian"]
    assert bench.meta["skipped_ood_sets"] == ["svhn", "textures"]


def test_a_present_natural_set_is_built(root, monkeypatch):
    use_root(monkeypatch, root)
    bench = build_benchmark(Spec(image_size=8), ood_sets=("mnist", "svhn"))
    n_test = int(MNIST_TEST.sum())  # MNIST's official test images, fewer than a fifth of the digits' test split
    assert round(0.2 * len(bench.test)) > n_test and bench.ood["mnist"].x.shape == (n_test, 1, 8, 8)
    # they are MNIST's test images (12 px) at the digits' 8 px
    x, _, n_train = root["mnist"]
    ref = datasets.resize(x[n_train:, None].astype(np.float32) / 255, 8)
    np.testing.assert_allclose(pixels_of(bench, bench.ood["mnist"]), ref, atol=1e-5)
    assert bench.meta["skipped_ood_sets"] == ["svhn"]


# --- the CLI ----------------------------------------------------------------------------------------------------------

def test_list_datasets_says_found_and_not_found(root, capsys):
    assert cli.main(["list-datasets", "--data-root", str(root["path"])]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[2:] if ln.strip()}
    assert out.splitlines()[0].startswith(f"data root: {root['path']}")
    for name in ("digits", "mnist-sample", "mnist", "cifar10", "cifar100"):
        assert lines[name].endswith("found"), lines[name]
    for name in ("fashion-mnist", "kmnist", "svhn"):
        assert " not found: expected " in lines[name]
    assert str(root["path"] / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in lines["fashion-mnist"]
    assert "fetch-data svhn" in lines["svhn"]


def test_run_on_a_user_npz_trains_and_prints_the_table_with_an_extra_ood_set(tmp_path, capsys):
    x, y = three_class_images(per_class=(20, 20, 20))
    data = write_npz(tmp_path / "tiny.npz", x, y)
    extra = write_npz(tmp_path / "faces.npz", np.random.default_rng(1).integers(0, 256, (15, 8, 8), dtype=np.uint8))
    cache = tmp_path / "cache"
    argv = ["run", "--dataset", str(data), "--epochs", "1", "--detectors", "msp,energy", "--cache-dir", str(cache),
            "--device", "cpu", "--ood-set", str(extra), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("ID test accuracy: ")
    header = next(ln for ln in out.splitlines() if ln.startswith("| detector |"))
    assert header.split(" | ")[1:] == [*registry.DEFAULT_OOD_SETS, "faces", "mean |"]
    assert {ln.split(" | ")[0] for ln in out.splitlines() if ln.startswith("| ")} >= {"| msp", "| energy"}
    assert "error" not in out
    spec = Spec(dataset="user-tiny", image_size=8, training=TrainConfig(epochs=1))
    assert [p.name for p in (cache / "models").glob("*.pt")] == [checkpoint_path(spec, cache).name]


def test_run_with_an_unknown_dataset_is_one_line_and_exit_2_before_training(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert cli.main(["run", "--dataset", "nonexistent", "--epochs", "1", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset nonexistent: neither a registered dataset") and err.count("\n") == 1
    assert not list(cache.rglob("*.pt"))


@pytest.mark.parametrize("argv, message", [
    (["run", "--ood-preset", "survey"], "--ood-preset survey: the survey has no benchmark pairs for digits"),
    (["run", "--per-class", "0"], "--per-class must be at least 1"),
    (["run", "--image-size", "30"], "image_size must be a multiple of 4 in 8..64"),
    (["run", "--dataset", "cifar10"], "--dataset cifar10: not found: expected"),
    (["run", "--ood-set", "/nonexistent/x.npz"], "--ood-set /nonexistent/x.npz: no such folder or file"),
    (["fetch-data", "unknownname"], "cannot fetch unknownname; torchvision fetches mnist"),
])
def test_bad_data_options_are_one_line_errors_with_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "fetch", lambda *a, **k: pytest.fail("nothing may be fetched"))
    monkeypatch.setattr("ood_core.pipeline.prepare", lambda *a, **k: pytest.fail("nothing may be trained"))
    extra = ["--cache-dir", str(tmp_path / "cache"), "--epochs", "1"] if argv[0] == "run" else []
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_users_ood_set_never_replaces_a_built_in_one(tmp_path):
    from ood_core.data import OOD_SETS, registry

    path = tmp_path / "gaussian.npz"
    np.savez(path, images=np.full((6, 8, 8), 200, np.uint8))
    before = OOD_SETS["gaussian"]
    name = registry.register_user_ood_set("gaussian", path, filename=path.name)
    assert name == "user-gaussian" and OOD_SETS["gaussian"] is before and OOD_SETS[name].kind == "natural"
    again = registry.register_user_ood_set(name, path, filename=path.name)  # the user's own set: replaced in place
    assert again == name


def test_near_and_far_ood_averages_join_the_table_for_the_surveys_pairs():
    from ood_core.compare import with_group_means

    oods = ["fashion-mnist", "kmnist", "gaussian", "uniform", "rotated"]
    mean = np.array([[0.9, 0.7, 1.0, 0.8, 0.5], [0.6, np.nan, 0.4, 0.2, 0.3]])
    std = np.zeros_like(mean)
    cols, grown, s = with_group_means(oods, mean, std, "mnist")
    assert cols == oods + ["near-OOD mean", "far-OOD mean"]
    np.testing.assert_allclose(grown[0, -2:], [0.8, 0.9])  # near: (0.9 + 0.7) / 2; far: (1.0 + 0.8) / 2
    assert np.isnan(grown[1, -2]) and grown[1, -1] == pytest.approx(0.3)  # a failed near cell leaves near NaN
    assert np.isnan(s[:, -2:]).all()
    assert with_group_means(oods, mean, std, "digits")[0] == oods  # no pairs for the digits: nothing added
