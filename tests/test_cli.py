"""The command line gives the dashboard's numbers: list-detectors, run --json / --save-outputs / --save-scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ood_core import Spec, cli, compare, metrics, pipeline
from ood_core.detectors import REGISTRY
from ood_core.settings import detectors_for


def test_list_detectors_prints_one_line_per_detector(capsys):
    assert cli.main(["list-detectors"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(REGISTRY)
    assert len(lines) >= 35
    knn = next(ln for ln in lines if ln.startswith("knn "))
    assert knn.split()[1] == "distance" and "k=50" in knn


@pytest.mark.slow  # trains the default experiment (30 epochs) unless another test already did
def test_run_writes_json_outputs_and_scores_that_match_the_library(tmp_path, capsys, cache_dir, default_experiment):
    out = tmp_path / "out.json"
    argv = ["run", "--dataset", "digits", "--setting", "ood", "--detectors", "msp,energy,knn", "--seed", "0",
            "--json", str(out), "--save-outputs", str(tmp_path / "outputs"), "--save-scores", str(tmp_path / "scores"),
            "--cache-dir", str(cache_dir), "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| detector | gaussian |" in table and "| msp |" in table
    doc = json.loads(out.read_text())
    assert doc["spec"] == Spec().to_dict()
    assert doc["id_accuracy"] == pytest.approx(default_experiment.id_accuracy)
    rows = doc["results"]
    assert {(r["detector"], r["ood_set"]) for r in rows} == {
        (d, o) for d in ("msp", "energy", "knn") for o in default_experiment.ood_names}
    expected, _ = pipeline.evaluate(default_experiment, ["msp", "energy", "knn"])
    by = {(r["detector"], r["ood_set"]): r for r in expected}
    for r in rows:
        assert r["error"] is None and 0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1
        assert r["auroc"] == pytest.approx(by[(r["detector"], r["ood_set"])]["auroc"], abs=1e-12)
    # the saved arrays reproduce the numbers outside the app
    test = np.load(tmp_path / "outputs" / "test.npz")
    assert test["logits"].shape == (len(default_experiment.bench.test), 10) and test["features"].shape[1] == 128
    scores = np.load(tmp_path / "scores" / "energy.npz")
    assert set(scores.files) == {"train", "val", "test", *default_experiment.ood_names}
    rot = next(r for r in rows if r["detector"] == "energy" and r["ood_set"] == "rotated")
    assert metrics.auroc(scores["test"], scores["rotated"]) == pytest.approx(rot["auroc"], abs=1e-12)


def test_classifier_runs_estimate_equals_the_dashboards_for_a_cached_experiment(cache_dir, default_experiment,
                                                                              monkeypatch):
    """With the network cached, a run costs what the dashboard's estimates.detectors says for the same detectors, at
    the same forward rate (the dashboard times the model; the CLI has none before it runs: the reference rate)."""
    from ood_core import estimates
    from ood_core.settings import detectors_for

    exp = default_experiment
    monkeypatch.setattr(estimates, "model_forward", lambda e: estimates.reference_forward(e.spec))
    names = [n for n in detectors_for("ood", exp.spec.model, exp.bench.num_classes) if n != "ensemble"]
    sizes = {s: len(exp.outputs[s]) for s in ("train", "val")}
    scored = sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))
    est = estimates.classifier_runs([exp.spec], names, sizes, scored, cache_dir)
    assert est.trains == 0 and est.seconds == pytest.approx(estimates.detectors(exp, names).seconds)
    assert est.what == f"scores {len(names)} detectors on {scored:,} images per run (1 run)"


def test_classifier_runs_estimate_counts_every_network_not_cached(tmp_path):
    """Two seeds from an empty cache with the ensemble (5 members): 2 models and 8 members train; each run then pays
    the post-hoc detectors, the members' forward passes and ODIN's own passes, by hand."""
    from ood_core import estimates

    specs = [Spec(seed=0), Spec(seed=1)]
    sizes, scored = {"train": 900, "val": 100}, 1000
    est = estimates.classifier_runs(specs, ["msp", "ensemble", "odin"], sizes, scored, tmp_path)
    forward = estimates.REFERENCE_FORWARD_S * estimates._size(specs[0])  # the small CNN: no weight
    per_run = (estimates.POST_HOC_S + 4 * forward * scored + estimates.NETWORK_FORWARDS["odin"] * forward * scored)
    assert est.trains == 10
    assert est.seconds == pytest.approx(10 * estimates.training(specs[0], 900).seconds + 2 * per_run)
    assert est.what.startswith("trains 10 networks (2 models and 8 ensemble members), then scores 3 detectors")


def test_osr_estimate_counts_each_split_and_scores_its_unknowns(tmp_path):
    """OSR split i trains the spec at seed + i on the known classes; every split scores its test and unknown sets."""
    from ood_core import estimates
    from ood_core.data import build_benchmark

    args = cli.build_parser().parse_args(["run", "--setting", "osr", "--splits", "2", "--detectors", "msp,ensemble",
                                          "--cache-dir", str(tmp_path)])
    base = Spec(setting="osr")
    splits = [base, base.replace(seed=1)]
    est = cli.classifier_estimate(args, splits, ())
    bench = build_benchmark(base, ())
    assert set(bench.ood) == {"unknown"}
    scored = len(bench.test) + len(bench.ood["unknown"])
    assert est == estimates.classifier_runs(splits, ["msp", "ensemble"], {"train": len(bench.train),
                                                                         "val": len(bench.val)}, scored, tmp_path)
    assert est.trains == 10 and f"on {scored:,} images per run (2 runs)" in est.what


def test_run_says_what_it_will_cost_before_any_work(cache_dir, default_experiment, capsys):
    """The estimate line comes first: here the default experiment's network is cached, so only the scoring is left."""
    from ood_core import estimates

    assert cli.main(["run", "--setting", "ood", "--detectors", "msp,energy", "--cache-dir", str(cache_dir),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    exp = default_experiment
    scored = sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))
    expected = estimates.classifier_runs([Spec()], ["msp", "energy"], {"train": len(exp.outputs["train"]),
                                                                       "val": len(exp.outputs["val"])}, scored,
                                         cache_dir)
    assert f"estimate: {expected.words()}\n" in err and expected.trains == 0
    assert err.index("estimate:") < err.index("[seed 0] model from cache")


@pytest.mark.slow  # needs the default experiment (30 epochs) unless another test trained it
def test_all_means_every_detector_that_applies(default_experiment):
    names = pipeline.resolve_detectors("all", default_experiment)
    assert names == detectors_for("ood", "small_cnn", 10) and "model_score" not in names and len(names) >= 35


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """A one-epoch, 8 px classifier experiment: enough to check which detectors a run resolves (about a second)."""
    from ood_core import Spec, TrainConfig, pipeline

    spec = Spec(image_size=8, training=TrainConfig(epochs=1, batch_size=256))
    return pipeline.prepare(spec, cache_dir=tmp_path_factory.mktemp("tiny"), device="cpu")


def test_run_seeds_all_means_every_detector_that_applies_to_each_experiment(tiny_experiment, monkeypatch):
    exp = tiny_experiment
    # every detector scores as MSP here (fitting and scoring all of them, ensembles included, takes minutes);
    # what is checked is which names run_seeds resolves "all" to and that none of them is refused
    msp = exp.fit_detector("msp")
    monkeypatch.setattr(exp, "fit_detector", lambda name, params=None, *args, **kwargs: msp)
    seen = []
    rows, accs = compare.run_seeds(lambda seed: exp, [0], "all",
                                   on_seed=lambda seed, exp, r, scores: seen.append((seed, len(r), set(scores))))
    expected = detectors_for("ood", "small_cnn", 10)
    assert "model_score" not in expected
    assert list(dict.fromkeys(r["detector"] for r in rows)) == expected
    assert all(r["error"] is None and r["seed"] == 0 for r in rows)
    assert len(rows) == len(expected) * len(exp.ood_names)
    assert accs == [exp.id_accuracy]
    assert seen == [(0, len(rows), set(expected))]


def test_run_seeds_refuses_unknown_detectors_before_preparing_anything():
    def never(seed):
        raise AssertionError("no experiment should be prepared")

    with pytest.raises(ValueError, match="unknown detector"):
        compare.run_seeds(never, [0, 1], "msp,nope")


@pytest.mark.parametrize("argv, message", [
    (["run", "--detectors", "nope"], "unknown detector"),
    (["run", "--setting", "osr", "--known", "11", "--splits", "1"], "known classes K must be in 2..9"),
    (["run", "--setting", "ad", "--contamination", "0.7"], "contamination ratio must be in [0, 0.5)"),
    (["run", "--setting", "nd", "--normal-class", "12"], "do not exist"),
    (["run", "--seeds", "0"], "--seeds must be at least 1"),
    (["run", "--epochs", "0"], "--epochs must be in 1..500, got 0"),
    (["run", "--epochs", "501"], "--epochs must be in 1..500, got 501"),
    (["run", "--device", "foo"], "--device must be cpu, cuda or cuda:N, got 'foo'"),
    (["run", "--setting", "nd", "--detectors", "knn"], "--detectors does not apply to --setting nd"),
    (["run", "--setting", "ad", "--epochs", "5"], "--epochs does not apply to --setting ad"),
    (["run", "--setting", "osr", "--seeds", "3"], "--seeds does not apply to --setting osr (only to --setting ood)"),
    (["run", "--known", "4"], "--known does not apply to --setting ood (only to --setting osr)"),
    (["run", "--setting", "nd", "--contamination", "0.1"], "--contamination does not apply to --setting nd"),
    (["run", "--normal-class", "3"], "--normal-class does not apply to --setting ood"),
    (["run", "--setting", "nd", "--regime", "oe"], "--regime does not apply to --setting nd"),
    (["run", "--synthetic", "all"], "--synthetic does not apply to --setting ood"),
    (["run", "--setting", "osr", "--save-scores", "s"], "--save-scores does not apply to --setting osr"),
])
def test_bad_input_is_a_clear_error_and_exit_code_2(argv, message, capsys):
    assert cli.main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_cuda_device_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["run", "--device", "cuda", "--quiet"]) == 2
    assert "this machine has no usable CUDA device; use --device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--save-outputs", "--save-scores"])
def test_an_unwritable_output_path_fails_before_any_training(flag, tmp_path, capsys, monkeypatch):
    from ood_core import pipeline

    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("nothing may be prepared"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a path under a regular file cannot be created, even by root
    bad = blocker / "out" / ("r.json" if flag == "--json" else "folder")
    assert cli.main(["run", flag, str(bad), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag} {bad}: cannot write there" in err
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").glob("*.pt"))


def test_json_pointing_at_a_folder_is_refused(tmp_path, capsys):
    assert cli.main(["run", "--json", str(tmp_path), "--quiet"]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
