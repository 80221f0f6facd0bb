"""AppTest tests of the Compare, Sensitivity and Methods pages.

The `default_experiment` fixture trains the default model into the per-session temporary cache, so the
pages load it from disk; numbers on the pages are checked against ood_core computed here directly.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from ood_core import Spec, cli, compare, pipeline, protocols
from ood_core.detectors import REGISTRY, Detector
from ood_core.spec import TrainConfig
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
BEST_COLOUR = "#d7f0d2"  # pages/compare.py's highlight of the best cell per column


@pytest.fixture
def app(default_experiment) -> AppTest:
    return AppTest.from_file(APP, default_timeout=180).run()


@pytest.fixture
def downloads(monkeypatch) -> dict:
    """Label -> data of every st.download_button drawn (AppTest keeps only a media URL)."""
    seen: dict = {}
    original = DeltaGenerator.download_button

    def recording(self, label, data, *args, **kwargs):
        seen[label] = data
        seen.setdefault("file names", {})[label] = args[0] if args else kwargs.get("file_name")
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    return seen


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def figure(at: AppTest, key_part: str) -> dict:
    charts = [c for c in at.get("plotly_chart") if key_part in c.proto.id]
    assert charts, f"no chart with {key_part!r} in its key"
    return json.loads(charts[0].proto.spec)


def values(v) -> np.ndarray:
    """A plotly JSON array as numpy: plain lists, or the {"dtype", "bdata", "shape"} form numpy arrays take."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = [int(n) for n in str(v.get("shape", len(a))).split(",")]
        return a.reshape(shape).astype(float)
    return np.array([np.nan if x is None else x for x in np.ravel(v)], dtype=float).reshape(np.shape(v))


def figures_with(at: AppTest, key_part: str) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key_part in c.proto.id]


def styled_cells(df_element, colour: str) -> set[tuple[int, int]]:
    """(row, column) of the cells whose Styler CSS contains `colour` (columns counted in the data, index excluded)."""
    css = df_element.proto.arrow_data.styler.styles
    cells = set()
    for block in re.finditer(r"((?:#T_\w+_row\d+_col\d+,?\s*)+)\{([^}]*)\}", css):
        if colour in block.group(2):
            cells |= {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", block.group(1))}
    return cells


# --- Compare ------------------------------------------------------------------------------------------

@pytest.fixture
def compare_page(app) -> AppTest:
    return app.switch_page("pages/compare.py").run()


def test_compare_heatmap_has_a_cell_per_detector_and_set_and_stars_the_best(compare_page, default_experiment):
    at, exp = compare_page, default_experiment
    no_exception(at)
    fast = [n for n in pipeline.resolve_detectors("all", exp) if not REGISTRY[n].slow()]
    heat = figure(at, "compare-heatmap")["data"][0]
    z = values(heat["z"])
    assert z.shape == (len(fast), len(exp.ood_names)) and heat["x"] == exp.ood_names
    assert heat["y"] == [REGISTRY[n].title for n in fast]
    # the numbers are the library's: MSP's AUROC per OOD set, computed here directly
    rows, _ = pipeline.evaluate(exp, ["msp"])
    np.testing.assert_allclose(z[0], [100 * r["auroc"] for r in rows], atol=1e-9)
    stars = np.array([[t.startswith("★") for t in row] for row in heat["text"]])
    np.testing.assert_array_equal(stars, compare.best_per_column(z / 100, "auroc"))
    assert stars.any(axis=0).all()  # every column has a best
    # the table holds the same numbers, best cells highlighted (columns: Family, then the OOD sets)
    table = at.dataframe[0]
    np.testing.assert_allclose(table.value[exp.ood_names].to_numpy(dtype=float), z, atol=1e-9)
    assert styled_cells(table, BEST_COLOUR) == {(i, j + 1) for i, j in zip(*np.nonzero(stars))}
    # FPR@95: lower is better, so the stars move to the column minima
    at.radio(key="compare-metric").set_value("fpr95").run()
    no_exception(at)
    heat = figure(at, "compare-heatmap")["data"][0]
    z = values(heat["z"])
    stars = np.array([[t.startswith("★") for t in row] for row in heat["text"]])
    np.testing.assert_array_equal(stars, z == np.nanmin(z, axis=0))
    assert "OSCR" not in at.radio(key="compare-metric").options


def test_family_filter_reduces_the_rows(compare_page, default_experiment):
    at = compare_page
    before = len(at.dataframe[0].value)
    at.multiselect(key="compare-families").set_value(["distance"]).run()
    no_exception(at)
    table = at.dataframe[0].value
    distance = [n for n in pipeline.resolve_detectors("all", default_experiment)
                if REGISTRY[n].family == "distance" and not REGISTRY[n].slow()]
    assert len(table) == len(distance) < before
    assert set(table["Family"]) == {"Distance"}
    assert len(figure(at, "compare-heatmap")["data"][0]["y"]) == len(distance)


def test_csv_and_json_downloads(default_experiment, downloads, tmp_path, cache_dir, capsys):
    at = AppTest.from_file(APP, default_timeout=180).run().switch_page("pages/compare.py").run()
    no_exception(at)
    assert {"Download CSV", "Download JSON"} <= {b.label for b in at.get("download_button")}
    doc = json.loads(downloads["Download JSON"])
    assert set(doc) >= {"spec", "seeds", "results", "summary"}
    assert doc["seeds"] == [0] and Spec.from_dict(doc["spec"]) == Spec()
    n_fast = len(at.dataframe[0].value)
    assert len(doc["results"]) == n_fast * len(default_experiment.ood_names)
    assert {"detector", "ood_set", "auroc", "fpr95", "error", "seed"} <= set(doc["results"][0])
    assert {"auroc_mean", "auroc_std", "n_seeds", "errors"} <= set(doc["summary"][0])
    csv = downloads["Download CSV"].splitlines()
    assert csv[0].startswith("detector,title,family,ood_set,n_seeds") and len(csv) == 1 + len(doc["summary"])
    # a filtered table downloads under another name, one that says what was kept
    assert downloads["file names"]["Download CSV"] == "ood-compare-digits-ood-seeds0-0-all.csv"
    at.multiselect(key="compare-families").set_value(["output"]).run()
    at.multiselect(key="compare-sets").set_value(["gaussian"]).run()
    no_exception(at)
    assert downloads["file names"]["Download CSV"] == "ood-compare-digits-ood-seeds0-0-families-output-sets-gaussian.csv"
    assert downloads["file names"]["Download JSON"] == "ood-compare-digits-ood-seeds0-0-families-output-sets-gaussian.json"
    at.multiselect(key="compare-families").set_value(list(dict.fromkeys(
        REGISTRY[n].family for n in ui.detector_options(default_experiment)))).run()
    at.multiselect(key="compare-sets").set_value(default_experiment.ood_names).run()
    # the CLI's `run --json` has the same layout: the same keys in the document, in a row and in a summary line
    out = tmp_path / "cli.json"
    assert cli.main(["run", "--detectors", "msp,energy", "--json", str(out), "--cache-dir", str(cache_dir),
                     "--device", "cpu", "--quiet"]) == 0
    cli_doc = json.loads(out.read_text())
    assert set(cli_doc) == set(doc)
    assert set(cli_doc["results"][0]) == set(doc["results"][0]) and set(cli_doc["summary"][0]) == set(doc["summary"][0])
    msp = {r["ood_set"]: r for r in doc["results"] if r["detector"] == "msp"}
    for r in cli_doc["results"]:
        if r["detector"] == "msp":
            page = msp[r["ood_set"]]
            assert r["seed"] == page["seed"] == 0 and r["error"] is page["error"] is None
            assert [r[m] for m in compare.METRIC_KEYS] == pytest.approx([page[m] for m in compare.METRIC_KEYS], abs=1e-12)


def test_tuning_on_validation_replaces_the_tunable_rows_and_shows_the_chosen_values(compare_page, default_experiment,
                                                                                   fresh_runner, land):
    from ood_core import tuning

    at, exp = compare_page, default_experiment
    at.multiselect(key="compare-families").set_value(["distance"]).run()  # a few detectors: a short job
    at.checkbox(key="compare-tune").check().run()
    no_exception(at)
    assert "1" in at.query_params["tune"]
    land(at)
    no_exception(at)
    fast = [n for n in pipeline.resolve_detectors("all", exp) if not REGISTRY[n].runs_network]
    tunable = [n for n in fast if tuning.is_tunable(n) and REGISTRY[n].family == "distance"]
    assert "knn" in tunable
    rows, _ = pipeline.evaluate(exp, tunable, tune=True)
    (box,) = [e for e in at.expander if e.label.startswith("Parameters tuned on validation data")]
    table = box.dataframe[0].value
    assert list(table["detector"]) == [REGISTRY[n].title for n in tunable]
    knn = next(r for r in rows if r["detector"] == "knn")
    chosen = ", ".join(f"{k} = {v}" for k, v in knn["tuned"].items()) or "the defaults"
    assert table.set_index("detector").loc[REGISTRY["knn"].title, "chosen (differs from the default)"] == chosen
    # the heatmap's KNN row is the test AUROC at the tuned parameters
    heat = figure(at, "compare-heatmap")["data"][0]
    row = values(heat["z"])[heat["y"].index(REGISTRY["knn"].title)]
    expected = [100 * next(r["auroc"] for r in rows if r["detector"] == "knn" and r["ood_set"] == s)
                for s in heat["x"]]
    np.testing.assert_allclose(row, expected, atol=0.05)


class _Raising(Detector):
    name, title, family = "raising_for_test", "Raising (test only)", "output"
    latex = r"S(x) = \bot"

    def _fit(self, ctx):
        raise np.linalg.LinAlgError("singular covariance (on purpose)")


@pytest.fixture
def raising_detector(monkeypatch):
    monkeypatch.setitem(REGISTRY, _Raising.name, _Raising)
    return _Raising


def test_a_failing_detector_shows_an_error_cell_and_the_others_still_show(raising_detector, compare_page,
                                                                          default_experiment):
    at = compare_page
    no_exception(at)
    heat = figure(at, "compare-heatmap")["data"][0]
    row = heat["y"].index(raising_detector.title)
    assert heat["text"][row] == ["error"] * len(default_experiment.ood_names)
    others = np.delete(values(heat["z"]), row, axis=0)
    assert np.isfinite(others).all() and len(others) >= 25
    table = at.dataframe[0].value
    assert "singular covariance" in table.loc[raising_detector.title, "Error"]
    assert table.drop(index=raising_detector.title)[default_experiment.ood_names].notna().all().all()
    assert any("failed" in w.value for w in at.warning)
    assert any("Errors" in e.label for e in at.expander)


def test_open_set_recognition_offers_oscr_and_closed_set_accuracy(default_experiment, ready):
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = Spec(setting="osr", training=TrainConfig(epochs=1))
    ready(at).switch_page("pages/compare.py").run()
    no_exception(at)
    metric = at.radio(key="compare-metric")
    assert "OSCR" in metric.options  # the radio lists labels
    assert any(m.label == "Closed-set accuracy" for m in at.metric)
    metric.set_value("oscr").run()
    no_exception(at)
    heat = figure(at, "compare-heatmap")["data"][0]
    z = values(heat["z"])
    assert "unknown" in heat["x"] and z.shape[0] == len(at.dataframe[0].value)
    # after one epoch a method may have too little to fit on (OpenMax: no correct sample of some class);
    # such rows say why, every other row has OSCR values, at most the closed-set accuracy
    failed = at.dataframe[0].value.get("Error", {})
    ok = [i for i, t in enumerate(heat["y"]) if not (len(failed) and failed.get(t))]
    assert len(ok) >= 25 and np.isfinite(z[ok]).all()
    acc = float(next(m for m in at.metric if m.label == "Closed-set accuracy").value.rstrip(" %"))
    assert (z[ok] <= acc + 0.05).all()


# --- Sensitivity --------------------------------------------------------------------------------------

def test_sensitivity_has_a_trace_per_set_and_a_point_per_sweep_value(app, default_experiment):
    at = app.switch_page("pages/sensitivity.py").run()
    no_exception(at)
    assert at.selectbox(key="sens-detector").value == "knn"
    sets = ["rotated", "gaussian", "permuted"]
    at.multiselect(key="sens-sets").set_value(sets).run()
    no_exception(at)
    sweep = list(REGISTRY["knn"].params["k"].sweep)
    fig = figure(at, "sens-chart-knn-k-auroc")
    data = [t for t in fig["data"] if not t["name"].startswith("default")]
    assert [t["name"] for t in data] == sets
    assert all(list(t["x"]) == sweep for t in data)
    assert fig["layout"]["xaxis"]["type"] == "log"  # k is a log-scale parameter
    marker = [t for t in fig["data"] if t["name"].startswith("default")]
    assert len(marker) == 1 and set(marker[0]["x"]) == {REGISTRY["knn"].params["k"].default}
    rows = compare.sweep(default_experiment, "knn", "k", ood_sets=sets)
    expected = [100 * r["auroc"] for r in rows if r["ood_set"] == "gaussian"]
    np.testing.assert_allclose(values(fig["data"][1]["y"]), expected, atol=1e-9)
    # the values of k above the smallest ID class's training count carry the note that explains the drop
    smallest = int(np.bincount(np.asarray(default_experiment.outputs["train"].labels)).min())
    notes = [c.value for c in at.caption if "larger than the smallest ID class" in c.value]
    assert [int(n.split()[2]) for n in notes] == [k for k in sweep if k > smallest] != []  # "k = 200 is larger ..."
    assert all(f"(n = {smallest})" in n for n in notes)
    # FPR@95 on request: a second chart per parameter
    at.checkbox(key="sens-fpr").check().run()
    no_exception(at)
    assert len(figures_with(at, "sens-chart-knn-k-fpr95")[0]["data"]) == len(sets) + 1  # + the default marker


def test_sensitivity_draws_one_chart_per_parameter(app):
    at = app.switch_page("pages/sensitivity.py").run()
    at.selectbox(key="sens-detector").set_value("vra").run()
    no_exception(at)
    for pname, p in REGISTRY["vra"].params.items():
        fig = figure(at, f"sens-chart-vra-{pname}-auroc")
        data = [t for t in fig["data"] if not t["name"].startswith("default")]
        assert len(data) == len(at.multiselect(key="sens-sets").value)
        assert all(len(t["x"]) == len(p.sweep) for t in data)
    assert not [c.value for c in at.caption if c.value.startswith("At ") or " is larger than " in c.value]  # VRA: none


# --- Methods ------------------------------------------------------------------------------------------

def test_methods_has_a_card_with_a_formula_per_detector_and_a_search(app):
    at = app.switch_page("pages/methods.py").run()
    no_exception(at)
    jumps = [b for b in at.button if b.key and b.key.startswith("methods-jump-")]
    assert sorted(b.key.removeprefix("methods-jump-") for b in jumps) == sorted(REGISTRY)
    assert len(at.latex) == len(REGISTRY)
    assert {REGISTRY[n].latex.strip() for n in REGISTRY} == {el.value.strip().strip("$").strip() for el in at.latex}
    captions = [c.value for c in at.caption]
    for name in REGISTRY:  # every card gives the full reference(s), the title linked to the paper
        assert any(all(r.markdown() in c for r in REGISTRY[name].references()) for c in captions), name
    assert ("Reference: Dan Hendrycks, Kevin Gimpel, [A Baseline for Detecting Misclassified and Out-of-Distribution "
            "Examples in Neural Networks](https://arxiv.org/abs/1610.02136), ICLR 2017") in captions
    at.text_input(key="methods-search").input("energy").run()
    no_exception(at)
    shown = [b.key.removeprefix("methods-jump-") for b in at.button if b.key and b.key.startswith("methods-jump-")]
    assert "energy" in shown and len(shown) < len(REGISTRY)
    # a one-class model finds the card of the score it stands behind, by words of its title and description only
    at.text_input(key="methods-search").input("EfficientNet-Lite0 teacher").run()
    no_exception(at)
    shown = [b.key.removeprefix("methods-jump-") for b in at.button if b.key and b.key.startswith("methods-jump-")]
    assert shown == ["model_score"]


def test_methods_jump_button_selects_the_detector_on_the_scores_page(app):
    at = app.switch_page("pages/methods.py").run()
    at.button(key="methods-jump-energy").click().run()
    no_exception(at)
    assert at.session_state["scores-detector"] == "energy"
    assert at.selectbox(key="scores-detector").value == "energy"  # we are on the Scores page now


def test_anomaly_detection_runs_one_vs_all_and_the_contamination_curve(default_experiment, downloads, land, ready):

    spec = Spec(setting="ad", model="deep_svdd", training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/compare.py").run()
    no_exception(at)
    assert "anomalous" in figure(at, "compare-heatmap")["data"][0]["x"]
    # RMD's constant 50% is explained right under the table: one AD class, so its two Gaussians coincide
    (box,) = [e for e in at.expander if e.label.startswith("Why some of these numbers look wrong")]
    text = " ".join(m.value for m in box.markdown)
    assert f"**{REGISTRY['rmd'].title}**: AUROC is exactly 50% on anomalous" in text and "same Gaussian" in text
    pixels_knn = protocols.method_label("pixels", "knn", {"k": 1})
    at.multiselect(key="compare-oc-classes").set_value([0, 1])
    at.multiselect(key="compare-oc-methods").set_value([pixels_knn]).run()
    assert "One-vs-all protocol" in " ".join(i.value for i in at.info)  # says how long, before it starts
    at.button(key="compare-oc-run").click().run()
    no_exception(at)
    assert len(at.get("progress")) == 1  # a job: the page goes on meanwhile
    land(at)
    no_exception(at)
    table = at.dataframe[1].value  # below the detectors x OOD sets table of this normal class
    assert list(table.index) == [pixels_knn] and list(table.columns) == ["class 0", "class 1", "mean", "± std"]
    rows = protocols.run_one_class(spec, "ad", spec.contamination, [0, 1], [("pixels", "knn", {"k": 1})]).rows
    np.testing.assert_allclose(table.loc[pixels_knn, ["class 0", "class 1"]].to_numpy(dtype=float),
                               [100 * r["auroc"] for r in rows], atol=1e-9)
    assert table.loc[pixels_knn, "mean"] == pytest.approx(100 * np.mean([r["auroc"] for r in rows]))
    assert table.loc[pixels_knn, "± std"] == pytest.approx(100 * np.std([r["auroc"] for r in rows], ddof=1))
    # the one-vs-all table downloads as CSV (fractions) and JSON (the CLI's `run --setting ad --json` layout)
    stem = f"ood-one-vs-all-digits-ad-contamination5pct-classes0+1-1of{len(protocols.ONE_CLASS_METHODS)}methods"
    assert downloads["file names"]["Download one-vs-all CSV"] == f"{stem}.csv"
    csv = downloads["Download one-vs-all CSV"].splitlines()
    assert csv[0] == "method,class 0,class 1,mean,sample std,n" and csv[1].startswith(f"{pixels_knn},")
    doc = json.loads(downloads["Download one-vs-all JSON"])
    assert doc["setting"] == "ad" and [r["auroc"] for r in doc["results"]] == pytest.approx([r["auroc"] for r in rows])
    assert doc["summary"][0]["method"] == pixels_knn and doc["summary"][0]["n"] == 2
    at.multiselect(key="compare-ad-ratios").set_value([0.0, 0.1]).run()
    at.button(key="compare-ad-run").click().run()
    land(at)
    no_exception(at)
    curve = figure(at, "compare-ad-curve")["data"]
    assert [t["name"] for t in curve] == [pixels_knn] and list(curve[0]["x"]) == [0.0, 10.0]


def test_start_comparison_reports_mean_and_std_over_seeds(default_experiment, downloads, land, ready):
    spec = Spec(training=TrainConfig(epochs=1))  # two quick models: seeds 0 and 1
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/compare.py").run()
    at.number_input(key="compare-seeds").set_value(2).run()
    at.button(key="compare-start").click().run()
    land(at)
    no_exception(at)
    assert any("over seeds 0–1" in s.value for s in at.success)
    heat = figure(at, "compare-heatmap")["data"][0]
    assert "±" in " ".join(t for row in heat["text"] for t in row)
    per_seed = [pipeline.evaluate(pipeline.prepare(spec.with_seed(s), device="cpu"), ["energy"])[0] for s in (0, 1)]
    row = heat["y"].index(REGISTRY["energy"].title)
    expected = [100 * np.mean([rows[j]["auroc"] for rows in per_seed]) for j in range(len(heat["x"]))]
    np.testing.assert_allclose(values(heat["z"])[row], expected, atol=1e-9)
    doc = json.loads(downloads["Download JSON"])
    assert doc["seeds"] == [0, 1] and {r["seed"] for r in doc["results"]} == {0, 1}
    at.radio(key="compare-stat").set_value("std").run()  # the table can show the spread instead
    no_exception(at)
    std = at.dataframe[0].value.loc[REGISTRY["energy"].title, heat["x"]].to_numpy(dtype=float)
    np.testing.assert_allclose(std, [100 * np.std([rows[j]["auroc"] for rows in per_seed], ddof=1)  # sample std
                                     for j in range(len(heat["x"]))], atol=1e-9)


def test_open_set_comparison_runs_over_splits_and_exports_the_cli_layout(default_experiment, downloads, land,
                                                                         ready):
    spec = Spec(setting="osr", training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/compare.py").run()
    splits = at.number_input(key="compare-seeds")
    assert splits.label == "Splits" and splits.value == 5 and "known classes" in splits.help
    splits.set_value(2).run()
    assert at.button(key="compare-start").label == "Start comparison over 2 splits"
    at.button(key="compare-start").click().run()
    land(at)
    no_exception(at)
    assert any("over splits 0–1" in s.value for s in at.success)
    doc = json.loads(downloads["Download JSON"])
    assert doc["setting"] == "osr" and doc["splits"] == 2 and len(doc["id_accuracy_per_split"]) == 2
    # the same rows as the CLI's OSR protocol: split index, its seed and its known classes
    cli = {(r["split"], r["detector"]): r
           for r in protocols.run_osr(spec, 2, ["msp", "max_logit"], device="cpu").rows}
    for r in doc["results"]:
        if r["ood_set"] == "unknown" and r["detector"] in ("msp", "max_logit"):
            c = cli[(r["split"], r["detector"])]
            assert r["seed"] == c["seed"] and r["known_classes"] == c["known_classes"]
            assert r["auroc"] == pytest.approx(c["auroc"], abs=1e-12) and r["oscr"] == pytest.approx(c["oscr"], abs=1e-12)


# --- long work as jobs on the Compare page ----------------------------------------------------------------

def test_one_vs_all_runs_as_a_job_the_page_stays_usable_and_cancel_keeps_no_table(default_experiment, fresh_runner,
                                                                                  land, monkeypatch, ready):
    import threading

    from ood_core import jobs

    real, gate, calls = protocols.run_one_class, threading.Event(), []

    def gated(*args, **kwargs):  # the protocol waits for the test's gate, checking for a cancel meanwhile
        calls.append(kwargs.get("classes", args[3] if len(args) > 3 else None))
        while not gate.wait(0.01):
            jobs.check_cancelled(kwargs.get("cancel"))
        return real(*args, **kwargs)

    monkeypatch.setattr(protocols, "run_one_class", gated)
    spec = Spec(setting="nd", model="deep_svdd", training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/compare.py").run()
    pixels_knn = protocols.method_label("pixels", "knn", {"k": 1})
    at.multiselect(key="compare-oc-classes").set_value([0, 1])
    at.multiselect(key="compare-oc-methods").set_value([pixels_knn]).run()
    (note,) = [i.value for i in at.info if "One-vs-all protocol" in i.value]
    assert "scores 1 method on 2 normal classes" in note  # the estimate, before anything starts
    assert not fresh_runner.jobs()
    at.button(key="compare-oc-run").click().run()
    no_exception(at)
    (job,) = fresh_runner.jobs()
    assert job.state == "running" and len(at.get("progress")) == 1
    assert [b for b in at.button if (b.key or "").startswith("job-cancel-")]
    tables = len(at.dataframe)
    # the rest of the page works meanwhile: the metric of the table above changes
    at.radio(key="compare-metric").set_value("fpr95").run()
    no_exception(at)
    assert at.radio(key="compare-metric").value == "fpr95" and job.state == "running"
    assert len(at.get("progress")) == 1 and len(at.dataframe) == tables  # no one-vs-all table yet
    [b for b in at.button if (b.key or "").startswith("job-cancel-")][0].click().run()
    land(at)
    no_exception(at)
    assert job.state == "cancelled" and fresh_runner.result(job.key) is None
    assert job.key.startswith('["one-vs-all"') and job.key not in ui.results_store()  # no partial table kept
    assert len(at.dataframe) == tables and not at.get("progress")
    assert any("cancelled" in i.value for i in at.info)
    # run again, let it through: the table is the library's
    gate.set()
    [b for b in at.button if b.key == "compare-oc-run"][0].click().run()
    land(at)
    no_exception(at)
    table = at.dataframe[tables].value
    rows = real(spec, "nd", spec.contamination, [0, 1], [("pixels", "knn", {"k": 1})]).rows
    np.testing.assert_allclose(table.loc[pixels_knn, ["class 0", "class 1"]].to_numpy(dtype=float),
                               [100 * r["auroc"] for r in rows], atol=1e-9)


def test_methods_that_run_the_network_join_the_table_when_their_job_lands(default_experiment, fresh_runner, land,
                                                                          ready):
    spec = Spec(training=TrainConfig(epochs=1), seed=7)  # a seed of its own: no ensemble member of it is cached
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/compare.py").run()
    heat = figure(at, "compare-heatmap")["data"][0]
    # and OpenGAN, C2AE (they train one); CROSR scores only a classifier of its own regime, not this one
    slow = [REGISTRY[n].title for n in REGISTRY if REGISTRY[n].runs_network and not REGISTRY[n].regimes]
    assert not set(slow) & set(heat["y"])
    at.checkbox(key="compare-network").check().run()
    no_exception(at)
    # the ensemble trains 4 networks: the estimate first, and the table of the other detectors meanwhile
    (note,) = [i.value for i in at.info if "run the network again" in i.value]
    assert "trains 4 ensemble members" in note and not fresh_runner.jobs()
    assert figure(at, "compare-heatmap")["data"][0]["y"] == heat["y"]
    [b for b in at.button if (b.key or "").startswith("job-start-")][0].click().run()
    no_exception(at)
    assert len(at.get("progress")) == 1 and figure(at, "compare-heatmap")["data"][0]["y"] == heat["y"]
    land(at)
    no_exception(at)
    after = figure(at, "compare-heatmap")["data"][0]
    assert set(slow) <= set(after["y"]) and not at.get("progress")
    exp = pipeline.prepare(spec, device="cpu")  # cached by the app, as are the ensemble's members now
    (job,) = fresh_runner.jobs()
    expected = {r["ood_set"]: r["auroc"] for r in pipeline.evaluate(exp, ["ensemble"])[0]}
    row = after["y"].index(REGISTRY["ensemble"].title)
    np.testing.assert_allclose(values(after["z"])[row], [100 * expected[o] for o in after["x"]], atol=1e-9)


def test_a_sweep_of_a_network_method_starts_on_request_as_a_job(default_experiment, fresh_runner, land, ready):
    spec = Spec(training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    ready(at).switch_page("pages/sensitivity.py").run()
    assert ui.SLOW_MARK in at.selectbox(key="sens-detector").help
    at.selectbox(key="sens-detector").set_value("mc_dropout").run()
    at.multiselect(key="sens-sets").set_value(["gaussian"]).run()
    no_exception(at)
    assert not fresh_runner.jobs() and not figures_with(at, "sens-chart-mc_dropout")
    starts = {b.label.split(" (")[0]: b for b in at.button if (b.key or "").startswith("job-start-")}
    assert set(starts) == {"Sweep passes", "Sweep measure"}
    starts["Sweep measure"].click().run()
    land(at)
    no_exception(at)
    fig = figure(at, "sens-chart-mc_dropout-measure-auroc")
    exp = pipeline.prepare(spec, device="cpu")
    rows = compare.sweep(exp, "mc_dropout", "measure", REGISTRY["mc_dropout"].params["measure"].choices, ["gaussian"])
    data = [t for t in fig["data"] if not t["name"].startswith("default")]
    np.testing.assert_allclose(values(data[0]["y"]), [100 * r["auroc"] for r in rows], atol=1e-9)
    assert not figures_with(at, "sens-chart-mc_dropout-passes")  # the other sweep waits for its own click
