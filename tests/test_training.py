"""Seeded training, the checkpoint cache, user checkpoints, and the pipeline on the default experiment."""
from __future__ import annotations

import copy
import dataclasses
import io
import os

import numpy as np
import pytest
import torch

from ood_core import Spec, TrainConfig, metrics, pipeline
from ood_core.data import build_benchmark
from ood_core.detectors import REGISTRY, Detector
from ood_core.inference import ModelAdapter
from ood_core.models.checkpoint import trained_key
from ood_core.models import build_model, checkpoint_path, get_model, load_checkpoint, load_user_model, save_checkpoint
from ood_core.settings import detectors_for

# small and fast: 8 px digits, 2 epochs of 5 batches (about a second per training on one CPU thread)
SPEC = Spec(image_size=8, training=TrainConfig(epochs=2, batch_size=256))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread


@pytest.fixture(scope="module")
def bench():
    return build_benchmark(SPEC, ood_sets=("uniform",))


@pytest.fixture(scope="module")
def trained(bench, tmp_path_factory):
    """One training of SPEC into its own cache folder: (TrainResult, cache_dir)."""
    cache = tmp_path_factory.mktemp("cache-ref")
    return get_model(SPEC, bench, cache_dir=cache, device="cpu", retrain=True), cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- determinism -----------------------------------------------------------------------------------

def test_training_is_deterministic_under_a_seed(bench, trained, tmp_path):
    first, _ = trained
    seen = []
    second = get_model(SPEC, bench, progress=seen.append, cache_dir=tmp_path, device="cpu", retrain=True)
    assert not first.from_cache and not second.from_cache
    assert _same_weights(first.model, second.model)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert len(first.history) == SPEC.training.epochs
    # the progress callback saw every epoch, with the numbers the history keeps
    assert [p.epoch for p in seen] == [1, 2] and all(p.epochs == 2 for p in seen)
    assert all(0.0 <= p.val_accuracy <= 1.0 and np.isfinite(p.loss) for p in seen)
    assert [p.loss for p in seen] == [h["loss"] for h in second.history]


def test_another_seed_or_member_gives_other_weights(trained, tmp_path):
    first, _ = trained
    spec1 = SPEC.with_seed(1)
    other = get_model(spec1, build_benchmark(spec1, ood_sets=()), cache_dir=tmp_path, retrain=True)
    assert not _same_weights(first.model, other.model)
    # ensemble member 1: same seed and data split, another initialisation
    spec_m = dataclasses.replace(SPEC, training=dataclasses.replace(SPEC.training, member=1))
    bench_m = build_benchmark(spec_m, ood_sets=())
    member = get_model(spec_m, bench_m, cache_dir=tmp_path, retrain=True)
    assert not _same_weights(first.model, member.model)
    np.testing.assert_array_equal(bench_m.train.y, build_benchmark(SPEC, ood_sets=()).train.y)


# --- checkpoint cache ------------------------------------------------------------------------------

def test_second_call_loads_from_cache(bench, trained):
    first, cache = trained
    path = checkpoint_path(SPEC, cache)
    assert path.exists() and path.name == f"{SPEC.model}-{trained_key(SPEC)}.pt"
    again = get_model(SPEC, bench, cache_dir=cache)
    assert again.from_cache
    assert _same_weights(first.model, again.model)
    assert again.history == first.history
    assert not again.model.training  # loaded in eval mode


def test_empty_or_missing_checkpoint_is_not_loaded(bench, tmp_path):
    path = checkpoint_path(SPEC, tmp_path)
    assert load_checkpoint(path, SPEC, bench) is None
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert load_checkpoint(path, SPEC, bench) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_retrained_and_replaced(bench, trained, tmp_path, damage):
    first, cache = trained
    good = checkpoint_path(SPEC, cache).read_bytes()
    path = checkpoint_path(SPEC, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes({"garbage": b"\x00not a checkpoint\xff" * 50, "truncated": good[: len(good) // 2]}[damage])
    assert load_checkpoint(path, SPEC, bench) is None
    res = get_model(SPEC, bench, cache_dir=tmp_path)
    assert not res.from_cache  # retrained, not loaded
    assert "damaged" in res.note  # and said so
    assert len(list(path.parent.glob(path.name + ".corrupt-*"))) == 1  # the damaged file was kept aside
    assert _same_weights(res.model, first.model)  # seeded: the same model as before
    reloaded = load_checkpoint(path, SPEC, bench)  # the file was replaced by a valid one
    assert reloaded is not None and _same_weights(reloaded.model, first.model)


def test_checkpoint_of_another_spec_is_not_used(bench, trained, tmp_path):
    _, cache = trained
    other = SPEC.with_seed(3)
    path = checkpoint_path(other, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint_path(SPEC, cache).read_bytes())  # SPEC's weights under other's name
    assert load_checkpoint(path, other, bench) is None
    bench3 = build_benchmark(other, ood_sets=())
    res = get_model(other, bench3, cache_dir=tmp_path)
    assert not res.from_cache
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["spec_key"] == trained_key(other)


def test_checkpoint_with_wrong_shapes_is_not_used(bench, tmp_path):
    path = checkpoint_path(SPEC, tmp_path)
    wrong = build_model("small_cnn", 1, 4)
    save_checkpoint(path, wrong, SPEC, [], 0.0)  # right key, wrong class count
    assert load_checkpoint(path, SPEC, bench) is None


def test_save_checkpoint_is_atomic(bench, trained, tmp_path, monkeypatch):
    first, _ = trained
    path = tmp_path / "models" / "m.pt"

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, first.model, SPEC, first.history, 1.0)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no .tmp left behind
    monkeypatch.undo()

    # an existing good checkpoint survives a failed overwrite untouched
    save_checkpoint(path, first.model, SPEC, first.history, 1.0)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, build_model("small_cnn", 1, 10), SPEC, [], 0.0)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]
    loaded = load_checkpoint(path, SPEC, bench)
    assert loaded is not None and _same_weights(loaded.model, first.model) and loaded.seconds == 1.0


# --- user checkpoints ------------------------------------------------------------------------------

def _buffer(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_load_user_model_accepts_a_state_dict_or_a_checkpoint(bench, trained):
    first, cache = trained
    m = load_user_model(_buffer(first.model.state_dict()), SPEC, bench)
    assert _same_weights(m, first.model) and not m.training
    m2 = load_user_model(checkpoint_path(SPEC, cache), SPEC, bench)  # our own checkpoint format, by path
    assert _same_weights(m2, first.model)


@pytest.mark.parametrize("payload,message", [
    (b"\x00\x01garbage bytes, not a zip or pickle", "not a loadable"),
    (b"", "not a loadable"),
    ([1, 2, 3], "no state_dict"),
    (torch.zeros(3), "no state_dict"),
    ({"weight": 1.0}, "no state_dict"),
])
def test_load_user_model_rejects_non_checkpoints(bench, payload, message):
    buf = io.BytesIO(payload) if isinstance(payload, bytes) else _buffer(payload)
    with pytest.raises(ValueError, match=message):
        load_user_model(buf, SPEC, bench)


@pytest.mark.parametrize("channels,classes", [(1, 5), (3, 10)])
def test_load_user_model_rejects_another_architecture(bench, channels, classes):
    state = build_model("small_cnn", channels, classes).state_dict()
    with pytest.raises(ValueError, match="does not match") as e:
        load_user_model(_buffer(state), SPEC, bench)
    assert "10 classes" in str(e.value) and "1 input channel" in str(e.value)


# --- the default experiment and the pipeline -------------------------------------------------------

@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_default_experiment_accuracy_and_outputs(default_experiment):
    exp = default_experiment
    assert exp.id_accuracy >= 0.97
    assert exp.id_accuracy == metrics.accuracy(exp.outputs["test"].logits, exp.bench.test.y)
    for name, split in exp.bench.splits().items():
        out = exp.outputs[name]
        assert out.logits.shape == (len(split), 10) and out.features.shape == (len(split), 128), name
        np.testing.assert_array_equal(out.labels, split.y)
    for name in exp.ood_names:
        assert np.all(exp.outputs[name].labels == -1), name
    for name in ("train", "val", "test"):
        assert set(np.unique(exp.outputs[name].labels)) == set(range(10)), name
    # features are the non-negative penultimate activations; logits = W h + b
    f = exp.outputs["test"].features
    assert f.min() >= 0.0
    np.testing.assert_allclose(f @ exp.adapter.head_weight.T + exp.adapter.head_bias, exp.outputs["test"].logits,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_outputs_of_new_inputs_is_the_same_forward_pass(default_experiment):
    exp = default_experiment
    test = exp.outputs["test"]
    out = exp.outputs_of(test.inputs[:7].astype(np.float64))  # any float dtype: run as float32
    np.testing.assert_allclose(out.logits, test.logits[:7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.features, test.features[:7], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.labels, -1)  # new inputs have no label
    assert out.inputs.dtype == np.float32 and out.inputs.shape == test.inputs[:7].shape
    msp = exp.fit_detector("msp")
    np.testing.assert_allclose(msp.score(out), msp.score(test.subset(np.arange(7))), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fast_experiment(default_experiment):
    """The default experiment, cut down so that all detectors evaluate in seconds on a CPU.

    Same model and data; every split subsampled (seeded); ensemble members are perturbed copies of the model
    (no extra trainings). A new Experiment object: the shared session fixture is not changed.
    """
    exp = default_experiment
    rng = np.random.default_rng(0)
    sizes = {"train": 400, "val": 150, "test": 300}
    outputs = {name: out.subset(np.sort(rng.choice(len(out), size=min(len(out), sizes.get(name, 60)), replace=False)))
               for name, out in exp.outputs.items()}

    def member(i: int) -> ModelAdapter:
        m = copy.deepcopy(exp.model)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * p.abs().mean() * torch.randn(p.shape, generator=g))
        return ModelAdapter(m.eval(), exp.device, input_std=exp.bench.std)

    return dataclasses.replace(exp, outputs=outputs, _adapter=None, _members={i: member(i) for i in range(1, 10)})


# the few detectors that run the network many times get their cheapest setting
CHEAP = {"mc_dropout": {"passes": 3}, "ensemble": {"members": 3}}


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_evaluate_all_detectors(fast_experiment):
    exp = fast_experiment
    names = detectors_for(exp.spec.setting, exp.spec.model, exp.bench.num_classes)
    not_applicable = sorted(set(REGISTRY) - set(names))
    # only methods that need a one-class model's own score, or a classifier trained in another regime (RPL's
    # reciprocal points), do not apply to a cross-entropy classifier
    assert set(not_applicable) <= {n for n, c in REGISTRY.items() if "model_score" in c.needs or c.regimes}
    params = {n: p for n, p in CHEAP.items() if n in REGISTRY}
    # "all" = every detector that applies; all_splits: also the train and val scores (what --save-scores writes)
    rows, scores = pipeline.evaluate(exp, "all", params, all_splits=True)
    assert len(rows) == len(names) * len(exp.ood_names)
    assert {(r["detector"], r["ood_set"]) for r in rows} == {(n, o) for n in names for o in exp.ood_names}
    for r in rows:
        assert r["error"] is None, f"{r['detector']}: {r['error']}"
        for m in ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_error"):
            assert np.isfinite(r[m]) and 0.0 <= r[m] <= 1.0, (r["detector"], r["ood_set"], m)
    for n in names:
        assert set(scores[n]) == {"train", "val", "test", *exp.ood_names}
        assert all(len(scores[n][s]) == len(exp.outputs[s]) for s in scores[n])
    # the rows are the metrics of the returned scores
    for r in rows[:: max(1, len(rows) // 25)]:
        sc = scores[r["detector"]]
        assert r["auroc"] == metrics.auroc(sc["test"], sc[r["ood_set"]])
        assert r["fpr95"] == metrics.fpr95(sc["test"], sc[r["ood_set"]])
    # with a trained model, the class-conditional Gaussian separates far-OOD noise
    by = {(r["detector"], r["ood_set"]): r for r in rows}
    assert by[("mahalanobis", "rademacher")]["auroc"] > 0.9


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_a_detector_that_does_not_apply_is_refused_by_name(default_experiment):
    one_class_only = [n for n, c in REGISTRY.items() if "model_score" in c.needs]
    if not one_class_only:
        pytest.skip("no detector needs a one-class model's score")
    with pytest.raises(ValueError, match=one_class_only[0]):
        pipeline.evaluate(default_experiment, [one_class_only[0], "msp"])


class _Boom(Detector):
    name = "boom_test"
    title = "Always fails"
    family = "output"
    formula = latex = reference = "-"

    def _score(self, out):
        raise RuntimeError("kaboom: detector blew up")


class _NaN(Detector):
    name = "nan_test"
    title = "Gives NaN"
    family = "output"
    formula = latex = reference = "-"

    def _score(self, out):
        return np.full(len(out), np.nan)


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_a_failing_detector_is_isolated(default_experiment, monkeypatch):
    monkeypatch.setitem(REGISTRY, "boom_test", _Boom)
    monkeypatch.setitem(REGISTRY, "nan_test", _NaN)
    exp = default_experiment
    rows, scores = pipeline.evaluate(exp, ["msp", "boom_test", "nan_test", "energy"])
    n_ood = len(exp.ood_names)
    assert len(rows) == 4 * n_ood
    boom = [r for r in rows if r["detector"] == "boom_test"]
    nan = [r for r in rows if r["detector"] == "nan_test"]
    assert len(boom) == n_ood and all("kaboom" in r["error"] and r["auroc"] is None for r in boom)
    assert len(nan) == n_ood and all("non-finite" in r["error"] and r["auroc"] is None for r in nan)
    good = [r for r in rows if r["detector"] in ("msp", "energy")]
    assert len(good) == 2 * n_ood and all(r["error"] is None and np.isfinite(r["auroc"]) for r in good)
    assert set(scores) == {"msp", "energy"}
    # the failure changes nothing for the others: the same numbers as when evaluated alone
    alone, _ = pipeline.evaluate(exp, ["energy"])
    assert [r["auroc"] for r in alone] == [r["auroc"] for r in rows if r["detector"] == "energy"]


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_evaluate_rejects_unknown_detector_names(default_experiment):
    with pytest.raises(ValueError, match="unknown detector"):
        pipeline.evaluate(default_experiment, ["msp", "no_such_detector"])
    with pytest.raises(ValueError):
        pipeline.evaluate(default_experiment, [])


@pytest.mark.slow  # the default experiment: a 30-epoch training unless another test ran it
def test_prepare_uses_the_cache(default_experiment, cache_dir):
    assert checkpoint_path(default_experiment.spec, cache_dir).exists()
    again = pipeline.prepare(Spec(), cache_dir=cache_dir, device="cpu")
    assert again.training.from_cache
    assert _same_weights(again.model, default_experiment.model)
    np.testing.assert_array_equal(again.outputs["test"].logits, default_experiment.outputs["test"].logits)


def test_environment_cache_is_not_the_repository(cache_dir):
    # conftest points the cache at a temporary folder; tests never write data/cache
    assert os.environ["OOD_EXPLORER_CACHE"] == str(cache_dir)
    from ood_core.models import DEFAULT_CACHE_DIR
    assert str(DEFAULT_CACHE_DIR) == str(cache_dir)


def test_the_closed_set_recipe_smooths_labels():
    from ood_core.models.train import CLOSEDSET_SMOOTHING, regime_loss

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = logits.log_softmax(1)[0]
    k, eps = 3, CLOSEDSET_SMOOTHING
    expected = -((1 - eps) * logp[0] + eps / k * logp.sum())  # cross-entropy against the smoothed one-hot
    assert float(regime_loss("closedset", logits, torch.tensor([0]))) == pytest.approx(float(expected), rel=1e-6)


def test_the_closed_set_recipe_trains_on_a_cosine_schedule_and_is_reproducible(bench, monkeypatch):
    # the recipe's learning rate at each optimiser step is the warm-up-then-cosine formula; two runs agree bit for bit
    from ood_core.models.recipes import CLOSEDSET_WARMUP, cosine_warmup_factor
    from ood_core.models.train import train_classifier

    spec = dataclasses.replace(SPEC, training=dataclasses.replace(SPEC.training, regime="closedset"))
    seen: list[float] = []
    step = torch.optim.lr_scheduler.LambdaLR.step

    def spy(self, *a, **kw):  # the learning rate in force until this call
        seen.append(self.optimizer.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", spy)
    first = train_classifier(spec, bench)
    monkeypatch.undo()
    steps = spec.training.epochs * int(np.ceil(len(bench.train) / spec.training.batch_size))
    warmup = max(1, round(CLOSEDSET_WARMUP * steps))
    # LambdaLR steps once when it is built, then after every optimiser step t = 0 .. steps - 1
    assert len(seen) == steps + 1
    assert seen[1:] == pytest.approx([spec.training.lr * cosine_warmup_factor(t, steps, warmup) for t in range(steps)])
    second = train_classifier(spec, bench)
    assert _same_weights(first.model, second.model)
