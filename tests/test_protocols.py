"""The settings' protocols (OSR splits, ND one-vs-all, AD contamination curve) and OSCR, against known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_core import Spec, cli, metrics, pipeline, protocols
from ood_core.data import build_benchmark
from ood_core.data.benchmark import known_classes_for
from ood_core.spec import TrainConfig

QUICK = TrainConfig(epochs=8)  # the protocols' bookkeeping, not the models' quality, is under test here


# --- OSCR (Dhamija et al. 2018) ---------------------------------------------------------------------------

def test_oscr_hand_computed():
    # accept as known when score <= t. Thresholds 0.1 .2 .25 .3 .4 .5:
    # CCR = 1/4 1/4 1/4 2/4 3/4 3/4 (0.2 is misclassified), FPR = 0 0 1/2 1/2 1/2 1
    # area = 1/2 * 1/4 (FPR 0 -> 1/2) + 1/2 * 3/4 (FPR 1/2 -> 1) = 1/2
    id_scores, correct, ood = [0.1, 0.2, 0.3, 0.4], [True, False, True, True], [0.25, 0.5]
    fpr, ccr = metrics.oscr_curve(id_scores, correct, ood)
    assert fpr.tolist() == [0, 0, 0, 0.5, 0.5, 0.5, 1] and ccr.tolist() == [0, 0.25, 0.25, 0.25, 0.5, 0.75, 0.75]
    assert metrics.oscr(id_scores, correct, ood) == pytest.approx(0.5)


def test_oscr_is_auroc_when_every_known_is_classified_correctly():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    assert metrics.oscr(a, np.ones(300, bool), b) == pytest.approx(metrics.auroc(a, b), abs=1e-12)


def test_oscr_maximum_is_closed_set_accuracy():
    correct = np.array([True, True, False, True, False])  # accuracy 3/5
    id_scores, ood = np.arange(5.0), np.arange(10.0, 14.0)  # perfectly separated
    assert metrics.oscr(id_scores, correct, ood) == pytest.approx(0.6)
    assert metrics.oscr(id_scores + 20, correct, ood) == pytest.approx(0.0)  # every unknown accepted first


def test_oscr_rejects_a_mismatched_correct_vector():
    with pytest.raises(ValueError, match="one entry per ID score"):
        metrics.oscr([0.1, 0.2], [True], [0.3])


def test_oscr_figure_ends_at_the_closed_set_accuracy_and_draws_it_as_the_ceiling():
    from ood_core import figures

    correct = np.array([True, False, True, True])
    fig = figures.oscr_figure([0.1, 0.2, 0.3, 0.4], correct, {"unknown": np.array([0.25, 0.5])})
    (trace,) = fig.data
    assert trace.name == "unknown (OSCR 50.0%)"
    assert list(trace.x) == [0, 0, 0, 0.5, 0.5, 0.5, 1] and trace.y[-1] == 0.75  # every known accepted: the accuracy
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == 0.75


# --- OSR ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def osr_result(cache_dir):
    base = Spec(setting="osr", training=QUICK, known_classes=6)
    return base, protocols.run_osr(base, splits=2, detectors=["msp", "max_logit", "openmax"], cache_dir=cache_dir,
                                   device="cpu")


def test_osr_splits_draw_their_own_known_classes(osr_result):
    base, res = osr_result
    assert res.setting == "osr" and len(res.accuracies) == 2
    by_split = {r["split"]: r for r in res.rows}
    assert sorted(by_split) == [0, 1]
    for i, r in by_split.items():
        assert r["seed"] == base.seed + i and r["known_classes"] == known_classes_for(base.seed + i, 10, 6)
    assert by_split[0]["known_classes"] != by_split[1]["known_classes"]
    # the protocol's own unknowns only, unless synthetic sets are asked for
    assert {r["ood_set"] for r in res.rows} == {"unknown"}
    assert {r["detector"] for r in res.rows} == {"msp", "max_logit", "openmax"}


def test_osr_rows_equal_a_direct_evaluation_of_each_split(osr_result, cache_dir):
    base, res = osr_result
    for i in range(2):
        exp = pipeline.prepare(base.replace(seed=base.seed + i), cache_dir=cache_dir, device="cpu")
        assert exp.training.from_cache  # the protocol trained and cached it
        assert res.accuracies[i] == pytest.approx(exp.id_accuracy)
        expected = {r["detector"]: r for r in pipeline.evaluate(exp, ["msp", "max_logit", "openmax"])[0]
                    if r["ood_set"] == "unknown"}
        for r in (r for r in res.rows if r["split"] == i):
            assert r["error"] is None
            e = expected[r["detector"]]
            assert r["auroc"] == pytest.approx(e["auroc"], abs=1e-12)
            assert r["oscr"] == pytest.approx(e["oscr"], abs=1e-12)
            assert r["oscr"] <= res.accuracies[i] + 1e-12  # OSCR never exceeds closed-set accuracy
        # the "unknown" set is exactly the test samples of the other classes
        unknown = exp.bench.ood["unknown"]
        assert len(unknown) + len(exp.bench.test) == len(build_benchmark(Spec(seed=base.seed + i), ()).test)


def test_osr_scores_synthetic_sets_on_request(cache_dir):
    base = Spec(setting="osr", training=QUICK)
    res = protocols.run_osr(base, 1, ["msp"], synthetic=("gaussian", "rotated"), cache_dir=cache_dir, device="cpu")
    assert [r["ood_set"] for r in res.rows] == ["unknown", "gaussian", "rotated"]


def test_osr_needs_at_least_one_split():
    with pytest.raises(ValueError, match="at least 1"):
        protocols.run_osr(Spec(setting="osr"), splits=0)


# --- ND / AD ------------------------------------------------------------------------------------------

def _pixel_knn_auroc(spec: Spec, k: int) -> float:
    """The raw-pixel k-NN baseline computed here from the benchmark alone: cosine-normalised pixels,
    distance to the k-th nearest training image."""
    bench = build_benchmark(spec, ())
    target = "novel" if spec.setting == "nd" else "anomalous"

    def z(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    bank = z(bench.train.x)

    def score(x):
        d = np.sqrt(np.maximum(((z(x)[:, None, :] - bank[None]) ** 2).sum(-1), 0))
        return np.sort(d, axis=1)[:, k - 1]

    s_id, s_ood = score(bench.test.x), score(bench.ood[target].x)
    return roc_auc_score(np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))], np.r_[s_id, s_ood])


def test_novelty_one_vs_all_matches_a_hand_computed_pixel_baseline(cache_dir):
    methods = [("pixels", "knn", {"k": 1}), ("pixels", "knn", {"k": 10})]
    res = protocols.run_one_class(Spec(), "nd", classes=[0, 3], methods=methods, cache_dir=cache_dir, device="cpu")
    assert res.setting == "nd" and res.accuracies == []
    assert {(r["normal_class"], r["method"]) for r in res.rows} == {
        (c, protocols.method_label("pixels", "knn", {"k": k})) for c in (0, 3) for k in (1, 10)}
    for r in res.rows:
        assert r["ood_set"] == "novel" and r["error"] is None and r["model"] == "pixels"
        k = r["params"]["k"]
        assert r["auroc"] == pytest.approx(_pixel_knn_auroc(Spec(setting="nd", normal_class=r["normal_class"]), k),
                                           abs=1e-9)
        assert r["auroc"] > 0.95  # digits: raw-pixel neighbours already separate one digit from the others


def test_anomaly_detection_rows_carry_the_contamination_and_match_the_baseline(cache_dir):
    res = protocols.run_one_class(Spec(), "ad", 0.2, classes=[1], methods=[("pixels", "knn", {"k": 10})],
                                  cache_dir=cache_dir, device="cpu")
    (row,) = res.rows
    assert row["ood_set"] == "anomalous" and row["contamination"] == 0.2
    assert row["auroc"] == pytest.approx(_pixel_knn_auroc(Spec(setting="ad", normal_class=1, contamination=0.2), 10),
                                         abs=1e-9)


def test_contamination_curve_has_one_row_per_ratio_and_degrades(cache_dir):
    res = protocols.contamination_curve(Spec(), (0.0, 0.1, 0.3), classes=[0], methods=[("pixels", "knn", {"k": 1})],
                                        cache_dir=cache_dir, device="cpu")
    assert [r["contamination"] for r in res.rows] == [0.0, 0.1, 0.3]
    aurocs = [r["auroc"] for r in res.rows]
    # a 1-NN distance is the most exposed to contaminants: each anomaly in train makes its look-alikes "normal"
    assert aurocs[0] > aurocs[2]
    for r in res.rows:
        assert r["auroc"] == pytest.approx(
            _pixel_knn_auroc(Spec(setting="ad", normal_class=0, contamination=r["contamination"]), 1), abs=1e-9)


def test_one_class_protocols_score_synthetic_sets_on_request(cache_dir):
    res = protocols.run_one_class(Spec(), "nd", classes=[2], methods=[("pixels", "knn", {"k": 1})],
                                  synthetic=("inverted",), cache_dir=cache_dir, device="cpu")
    assert [r["ood_set"] for r in res.rows] == ["novel", "inverted"]
    assert res.rows[1]["auroc"] > 0.99  # inverted digits are far from every normal image in pixel space


@pytest.mark.parametrize("call, message", [
    (lambda: protocols.run_one_class(Spec(), "ood"), "one-class protocols are 'nd' and 'ad'"),
    (lambda: protocols.run_one_class(Spec(), "nd", classes=[10]), r"normal class\(es\) \[10\] do not exist"),
    (lambda: protocols.contamination_curve(Spec(), (0.1, 0.5)), r"contamination ratio must be in \[0, 0.5\)"),
    (lambda: protocols.run_one_class(Spec(), "nd", classes=[0], methods=[("pixels", "msp", {})]),
     "does not apply to model pixels"),
])
def test_bad_protocol_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- CLI --------------------------------------------------------------------------------------------------

def test_cli_osr_prints_the_table_and_writes_split_rows(tmp_path, capsys, cache_dir, osr_result):
    out = tmp_path / "osr.json"
    argv = ["run", "--setting", "osr", "--known", "6", "--splits", "2", "--epochs", "8", "--detectors", "msp,openmax",
            "--synthetic", "gaussian", "--json", str(out), "--cache-dir", str(cache_dir), "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "6 known classes, 2 split(s)" in text and "| msp |" in text and "| openmax |" in text
    assert "AUROC (%) on the synthetic and transformed OOD sets" in text and "| detector | gaussian |" in text
    doc = json.loads(out.read_text())
    assert len(doc["id_accuracy_per_split"]) == 2
    assert doc["id_accuracy_per_split"] == pytest.approx(osr_result[1].accuracies)  # same cached models
    assert {(r["split"], r["ood_set"]) for r in doc["results"]} == {(s, o) for s in (0, 1) for o in ("unknown", "gaussian")}
    expected = {(r["split"], r["detector"]): r["auroc"] for r in osr_result[1].rows}
    for r in doc["results"]:
        if r["ood_set"] == "unknown" and r["detector"] == "msp":
            assert r["auroc"] == pytest.approx(expected[(r["split"], "msp")], abs=1e-12)


def test_cli_novelty_table_has_a_column_per_class(tmp_path, capsys, cache_dir, monkeypatch):
    monkeypatch.setattr(protocols, "DEFAULT_ONE_CLASS_METHODS", (("pixels", "knn", {"k": 1}),))
    out = tmp_path / "nd.json"
    assert cli.main(["run", "--setting", "nd", "--normal-class", "4", "--json", str(out), "--cache-dir",
                     str(cache_dir), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| method | 4 | mean ± sample std over 1 class |" in text and "| raw pixels · knn (k=1) |" in text
    doc = json.loads(out.read_text())
    (row,) = doc["results"]
    assert row["normal_class"] == 4 and row["auroc"] == pytest.approx(_pixel_knn_auroc(Spec(setting="nd", normal_class=4), 1))


def test_cli_one_class_runs_say_what_they_will_cost_before_starting(tmp_path, capsys, cache_dir, monkeypatch):
    """The estimate line comes first on stderr: the one-class models not cached yet, trained on about as many images
    as the first normal class has, then every method on every class (estimates.one_class)."""
    from ood_core import estimates
    from ood_core.data import build_benchmark

    monkeypatch.setattr(protocols, "DEFAULT_ONE_CLASS_METHODS", (("pixels", "knn", {"k": 1}),))
    assert cli.main(["run", "--setting", "nd", "--normal-class", "4", "--cache-dir", str(cache_dir)]) == 0
    err = capsys.readouterr().err
    expected = estimates.one_class(Spec(setting="nd"), "nd", Spec.contamination, [4], protocols.DEFAULT_ONE_CLASS_METHODS,
                                   0, cache_dir)
    assert f"estimate: {expected.words()}\n" in err and "scores 1 method on 1 normal class" in err
    assert err.index("estimate:") < err.index("normal class 4: raw pixels")  # said before the work starts
    # a model not cached yet is counted with its training: here on the AD curve, once per ratio
    methods = (("autoencoder", "model_score", {}), ("pixels", "knn", {"k": 1}))
    args = cli.build_parser().parse_args(["run", "--setting", "ad", "--curve", "--cache-dir", str(tmp_path)])
    base = Spec(setting="ad")
    est = cli.one_class_estimate(args, base, [2, 5], methods)
    n = len(build_benchmark(base.replace(normal_class=2, model="autoencoder"), ood_sets=()).train)
    per_training = estimates.reference_training(base.replace(model="autoencoder", normal_class=2), n).seconds
    ratios = len(protocols.CURVE_RATIOS)
    assert est.trains == 2 * ratios
    assert est.seconds == pytest.approx(ratios * (2 * per_training + estimates.ONE_CLASS_METHOD_S * 2 * 2))
    assert "trains 10 one-class models in all" in est.what


@pytest.mark.parametrize("text, expected", [("", ()), ("all", None), ("gaussian, rotated,gaussian", ("gaussian", "rotated"))])
def test_synthetic_option_parses(text, expected):
    from ood_core.data import DEFAULT_OOD_SETS

    assert cli.parse_synthetic(text) == (tuple(DEFAULT_OOD_SETS) if expected is None else expected)


def test_synthetic_option_rejects_an_unknown_set(capsys):
    assert cli.main(["run", "--setting", "osr", "--synthetic", "gaussian,nope", "--quiet"]) == 2
    assert "unknown OOD set(s) nope for --synthetic" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--setting", "ad", "--curve", "--synthetic", "gaussian"], "--synthetic does not apply to --curve"),
    (["run", "--setting", "nd", "--curve"], "--curve does not apply to --setting nd (only to --setting ad)"),
    (["run", "--setting", "osr", "--curve"], "--curve does not apply to --setting osr (only to --setting ad)"),
])
def test_curve_options_that_do_not_fit_are_refused(argv, message, capsys):
    assert cli.main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_a_protocol_run_leaves_the_slow_one_class_models_out_unless_asked():
    # the default methods are every offered method but those of the models that take minutes per class
    # and those whose teacher learnt from ImageNet
    slow = set(protocols.SLOW_ONE_CLASS_MODELS) | set(protocols.PRETRAINED_ONE_CLASS_MODELS)
    assert {m[0] for m in protocols.ONE_CLASS_METHODS} >= slow
    assert protocols.DEFAULT_ONE_CLASS_METHODS == tuple(m for m in protocols.ONE_CLASS_METHODS if m[0] not in slow)
    assert not slow & {m[0] for m in protocols.DEFAULT_ONE_CLASS_METHODS}
    import inspect
    for fn in (protocols.run_one_class, protocols.contamination_curve):
        assert inspect.signature(fn).parameters["methods"].default == protocols.DEFAULT_ONE_CLASS_METHODS


def test_cli_runs_every_one_class_method_when_asked(tmp_path, cache_dir, monkeypatch):
    seen = {}

    def fake_run(base, setting, contamination, classes, methods, **kw):
        seen["methods"] = tuple(methods)
        raise SystemExit(0)  # the methods are all this test needs

    monkeypatch.setattr(protocols, "run_one_class", fake_run)
    for flag, want in ((["--one-class-methods", "all"], protocols.ONE_CLASS_METHODS),
                       ([], protocols.DEFAULT_ONE_CLASS_METHODS)):
        with pytest.raises(SystemExit):
            cli.main(["run", "--setting", "nd", "--normal-class", "4", "--cache-dir", str(cache_dir), "--quiet",
                      *flag])
        assert seen.pop("methods") == want
    # an ND/AD option: refused in another setting, with a one-line message
    assert cli.main(["run", "--setting", "ood", "--one-class-methods", "all"]) == 2
