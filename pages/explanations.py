"""Explanations page: where in the image the classifier looks (Grad-CAM, Integrated Gradients, Guided Grad-CAM),
for ID and OOD samples side by side, galleries of a detector's hardest cases, and "try a sample": an upload or
any stored image, its prediction, its heat map and its score under every detector placed on the ID and OOD
score distributions."""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from ood_core import embedding as E
from ood_core import explain as X
from ood_core import uploads
from ood_core import figures
from ood_core.detectors import REGISTRY, default_params
from ood_core.detectors.base import softmax
from ood_core.inference import Outputs
from ood_core.settings import NEAR_FAR_OOD, default_ood_sets
from ood_core.text import brief
from pages import _support as ui

METHODS = {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients", "guided_gradcam": "Guided Grad-CAM"}
METHOD_HELP = ("Grad-CAM: which regions of the last convolutional layer raise the class's logit (coarse, "
               "class-specific). Integrated Gradients: each pixel's share of the logit, summed along a path from a "
               "black image (fine, exact attribution). Guided Grad-CAM: Grad-CAM sharpened with guided "
               "back-propagation (fine and class-specific).")
DEFAULT_DETECTOR = "energy"  # spreads its scores more than MSP does on a confident network
PREDICTED = "predicted"  # the "Explain the class" choice (and URL value) that explains each image's own prediction
TABS = {"side": "ID vs OOD", "galleries": "Galleries of a detector's mistakes", "try": "Try a sample"}  # URL tab= name
UPSCALE = 6  # 16 px images shown at 96 px, without blur
IMG_W = 96


# --- library calls ----------------------------------------------------------------------------------

def read_upload(data, bench, invert="auto") -> tuple[Optional[uploads.Upload], Optional[str]]:
    """(decoded upload, None) or (None, a message for the user) for the bytes of an uploaded image."""
    try:
        return uploads.preprocess_upload(data, bench, invert=invert), None
    except ValueError as e:
        return None, f"Could not use this image: {brief(str(e))}"


# --- showing images ---------------------------------------------------------------------------------

def big(images_01: np.ndarray) -> list[np.ndarray]:
    return figures.upscale(images_01, UPSCALE)


def overlays(pixels: np.ndarray, heat: np.ndarray, alpha: float) -> list[np.ndarray]:
    """The heat maps blended over the images, enlarged like the images."""
    rgb = np.stack([X.overlay(p, h, alpha) for p, h in zip(pixels, heat)]) / 255.0
    return big(rgb.transpose(0, 3, 1, 2))


class Samples:
    """Labels, predictions and confidences of the stored samples (ID test and every OOD set), from the library."""

    def __init__(self, exp):
        self.exp = exp
        frame, _ = E.embedding_frame(exp, exp.ood_names)
        self.info = {(s, int(i)): r for s, i, r in zip(frame["set"], frame["index"], frame.itertuples(index=False))}

    def caption(self, split: str, i: int, extra: str = "") -> str:
        r = self.info[(split, int(i))]
        head = f"#{i}: {r.label_name} → {r.pred_name}" if split == "test" else f"#{i} → {r.pred_name}"
        return f"{head} ({r.confidence:.0%})" + (f" · {extra}" if extra else "")

    def pixels(self, split: str, idx) -> np.ndarray:
        return self.exp.bench.to_pixels(self.exp.outputs[split].inputs[np.asarray(idx, dtype=int)])


def explained_row(exp, samples: Samples, split: str, idx, opts: dict, extras=None, key: str = "") -> None:
    """A row of images with their captions and, below, the same images with the heat map over them."""
    idx = [int(i) for i in idx]
    if not idx:
        st.caption("No images here.")
        return
    caps = [samples.caption(split, i, extras[j] if extras else "") for j, i in enumerate(idx)]
    try:
        heat = ui.attribution_maps(ui.experiment_id(exp), opts["method"], split, tuple(idx), opts["target"], exp)
    except ValueError as e:
        st.error(f"Could not explain these images: {brief(str(e))}")
        return
    pix = samples.pixels(split, idx)
    st.image(big(pix), caption=caps, width=IMG_W)
    st.image(overlays(pix, heat, opts["alpha"]), caption=[METHODS[opts["method"]]] * len(idx), width=IMG_W)
    empty = X.zero_maps(heat)
    if len(empty):
        st.caption(f"{len(empty)} map(s) are all dark: no positive evidence for the target class at that layer.")


# --- sections ---------------------------------------------------------------------------------------

def controls(exp) -> dict:
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1.4])
    with c1:
        methods = list(METHODS)
        method = st.radio("Explanation", methods, index=methods.index(ui.url_choice("method", methods, "gradcam")),
                          format_func=METHODS.get, key="expl-method", help=METHOD_HELP)
    with c2:
        names = exp.bench.class_names
        targets = [PREDICTED, *range(len(names))]  # "predicted" in the link, not "None"
        choice = st.selectbox("Explain the class", targets,
                              index=targets.index(ui.url_choice("target", targets, PREDICTED)), key="expl-target",
                              format_func=lambda t: "each image's predicted class" if t == PREDICTED else f"class {names[t]}",
                              help="Which logit to explain. The predicted class shows why the network decided as it "
                                   "did; another class shows what would speak for that class.")
    with c3:
        # the setting's natural OOD set if any, else the near one, else the far one
        first_ood = ui.url_choice("set", exp.ood_names,
                                  default_ood_sets(exp.ood_names, with_natural=NEAR_FAR_OOD, fallback=1)[0])
        ood_set = st.selectbox("OOD set", exp.ood_names, index=exp.ood_names.index(first_ood),
                               key="expl-ood", help="The OOD images compared with the ID test images below.")
    with c4:
        alpha = st.slider("Heat-map opacity", 0.0, 1.0, ui.url_number("alpha", 0.0, 1.0, 0.5), 0.05, key="expl-alpha")
    for key, value in (("method", method), ("target", choice), ("set", ood_set), ("alpha", float(alpha))):
        ui.remember_in_url(key, value)
    return dict(method=method, target=None if choice == PREDICTED else choice, ood_set=ood_set, alpha=alpha)


def side_by_side(exp, samples: Samples, opts: dict) -> None:
    ui.tutorial("The same explanation for ID test images (left) and OOD images (right). On ID digits the heat usually "
                "sits on the strokes that make the digit; on OOD images it often lands on texture or noise that "
                "merely resembles a stroke — and yet the network may be confident.")
    c0, c1 = st.columns([1, 3])
    with c0:
        n = st.slider("Images per side", 2, 8, ui.url_number("n", 2, 8, 4, int), key="expl-n")
        ui.remember_in_url("n", n)
    with c1:
        st.write("")
        if st.button("Show other images", key="expl-shuffle"):
            st.session_state["expl-draw"] = st.session_state.get("expl-draw", 0) + 1
    draw = st.session_state.get("expl-draw", 0)
    rng = np.random.default_rng([exp.spec.seed, draw])
    left, right = st.columns(2)
    for col, split, title in ((left, "test", "ID test"), (right, opts["ood_set"], f"OOD: {opts['ood_set']}")):
        with col:
            st.markdown(f"**{title}**")
            size = len(exp.outputs[split].labels)
            idx = np.sort(rng.choice(size, size=min(n, size), replace=False))
            explained_row(exp, samples, split, idx, opts)
    st.caption("Captions: index, true label → prediction (confidence, the maximum softmax probability).")


def galleries(exp, samples: Samples, opts: dict) -> None:
    ui.tutorial("Galleries that teach where a detector fails. Pick a detector: the **OOD images it finds most ID-like** "
                "are the ones it misses; the **ID images it finds most OOD-like** are its false alarms; the **most "
                "confident wrong predictions** show that confidence is not correctness.")
    options = ui.detector_options(exp)
    c1, c2 = st.columns([3, 1])
    with c1:
        default = ui.url_choice("detector", options, DEFAULT_DETECTOR if DEFAULT_DETECTOR in options else options[0])
        name = st.selectbox("Detector", options, index=options.index(default), format_func=ui.detector_format(exp),
                            key="expl-gal-detector", help=ui.COST_HELP)
    with c2:
        k = st.slider("Images per gallery", 2, 10, ui.url_number("k", 2, 10, 5, int), key="expl-gal-k")
    ui.remember_in_url("detector", name)
    ui.remember_in_url("k", k)
    with st.spinner(f"Scoring with {REGISTRY[name].title}…"):
        scores, error = ui.detector_scores_nowait(exp, name, default_params(name))
    if error:
        st.error(f"{REGISTRY[name].title} failed: {error}. Pick another detector.")
        return
    if scores is None:  # a slow detector's job is running (its panel is drawn): the galleries come when it lands
        return
    ood = opts["ood_set"]
    idx, sc = X.most_id_like_ood(scores[ood], k)
    st.markdown(f"**{ood} images that {REGISTRY[name].title} finds most ID-like** (lowest scores: the first it would let "
                "through)")
    explained_row(exp, samples, ood, idx, opts, [f"score {s:.3g}" for s in sc])
    idx, sc = X.most_ood_like_id(scores["test"], k)
    st.markdown(f"**ID test images that {REGISTRY[name].title} finds most OOD-like** (highest scores: the first false alarms)")
    explained_row(exp, samples, "test", idx, opts, [f"score {s:.3g}" for s in sc])
    test = exp.outputs["test"]
    idx, conf = X.confident_mistakes(test.logits, test.labels, k)
    st.markdown("**Most confident wrong predictions** on ID test (true → predicted)")
    if len(idx) == 0:
        st.success("The classifier gets every ID test image right: no mistakes to show.")
    else:
        explained_row(exp, samples, "test", idx, opts, [f"score {scores['test'][i]:.3g}" for i in idx])


def try_a_sample(exp, samples: Samples, opts: dict) -> None:
    ui.tutorial("Upload an image (a photo or drawing of a digit works; it is resized to the model's input and, when "
                "its background is bright, inverted to light strokes on dark) or pick any stored image. See what the "
                "model predicts, where it looks, and how unfamiliar every detector finds it compared with the ID "
                f"test images and the **{opts['ood_set']}** images.")
    source = st.radio("Sample", ["pick", "upload"], key="expl-try-source", horizontal=True,
                      format_func={"pick": "Pick a stored image", "upload": "Upload an image"}.get)
    if source == "upload":
        c1, c2 = st.columns([3, 1])
        with c2:
            invert = st.selectbox("Invert", ["auto", True, False], key="expl-try-invert",
                                  format_func={"auto": "auto (by background)", True: "yes", False: "no"}.get)
        with c1:
            file = st.file_uploader("Image (PNG or JPEG)", type=["png", "jpg", "jpeg"], key="expl-try-upload")
        if file is None:
            st.info("Upload an image to see its prediction, explanation and scores.")
            return
        up, error = read_upload(file.getvalue(), exp.bench, invert)
        if error:
            st.error(error)
            return
        x, pixels, label = up.x, up.pixels[None], f"your image ({up.original_size[0]}×{up.original_size[1]} px"\
            + (", inverted)" if up.inverted else ")")
    else:
        c1, c2 = st.columns(2)
        with c1:
            split = st.selectbox("From", ["test", *exp.ood_names], key="expl-try-set",
                                 format_func=lambda s: "ID test" if s == "test" else s)
        with c2:
            size = len(exp.outputs[split].labels)
            i = int(st.number_input(f"Index (0–{size - 1})", 0, size - 1, 0, key=f"expl-try-index-{split}"))
        x = exp.outputs[split].inputs[i:i + 1]
        pixels = exp.bench.to_pixels(x)
        label = ("ID test" if split == "test" else split) + f" #{i}" + (
            f", true class {exp.bench.class_names[int(exp.outputs[split].labels[i])]}" if split == "test" else "")
    explain_sample(exp, x, pixels, label, opts)


def explain_sample(exp, x: np.ndarray, pixels: np.ndarray, label: str, opts: dict) -> None:
    out = exp.outputs_of(x)
    probs = softmax(out.logits)[0]
    pred = int(np.argmax(probs))
    names = exp.bench.class_names
    c1, c2, c3 = st.columns([1.2, 1.2, 3])
    try:
        heat = X.attribute(exp.model, opts["method"], x, opts["target"], bench=exp.bench)
    except ValueError as e:
        heat = None
        st.error(f"Could not explain this image: {brief(str(e))}")
    with c1:
        st.image(big(pixels), caption=[label], width=120)
    with c2:
        if heat is not None:
            target = "predicted class" if opts["target"] is None else f"class {names[opts['target']]}"
            st.image(overlays(pixels, heat, opts["alpha"]), caption=[f"{METHODS[opts['method']]} for the {target}"],
                     width=120)
    with c3:
        st.metric("Prediction", f"class {names[pred]}", help="The class with the largest logit")
        st.markdown(f"Confidence (maximum softmax probability): **{probs[pred]:.1%}**")
        st.bar_chart(pd.DataFrame({"probability": probs}, index=[str(n) for n in names]), height=140,
                     x_label="class", y_label="probability")
    detector_table(exp, out, opts)


def detector_table(exp, out: Outputs, opts: dict) -> None:
    st.markdown("**Its score under every detector**, placed among the ID test and "
                f"{opts['ood_set']} scores of that detector")
    options = ui.detector_options(exp)
    # detectors that run the network again (or train models) to score are opt-in
    slow = [n for n in options if REGISTRY[n].slow()]
    extra = st.multiselect("Add slow detectors", slow, default=[], key="expl-try-slow", format_func=ui.detector_format(exp),
                           help="These run the network again to score (ODIN, Gram matrices, MC dropout, ...): about "
                                "ten seconds each the first time; the deep ensemble trains extra models first "
                                "(minutes), OpenGAN and C2AE a small network on the cached features (seconds). Each "
                                "runs as a background job with a progress bar and a Cancel button.")
    names = [n for n in options if n not in slow] + extra
    ood = opts["ood_set"]
    sample, id_ref, ood_ref, failed = {}, {}, {}, []
    bar = st.progress(0.0, text="Scoring…")
    for j, n in enumerate(names):
        bar.progress(j / len(names), text=f"Scoring with {REGISTRY[n].title}…")
        scores, error = ui.detector_scores_nowait(exp, n, default_params(n))
        if scores is None and error is None:  # a slow detector's job (its panel is drawn): joins when it lands
            continue
        if error is None:
            try:
                det = ui.fitted_detector(ui.experiment_id(exp), n, json.dumps(default_params(n), sort_keys=True), exp)
                v = np.asarray(det.score(out), dtype=np.float64)
                if not np.all(np.isfinite(v)):
                    raise FloatingPointError("a NaN or infinite score")
            except Exception as e:
                error = brief(f"{type(e).__name__}: {e}")
        if error:
            failed.append(f"{REGISTRY[n].title}: {error}")
            continue
        sample[n], id_ref[n], ood_ref[n] = v[0], scores["test"], scores[ood]
    bar.empty()
    for f in failed:
        st.error(f)
    if not sample:
        return
    placed = X.place_sample(sample, id_ref, ood_ref)
    table = pd.DataFrame([{"detector": ui.detector_label(n), "score": p["score"], "ID %ile": p["id_percentile"],
                           f"{ood} %ile": p["ood_percentile"], "flagged": p["flagged"]}
                          for n, p in placed.items()])
    c1, c2 = st.columns([3, 2])
    with c1:
        st.dataframe(table, hide_index=True, height=320, column_config={
            "score": st.column_config.NumberColumn(format=ui.SCORE_FORMAT, help="Higher = more unfamiliar"),
            "detector": st.column_config.TextColumn(help="Family · method"),
            "ID %ile": st.column_config.NumberColumn(
                format="%.0f", help="Percentile among ID test scores (% lower, ties count half): near 100 = less "
                                    "familiar than almost every ID test image"),
            f"{ood} %ile": st.column_config.NumberColumn(
                format="%.0f", help=f"Percentile among the {ood} images' scores"),
            "flagged": st.column_config.CheckboxColumn(
                help="Flagged as OOD at the threshold that keeps 95% of ID test images (the FPR@95TPR operating point)"),
        })
        n_flag = int(table["flagged"].sum())
        st.caption(f"{n_flag} of {len(table)} detectors flag this image as OOD at their 95%-TPR threshold.")
    with c2:
        det = st.selectbox("Show on the distributions of", list(placed), format_func=lambda n: REGISTRY[n].title,
                           index=list(placed).index(DEFAULT_DETECTOR) if DEFAULT_DETECTOR in placed else 0,
                           key="expl-try-detector")
        p = placed[det]
        fig = figures.score_histogram(id_ref[det], {ood: ood_ref[det]}, bins=40, threshold=p["threshold_95tpr"],
                                      x_label="score")
        fig.add_vline(x=p["score"], line_color="#2ca02c", line_width=3, annotation_text="this image",
                      annotation_position="bottom right", annotation_bgcolor="rgba(255,255,255,0.85)")
        fig.update_layout(height=320, margin=dict(t=30, b=10))
        st.plotly_chart(fig, key="expl-try-hist", width="stretch")


def main() -> None:
    st.title("Explanations: where does the classifier look?")
    ui.tutorial(
        "A heat map shows which pixels drive the network's decision: bright = strong evidence for the class being "
        "explained. For an ID digit it should cover the strokes of the digit. For an OOD image the network still "
        "outputs *some* class, often confidently — the heat map shows what it latched on to, and the galleries show "
        "the images a detector gets wrong. Try your own image at the bottom tab.")
    exp = ui.get_experiment()
    if exp is None:
        return
    if not exp.is_classifier:
        st.info("Explanations need a **classifier**: Grad-CAM and Integrated Gradients explain a class's logit, and "
                f"the current experiment's one-class model ({exp.spec.model}) has no classes to explain. Choose an "
                "OOD-detection or open-set experiment on the Experiment page.")
        return
    opts = controls(exp)
    samples = Samples(exp)
    # the open tab is tracked (a rerun on switching) so that the URL and a link keep it; every tab is still drawn
    tab = TABS[ui.url_choice("tab", list(TABS), "side")]
    tab1, tab2, tab3 = st.tabs(list(TABS.values()), default=tab, key="expl-tab", on_change="rerun")
    ui.remember_in_url("tab", next(k for k, v in TABS.items() if v == st.session_state.get("expl-tab", tab)))
    with tab1:
        with st.spinner(f"Computing {METHODS[opts['method']]}…"):
            side_by_side(exp, samples, opts)
    with tab2:
        with st.spinner("Filling the galleries…"):
            galleries(exp, samples, opts)
    with tab3:
        try_a_sample(exp, samples, opts)


if __name__ == "__main__":
    main()
