"""AppTest tests of the "seeing why" pages: Embeddings, Activations and Explanations.

Each page runs on its own (AppTest.from_file on the page) against the default experiment, which the
`default_experiment` fixture trains into the per-session temporary cache, so the pages load it from disk.
Expected numbers are computed here independently (numpy / sklearn) where the page shows a number.
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest

from ood_core import activation_stats, metrics
from ood_core.detectors import REGISTRY
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
EMBEDDINGS = str(ROOT / "pages" / "embeddings.py")
ACTIVATIONS = str(ROOT / "pages" / "activations.py")
EXPLANATIONS = str(ROOT / "pages" / "explanations.py")
SETS = ["rotated", "gaussian"]  # the pages' default OOD sets for the default (OOD-detection) experiment


def run_page(path: str, **state) -> AppTest:
    at = AppTest.from_file(path, default_timeout=180)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def figures_of(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def figure(at: AppTest, title_part: str) -> dict:
    found = [f for f in figures_of(at) if title_part in (f["layout"].get("title") or {}).get("text", "")]
    assert found, [(f["layout"].get("title") or {}).get("text") for f in figures_of(at)]
    return found[0]


def array(values) -> np.ndarray:
    """A plotly JSON array: a list, or {"dtype", "bdata"} (binary, base64)."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return np.asarray(values, dtype=np.float64)


def n_points(fig: dict) -> int:
    return sum(len(t.get("customdata") or []) for t in fig["data"])


def markdown_with(at: AppTest, text: str) -> str:
    found = [m.value for m in at.markdown if text in m.value]
    assert found, f"no markdown containing {text!r}"
    return found[0]


@pytest.fixture(scope="module")
def exp(default_experiment):
    return default_experiment


# --- Embeddings --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embeddings(exp) -> AppTest:
    """The Embeddings page on its defaults (UMAP of features, two OOD sets), after one run."""
    return run_page(EMBEDDINGS)


def test_embeddings_default_umap_has_one_point_per_sample(embeddings, exp):
    no_exception(embeddings)
    figs = figures_of(embeddings)
    assert len(figs) == 1  # the PCA preview was replaced by the UMAP map
    fig = figs[0]
    assert fig["layout"]["title"]["text"] == "UMAP of penultimate features"
    names = [t["name"] for t in fig["data"]]
    expected = {"test": len(exp.outputs["test"]), **{s: len(exp.outputs[s]) for s in SETS}}
    assert names == [f"{s} ({n})" for s, n in expected.items()]
    assert n_points(fig) == sum(expected.values()) == 540 + 2 * 108
    # hover shows set, index and label; customdata (set, index, ...) drives the selection
    assert "customdata[1]" in fig["data"][0]["hovertemplate"] and "label" in fig["data"][0]["hovertemplate"]
    assert fig["data"][1]["customdata"][0][:2] == ["rotated", 0]
    assert any("756 points: 540 ID test, 108 rotated, 108 gaussian" in c.value for c in embeddings.caption)
    assert any("Nothing selected yet" in i.value for i in embeddings.info)


def test_embeddings_umap_map_does_not_move_when_sets_change(embeddings, exp):
    """One reducer per (experiment, space, method), fitted on every set: other sets leave ID points in place."""
    before = figures_of(embeddings)[0]["data"][0]
    embeddings.multiselect(key="emb-sets").set_value(["blobs"]).run()
    no_exception(embeddings)
    fig = figures_of(embeddings)[0]
    assert [t["name"] for t in fig["data"]] == ["test (540)", "blobs (108)"]
    np.testing.assert_array_equal(array(fig["data"][0]["x"]), array(before["x"]))
    np.testing.assert_array_equal(array(fig["data"][0]["y"]), array(before["y"]))
    embeddings.multiselect(key="emb-sets").set_value([]).run()
    no_exception(embeddings)
    assert n_points(figures_of(embeddings)[0]) == 540
    assert any("No OOD set chosen" in i.value for i in embeddings.info)
    embeddings.multiselect(key="emb-sets").set_value(SETS).run()


def test_embeddings_pca_colours_by_class_and_by_score(exp):
    at = run_page(EMBEDDINGS, **{"emb-method": "pca"})
    no_exception(at)
    assert figure(at, "PCA of penultimate features")
    at.selectbox(key="emb-color").set_value("label").run()
    fig = figures_of(at)[0]
    names = [t["name"] for t in fig["data"]]
    assert names[0] == "OOD (216)" and len(names) == 11  # the OOD points in grey + ten true classes
    assert sum(int(re.search(r"\((\d+)\)", n).group(1)) for n in names) == 756
    at.selectbox(key="emb-color").set_value("score").run()
    no_exception(at)
    fig = figures_of(at)[0]
    scored = fig["data"][0]
    assert scored["name"] == "Maximum softmax probability (MSP) score" and "colorbar" in scored["marker"]
    colours = array(scored["marker"]["color"])
    msp = -np.concatenate([_softmax(exp.outputs[s].logits).max(1) for s in ["test", *SETS]])
    np.testing.assert_allclose(colours, msp, rtol=1e-5, atol=1e-6)  # MSP score = −max softmax, aligned per point
    at.radio(key="emb-space").set_value("pixels").run()
    no_exception(at)
    fig = figures_of(at)[0]
    assert fig["layout"]["title"]["text"] == "PCA of raw pixels" and n_points(fig) == 756


def test_embeddings_tsne_subsamples_each_set(exp):
    at = run_page(EMBEDDINGS, **{"emb-method": "tsne", "emb-tsne-max": 30})
    no_exception(at)
    assert any("t-SNE is slow" in w.value for w in at.warning)
    fig = figure(at, "t-SNE of penultimate features")
    assert [t["name"] for t in fig["data"]] == ["test (30)", "rotated (30)", "gaussian (30)"]


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_embeddings_selection_shows_table_and_images(exp):
    at = run_page(EMBEDDINGS, **{"emb-method": "pca"})
    chart = at.get("plotly_chart")[0]
    states = WidgetStates()
    states.CopyFrom(at._tree.get_widget_states())
    w = states.widgets.add()
    w.id = chart.proto.id
    points = [{"curve_number": 1, "point_index": 3, "customdata": ["rotated", 3, "OOD", "4", 0.9]},
              {"curve_number": 0, "point_index": 5, "customdata": ["test", 5, "1", "1", 1.0]}]
    w.string_value = json.dumps({"selection": {"points": points, "point_indices": [3, 5], "box": [], "lasso": []}})
    at._run(states)  # what the browser sends after a click / lasso on those two points
    no_exception(at)
    assert "**2** selected" in markdown_with(at, "selected (")
    table = at.dataframe[0].value
    assert list(table["set"]) == ["test", "rotated"] and list(table["index"]) == [5, 3]
    test_logits, rot_logits = exp.outputs["test"].logits, exp.outputs["rotated"].logits
    assert table["true label"].iloc[0] == exp.bench.class_names[exp.outputs["test"].labels[5]]
    assert table["prediction"].iloc[1] == exp.bench.class_names[rot_logits[3].argmax()]
    expected_msp = [-_softmax(test_logits[5:6]).max(), -_softmax(rot_logits[3:4]).max()]
    np.testing.assert_allclose(table["Maximum softmax probability (MSP)"], expected_msp, rtol=1e-5)
    energy = [-logsumexp(test_logits[5].astype(np.float64)), -logsumexp(rot_logits[3].astype(np.float64))]
    np.testing.assert_allclose(table["Energy score"], energy, rtol=1e-5)
    assert len(at.image) == 1 and len(at.image[0].value) == 2
    assert at.image[0].captions[0].startswith("ID #5: ") and at.image[0].captions[1].startswith("rotated #3 → ")


def test_embeddings_work_without_a_classifier_head(exp, monkeypatch):
    """One-class models give features but no logits (shape (n, 0)): the map still draws, without predictions."""
    import dataclasses

    from ood_core.inference import Outputs

    headless = dataclasses.replace(exp, outputs={
        s: Outputs(np.zeros((len(o), 0), np.float32), o.features, o.labels, o.inputs) for s, o in exp.outputs.items()})
    assert not headless.is_classifier
    monkeypatch.setattr(ui, "get_experiment", lambda *a, **k: headless)
    at = run_page(EMBEDDINGS, **{"emb-method": "pca"})
    no_exception(at)
    fig = figures_of(at)[0]
    assert n_points(fig) == 756 and fig["data"][1]["customdata"][0][3] == "—"  # no prediction to show
    options = at.selectbox(key="emb-color").options
    assert "true class" in options and "predicted class" not in options


# --- Activations -------------------------------------------------------------------------------------

def _react_expected(exp, p: float) -> tuple[float, float, float]:
    """(c, mean AUROC without clipping, mean AUROC with clipping at c) over SETS, from first principles."""
    c = float(np.percentile(exp.outputs["train"].features.astype(np.float64).ravel(), p))
    W, b = exp.adapter.head_weight, exp.adapter.head_bias

    def energy(h, clip):
        h = np.asarray(h, dtype=np.float64)
        h = np.minimum(h, clip) if clip is not None else h
        return -logsumexp(h @ W.T + b, axis=1)

    def mean_auroc(clip):
        e_id = energy(exp.outputs["test"].features, clip)
        return float(np.mean([roc_auc_score(np.r_[np.zeros(len(e_id)), np.ones(len(e_o))], np.r_[e_id, e_o])
                              for e_o in (energy(exp.outputs[s].features, clip) for s in SETS)]))

    return c, mean_auroc(None), mean_auroc(c)


def _auroc_text(at: AppTest) -> tuple[float, float]:
    m = re.search(r"AUROC: ([\d.]+)% → \*\*([\d.]+)%\*\*", markdown_with(at, "AUROC: "))
    return float(m.group(1)), float(m.group(2))


@pytest.fixture(scope="module")
def activations(exp) -> AppTest:
    return run_page(ACTIVATIONS)


def test_activations_react_view_shows_threshold_and_energy_before_after(activations, exp):
    no_exception(activations)
    c, before, after = _react_expected(exp, 90.0)
    assert f"c = {c:.3f}" in markdown_with(activations, "Clip threshold")
    units = figure(activations, "Per-unit mean")
    assert [t["name"] for t in units["data"] if t.get("name")] == ["ID", *SETS]
    assert len(array(units["data"][1]["y"])) == exp.outputs["test"].features.shape[1]
    assert units["layout"]["shapes"][0]["y0"] == pytest.approx(c)  # the clip line
    hist = figure(activations, "All activation values")
    assert [t["type"] for t in hist["data"]] == ["bar"] * 3
    assert hist["layout"]["shapes"][0]["x0"] == pytest.approx(c)
    energy = figure(activations, "Energy scores before and after")
    names = [t["name"] for t in energy["data"]]
    assert len(names) == 6 and names[0] == "ID (n=540)"  # ID, then each OOD set, before (left) and after (right)
    assert {t["xaxis"] for t in energy["data"]} == {"x", "x2"}
    shown_before, shown_after = _auroc_text(activations)
    assert shown_before == pytest.approx(100 * before, abs=0.051)
    assert shown_after == pytest.approx(100 * after, abs=0.051)


def test_moving_the_percentile_moves_the_threshold_and_the_auroc(activations, exp):
    old_text = _auroc_text(activations)
    activations.slider(key="act-react-p").set_value(97.0).run()
    no_exception(activations)
    c, before, after = _react_expected(exp, 97.0)
    assert f"c = {c:.3f}" in markdown_with(activations, "Clip threshold")
    assert figure(activations, "All activation values")["layout"]["shapes"][0]["x0"] == pytest.approx(c)
    assert figure(activations, "Per-unit mean")["layout"]["shapes"][0]["y0"] == pytest.approx(c)
    new_text = _auroc_text(activations)
    assert new_text[0] == old_text[0]  # only the clipped AUROC moves (checked against its recomputation below)
    assert new_text[1] == pytest.approx(100 * after, abs=0.051)
    assert activations.metric[0].label == "Mean AUROC with ReAct (p = 97)"
    activations.slider(key="act-react-p").set_value(90.0).run()


def test_dice_and_ash_views_redraw_on_their_sliders(activations, exp):
    activations.radio(key="act-view").set_value("dice").run()
    no_exception(activations)
    matrix = figure(activations, "Contribution matrix")
    assert [t["type"] for t in matrix["data"]] == ["heatmap", "heatmap"]
    kept = [a["text"] for a in matrix["layout"]["annotations"] if a["text"].startswith("kept by DICE")][0]
    assert kept == "kept by DICE: 10.0% of weights"  # sparsity 90: the top 10% of contributions
    view = activation_stats.activation_view_from_experiment(exp, SETS)
    assert _auroc_text(activations)[1] == pytest.approx(100 * activation_stats.dice_at(view, 90.0)[1].mean_auroc_after,
                                                        abs=0.051)
    activations.slider(key="act-dice-p").set_value(50.0).run()
    matrix = figure(activations, "Contribution matrix")
    # V = W ⊙ mean ID train activation; kept: V > its 50th percentile (dead units tie at 0 and are dropped)
    V = exp.adapter.head_weight * exp.outputs["train"].features.astype(np.float64).mean(0)
    kept = 100 * np.mean(V > np.percentile(V, 50))
    assert [a["text"] for a in matrix["layout"]["annotations"] if a["text"].startswith("kept")] == \
        [f"kept by DICE: {kept:.1f}% of weights"]
    # the shown mean AUROC is the one DICE gives at 50, recomputed here (never "it changed": other weights may
    # give two means that round alike)
    assert _auroc_text(activations)[1] == pytest.approx(100 * activation_stats.dice_at(view, 50.0)[1].mean_auroc_after,
                                                        abs=0.051)

    activations.radio(key="act-view").set_value("ash").run()
    no_exception(activations)
    mass = figure(activations, "activation sum that pruning removes")
    assert [t["name"] for t in mass["data"]] == ["ID (test) (n=540)", "rotated (n=108)", "gaussian (n=108)"]
    assert figure(activations, "Energy scores before and after")
    table = activations.dataframe[0].value
    assert list(table.index) == ["ID", *SETS] and (table["activation sum removed"].between(0, 100)).all()
    activations.slider(key="act-ash-p").set_value(60.0).run()
    no_exception(activations)
    assert _auroc_text(activations)[1] == pytest.approx(
        100 * activation_stats.ash_at(view, 60.0, "s")[1].mean_auroc_after, abs=0.051)
    assert activations.metric[0].label == "Mean AUROC with ASH-S (p = 60)"
    activations.radio(key="act-view").set_value("react").run()


@pytest.mark.parametrize("page", [ACTIVATIONS, EXPLANATIONS])
def test_one_class_experiments_get_a_note_instead(page, monkeypatch):
    one_class = SimpleNamespace(is_classifier=False, spec=SimpleNamespace(model="deep_svdd"))
    monkeypatch.setattr(ui, "get_experiment", lambda *a, **k: one_class)
    at = run_page(page)
    no_exception(at)
    assert any("needs a **classifier**" in i.value or "need a **classifier**" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.image


# --- Explanations ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def explanations(exp) -> AppTest:
    return run_page(EXPLANATIONS)


def test_explanations_side_by_side_galleries_and_sample(explanations, exp):
    no_exception(explanations)
    images = explanations.image
    # side by side: ID images + overlays, OOD images + overlays (4 each); galleries: 3 x (images + overlays) of 5
    assert [len(i.value) for i in images[:4]] == [4, 4, 4, 4]
    assert [len(i.value) for i in images[4:8]] == [5] * 4  # most ID-like OOD, most OOD-like ID
    assert 1 <= len(images[8].value) == len(images[9].value) <= 5  # the most confident mistakes (if any)
    assert images[1].captions == ["Grad-CAM"] * 4
    assert all(" → " in c for c in images[0].captions)
    # "try a sample" starts on ID test #0: its prediction and its score under every fast detector
    pred = exp.bench.class_names[int(exp.outputs["test"].logits[0].argmax())]
    assert explanations.metric[0].value == f"class {pred}"
    table = explanations.dataframe[0].value
    assert len(table) >= 20 and set(table.columns) == {"detector", "score", "ID %ile", "rotated %ile", "flagged"}
    # the slow detectors are opt-in: those that run or train a network; GradNorm (closed form) is scored at once
    slow = [n for n in ui.detector_options(exp) if REGISTRY[n].slow()]
    assert explanations.multiselect(key="expl-try-slow").options == list(map(ui.detector_format(exp), slow)) and slow
    assert ui.detector_label("gradnorm") in set(table["detector"]) and not set(map(ui.detector_label, slow)) & set(table["detector"])
    energy_row = table[table["detector"] == ui.detector_label("energy")].iloc[0]
    e0 = -logsumexp(exp.outputs["test"].logits[0].astype(np.float64))
    assert energy_row["score"] == pytest.approx(e0, rel=1e-5)
    e_id = -logsumexp(exp.outputs["test"].logits.astype(np.float64), axis=1)
    # a fresh forward pass of one image may differ from the batched one in the last bits: allow one sample (0.19%)
    assert energy_row["ID %ile"] == pytest.approx(100 * ((e_id < e0).mean() + 0.5 * (e_id == e0).mean()), abs=0.2)
    # the histogram of the chosen detector: ID and OOD bars, the 95%-TPR threshold and this sample
    fig = figures_of(explanations)[-1]
    assert [t["name"] for t in fig["data"]] == ["ID (test) (n=540)", "rotated (n=108)"]
    xs = sorted(s["x0"] for s in fig["layout"]["shapes"])
    assert xs == pytest.approx(sorted([e0, metrics.threshold_at_tpr(e_id, 0.95)]), rel=1e-5)


@pytest.mark.parametrize("method", ["integrated_gradients", "guided_gradcam"])
def test_other_explanations_and_a_chosen_class(explanations, method):
    explanations.radio(key="expl-method").set_value(method).run()
    no_exception(explanations)
    label = {"integrated_gradients": "Integrated Gradients", "guided_gradcam": "Guided Grad-CAM"}[method]
    assert explanations.image[1].captions == [label] * 4
    explanations.selectbox(key="expl-target").set_value(3).run()
    no_exception(explanations)
    assert not explanations.error
    explanations.selectbox(key="expl-target").select_index(0)
    explanations.radio(key="expl-method").set_value("gradcam").run()


def _png(side: int = 40) -> bytes:
    im = Image.new("L", (side, side), 255)  # a dark "1" on white: auto-inverted to light on dark
    im.paste(0, (side // 2 - 3, 5, side // 2 + 3, side - 5))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_an_invalid_upload_shows_an_error_and_a_good_one_is_explained(exp):
    # a page of its own: the upload stays chosen, which the other tests of the shared page must not inherit
    explanations = run_page(EXPLANATIONS)
    explanations.radio(key="expl-try-source").set_value("upload").run()
    assert any("Upload an image" in i.value for i in explanations.info)
    explanations.file_uploader(key="expl-try-upload").upload("broken.png", b"this is not an image").run()
    no_exception(explanations)
    assert [e.value for e in explanations.error if "Could not use this image" in e.value]
    assert all(len(e.value) < 300 for e in explanations.error)
    explanations.file_uploader(key="expl-try-upload").upload("one.png", _png()).run()
    no_exception(explanations)
    assert not explanations.error
    assert explanations.metric[0].label == "Prediction"
    assert any("your image (40×40 px, inverted)" in c for i in explanations.image for c in i.captions)


def test_upload_handler_directly(exp):
    from pages import explanations as page

    for data, message in [(b"", "empty"), (b"\x89PNG\r\n\x1a\n broken", "Could not use this image"),
                          (_png(2), "at least 4x4")]:
        up, error = page.read_upload(data, exp.bench)
        assert up is None and message in error
    up, error = page.read_upload(_png(), exp.bench)
    assert error is None and up.x.shape == (1, *exp.bench.input_shape) and up.inverted
