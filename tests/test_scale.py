"""Scaling past toy sizes: splits stored as uint8 and normalised per batch (bit for bit the float path), capped fit
banks for OC-SVM and LOF, and memory-bounded (chunked) paths that give the outputs of one chunk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core import Spec
from ood_core.data import build_benchmark, split_indices
from ood_core.data.benchmark import Benchmark, Split, channel_stats
from ood_core.data.datasets import DatasetInfo, load_dataset, register_dataset, resize, to_float
from ood_core.data.images import Images
from ood_core.data.sources import RawData
from ood_core.detectors import create
from ood_core.detectors import classic
from ood_core.detectors.base import FitContext
from ood_core.detectors.classic import fit_bank_note, stratified_subsample
from ood_core.inference import Outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def float_path(raw: RawData, max_value: float, side: int, idx: np.ndarray, mean, std) -> np.ndarray:
    """Yesterday's path: the whole dataset as float32 pixels in [0, 1] at `side`, normalised, rows `idx`."""
    pixels = resize(to_float(raw, max_value), side)
    return ((pixels[idx] - mean) / std).astype(np.float32)


def eight_bit(name: str, n: int = 120, channels: int = 3, side: int = 20, seed: int = 0) -> RawData:
    """An 8-bit fixture registered as dataset `name`: random uint8 images of 3 classes."""
    rng = np.random.default_rng(seed)
    raw = RawData(rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8), np.arange(n) % 3,
                  ["a", "b", "c"], None, "fixture")
    register_dataset(name, "", info=DatasetInfo(name, name, "8-bit fixture", lambda root: raw, kind="user",
                                                channels=channels, native_size=side, num_classes=3,
                                                default_size=side), replace=True)
    return raw


# --- uint8 storage: the normalised values are the float path's, bit for bit -----------------------------------------

@pytest.mark.parametrize("side", [20, 12, 32])  # native, shrunk (antialiased), enlarged
def test_uint8_fixture_normalises_bit_for_bit_like_the_float_path(side):
    raw = eight_bit("scale-fixture")
    bench = build_benchmark(Spec(dataset="scale-fixture", image_size=side), ood_sets=())
    data = load_dataset("scale-fixture", side)
    assert data.stored.dtype == np.uint8 and data.stored.shape == (120, 3, 20, 20)  # decoded once, not resized
    tr, va, te = split_indices(raw.labels, 0)
    pixels = resize(to_float(raw, 255.0), side)
    mean, std = channel_stats(pixels, tr)  # the statistics of the float array ...
    assert same_bits(bench.mean, mean) and same_bits(bench.std, std)  # ... equal those read channel by channel
    for split, idx in ((bench.train, tr), (bench.val, va), (bench.test, te)):
        assert split.images.stored.dtype == np.uint8
        assert same_bits(split.x, float_path(raw, 255.0, side, idx, mean, std))


def test_digits_benchmark_normalises_bit_for_bit_like_the_float_path():
    # digits: grey levels 0..16 (max_value 16), 8 px resized to the default 16 px, one class per OSR unknown set
    bench = build_benchmark(Spec(setting="osr"), ood_sets=())
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = RawData(d.images.astype(np.uint8)[:, None], d.target.astype(np.int64), [str(i) for i in range(10)], None, "")
    tr, va, te = split_indices(raw.labels, 0)
    known = bench.meta["known_classes"]
    pixels = resize(to_float(raw, 16.0), 16)
    tr_known = tr[np.isin(raw.labels[tr], known)]
    mean, std = channel_stats(pixels, tr_known)
    assert same_bits(bench.mean, mean)
    assert same_bits(bench.train.x, float_path(raw, 16.0, 16, tr_known, mean, std))
    unknown = te[~np.isin(raw.labels[te], known)]
    assert same_bits(bench.ood["unknown"].x, float_path(raw, 16.0, 16, unknown, mean, std))


# --- the batched accessors equal the whole array ----------------------------------------------------------------

def test_batches_rows_and_take_equal_the_whole_array():
    eight_bit("scale-fixture")
    split = build_benchmark(Spec(dataset="scale-fixture", image_size=12), ood_sets=()).train
    whole = split.x
    assert whole.dtype == np.float32 and whole.shape == split.images.shape == (len(split), 3, 12, 12)
    assert same_bits(np.concatenate([xb for xb, _ in split.batches(7)]), whole)
    assert same_bits(np.concatenate([yb for _, yb in split.batches(7)]), split.y)
    idx = np.array([5, 0, 3, 3, len(split) - 1])
    assert same_bits(split.images[idx], whole[idx]) and same_bits(split.images[2], whole[2])
    assert same_bits(split.images[-1], whole[-1]) and same_bits(split.images[3:9], whole[3:9])
    assert same_bits(split.images[:, 1], whole[:, 1]) and same_bits(np.asarray(split.images), whole)
    sub = split.images.take(idx)
    assert sub.stored.dtype == np.uint8 and same_bits(sub.materialise(), whole[idx])


def test_a_split_made_from_an_array_gives_that_array_back():
    x = np.random.default_rng(1).standard_normal((10, 1, 8, 8)).astype(np.float32)
    split = Split(x, np.zeros(10, np.int64))
    assert split.x is x and split.images[2:4].base is x  # no copy, as a plain array split always was
    assert same_bits(np.concatenate(list(split.images.batches(3))), x)


def test_images_refuse_a_mean_without_a_std():
    with pytest.raises(ValueError, match="both mean and std"):
        Images(np.zeros((2, 1, 4, 4), np.uint8), mean=np.zeros(1))


def test_outputs_keep_compact_inputs_and_subsets_stay_compact():
    from ood_core.pipeline import compute_outputs
    from ood_core.models.cnn import SmallCNN

    bench = build_benchmark(Spec(image_size=8), ood_sets=("gaussian",))
    model = SmallCNN(1, 10, width=4, feature_dim=8).eval()
    out = compute_outputs(model, bench, "cpu")
    assert isinstance(out["train"].inputs, Images) and out["train"].inputs.stored.dtype == np.uint8
    idx = np.array([4, 1, 7])
    sub = out["train"].subset(idx)
    assert isinstance(sub.inputs, Images) and same_bits(sub.inputs.materialise(), bench.train.x[idx])


def test_the_forward_pass_batch_size_leaves_the_outputs_bit_for_bit():
    # compute_outputs runs batches sized by pipeline.forward_batch (512 at 12 px); run_inference's default is 256
    from ood_core.inference import run_inference
    from ood_core.models.cnn import SmallCNN
    from ood_core.pipeline import compute_outputs, forward_batch

    bench = build_benchmark(Spec(image_size=12), ood_sets=())
    assert forward_batch(bench.input_shape) == 512 and forward_batch((1, 28, 28)) == 128
    assert forward_batch((3, 64, 64)) == 16
    model = SmallCNN(1, 10, width=4, feature_dim=8).eval()
    out = compute_outputs(model, bench, "cpu")
    for name, split in bench.splits().items():
        ref = run_inference(model, split.x, split.y, "cpu", batch_size=100)
        assert same_bits(out[name].logits, ref.logits) and same_bits(out[name].features, ref.features)


def test_training_on_uint8_batches_gives_the_weights_of_the_float_copy():
    # the training reads each batch from the compact split; the same Spec on float copies of the splits must give
    # the same weights, bit for bit (the same batches, the same values)
    from ood_core import TrainConfig
    from ood_core.models.train import train_model

    spec = Spec(image_size=8, training=TrainConfig(epochs=1, batch_size=64), train_per_class=20)
    bench = build_benchmark(spec, ood_sets=())
    dense = Benchmark(bench.spec, bench.class_names, bench.mean, bench.std, Split(bench.train.x, bench.train.y),
                      Split(bench.val.x, bench.val.y), Split(bench.test.x, bench.test.y), fingerprint=bench.fingerprint)
    assert bench.train.images.stored.dtype == np.uint8 and dense.train.images.is_plain
    a = train_model(spec, bench, device="cpu").model.state_dict()
    b = train_model(spec, dense, device="cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- OC-SVM and LOF: a capped, seeded, stratified fit bank; chunked scoring ---------------------------------------

def test_stratified_subsample_keeps_each_class_share_and_follows_the_seed():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_subsample(labels, 10, seed=0)
    assert list(np.bincount(labels[idx])) == [5, 3, 2] and np.all(np.diff(idx) > 0)
    # largest remainders: 7 of (50, 30, 20) is (3.5, 2.1, 1.4) -> 3, 2, 1 then the largest remainder (0.5) gets one
    assert list(np.bincount(labels[stratified_subsample(labels, 7, seed=0)])) == [4, 2, 1]
    assert np.array_equal(stratified_subsample(labels, 10, seed=0), idx)
    assert not np.array_equal(stratified_subsample(labels, 10, seed=1), idx)
    assert np.array_equal(stratified_subsample(labels, 100, seed=3), np.arange(100))
    assert np.array_equal(stratified_subsample(labels, 500, seed=3), np.arange(100))


@pytest.fixture(scope="module")
def bank():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((300, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 100)
    h[:, 0] += 3 * y  # three clusters
    q = np.r_[rng.standard_normal((40, 6)), rng.standard_normal((40, 6)) + 8].astype(np.float32)
    return {"ctx": FitContext(train=Outputs(np.zeros((300, 3), np.float32), h, y), seed=0),
            "q": Outputs(np.zeros((80, 3), np.float32), q, np.full(80, -1))}


@pytest.mark.parametrize("name", ["ocsvm", "lof"])
def test_a_bank_under_the_cap_gives_the_scores_of_the_whole_bank(name, bank):
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    h, q = bank["ctx"].train.features.astype(np.float64), bank["q"].features.astype(np.float64)
    sc = StandardScaler().fit(h)
    ref = (-OneClassSVM(nu=0.1, gamma="scale").fit(sc.transform(h)).decision_function(sc.transform(q))
           if name == "ocsvm" else
           -LocalOutlierFactor(n_neighbors=20, novelty=True).fit(sc.transform(h)).score_samples(sc.transform(q)))
    for cap in (300, 5000):
        det = create(name, max_fit=cap).fit(bank["ctx"])
        assert det.n_fit_ == det.n_bank_ == 300
        assert np.array_equal(det.score(bank["q"]), ref)


@pytest.mark.parametrize("name", ["ocsvm", "lof"])
def test_a_bank_over_the_cap_is_a_seeded_stratified_subsample(name, bank):
    det = create(name, max_fit=150).fit(bank["ctx"])
    assert (det.n_fit_, det.n_bank_) == (150, 300)
    again = create(name, max_fit=150).fit(bank["ctx"]).score(bank["q"])
    assert np.array_equal(det.score(bank["q"]), again)  # same seed, same subsample, same scores
    ctx1 = FitContext(train=bank["ctx"].train, seed=1)
    assert not np.array_equal(create(name, max_fit=150).fit(ctx1).score(bank["q"]), again)
    s = det.score(bank["q"])
    assert s[40:].mean() > s[:40].mean()  # the far cluster still scores as more unfamiliar


@pytest.mark.parametrize("name", ["ocsvm", "lof", "iforest"])
def test_chunked_scoring_equals_one_chunk(name, bank, monkeypatch):
    det = create(name).fit(bank["ctx"])
    whole = det.score(bank["q"])
    monkeypatch.setattr(classic, "SCORE_CHUNK", 7)
    assert np.array_equal(det.score(bank["q"]), whole)


def test_fit_bank_note_says_n_of_m():
    assert fit_bank_note("ocsvm", {}, 54_000) == ("Fit on 5,000 of 54,000 ID training features: a seeded subsample "
                                                  "stratified by class (max_fit = 5,000; scores use every image).")
    assert fit_bank_note("lof", {"max_fit": 20_000}, 900) == "Fit on all 900 ID training features (max_fit = 20,000)."
    assert fit_bank_note("knn", {}, 54_000) is None
