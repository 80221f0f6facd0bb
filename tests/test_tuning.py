"""ood_core.tuning: parameters chosen on OOD validation data, never on a test set."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ood_core import Spec, estimates, metrics, pipeline, tuning
from ood_core.data import build_benchmark
from ood_core.detectors import REGISTRY, Detector, Param
from ood_core.inference import Outputs


class _Signed(Detector):
    """Max logit with a sign to choose: "right" (higher = more OOD, as every detector) or "wrong" (the default)."""

    name, title, family = "signed_for_test", "Signed (test only)", "output"
    latex = r"S(x) = \pm \max_c f_c(x)"
    needs = ("logits",)
    params = {"sign": Param("wrong", kind="choice", choices=("wrong", "right"))}

    def _score(self, out):
        m = out.logits.astype(np.float64).max(axis=1)
        return -m if self.sign == "right" else m


@pytest.fixture
def signed(monkeypatch):
    monkeypatch.setitem(REGISTRY, _Signed.name, _Signed)
    return _Signed


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x).reshape(len(x), -1)}


def test_validation_sets_hold_no_test_image(default_experiment):
    exp = default_experiment
    val = tuning.validation_sets(exp)
    synthetic_or_transformed = [n for n in exp.ood_names if tuning.OOD_SETS[n].kind in ("synthetic", "transformed")]
    assert set(val) == set(synthetic_or_transformed) and val
    every_test = _rows(exp.bench.test.x) | set().union(*(_rows(s.x) for s in exp.bench.ood.values()))
    for name, split in val.items():
        assert len(split) == round(tuning.VAL_FRACTION * len(exp.bench.val)) and (split.y == -1).all()
        assert not _rows(split.x) & every_test, name


def test_open_set_validation_unknowns_come_from_the_validation_split():
    bench = build_benchmark(Spec(setting="osr"), ())
    val, test = bench.val_ood["unknown"], bench.ood["unknown"]
    assert len(val) > 0 and (val.y == -1).all()
    assert not _rows(val.x) & _rows(test.x) and not _rows(val.x) & _rows(bench.val.x)
    # the validation split is a third of the test split's size (10% vs 30% of the images)
    assert 0.25 < len(val) / len(test) < 0.42


def test_tune_picks_the_value_with_the_best_validation_auroc(default_experiment, signed):
    """Recomputed from the model at hand: the sign whose mean validation AUROC is higher (the two sum to 1)."""
    exp = default_experiment
    res = tuning.tune(exp, signed.name)
    val = tuning.validation_outputs(exp)
    m_id = exp.outputs["val"].logits.max(axis=1).astype(np.float64)
    right = np.mean([metrics.auroc(-m_id, -o.logits.max(axis=1).astype(np.float64)) for o in val.values()])
    assert right != pytest.approx(0.5)
    assert res.params == {"sign": "right" if right > 0.5 else "wrong"}
    assert res.val_auroc == pytest.approx(max(right, 1 - right)) and res.default_val_auroc == pytest.approx(1 - right)
    assert [t["value"] for t in res.tried] == ["wrong", "right"]  # the default first
    assert res.changed() == ({"sign": "right"} if right > 0.5 else {})


def test_tuning_never_reads_a_test_set(default_experiment, signed):
    """The same choice with every test output replaced by NaN: nothing of ID test or the OOD test sets is read."""
    exp = default_experiment
    nan = {s: Outputs(np.full_like(o.logits, np.nan), np.full_like(o.features, np.nan), o.labels)
           for s, o in exp.outputs.items() if s not in ("train", "val")}
    blind = dataclasses.replace(exp, outputs={**exp.outputs, **nan})
    blind._validation_outputs = None
    for name in (signed.name, "knn", "react"):
        assert tuning.tune(blind, name).params == tuning.tune(exp, name).params


def test_knn_is_tuned_over_its_sweep_list_and_evaluate_reports_the_choice(default_experiment):
    exp = default_experiment
    res = tuning.tune(exp, "knn")
    assert [t["value"] for t in res.tried] == tuning.candidates("knn")["k"]
    assert tuning.candidates("knn")["k"][0] == REGISTRY["knn"].params["k"].default
    best = max(res.tried, key=lambda t: t["val_auroc"])
    assert res.params["k"] == best["value"] and res.val_auroc == pytest.approx(best["val_auroc"])
    rows, _ = pipeline.evaluate(exp, ["knn", "msp", "odin"], tune=True)
    knn = [r for r in rows if r["detector"] == "knn"]
    assert all(r["tuned"] == res.changed() and r["val_auroc"]["tuned"] == res.val_auroc for r in knn)
    assert not any("tuned" in r for r in rows if r["detector"] in ("msp", "odin"))  # no params / runs the network
    sc = exp.score(exp.fit_detector("knn", res.params))
    assert knn[0]["auroc"] == pytest.approx(metrics.auroc(sc["test"], sc[knn[0]["ood_set"]]))


def test_a_detector_that_runs_the_network_is_not_tuned(default_experiment):
    res = tuning.tune(default_experiment, "odin")
    assert not tuning.is_tunable("odin") and res.val_auroc is None and res.tried == []
    with pytest.raises(ValueError, match="unknown detector"):
        tuning.tune(default_experiment, "no_such_detector")


class _TrainsSigned(_Signed):
    """_Signed as if its fit trained a network of its own: only `sign` is tuned, never `width`."""

    name = "trains_signed_for_test"
    trains_network = True
    tune_params = ("sign",)
    params = {**_Signed.params, "width": Param(8, 1, 64, "log", kind="int", sweep=(1, 64))}


def test_a_detector_that_trains_a_network_is_tuned_only_in_the_parameters_it_names(default_experiment, signed,
                                                                                     monkeypatch):
    monkeypatch.setitem(REGISTRY, _TrainsSigned.name, _TrainsSigned)
    exp = default_experiment
    assert tuning.is_tunable(_TrainsSigned.name) and tuning.candidates(_TrainsSigned.name) == {
        "sign": ["wrong", "right"]}
    res = tuning.tune(exp, _TrainsSigned.name)
    assert {t["param"] for t in res.tried} == {"sign"} and res.params["width"] == 8
    assert res.params["sign"] == tuning.tune(exp, signed.name).params["sign"]  # the same choice as all-tuned _Signed
    # OpenGAN: its training length, from its sweep (the default first); C2AE names nothing, so it is not tuned
    assert tuning.is_tunable("opengan") and not tuning.is_tunable("c2ae")
    grid = tuning.candidates("opengan")
    assert grid == {"steps": [150, 50, 100, 300, 1000, 3000]}
    assert estimates.tuning_seconds(exp, "opengan", grid) == pytest.approx(
        estimates.OPENGAN_S_PER_STEP * sum(grid["steps"]))
    assert estimates.tuning_seconds(exp, "knn", tuning.candidates("knn")) is None


@pytest.mark.parametrize("name", ["knn", "nnguide"])
def test_tuning_a_neighbour_search_scores_its_values_together_with_the_numbers_of_each_alone(default_experiment, name,
                                                                                            monkeypatch):
    """KNN's and NNGuide's values of k are scored in one search pass per validation split (score_together); the
    validation AUROC of every value is the one validation_auroc gives it alone."""
    from ood_core import neighbours

    exp = default_experiment
    passes = []
    real = neighbours.shared_search
    monkeypatch.setattr(neighbours, "shared_search", lambda q, b, searches, *a, **k: passes.append(len(searches))
                        or real(q, b, searches, *a, **k))
    result = tuning.tune(exp, name)
    val = tuning.validation_outputs(exp)
    k_tried = [t for t in result.tried if t["param"] == "k"]
    assert passes[:1 + len(val)] == [len(k_tried)] * (1 + len(val))  # ID validation + each OOD validation set
    monkeypatch.setattr(neighbours, "shared_search", real)
    defaults = tuning.default_params(name)
    for t in k_tried:
        assert t["val_auroc"] == tuning.validation_auroc(exp, name, {**defaults, "k": t["value"]}, val)
