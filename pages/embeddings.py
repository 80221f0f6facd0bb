"""Embeddings page: a 2-D map (UMAP, PCA or t-SNE) of the penultimate features, or raw pixels, of ID test and
OOD samples, coloured by set, class or a detector's score; select points to see the samples behind them."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from ood_core import embedding as E
from ood_core import figures
from ood_core.figures import embedding as embedding_figures
from ood_core.data import OOD_SETS
from ood_core.detectors import REGISTRY, default_params
from ood_core.settings import default_ood_sets
from ood_core.text import brief
from pages import _support as ui

DEFAULT_DETECTOR = "msp"
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA (instant)", "tsne": "t-SNE (slow)"}
SPACE_LABELS = {"features": "penultimate features", "pixels": "raw pixels"}
COLOR_LABELS = {"set": "set (ID test / each OOD set)", "label": "true class", "pred": "predicted class",
                "score": "a detector's score"}
TSNE_DEFAULT_MAX = 150
MAP_HEIGHT = 580
MAP_PRESENT_HEIGHT = 560  # presentation mode: the map fits a 1024x768 screen under the title
MAX_IMAGES = 48  # the image grid under a selection; the table lists every selected sample
READY_KEY = "embeddings-ready"  # session_state: reducer keys this session has already drawn


# --- widgets ----------------------------------------------------------------------------------------

def choose_detector(exp, options: list[str], key: str, label: str = "Detector") -> str:
    default = ui.url_choice("detector", options, DEFAULT_DETECTOR if DEFAULT_DETECTOR in options else options[0])
    name = st.selectbox(label, options, index=options.index(default), format_func=ui.detector_format(exp), key=key,
                        help="Scores with the detector's default parameters; higher = more unfamiliar. " + ui.COST_HELP)
    ui.remember_in_url("detector", name)
    return name


def controls(exp) -> dict:
    available = exp.ood_names
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    with c1:
        described = "\n".join(f"- **{s}**: {OOD_SETS[s].description}" for s in available if s in OOD_SETS)
        sets = st.multiselect("OOD sets", available, default=ui.url_choices("sets", available,
                                                                            default_ood_sets(available)),
                              key="emb-sets", help="Shown together with the ID test images:\n" + described)
    with c2:
        methods = list(METHOD_LABELS)
        method = st.radio("Method", methods, index=methods.index(ui.url_choice("method", methods, "umap")),
                          format_func=METHOD_LABELS.get, key="emb-method",
                          help="UMAP keeps neighbourhoods (clusters) and is the default; PCA is a linear projection "
                               "that shows at once; t-SNE is slow and gets a subsample.")
    with c3:
        spaces = list(SPACE_LABELS)
        space = st.radio("Embed", spaces, index=spaces.index(ui.url_choice("space", spaces, "features")),
                         format_func=SPACE_LABELS.get, key="emb-space",
                         help="Penultimate features: what the network sees (the input of its last layer). "
                              "Raw pixels: the images themselves, before the network.")
    with c4:
        colour_options = [c for c in COLOR_LABELS if c != "pred" or exp.is_classifier]
        color_by = st.selectbox("Colour by", colour_options,
                                index=colour_options.index(ui.url_choice("color", colour_options, "set")),
                                format_func=COLOR_LABELS.get, key="emb-color")
        detector = None
        if color_by == "score":
            detector = choose_detector(exp, ui.detector_options(exp), key="emb-color-detector")
        else:
            ui.forget_in_url("detector")
    max_per_set = None
    if method == "tsne":
        st.warning("t-SNE is slow (tens of seconds on a few thousand points) and cannot place new points on an "
                   "existing map, so it embeds a random subsample of each set again for every choice of sets.")
        max_per_set = st.slider("Samples per set (t-SNE)", 20, 1000,
                                ui.url_number("per_set", 20, 1000, TSNE_DEFAULT_MAX, int), step=10, key="emb-tsne-max")
        ui.remember_in_url("per_set", max_per_set)
    else:
        ui.forget_in_url("per_set")
    for key, value in (("sets", sets), ("method", method), ("space", space), ("color", color_by)):
        ui.remember_in_url(key, value)
    return dict(sets=sets, method=method, space=space, color_by=color_by, detector=detector, max_per_set=max_per_set)


# --- the map ----------------------------------------------------------------------------------------

def reducer_for(exp, exp_id: str, c: dict, sets: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame, xy) of the map. PCA and UMAP are fitted once on ID test + every OOD set and any choice of sets
    is looked up in that map (it does not move); t-SNE is fitted on the chosen sets, subsampled."""
    seed = exp.spec.seed
    if c["method"] == "tsne":
        frame, red = ui.embedding_reducer(exp_id, c["space"], "tsne", seed, tuple(sets), c["max_per_set"], exp)
        return frame, red.embedding_
    _, red = ui.embedding_reducer(exp_id, c["space"], c["method"], seed, tuple(exp.ood_names), None, exp)
    frame, X = E.embedding_frame(exp, sets, c["space"], None, seed)
    return frame, red.transform(X)


def make_figure(exp, frame: pd.DataFrame, xy: np.ndarray, c: dict, method: str, start_jobs: bool = True):
    """The scatter; when the detector's scores fail, a message and the set colouring instead (also while a slow
    detector's job runs: `start_jobs` starts it and draws its panel, else only a finished job's scores are used)."""
    title = f"{E.METHOD_TITLES[method]} of {SPACE_LABELS[c['space']]}"
    if c["color_by"] == "score":
        scores, error = ui.detector_scores_nowait(exp, c["detector"], default_params(c["detector"]), start_jobs)
        if scores is None and error is None:
            if start_jobs:
                st.caption(f"Coloured by set until the {REGISTRY[c['detector']].title} scores are ready.")
        elif error:
            st.error(f"{REGISTRY[c['detector']].title} could not score these samples: {error}. Coloured by set instead.")
        else:
            return embedding_figures.embedding_figure(frame, xy, "score", scores=scores, method=method, title=title,
                                      score_name=f"{REGISTRY[c['detector']].title} score")
    return embedding_figures.embedding_figure(frame, xy, "set" if c["color_by"] == "score" else c["color_by"], method=method,
                              title=title)


def draw_map(exp, exp_id: str, c: dict, sets: list[str]):
    """Draw the map and return its selection. UMAP not yet computed: PCA first, replaced by UMAP when ready."""
    slot = st.empty()
    chart_key = f"emb-chart-{c['method']}-{c['space']}"
    ready = st.session_state.setdefault(READY_KEY, set())
    ready_id = (exp_id, c["space"], c["method"], c["max_per_set"], tuple(sets) if c["method"] == "tsne" else ())
    what = E.METHOD_TITLES[c["method"]]
    if c["method"] == "umap" and ready_id not in ready:  # something to look at meanwhile: PCA is instant
        frame, xy = reducer_for(exp, exp_id, dict(c, method="pca"), sets)
        preview = make_figure(exp, frame, xy, c, "pca", start_jobs=False)
        preview.update_layout(title="PCA, shown while UMAP computes…", height=MAP_HEIGHT)
        ui.main_chart(preview, slot, height=MAP_PRESENT_HEIGHT, key="emb-chart-preview", width="stretch")
    # the spinner shows only if this takes a moment: a fit, not a cached map
    with st.spinner(f"Computing the {what} map (the first one of an experiment takes a few seconds; "
                    "later ones are instant)…"):
        if c["method"] == "umap":
            ui.umap_warmup().join()  # the numba compilation, if it is still running
        frame, xy = reducer_for(exp, exp_id, c, sets)
    ready.add(ready_id)
    fig = make_figure(exp, frame, xy, c, c["method"])
    fig.update_layout(height=MAP_HEIGHT)
    event = ui.main_chart(fig, slot, height=MAP_PRESENT_HEIGHT, key=chart_key, on_select="rerun",
                          selection_mode=("points", "box", "lasso"), width="stretch")
    counts = frame["set"].value_counts()
    st.caption(f"{len(frame)} points: " + ", ".join(f"{counts[s]} {'ID test' if s == 'test' else s}"
                                                    for s in dict.fromkeys(frame["set"]))
               + ". Hover a point for its set, index and label; click it to see that sample below, or pick the "
                 "lasso (or box) in the toolbar and drag around a group. Dragging on the map zooms; double-click "
                 "zooms out. Click a legend entry to hide a group.")
    return frame, event


# --- the samples behind a selection ------------------------------------------------------------------

def _caption(s: str, i: int, label: str, pred: str, classifier: bool) -> str:
    """"ID #5: 1 → 1" (true → predicted) or "rotated #3 → 4" (OOD: predicted only)."""
    name = "ID" if s == "test" else s
    if not classifier:
        return f"{name} #{i}" + (f": {label}" if s == "test" else "")
    return f"{name} #{i}: {label} → {pred}" if s == "test" else f"{name} #{i} → {pred}"


def selection_section(exp, frame: pd.DataFrame, event, colour_detector: Optional[str]) -> None:
    rows = E.select_samples(frame, event)
    st.subheader("Selected samples")
    if rows.empty:
        st.info("Nothing selected yet: click a point, or drag the toolbar's lasso around a group of points, to see those "
                "images, their labels, predictions and detector scores here.")
        return
    options = ui.detector_options(exp)
    default = [colour_detector] if colour_detector else [d for d in (DEFAULT_DETECTOR, "energy") if d in options]
    dets = st.multiselect("Detector scores to show", options, default=default or options[:1], key="emb-sel-detectors",
                          format_func=ui.detector_format(exp))
    table = pd.DataFrame({
        "set": rows["set"].to_numpy(), "index": rows["index"].to_numpy(), "true label": rows["label_name"].to_numpy(),
        "prediction": rows["pred_name"].to_numpy(), "confidence": rows["confidence"].to_numpy()})
    for d in dets:
        scores, error = ui.detector_scores_nowait(exp, d, default_params(d))
        if error:
            st.error(f"{REGISTRY[d].title}: {error}")
            continue
        if scores is None:  # a slow detector's job: its column joins the table when it lands
            continue
        table[REGISTRY[d].title] = [float(scores[s][i]) for s, i in zip(rows["set"], rows["index"])]
    st.markdown(f"**{len(rows)}** selected "
                f"({', '.join(f'{n} {s}' for s, n in rows['set'].value_counts().items())}).")
    cfg = {"confidence": st.column_config.NumberColumn("confidence", format="%.3f",
                                                       help="Maximum softmax probability of the prediction"),
           **{REGISTRY[d].title: st.column_config.NumberColumn(format=ui.SCORE_FORMAT, help="Higher = more unfamiliar")
              for d in dets}}
    st.dataframe(table, hide_index=True, column_config=cfg)
    shown = rows.head(MAX_IMAGES)
    pixels = exp.bench.to_pixels(E.frame_inputs(exp, shown))
    captions = [_caption(s, i, lab, pred, exp.is_classifier)
                for s, i, lab, pred in zip(shown["set"], shown["index"], shown["label_name"], shown["pred_name"])]
    st.image(figures.upscale(pixels, 4), caption=captions, width=72)
    if len(rows) > MAX_IMAGES:
        st.caption(f"The first {MAX_IMAGES} of {len(rows)} images; the table lists all of them.")


def main() -> None:
    ui.umap_warmup()
    st.title("Embeddings: where do OOD samples land in the network's feature space?")
    ui.tutorial(
        "Every dot is one image. The network turns each image into a vector of **penultimate features** (the input "
        "of its last layer); UMAP squeezes those vectors onto a page so that images the network finds similar land "
        "close together. ID test images form one cluster per class. OOD images that fall **between or on top of** "
        "those clusters are the ones a feature-based detector will struggle with; OOD images far away are easy. "
        "Compare with **raw pixels** to see what the network has learned beyond the pixels.")
    exp = ui.get_experiment()
    if exp is None:
        return
    top = ui.chart_first()
    c = controls(exp)
    sets = c["sets"]
    if not sets:
        st.info("No OOD set chosen: showing the ID test images alone. Pick OOD sets above to compare.")
    try:
        with top if top is not None else st.container():
            frame, event = draw_map(exp, ui.experiment_id(exp), c, sets)
    except ValueError as e:  # too few points, NaN features, no stored images, ...
        st.error(f"Could not compute the embedding: {brief(str(e))}")
        return
    selection_section(exp, frame, event, c["detector"])


if __name__ == "__main__":
    main()
