"""AppTest tests of a view's state in the URL, the teaching presets and presentation mode (issue 13).

A link's query parameters restore each page's choices; a preset (a link or its sidebar button) reaches its page with
its lesson visible, the page's own numbers showing the lesson's inequality; presentation mode hides the explanations
and draws the main chart first. Expected numbers are computed here from ood_core.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ood_core import Spec, activation_stats, metrics, pipeline, report
from ood_core.detectors import REGISTRY
from ood_core.presets import PRESETS
from ood_core.spec import TrainConfig
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TITLES = {"scores": "Scores:", "compare": "Compare:", "activations": "Activations:"}


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def open_page(page: str, query: dict, timeout: int = 180) -> AppTest:
    """The app opened on `page` with a link's query parameters (as a browser opening that address)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.query_params.update(query)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.query_params.update(query)  # switching pages drops a page's parameters, as opening the link does not
    at.run()
    no_exception(at)
    return at


def figure(at: AppTest, key_part: str) -> dict:
    charts = [c for c in at.get("plotly_chart") if key_part in c.proto.id]
    assert charts, f"no chart with {key_part!r} in its key"
    return json.loads(charts[0].proto.spec)


def values(v) -> np.ndarray:
    """A plotly JSON array as numpy: a list, or the {"dtype", "bdata"} form numpy arrays take."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
    return np.asarray(v, dtype=float)


def elements(node) -> list:
    """The leaf elements under `node`, in page order."""
    out = []
    for child in getattr(node, "children", {}).values():
        out += elements(child) if getattr(child, "children", None) else [child]
    return out


def auroc(exp, detector: str, ood_set: str, params=None) -> float:
    scores = exp.score(exp.fit_detector(detector, params), ["test", ood_set])
    return metrics.auroc(scores["test"], scores[ood_set])


@pytest.fixture(scope="module")
def prepare(default_experiment, cache_dir):
    made = {default_experiment.spec: default_experiment}

    def get(spec: Spec):
        if spec not in made:
            made[spec] = pipeline.prepare(spec, cache_dir=cache_dir, device="cpu")
        return made[spec]

    return get


# --- each page's choices in the URL ------------------------------------------------------------------------

def test_a_link_restores_the_scores_threshold_and_log_axis(default_experiment):
    at = open_page("scores", {"detector": "energy", "sets": "gaussian", "threshold": "-6.5", "log": "1"})
    assert at.slider(key='threshold-energy-{"temperature": 1.0}').value == -6.5
    assert at.toggle(key="scores-log-y").value
    assert figure(at, "scores-histogram")["layout"]["yaxis"]["type"] == "log"
    # the counts under the histogram are those at the link's threshold
    scores = default_experiment.score(default_experiment.fit_detector("energy"))
    expected = report.confusion_frame(scores["test"], {"gaussian": scores["gaussian"]}, -6.5)
    assert at.dataframe[1].value.equals(expected)
    assert (at.query_params["threshold"], at.query_params["log"]) == ("-6.5", "1")
    # another detector has another score scale: the link's threshold no longer applies and leaves the URL
    at.selectbox(key="scores-detector").set_value("msp").run()
    no_exception(at)
    assert "threshold" not in at.query_params


def test_a_link_restores_the_compare_pages_choices(default_experiment):
    at = open_page("compare", {"metric": "fpr95", "families": "output,distance", "sets": "gaussian,flipped"})
    assert at.radio(key="compare-metric").value == "fpr95"
    assert at.multiselect(key="compare-families").value == ["output", "distance"]
    assert at.multiselect(key="compare-sets").value == ["gaussian", "flipped"]
    table = at.dataframe[0].value
    assert list(table.columns[1:]) == ["gaussian", "flipped"] and set(table["Family"]) == {"Output", "Distance"}
    scores = default_experiment.score(default_experiment.fit_detector("mahalanobis"))
    assert table.loc[REGISTRY["mahalanobis"].title, "flipped"] == pytest.approx(
        100 * metrics.fpr95(scores["test"], scores["flipped"]))
    assert figure(at, "compare-heatmap")["layout"]["title"]["text"].startswith("FPR@95")
    # changes go back into the URL; the defaults (every family, every set) leave it, so links stay short
    at.radio(key="compare-metric").set_value("aupr_in").run()
    at.multiselect(key="compare-sets").set_value(default_experiment.ood_names).run()
    no_exception(at)
    assert at.query_params["metric"] == "aupr_in" and "sets" not in at.query_params
    assert at.query_params["families"] == "output,distance"


def test_a_link_restores_the_sensitivity_pages_choices(default_experiment):
    at = open_page("sensitivity", {"detector": "gen", "sets": "gaussian", "p.M": "10", "fpr": "1"})
    assert at.selectbox(key="sens-detector").value == "gen"
    assert at.multiselect(key="sens-sets").value == ["gaussian"]
    assert at.select_slider(key="sens-param-gen-M").value == 10 and at.checkbox(key="sens-fpr").value
    # gamma swept with M held at the link's 10: the point at the default gamma is GEN(gamma=0.1, M=10)
    fig = figure(at, "sens-chart-gen-gamma-auroc")
    line = next(t for t in fig["data"] if t["name"] == "gaussian")
    expected = 100 * auroc(default_experiment, "gen", "gaussian", {"gamma": 0.1, "M": 10})
    assert values(line["y"])[list(values(line["x"])).index(0.1)] == pytest.approx(expected)
    assert figure(at, "sens-chart-gen-gamma-fpr95")  # fpr=1: the FPR@95 charts too
    assert at.query_params["p.M"] == "10" and "p.gamma" not in at.query_params  # only values off the default


def test_a_link_restores_the_embeddings_pages_choices(default_experiment):
    at = open_page("embeddings", {"method": "pca", "space": "pixels", "color": "score", "detector": "energy",
                                  "sets": "gaussian"})
    assert (at.radio(key="emb-method").value, at.radio(key="emb-space").value) == ("pca", "pixels")
    assert at.selectbox(key="emb-color").value == "score" and at.selectbox(key="emb-color-detector").value == "energy"
    fig = figure(at, "emb-chart-pca-pixels")
    assert fig["layout"]["title"]["text"] == "PCA of raw pixels"
    assert sum(len(t.get("customdata") or []) for t in fig["data"]) == len(default_experiment.outputs["test"].labels) \
        + len(default_experiment.outputs["gaussian"].labels)


def test_a_link_restores_the_activations_pages_choices(default_experiment):
    at = open_page("activations", {"view": "dice", "sets": "gaussian", "dice.p": "80"})
    assert at.radio(key="act-view").value == "dice" and at.slider(key="act-dice-p").value == 80.0
    view = activation_stats.activation_view_from_experiment(default_experiment, ["gaussian"])
    after = activation_stats.dice_at(view, 80.0)[1].mean_auroc_after
    assert at.metric[0].label == "Mean AUROC with DICE (p = 80)" and at.metric[0].value == f"{100 * after:.1f}%"
    # another view's parameter leaves the URL with its view
    at.radio(key="act-view").set_value("react").run()
    no_exception(at)
    assert "dice.p" not in at.query_params and at.query_params["react.p"] == "90"


def test_a_link_restores_the_explanations_pages_choices(default_experiment):
    at = open_page("explanations", {"method": "integrated_gradients", "target": "3", "set": "gaussian",
                                    "alpha": "0.3", "n": "3", "detector": "msp", "k": "4", "tab": "galleries"})
    assert at.radio(key="expl-method").value == "integrated_gradients"
    assert at.selectbox(key="expl-target").value == 3 and at.selectbox(key="expl-ood").value == "gaussian"
    assert at.slider(key="expl-alpha").value == 0.3 and at.slider(key="expl-n").value == 3
    assert at.selectbox(key="expl-gal-detector").value == "msp" and at.slider(key="expl-gal-k").value == 4
    assert at.session_state["expl-tab"] == "Galleries of a detector's mistakes"
    assert at.image[1].captions == ["Integrated Gradients"] * 3  # 3 images per side, explained as the link says
    assert at.query_params["tab"] == "galleries" and at.query_params["target"] == "3"


def test_the_explanations_link_names_the_predicted_class_choice_in_words(default_experiment):
    at = open_page("explanations", {"set": "gaussian"})
    assert at.selectbox(key="expl-target").value == "predicted" and at.query_params["target"] == "predicted"
    at = open_page("explanations", {"target": "predicted", "set": "gaussian"})  # such a link opens the same view
    assert at.selectbox(key="expl-target").value == "predicted"
    assert at.image[1].captions == ["Grad-CAM"] * 4


def test_a_link_restores_the_methods_search():
    at = open_page("methods", {"q": "energy"})
    assert at.text_input(key="methods-search").value == "energy"
    assert any(m.value.startswith("#### Energy score") for m in at.markdown)
    assert not any(m.value.startswith("#### Maximum softmax") for m in at.markdown)


def test_the_methods_search_finds_a_method_behind_a_shared_score():
    """CSI and U-std are one-class models scored by the model_score card: searching their names, or an author's
    (Tack, of CSI), finds that card and its cost line, which lists their trainings; "Tack" is not found inside
    "Attacks" (Lee et al.'s title on the Mahalanobis card)."""
    title = REGISTRY["model_score"].title
    for query in ("CSI", "u-std", "Tack"):
        at = open_page("methods", {"q": query})
        cards = [m.value for m in at.markdown if m.value.startswith("#### ")]
        assert cards == [f"#### {title}  \n`model_score` · {ui.family_label(REGISTRY['model_score'].family)}"], query
        assert any("**Cost:** trains the one-class model first" in m.value and "CSI " in m.value
                   and "U-std " in m.value for m in at.markdown)


# --- teaching presets ----------------------------------------------------------------------------------------

def shown_inequality(name: str, at: AppTest, prepare) -> tuple[float, float]:
    """(larger, smaller): the two sides of the preset's lesson as its page shows them, in percent."""
    if name == "react":  # "AUROC: 76.5% → **95.4%**" on the Activations page
        before, after = re.search(r"AUROC: ([\d.]+)% → \*\*([\d.]+)%\*\*",
                                  next(m.value for m in at.markdown if "AUROC: " in m.value)).groups()
        return float(after), float(before)
    table = at.dataframe[0].value
    if name == "features-beat-outputs":  # Compare: mean over the OOD sets of each detector's row
        mean = table.select_dtypes("number").mean(axis=1)
        return (min(mean[REGISTRY[d].title] for d in ("mahalanobis", "vim", "knn")),
                max(mean[REGISTRY[d].title] for d in ("msp", "max_logit", "energy")))
    col = "AUROC ↑"
    if name == "outlier-exposure":  # the page shows the OE model; the cross-entropy one is the default experiment
        ce = 100 * auroc(prepare(Spec(training=TrainConfig(regime="ce"))), "msp", "gaussian")
        return table.loc["gaussian", col], ce
    if name == "near-far":
        return table.loc["gaussian", col], table.loc["flipped", col]
    if name == "open-set":
        return min(table.loc["gaussian", col], table.loc["rotated", col]), table.loc["unknown", col]
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_link_opens_its_page_with_the_lesson_visible(name, prepare):
    p = PRESETS[name]
    for spec in (p.spec, *p.companions):  # trained first: a link to an uncached model trains it as a job (test_app)
        prepare(spec)
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["preset"] = name
    at.run()  # the default page: the link switches to the preset's page
    no_exception(at)
    assert at.title[0].value.startswith(TITLES[p.page])
    assert at.session_state[ui.SPEC_KEY] == p.spec
    lesson = p.check(prepare(p.spec), prepare)
    assert lesson.holds, lesson.message
    assert [s.value for s in at.success] == [lesson.message]  # the lesson and its numbers, above the page
    assert any(p.title in m.value and p.lesson in m.value for m in at.markdown)
    larger, smaller = shown_inequality(name, at, prepare)
    assert larger > smaller
    assert {k: at.query_params[k] for k in p.choices} == dict(p.choices) and at.query_params["preset"] == name


def _banner_script(page: str, spec_seed: int) -> None:
    """A run of preset_banner alone: the near-far preset is on, the page and the experiment are given."""
    from types import SimpleNamespace

    import streamlit as st

    from ood_core import Spec
    from pages import _support as ui

    st.session_state[ui.PRESET_KEY] = "near-far"
    st.session_state[ui.SPEC_KEY] = Spec(seed=spec_seed)
    st.query_params["preset"] = "near-far"
    ui.preset_banner(st.empty(), SimpleNamespace(url_path=page))


@pytest.mark.parametrize("page, seed", [("compare", 0), ("scores", 1)])
def test_leaving_a_presets_page_or_changing_its_experiment_ends_it(page, seed):
    """(In the browser test a preset's sidebar button is clicked: AppTest runs app.py on a session's first run only.)"""
    at = AppTest.from_function(_banner_script, args=(page, seed), default_timeout=60).run()
    no_exception(at)
    assert not at.success and ui.PRESET_KEY not in at.session_state and "preset" not in at.query_params


# --- presentation mode ---------------------------------------------------------------------------------------

def test_presentation_mode_hides_the_explanations_and_draws_the_main_chart_first(default_experiment):
    at = open_page("scores", {"present": "1"})
    assert at.query_params["present"] == "1"
    assert not any("unfamiliarity score" in m.value for m in at.main.markdown)  # the introduction is hidden
    order = [e.type for e in elements(at.main)]
    assert order[:3] == ["title", "plotly_chart", "selectbox"]  # title, histogram, then the choices
    hist = figure(at, "scores-histogram")
    assert hist["layout"]["height"] == ui.MAIN_CHART_HEIGHT and hist["layout"]["font"]["size"] == ui.PRESENT_FONT
    # out of presentation mode: the introduction, and the histogram under the metrics
    at = open_page("scores", {})
    assert any("unfamiliarity score" in m.value for m in at.main.markdown)
    order = [e.type for e in elements(at.main)]
    assert order.index("plotly_chart") > order.index("dataframe") and "present" not in at.query_params
    assert figure(at, "scores-histogram")["layout"].get("height") != ui.MAIN_CHART_HEIGHT


@pytest.mark.parametrize("present", [True, False])
def test_the_presentation_toggle_starts_from_the_link(present):
    """(AppTest shows the sidebar on a session's first run only; the browser test switches the toggle.)"""
    at = AppTest.from_file(APP, default_timeout=180)
    if present:
        at.query_params["present"] = "1"
    at.run()
    no_exception(at)
    assert at.toggle(key=ui.PRESENT_KEY).value == present
    intro = any(m.value.strip().startswith("**What am I looking at?**") for m in at.main.markdown)
    assert intro != present and ("present" in at.query_params) == present


def test_the_methods_search_says_when_a_method_is_a_training_regime():
    """Outlier exposure is a way to train the classifier, not a detector: the search says so and where to choose it;
    a query matching a detector too (ARPL) shows both the regimes and the card."""
    at = open_page("methods", {"q": "outlier exposure"})
    infos = [i.value for i in at.info]
    assert any("A training regime matching “outlier exposure”: **Outlier exposure (Hendrycks et al. 2019)** (`oe`)"
               in i and "choose it on the Experiment page" in i for i in infos)
    assert any(i == "No detector matches “outlier exposure”." for i in infos)
    at = open_page("methods", {"q": "ARPL"})
    infos = [i.value for i in at.info]
    assert any(i.startswith("Training regimes matching “ARPL”") and "(`arpl_cs`)" in i for i in infos)
    assert any(m.value.startswith(f"#### {REGISTRY['rpl'].title}") for m in at.markdown)
