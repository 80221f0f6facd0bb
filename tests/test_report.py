"""Known-answer tests of ood_core.report (metric and confusion tables) and ood_core.text (short error messages)."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import Spec, compare, metrics, report
from ood_core.data.benchmark import known_classes_for
from ood_core.text import brief

ID = np.array([0.0, 1.0, 2.0, 3.0])


# --- tables ------------------------------------------------------------------------------------------

def test_confusion_frame_counts_by_hand():
    # flagged as OOD when score > 2: ID 3 is flagged; OOD 2.5 and 3.5 are caught, 0.5 is missed
    table = report.confusion_frame(ID, {"a": np.array([2.5, 3.5, 0.5]), "b": np.array([5.0, 6.0])}, 2.0)
    assert list(table.index) == ["a", "b"]
    assert list(table.columns) == ["ID kept", "ID flagged", "OOD missed", "OOD caught"]
    assert table.loc["a"].tolist() == [3, 1, 1, 2]
    assert table.loc["b"].tolist() == [3, 1, 0, 2]
    # a score equal to the threshold is kept
    assert report.confusion_frame(ID, {"a": np.array([2.0])}, 2.0).loc["a"].tolist() == [3, 1, 1, 0]


def test_metrics_frame_percent_by_hand():
    # "far" lies above every ID score; "mixed": 0.5 beats one ID score, 2.5 beats three -> AUROC 4/8
    table = report.metrics_frame(ID, {"far": np.array([5.0, 6.0]), "mixed": np.array([0.5, 2.5])})
    assert list(table.columns) == list(report.METRIC_COLUMNS.values())
    far = table.loc["far"]
    assert far[report.METRIC_COLUMNS["auroc"]] == pytest.approx(100.0)
    assert far[report.METRIC_COLUMNS["fpr95"]] == pytest.approx(0.0)
    assert far[report.METRIC_COLUMNS["aupr_out"]] == pytest.approx(100.0)
    assert far[report.METRIC_COLUMNS["detection_error"]] == pytest.approx(0.0)
    assert table.loc["mixed", report.METRIC_COLUMNS["auroc"]] == pytest.approx(50.0)
    assert report.OSCR_COLUMN not in table


def test_metrics_frame_oscr_column_reaches_the_accuracy_on_perfect_separation():
    correct = np.array([True, True, False, True])
    table = report.metrics_frame(ID, {"far": np.array([5.0, 6.0])}, correct)
    assert table.loc["far", report.OSCR_COLUMN] == pytest.approx(75.0)  # OSCR's maximum = closed-set accuracy


# --- the JSON export ---------------------------------------------------------------------------------

def _row(detector, ood_set, auroc, **extra):
    return {"detector": detector, "ood_set": ood_set, "auroc": auroc, "error": None, "seconds": 0.5, **extra}


def test_seeds_doc_layout_and_accuracy_by_hand():
    rows = [_row("msp", "gaussian", 0.9, seed=3), _row("msp", "gaussian", 0.7, seed=4)]
    doc = report.seeds_doc(Spec(seed=3), [3, 4], rows, [{"detector": "msp"}], [0.8, 0.9])
    assert list(doc) == ["spec", "seeds", "id_accuracy", "id_accuracy_std", "id_accuracy_per_seed", "results",
                         "summary"]
    assert doc["spec"] == Spec(seed=3).to_dict() and doc["seeds"] == [3, 4]
    assert doc["id_accuracy"] == pytest.approx(0.85) and doc["id_accuracy_std"] == pytest.approx(np.sqrt(0.005))  # sample std
    assert doc["id_accuracy_per_seed"] == [0.8, 0.9]
    assert doc["results"] == [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # no timing
    assert "seconds" in rows[0]  # the caller's rows are left alone
    # rows of the current model carry no seed: they are the first seed's; no accuracy, no accuracy keys
    one = report.seeds_doc(Spec(), [0], [_row("msp", "gaussian", 0.9)], [], [None])
    assert one["results"][0]["seed"] == 0 and "id_accuracy" not in one


def test_seeds_doc_in_open_set_recognition_names_the_splits_and_their_known_classes():
    spec = Spec(setting="osr", seed=5, known_classes=6)
    rows = [_row("msp", "unknown", 0.8, seed=5), _row("msp", "unknown", 0.6, seed=6)]
    doc = report.seeds_doc(spec, [5, 6], rows, [], [0.9, 0.7], n_dataset_classes=10)
    assert doc["setting"] == "osr" and doc["splits"] == 2
    assert doc["id_accuracy_per_split"] == doc["id_accuracy_per_seed"] == [0.9, 0.7]
    assert [r["split"] for r in doc["results"]] == [0, 1]
    assert [r["known_classes"] for r in doc["results"]] == [known_classes_for(s, 10, 6) for s in (5, 6)]
    with pytest.raises(ValueError, match="number of classes"):
        report.seeds_doc(spec, [5], rows[:1], [], [0.9])


def test_summarise_by_reports_the_sample_std_by_hand():
    # 0.8, 0.9, 1.0: mean 0.9, squared deviations 0.01 + 0 + 0.01 = 0.02, / (n - 1 = 2) = 0.01, sqrt = 0.1
    # (the population std would be sqrt(0.02 / 3) = 0.0816)
    rows = [_row("msp", "gaussian", a, seed=i) for i, a in enumerate((0.8, 0.9, 1.0))]
    rows.append({**_row("msp", "gaussian", None, seed=3), "error": "boom"})  # counted, never averaged
    (s,) = compare.summarise_by(rows, ("detector", "ood_set"))
    assert s["n"] == 3 and s["n_errors"] == 1 and s["errors"] == ["boom"]
    assert s["auroc_mean"] == pytest.approx(0.9) and s["auroc_std"] == pytest.approx(0.1)
    assert metrics.sample_std([0.8, 0.9, 1.0]) == pytest.approx(0.1)
    (one,) = compare.summarise_by(rows[:1], ("detector",))
    assert one["auroc_mean"] == pytest.approx(0.8) and one["auroc_std"] is None  # undefined from one value


def test_one_vs_all_frame_by_hand():
    rows = [{"method": "a", "normal_class": c, "auroc": v, "error": None} for c, v in ((0, 0.8), (1, 0.9), (2, 1.0))]
    rows += [{"method": "b", "normal_class": 0, "auroc": 0.6, "error": None},
             {"method": "b", "normal_class": 1, "auroc": None, "error": "boom"},
             {"method": "b", "normal_class": 2, "auroc": 0.7, "error": None}]
    t = report.one_vs_all_frame(rows)
    assert list(t.index) == ["a", "b"] and list(t.columns) == ["class 0", "class 1", "class 2", "mean", "sample std", "n"]
    assert t.loc["a", "mean"] == pytest.approx(0.9) and t.loc["a", "sample std"] == pytest.approx(0.1)
    assert np.isnan(t.loc["b", "class 1"]) and t.loc["b", "mean"] == pytest.approx(0.65) and t.loc["b", "n"] == 2
    assert t.loc["b", "sample std"] == pytest.approx(np.sqrt(0.005))  # (0.6, 0.7): sqrt(2 * 0.05^2 / 1)


def test_export_file_names_say_what_is_inside():
    everything = report.compare_export_stem(Spec(), [0, 2], ["output", "distance"], ["distance", "output"],
                                            ["gaussian", "rotated"], ["rotated", "gaussian"])
    assert everything == "ood-compare-digits-ood-seeds0-2-all"
    few = report.compare_export_stem(Spec(), [0, 2], ["output"], ["output", "distance"], ["gaussian"],
                                     ["gaussian", "rotated"])
    assert few == "ood-compare-digits-ood-seeds0-2-families-output-sets-gaussian"
    many = report.compare_export_stem(Spec(), [0, 0], ["output", "distance"], ["output", "distance"],
                                      ["a", "b c", "d", "e"], ["a", "b c", "d", "e", "f"])
    assert many == "ood-compare-digits-ood-seeds0-0-4of5sets"
    assert report.compare_export_stem(Spec(), [0, 0], ["output"], ["output"], ["b/c"], ["b/c", "x"]).endswith("sets-b_c")
    ad = report.one_vs_all_export_stem(Spec(setting="ad", contamination=0.05), [3, 0], ["m1", "m2"], ["m1", "m2", "m3"], 10)
    assert ad == "ood-one-vs-all-digits-ad-contamination5pct-classes0+3-2of3methods"
    assert report.one_vs_all_export_stem(Spec(setting="nd"), list(range(10)), ["m"], ["m"], 10) == \
        "ood-one-vs-all-digits-nd-classes-all"


def test_protocol_doc_layout():
    rows = [_row("msp", "unknown", 0.8, split=0)]
    doc = report.protocol_doc(Spec(), "osr", rows, [0.5, 1.0], 12.5, {"splits": 2, "summary": []})
    assert list(doc) == ["spec", "setting", "results", "seconds", "id_accuracy", "id_accuracy_std",
                         "id_accuracy_per_split", "splits", "summary"]
    assert doc["results"] is rows and doc["seconds"] == 12.5 and doc["id_accuracy"] == pytest.approx(0.75)
    nd = report.protocol_doc(Spec(), "nd", rows, [], 1.0)
    assert set(nd) == {"spec", "setting", "results", "seconds"}
    assert report.to_json({"x": np.float32(0.5), "n": np.int64(3)}) == '{\n "x": 0.5,\n "n": 3.0\n}'


# --- short messages ----------------------------------------------------------------------------------

TORCH_LOAD_ERROR = (
    "this file is not a loadable PyTorch checkpoint (UnpicklingError: Weights only load failed. This file can still "
    "be loaded, to do so you have two options, do those steps only if you trust the source of the checkpoint. "
    "\n\t(1) In PyTorch 2.6, we changed the default value of the `weights_only` argument in `torch.load` from `False` "
    "to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can result in "
    "arbitrary code execution. Do it only if you got the file from a trusted source.\n\t(2) Alternatively, to load "
    "with `weights_only=True` please check the recommended steps in the following error message.)")


def test_brief_keeps_the_message_and_drops_the_details():
    # PyTorch's advice on the following lines goes
    first = TORCH_LOAD_ERROR.splitlines()[0]
    assert brief(TORCH_LOAD_ERROR) == first and len(first) < 240 and "(1)" not in first
    # on one line it is over the limit: the exception's details go, its name stays
    one_line = TORCH_LOAD_ERROR.replace("\n\t", " ")
    assert brief(one_line) == "this file is not a loadable PyTorch checkpoint (UnpicklingError)"
    long = "this file is not a loadable PyTorch checkpoint (UnpicklingError: Weights only load failed. " + "x " * 200
    assert brief(long) == "this file is not a loadable PyTorch checkpoint (UnpicklingError)"
    assert brief("short message\nsecond line") == "short message"
    assert brief("word " * 100).endswith(" …") and len(brief("word " * 100)) <= 242
    assert brief("") == "unknown error" and brief("  \n ") == "unknown error"
    assert brief("a " * 20, limit=10) == "a a a a a …"


def test_provenance_line_names_what_the_checkpoint_records():
    from ood_core.text import provenance_line

    prov = {"torch": "2.14.1", "threads": 1, "device": "cpu", "written_utc": "2026-11-29T23:40:12+00:00",
            "train_seconds": 8.94}
    assert provenance_line(prov) == "torch 2.14.1 · 1 training thread · cpu · trained in 8.9 s · written 2026-11-29 23:40 UTC"
    assert provenance_line({**prov, "threads": 2, "written_utc": None}).endswith("2 training threads · cpu · "
                                                                                 "trained in 8.9 s · not saved to disk")
    assert provenance_line({}) == ""


# --- explaining surprising numbers ------------------------------------------------------------------------

def test_constant_scores_carry_no_information_and_rmd_with_one_class_says_why():
    from ood_core import detectors
    from ood_core.detectors.base import FitContext
    from ood_core.inference import Outputs

    rng = np.random.default_rng(0)
    h = rng.normal(size=(40, 3))  # one ID class (ND): RMD's class and background Gaussians are the same fit
    out = lambda x: Outputs(logits=np.zeros((len(x), 1)), features=x, labels=np.zeros(len(x), dtype=np.int64))
    det = detectors.create("rmd").fit(FitContext(train=out(h), num_classes=1))
    s_id, s_ood = det.score(out(rng.normal(size=(10, 3)))), det.score(out(rng.normal(3.0, 1.0, size=(10, 3))))
    np.testing.assert_allclose(np.concatenate([s_id, s_ood]), 0.0, atol=1e-9)
    auroc = metrics.auroc(s_id, s_ood)
    assert auroc == 0.5
    (note,) = report.explain_result("rmd", "nd", s_id, s_ood, auroc, {"ood_set": "novel"})
    assert "exactly 50% on novel" in note and "carries no information" in note and "same Gaussian" in note
    # any detector with constant scores: no information, without RMD's reason
    (note,) = report.explain_result("msp", "ood", np.ones(3), np.ones(2), 0.5)
    assert "carries no information" in note and "RMD" not in note
    # tied but not constant, at 50%: nothing to explain
    assert report.explain_result("msp", "ood", np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5) == []


def test_reversed_ranking_is_called_out_below_50_percent_only():
    s_id, s_ood = np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.5])
    auroc = metrics.auroc(s_id, s_ood)  # OOD beats ID in 1 of 9 pairs: 1/9
    assert auroc == pytest.approx(1 / 9)
    (note,) = report.explain_result("msp", "ood", s_id, s_ood, auroc, {"ood_set": "gaussian"})
    assert "11.1% is below 50% on gaussian" in note and "ranks the wrong way" in note and "88.9%" in note
    assert "Hein et al." in note  # an output-family score: the theory's reason
    (knn,) = report.explain_result("knn", "ood", s_id, s_ood, auroc)
    assert "ranks the wrong way" in knn and "Hein" not in knn
    assert report.explain_result("msp", "ood", s_ood, s_id, 1 - auroc) == []  # the right way round: no note
    assert "ranks the wrong way" in report.explain_result("energy", "ood", None, None, 0.3)[0]  # a mean AUROC


def test_knn_with_k_above_the_smallest_class_count_says_so():
    ctx = {"class_counts": np.array([5, 3, 8]), "params": {"k": 4}}
    (note,) = report.explain_result("knn", "osr", None, None, 0.7, ctx)
    assert "k = 4" in note and "n = 3" in note and "another class" in note and "k ≤ 3" in note
    assert report.explain_result("knn", "osr", None, None, 0.7, {**ctx, "params": {"k": 3}}) == []  # k = n is fine
    assert report.explain_result("mahalanobis", "osr", None, None, 0.7, ctx) == []


def test_a_sweep_names_the_values_where_the_parameter_explains_the_line():
    ctx = {"class_counts": np.array([5, 3, 8]), "params": {"k": 50}}
    notes = report.explain_sweep("knn", "ood", ctx, "k", [1, 2, 3, 4, 8])
    assert [n.split()[2] for n in notes] == ["4", "8"] and all("n = 3" in n for n in notes)  # "k = 4 is larger ..."
    dice = {"dead_units": 3, "n_units": 10, "params": {"sparsity": 90.0}}
    assert report.explain_sweep("dice", "ood", dice, "sparsity", [50.0, 90.0]) == []  # true at every value: the model's
    assert report.explain_sweep("knn", "ood", ctx, "k", [1, 2]) == []


def test_dice_note_counts_dead_units():
    h = np.zeros((200, 10))
    h[:, :6] = 1.0                # 6 live units
    h[:2, 6] = 1.0                # unit 6: non-zero for 1% of images -> dead (0 for 99%)
    h[:3, 7] = 1.0                # unit 7: non-zero for 1.5% -> alive
    dead = report.dead_units(h)
    assert dead.tolist() == [False] * 6 + [True, False, True, True]
    ctx = {"dead_units": int(dead.sum()), "n_units": 10, "params": {"sparsity": 90.0}, "dice_kept_per_class": 1.0}
    (note,) = report.explain_result("dice", "ood", None, None, 0.8, ctx)
    assert "3 of the 10 penultimate units are dead" in note and "7 live units" in note and "top 10%" in note
    assert report.explain_result("dice", "ood", None, None, 0.8, {**ctx, "dead_units": 0}) == []


def test_explain_context_from_an_experiment_by_hand():
    from types import SimpleNamespace

    h = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0], [1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    w = np.array([[1.0, 5.0, -1.0], [2.0, 5.0, 1.0]])  # contributions mean(h) * W = [[2, 0, -1], [4, 0, 1]]
    exp = SimpleNamespace(bench=SimpleNamespace(num_classes=2), adapter=SimpleNamespace(head_weight=w),
                          outputs={"train": SimpleNamespace(features=h, labels=np.array([0, 1, 1, 1]))})
    knn = report.explain_context(exp, "knn", {"k": 2}, "gaussian")
    assert knn["class_counts"].tolist() == [1, 3] and knn["params"]["k"] == 2 and knn["ood_set"] == "gaussian"
    dice = report.explain_context(exp, "dice", {"sparsity": 50.0})
    # 50th percentile of [2, 0, -1, 4, 0, 1] is 0.5: kept 2, 4, 1 -> 1 in class 0, 2 in class 1
    assert dice["dead_units"] == 1 and dice["n_units"] == 3 and dice["dice_kept_per_class"] == pytest.approx(1.5)


def test_explain_context_counts_the_weights_the_fitted_dice_keeps():
    # float32 features, as a network gives them: the note's count must be the fitted detector's own mask
    from types import SimpleNamespace

    from ood_core.detectors import FitContext, create
    from ood_core.inference import Outputs

    rng = np.random.default_rng(3)
    h = np.maximum(rng.normal(0.2, 1.0, (500, 24)), 0.0).astype(np.float32)
    h[:, :5] = 0.0  # five dead units
    w, b = rng.normal(size=(4, 24)), np.zeros(4)
    z = (h @ w.T).astype(np.float32)
    head = SimpleNamespace(head_weight=w, head_bias=b)
    det = create("dice", sparsity=70.0).fit(FitContext(train=Outputs(z, h, np.arange(500) % 4), model=head,
                                                       num_classes=4, seed=0))
    exp = SimpleNamespace(bench=SimpleNamespace(num_classes=4), adapter=head,
                          outputs={"train": SimpleNamespace(features=h, labels=np.arange(500) % 4)})
    ctx = report.explain_context(exp, "dice", {"sparsity": 70.0})
    assert ctx["dead_units"] == 5 and ctx["n_units"] == 24
    assert ctx["dice_kept_per_class"] == pytest.approx(float(det.mask_.sum(axis=1).mean()))


def test_merge_notes_puts_a_shared_cause_after_the_numbers_it_explains():
    rotated = ["AUROC 21.6% is below 50% on rotated", "22 of the 128 units are dead"]
    gaussian = ["AUROC 33.6% is below 50% on gaussian", "22 of the 128 units are dead"]
    assert report.merge_notes([rotated, gaussian]) == [
        "AUROC 21.6% is below 50% on rotated", "AUROC 33.6% is below 50% on gaussian", "22 of the 128 units are dead"]
    # one set: its notes as they came, each once; no notes: none
    assert report.merge_notes([["a", "b", "a"]]) == ["a", "b"]
    assert report.merge_notes([[], []]) == []
