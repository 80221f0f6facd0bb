"""Synthetic and transformed OOD recipes, the benchmark builder and the Spec."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from scipy.stats import norm

from ood_core import Spec, TrainConfig
from ood_core.data import DATASETS, DEFAULT_OOD_SETS, OOD_SETS, build_benchmark, make_ood_set, split_indices, synthetic
from ood_core.data.benchmark import TRAIN_FRACTION, VAL_FRACTION
from ood_core.data.datasets import load_digits, resize
from ood_core.data.registry import register_ood_set
from ood_core.settings import NEAR_FAR_OOD, default_ood_sets

N, C, S = 200, 1, 16  # 51,200 pixels per recipe: sampling error of a fraction ~ 0.002


def _rng(seed=0):
    return np.random.default_rng(seed)


def _check_layout(x, n=N, c=C, s=S):
    assert x.shape == (n, c, s, s)
    assert x.dtype == np.float32
    assert np.all((x >= 0.0) & (x <= 1.0))


# --- synthetic recipes -----------------------------------------------------------------------------

def test_gaussian_noise_statistics():
    x = synthetic.gaussian_noise(N, C, S, _rng())
    _check_layout(x)
    p_clip = norm.cdf(-1.0)  # N(0.5, 0.5^2) falls below 0 (or above 1) with probability Phi(-1) = 0.1587
    assert p_clip == pytest.approx(0.1587, abs=1e-4)
    assert np.mean(x == 0.0) == pytest.approx(p_clip, abs=0.01)
    assert np.mean(x == 1.0) == pytest.approx(p_clip, abs=0.01)
    assert x.mean() == pytest.approx(0.5, abs=0.01)  # clipping is symmetric about 0.5
    # the unclipped part is N(0.5, 0.5^2) truncated to [0, 1]: var = 0.25 (1 - 2 phi(1) / (2 Phi(1) - 1))
    inner = x[(x > 0) & (x < 1)]
    assert inner.mean() == pytest.approx(0.5, abs=0.01)
    assert inner.std() == pytest.approx(np.sqrt(0.25 * (1 - 2 * norm.pdf(1) / (2 * norm.cdf(1) - 1))), abs=0.01)


def test_rademacher_noise_statistics():
    x = synthetic.rademacher_noise(N, C, S, _rng())
    _check_layout(x)
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    assert x.mean() == pytest.approx(0.5, abs=0.01)


def test_uniform_noise_statistics():
    x = synthetic.uniform_noise(N, C, S, _rng())
    _check_layout(x)
    assert x.mean() == pytest.approx(0.5, abs=0.01)
    assert x.var() == pytest.approx(1 / 12, abs=0.003)
    assert len(np.unique(x)) > 0.99 * x.size  # continuous


def test_blobs_values_and_shape():
    x = synthetic.blobs(N, C, S, _rng())
    _check_layout(x)
    nz = x[x != 0]
    assert np.all(nz >= 0.75)
    # a blur of Bernoulli(0.7) keeps a fair share of pixels above 0.75, but not all
    assert 0.05 < np.mean(x > 0) < 0.95
    assert len(np.unique(nz)) > 10  # blurred, not binary


def test_blobs_channels_are_blurred_independently():
    x = synthetic.blobs(50, 3, 32, _rng(1))
    _check_layout(x, 50, 3, 32)
    assert not np.array_equal(x[:, 0], x[:, 1])
    assert all(np.all(x[:, c][x[:, c] != 0] >= 0.75) for c in range(3))
    # no mixing across samples: blobs of a batch equal the blobs made one sample at a time from the same draws
    from scipy.ndimage import gaussian_filter
    rng = _rng(1)
    raw = rng.binomial(1, 0.7, size=(50, 3, 32, 32)).astype(np.float64)
    one = gaussian_filter(raw[7, 2], sigma=1.5, mode="reflect")
    one[one < 0.75] = 0.0
    np.testing.assert_allclose(x[7, 2], one, atol=1e-6)


@pytest.mark.parametrize("fn", [synthetic.gaussian_noise, synthetic.rademacher_noise, synthetic.blobs,
                                synthetic.uniform_noise])
@pytest.mark.parametrize("c,s", [(1, 8), (3, 16), (3, 32)])
def test_synthetic_layout_and_seeding(fn, c, s):
    x = fn(5, c, s, _rng(3))
    _check_layout(x, 5, c, s)
    np.testing.assert_array_equal(x, fn(5, c, s, _rng(3)))
    assert not np.array_equal(x, fn(5, c, s, _rng(4)))


# --- transformed ID sets ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits16():
    return load_digits(16)


def test_load_digits(digits16):
    pixels, labels, names = digits16
    assert pixels.shape == (1797, 1, 16, 16) and pixels.dtype == np.float32
    assert pixels.min() == 0.0 and pixels.max() <= 1.0
    assert names == [str(i) for i in range(10)] and set(labels.tolist()) == set(range(10))
    p8, _, _ = load_digits(8)
    from sklearn.datasets import load_digits as sk
    np.testing.assert_allclose(p8[:, 0], sk().images / 16.0, atol=1e-7)  # 8 px: no resampling


def test_resize_keeps_range_and_shape():
    x = _rng().uniform(size=(4, 3, 8, 8)).astype(np.float32)
    y = resize(x, 24)
    assert y.shape == (4, 3, 24, 24) and y.min() >= 0 and y.max() <= 1
    const = np.full((2, 1, 8, 8), 0.3, np.float32)
    np.testing.assert_allclose(resize(const, 16), 0.3, atol=1e-6)


def test_rotated_flipped_inverted(digits16):
    x = digits16[0][:20]
    r = synthetic.rotated(x, _rng())
    np.testing.assert_array_equal(r, np.rot90(x, k=1, axes=(2, 3)))
    np.testing.assert_array_equal(synthetic.rotated(synthetic.rotated(r, _rng()), _rng()), np.rot90(x, 3, (2, 3)))
    f = synthetic.flipped(x, _rng())
    np.testing.assert_array_equal(f, x[:, :, :, ::-1])
    np.testing.assert_array_equal(synthetic.flipped(f, _rng()), x)
    inv = synthetic.inverted(x, _rng())
    assert inv.dtype == np.float32
    np.testing.assert_allclose(inv, 1.0 - x, atol=1e-7)
    assert r.flags["C_CONTIGUOUS"] and f.flags["C_CONTIGUOUS"]


def test_pixel_permuted_keeps_each_images_pixels(digits16):
    x = digits16[0][:30]
    p = synthetic.pixel_permuted(x, _rng(2))
    assert p.shape == x.shape and p.dtype == x.dtype
    flat_x, flat_p = x.reshape(30, -1), p.reshape(30, -1)
    np.testing.assert_array_equal(np.sort(flat_p, axis=1), np.sort(flat_x, axis=1))  # same multiset per image
    assert not np.array_equal(p, x)
    # one fixed permutation for every image: recover it from a distinct-valued probe image
    probe = np.arange(S * S, dtype=np.float32).reshape(1, 1, S, S)
    perm = synthetic.pixel_permuted(probe, _rng(2)).reshape(-1).astype(int)
    np.testing.assert_array_equal(flat_p, flat_x[:, perm])


def test_make_ood_set_transformed_are_transforms_of_distinct_test_images(digits16):
    x = digits16[0][:120]
    flat = x.reshape(len(x), -1)
    for name, inverse in [("rotated", lambda o: np.rot90(o, k=-1, axes=(1, 2))), ("flipped", lambda o: o[..., ::-1]),
                          ("inverted", lambda o: 1.0 - o)]:
        out = make_ood_set(name, x, 40, seed=0)
        assert out.shape == (40, 1, S, S) and out.dtype == np.float32
        sources = []
        for o in out:
            d = np.abs(flat - inverse(o).reshape(1, -1)).max(axis=1)
            assert d.min() < 1e-6, name
            sources.append(int(d.argmin()))
        assert len(set(sources)) == 40 and sources == sorted(sources), name  # distinct images, in order
    # at most as many as there are test images
    assert len(make_ood_set("rotated", x[:10], 40, seed=0)) == 10


def test_make_ood_set_streams_are_seeded_and_distinct(digits16):
    x = digits16[0][:50]
    a = make_ood_set("uniform", x, 8, seed=0)
    np.testing.assert_array_equal(a, make_ood_set("uniform", x, 8, seed=0))
    assert not np.array_equal(a, make_ood_set("uniform", x, 8, seed=1))
    # each set has its own stream: the same recipe under another name gives other samples
    assert not np.array_equal(make_ood_set("gaussian", x, 8, 0), make_ood_set("uniform", x, 8, 0))
    with pytest.raises(KeyError):
        make_ood_set("nope", x, 8, 0)


def test_default_ood_sets_prefer_the_natural_set_then_near_and_far():
    synthetic_only = ["gaussian", "uniform", "rotated", "flipped"]
    assert default_ood_sets(synthetic_only) == ["rotated", "gaussian"]  # near, then far; not the listed order
    osr = ["unknown", "gaussian", "rotated"]
    assert default_ood_sets(osr) == ["unknown", "rotated"]
    assert default_ood_sets(osr, with_natural=NEAR_FAR_OOD) == ["unknown", "rotated", "gaussian"]
    assert default_ood_sets(["novel", "uniform"]) == ["novel"]  # the extras that are there
    assert default_ood_sets(["uniform", "flipped", "blobs"]) == ["uniform", "flipped"]  # none: the first two
    assert default_ood_sets(["uniform", "flipped", "blobs"], fallback=1) == ["uniform"]
    assert default_ood_sets([]) == []


def test_register_ood_set_rejects_unknown_kind():
    with pytest.raises(ValueError):
        register_ood_set("bad", "other", "", synthetic.uniform_noise)
    assert "bad" not in OOD_SETS


# --- benchmark -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench():
    return build_benchmark(Spec())


def test_split_sizes_and_no_overlap(digits16):
    labels = digits16[1]
    n = len(labels)
    tr, va, te = split_indices(labels, 0)
    assert abs(len(tr) - TRAIN_FRACTION * n) <= 1
    assert abs(len(va) - VAL_FRACTION * n) <= 1
    assert abs(len(te) - (1 - TRAIN_FRACTION - VAL_FRACTION) * n) <= 1
    assert len(set(tr) | set(va) | set(te)) == n == len(tr) + len(va) + len(te)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))


def test_split_is_stratified(digits16):
    labels = digits16[1]
    counts = np.bincount(labels)
    for idx, frac in zip(split_indices(labels, 0), (TRAIN_FRACTION, VAL_FRACTION, 1 - TRAIN_FRACTION - VAL_FRACTION)):
        got = np.bincount(labels[idx], minlength=len(counts))
        assert np.all(np.abs(got - frac * counts) <= 1.0), (got, frac * counts)


def test_split_determinism(digits16):
    labels = digits16[1]
    a, b, c = split_indices(labels, 0), split_indices(labels, 0), split_indices(labels, 1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_benchmark_splits(bench, digits16):
    pixels, labels, _ = digits16
    tr, va, te = split_indices(labels, 0)
    assert (len(bench.train), len(bench.val), len(bench.test)) == (len(tr), len(va), len(te))
    np.testing.assert_array_equal(bench.train.y, labels[tr])
    np.testing.assert_array_equal(bench.test.y, labels[te])
    np.testing.assert_allclose(bench.train.x, bench.normalise(pixels[tr]), atol=1e-6)
    assert bench.num_classes == 10 and bench.input_shape == (1, 16, 16)
    assert list(bench.splits())[:3] == ["train", "val", "test"]
    for split in bench.splits().values():
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (1, 16, 16)


def test_benchmark_ood_sets(bench):
    assert set(bench.ood) == set(DEFAULT_OOD_SETS)  # the natural sets join only when asked for
    n_ood = round(0.2 * len(bench.test))
    for name, split in bench.ood.items():
        assert len(split) == n_ood, name
        assert np.all(split.y == -1) and split.y.dtype == np.int64
        px = split.x * bench.std + bench.mean  # back in pixel space: [0, 1]
        assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5, name
    b = build_benchmark(Spec(), ood_sets=("uniform",), ood_fraction=0.5)
    assert list(b.ood) == ["uniform"] and len(b.ood["uniform"]) == round(0.5 * len(b.test))


def test_normalisation_uses_train_only(bench, digits16):
    pixels, labels, _ = digits16
    tr, _, _ = split_indices(labels, 0)
    assert bench.mean == pytest.approx(float(pixels[tr].mean()), rel=1e-6)
    assert bench.std == pytest.approx(float(pixels[tr].std()), rel=1e-6)
    assert bench.mean != pytest.approx(float(pixels.mean()), rel=1e-6)  # not the statistics of all data
    assert float(bench.train.x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(bench.train.x.std()) == pytest.approx(1.0, abs=1e-4)


def test_to_pixels_inverts_normalise(bench):
    p = _rng().uniform(size=(5, 1, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(bench.to_pixels(bench.normalise(p)), p, atol=1e-6)
    assert bench.normalise(p).dtype == np.float32
    # to_pixels clips to the displayable range
    assert bench.to_pixels(np.array([100.0, -100.0]).reshape(1, 1, 1, 2)).ravel().tolist() == [1.0, 0.0]


def test_benchmark_is_deterministic_and_seeded(bench):
    again = build_benchmark(Spec())
    for name, split in bench.splits().items():
        np.testing.assert_array_equal(split.x, again.splits()[name].x)
        np.testing.assert_array_equal(split.y, again.splits()[name].y)
    other = build_benchmark(Spec(seed=1))
    assert not np.array_equal(other.train.y, bench.train.y) or not np.array_equal(other.train.x, bench.train.x)
    assert not np.array_equal(other.ood["gaussian"].x, bench.ood["gaussian"].x)


def test_benchmark_image_size():
    b = build_benchmark(Spec(image_size=8), ood_sets=("blobs", "rotated"))
    assert b.input_shape == (1, 8, 8)
    assert b.ood["blobs"].x.shape[1:] == (1, 8, 8) and b.ood["rotated"].x.shape[1:] == (1, 8, 8)


def test_unknown_dataset_and_ood_set():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_benchmark(Spec(dataset="no_such_dataset"))
    with pytest.raises(ValueError, match="unknown OOD set"):
        build_benchmark(Spec(), ood_sets=("gaussian", "no_such_set"))
    assert "digits" in DATASETS


# --- Spec ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"setting": "nonsense"}, {"seed": -1}, {"seed": 1.5}, {"seed": "0"},
                                    {"image_size": 10}, {"image_size": 0}, {"image_size": 68},
                                        {"train_per_class": -1}, {"train_per_class": 2.5}, {"known_classes": 1},
                                    {"normal_class": -1}, {"contamination": -0.1}, {"contamination": 0.5},
                                    {"contamination": float("nan")}])
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        Spec(**kwargs)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": 501}, {"epochs": -3}, {"batch_size": 0},
                                    {"batch_size": 5000}, {"lr": 0}, {"lr": -1e-3}, {"lr": 10}, {"lr": float("nan")},
                                    {"weight_decay": -0.1}, {"weight_decay": 1.0}, {"member": -1}, {"member": 1000},
                                    {"regime": "nonsense"}])
def test_train_config_validation(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_spec_key_is_stable():
    assert Spec().key() == Spec().key()
    assert Spec(seed=3, training=TrainConfig(epochs=4)).key() == Spec(training=TrainConfig(epochs=4), seed=3).key()
    s = Spec()
    expected = hashlib.sha256(json.dumps(s.relevant_dict(), sort_keys=True).encode()).hexdigest()[:16]
    assert s.key() == expected and len(s.key()) == 16


# one change per field; setting-specific fields are changed in the setting they belong to
KEY_CHANGES = {
    "setting": (Spec(), Spec(setting="osr")),
    "dataset": (Spec(), Spec(dataset="other")),
    "model": (Spec(), Spec(model="other")),
    "seed": (Spec(), Spec(seed=1)),
    "image_size": (Spec(), Spec(image_size=32)),
    "known_classes": (Spec(setting="osr"), Spec(setting="osr", known_classes=4)),
    "normal_class": (Spec(setting="nd"), Spec(setting="nd", normal_class=3)),
    "contamination": (Spec(setting="ad"), Spec(setting="ad", contamination=0.1)),
    "training.epochs": (Spec(), Spec(training=TrainConfig(epochs=16))),
    "training.batch_size": (Spec(), Spec(training=TrainConfig(batch_size=32))),
    "training.lr": (Spec(), Spec(training=TrainConfig(lr=1e-3))),
    "training.weight_decay": (Spec(), Spec(training=TrainConfig(weight_decay=0.0))),
    "training.member": (Spec(), Spec(training=TrainConfig(member=1))),
    "training.regime": (Spec(), Spec(training=TrainConfig(regime="oe"))),
    "train_per_class": (Spec(), Spec(train_per_class=100)),
    "osr_splits": (Spec(setting="osr"), Spec(setting="osr", osr_splits="literature")),
    "osr_protocol": (Spec(setting="osr", dataset="cifar10", known_classes=4),
                     Spec(setting="osr", dataset="cifar10", known_classes=4, osr_protocol="cifar+10")),
}


@pytest.mark.parametrize("field_name", sorted(KEY_CHANGES))
def test_spec_key_changes_with_every_field(field_name):
    a, b = KEY_CHANGES[field_name]
    assert a != b and a.key() != b.key()


def test_every_spec_field_is_covered_by_the_key_test():
    # when a field is added, KEY_CHANGES must learn about it
    fields = {f.name for f in dataclasses.fields(Spec) if f.name != "training"}
    fields |= {f"training.{f.name}" for f in dataclasses.fields(TrainConfig)}
    assert fields == set(KEY_CHANGES)


def test_a_field_added_later_keeps_older_keys_at_its_default():
    # train_per_class=0 (all images) is what every spec meant before the field existed: the key leaves it out
    assert "train_per_class" not in Spec().relevant_dict() and "train_per_class" in Spec(train_per_class=5).relevant_dict()


def test_fields_of_other_settings_do_not_split_the_cache():
    assert Spec(known_classes=4).key() == Spec().key()      # OSR-only field, OOD setting
    assert Spec(normal_class=3).key() == Spec().key()       # ND/AD-only field
    assert Spec(setting="nd", contamination=0.2).key() == Spec(setting="nd").key()  # AD-only field


def test_spec_round_trip():
    s = Spec(seed=4, image_size=8, training=TrainConfig(epochs=3, lr=1e-3, member=2))
    assert Spec.from_dict(s.to_dict()) == s
    assert Spec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert Spec.from_dict(s.to_dict()).key() == s.key()
    t = Spec(setting="ad", normal_class=2, contamination=0.1)
    assert Spec.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert s.with_seed(9) == dataclasses.replace(s, seed=9) and s.with_seed(9).key() != s.key()


def test_each_ood_set_has_its_own_stream_even_for_anagrams():
    from ood_core.data.registry import stream_id

    assert stream_id("gaussian") != stream_id("naissuag")  # the old sum-of-character-codes seed gave these one stream
    assert stream_id("rotated") == stream_id("rotated") and 0 <= stream_id("rotated") < 2 ** 63


def test_registering_a_name_twice_is_refused():
    from ood_core.data.datasets import load_digits, register_dataset
    from ood_core.data.registry import register_ood_set
    from ood_core.data import synthetic

    with pytest.raises(ValueError, match="'digits' is already registered"):
        register_dataset("digits", "again", load_digits)
    with pytest.raises(ValueError, match="'gaussian' is already registered"):
        register_ood_set("gaussian", "synthetic", "again", synthetic.gaussian_noise)


def test_a_link_to_a_one_class_setting_without_a_model_trains_a_one_class_model():
    # the classifier default (small_cnn) serves no one-class setting: a hand-written link must not train it there
    from ood_core.settings import models_for

    for setting in ("nd", "ad"):
        spec = Spec.from_query({"setting": setting})
        assert spec.model == "deep_svdd" and spec.model in models_for(setting)
    assert Spec.from_query({"setting": "nd", "model": "autoencoder"}).model == "autoencoder"  # a named one stays
    assert Spec.from_query({"setting": "osr"}).model == Spec().model == "small_cnn"
