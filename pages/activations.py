"""Activations page: why activation shaping separates ID from OOD (ReAct's clipping, DICE's weight
sparsification, ASH's pruning), on the cached penultimate activations; a slider redraws in well under a second.

The views are not fragments: a slider reruns the page (tens of milliseconds on the server, everything else is
cached), so that the sidebar's link to the view follows the slider, which the URL records."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ood_core import activation_stats as A
from ood_core import figures
from ood_core.figures import activations as activation_figures
from ood_core import explain as X
from ood_core.detectors import REGISTRY
from ood_core.settings import default_ood_sets
from ood_core.text import brief
from pages import _support as ui

VIEWS = {"react": "ReAct: clip activations", "dice": "DICE: sparsify the last layer",
         "ash": "ASH: prune activations"}
ASH_MODES = {"s": "ASH-S (scale the rest)", "b": "ASH-B (binarise the rest)", "p": "ASH-P (prune only)"}
GALLERY_K = 6
ACTIVATION_PRESENT_HEIGHT = 400  # presentation mode: a view's charts fit a 1024x768 screen under the title
ACTIVATION_PRESENT_FONT = 14  # ... two side by side, each half the width


# --- widgets ----------------------------------------------------------------------------------------

def percentile_slider(label: str, name: str, pname: str, key: str, help_: str, url_key: str) -> float:
    """A slider over the detector's own parameter range, starting at the link's value (query `url_key`) or its
    default."""
    p = REGISTRY[name].params[pname]
    step, decimals = p.slider_step()
    start = ui.url_number(url_key, float(p.low), float(p.high), float(p.default))
    value = st.slider(label, float(p.low), float(p.high), start, step=step, format=f"%.{decimals}f", key=key,
                      help=help_)
    ui.remember_in_url(url_key, float(value))
    return value


def figure_row(figs: list, keys: list[str], captions: list[str], where) -> None:
    """Charts side by side, each with its caption below; `where`: the container (presentation mode: the top)."""
    with where if where is not None else st.container():
        for col, fig, key, caption in zip(st.columns(len(figs)), figs, keys, captions):
            with col:
                ui.main_chart(fig, height=ACTIVATION_PRESENT_HEIGHT, font_size=ACTIVATION_PRESENT_FONT, key=key,
                              width="stretch")
                st.caption(caption)


# --- shared pieces ----------------------------------------------------------------------------------

def auroc_summary(shift: A.EnergyShift, what: str) -> None:
    """Mean AUROC over the chosen sets before/after, and a per-set table."""
    before, after = shift.mean_auroc_before, shift.mean_auroc_after
    c1, c2 = st.columns([1, 2])
    c1.metric(f"Mean AUROC with {what}", f"{100 * after:.1f}%", delta=f"{100 * (after - before):+.1f} points",
              help="AUROC of the energy score, OOD as the positive class, averaged over the chosen OOD sets. "
                   "The delta is the change from the plain energy score (no shaping).")
    c1.markdown(f"AUROC: {100 * before:.1f}% → **{100 * after:.1f}%**")
    table = pd.DataFrame({"AUROC without": {s: 100 * v for s, v in shift.auroc_before.items()},
                          f"AUROC with {what}": {s: 100 * v for s, v in shift.auroc_after.items()}})
    c2.dataframe(table, column_config={
        "_index": st.column_config.TextColumn("OOD set"),
        **{col: st.column_config.NumberColumn(col, format="%.1f %%") for col in table.columns}})


def energy_section(shift: A.EnergyShift, key: str) -> None:
    st.plotly_chart(activation_figures.energy_shift_figure(shift, title="Energy scores before and after"), key=key, width="stretch")
    st.caption("Energy score E(x) = −log Σ_k exp(f_k(x)) of the classifier's logits (higher = more OOD). Left: the "
               "plain network; right: after the shaping step. The further apart ID (blue) and OOD, the better.")


def samples_behind(exp, shift: A.EnergyShift, sets: list[str], key: str) -> None:
    """The images behind the right-hand histogram: OOD still most ID-like and ID most OOD-like after shaping."""
    with st.expander("Which images are these? The hardest cases after shaping"):
        ood_set = st.selectbox("OOD set", sets, key=f"{key}-set")
        c1, c2 = st.columns(2)
        with c1:
            idx, sc = X.most_id_like_ood(shift.ood_after[ood_set], GALLERY_K)
            st.markdown(f"**{ood_set} images that still look most ID-like** (lowest energy after shaping)")
            _images(exp, ood_set, idx, [f"#{i}: E {shift.ood_before[ood_set][i]:.2f} → {s:.2f}" for i, s in zip(idx, sc)])
        with c2:
            idx, sc = X.most_ood_like_id(shift.id_after, GALLERY_K)
            st.markdown("**ID test images that look most OOD-like** (highest energy after shaping)")
            _images(exp, "test", idx, [f"#{i}: E {shift.id_before[i]:.2f} → {s:.2f}" for i, s in zip(idx, sc)])


def _images(exp, split: str, idx, captions) -> None:
    if len(idx) == 0:
        st.caption("No images.")
        return
    pixels = exp.bench.to_pixels(exp.outputs[split].inputs[idx])
    st.image(figures.upscale(pixels, 4), caption=captions, width=80)


# --- the three views --------------------------------------------------------------------------------

def react_view(exp, view: A.ActivationView, sets: list[str], top=None) -> None:
    ui.tutorial(
        "**ReAct** (Sun et al., NeurIPS 2021, Fig. 1) clips every penultimate activation at a threshold *c*, the "
        "*p*-th percentile of all ID training activations: h ← min(h, c). OOD inputs tend to drive a few units "
        "far above their usual ID level; those abnormally large values inflate the logits and make the network "
        "over-confident. Clipping removes exactly that excess while barely touching ID activations.")
    p = percentile_slider("Clipping percentile p", "react", "percentile", "act-react-p",
                          "c is the p-th percentile of all ID train activations (global over units and samples). "
                          "The paper uses p = 90.", url_key="react.p")
    shift = A.react_at(view, p)
    st.markdown(f"Clip threshold **c = {shift.threshold:.3f}** (the {p:g}th percentile of ID train activations).")
    figure_row(
        [activation_figures.unit_profile_figure(view.profile, threshold=shift.threshold,
                                                title="Per-unit mean ± std, units sorted by ID mean"),
         activation_figures.activation_histogram_figure(view.hist, threshold=shift.threshold, percentile=p,
                                                        log_y=True, title="All activation values (log density)")],
        ["act-react-units", "act-react-hist"],
        ["Each x position is one penultimate unit; lines are its mean activation over the images of a set, bands ± "
         "one standard deviation. Where an OOD line rises above the ID line, the dashed clip line cuts off the OOD "
         "excess.",
         "Every activation value of every image, on a log scale (exact zeros, the ReLU floor, are counted in the "
         "legend but not drawn). Everything right of the dashed line is clipped to c."], top)
    auroc_summary(shift, f"ReAct (p = {p:g})")
    energy_section(shift, "act-react-energy")
    samples_behind(exp, shift, sets, "act-react-gallery")


def dice_view(exp, view: A.ActivationView, sets: list[str], top=None) -> None:
    ui.tutorial(
        "**DICE** (Sun & Li, ECCV 2022) sparsifies the last layer instead of the activations. Each weight's "
        "*contribution* is V = W ⊙ mean ID activation: how much it adds to its class's logit on a typical ID "
        "image. DICE keeps only the top (100 − p)% of contributions and zeroes the other weights; the many small, "
        "noisy contributions that OOD inputs can exploit are gone, the few that matter for ID stay.")
    p = percentile_slider("Sparsity p (% of weights dropped)", "dice", "sparsity", "act-dice-p",
                          "DICE keeps the weights whose contribution exceeds the p-th percentile of all contributions.",
                          url_key="dice.p")
    mask, shift = A.dice_at(view, p)
    figure_row([activation_figures.dice_contribution_figure(view.V, mask, exp.bench.class_names,
                                                            title="Contribution matrix (classes × units) and what "
                                                                  "DICE keeps")],
               ["act-dice-matrix"], ["Top: all contributions, red = raises the class's logit, blue = lowers it. "
                                     "Bottom: the weights kept at this sparsity (grey = dropped)."], top)
    auroc_summary(shift, f"DICE (p = {p:g})")
    energy_section(shift, "act-dice-energy")
    samples_behind(exp, shift, sets, "act-dice-gallery")


def ash_view(exp, view: A.ActivationView, sets: list[str], top=None) -> None:
    ui.tutorial(
        "**ASH** (Djurisic et al., ICLR 2023) prunes each image's activations: it keeps the top (100 − p)% units "
        "of that image, zeroes the rest and (ASH-S) scales the survivors by exp(s₁/s₂), s₁ and s₂ being the "
        "activation sums before and after pruning. ID images concentrate their activation in few strong units, "
        "so they lose little and get a large boost; OOD images spread it thinly and lose more.")
    c1, c2 = st.columns([2, 1])
    with c1:
        p = percentile_slider("Pruning percentile p (% of units zeroed per image)", "ash_s", "percentile", "act-ash-p",
                              "Each image keeps its top (100 − p)% activations.", url_key="ash.p")
    with c2:
        modes = list(ASH_MODES)
        mode = st.radio("Variant", modes, index=modes.index(ui.url_choice("ash.mode", modes, "s")),
                        format_func=ASH_MODES.get, key="act-ash-mode")
        ui.remember_in_url("ash.mode", mode)
    pruning, shift = A.ash_at(view, p, mode)
    c1, c2 = st.columns(2)
    with (top if top is not None else c1):
        fig = figures.score_histogram(pruning[A.ID_NAME].mass_removed, {s: pruning[s].mass_removed for s in sets},
                                      title="Share of each image's activation sum that pruning removes")
        fig.update_xaxes(title_text="fraction of the activation sum removed (1 − s₂/s₁)")
        ui.main_chart(fig, height=ACTIVATION_PRESENT_HEIGHT, font_size=ACTIVATION_PRESENT_FONT, key="act-ash-mass",
                      width="stretch")
    with c2:
        table = pd.DataFrame({
            "active units zeroed": {s: 100 * pr.active_pruned.mean() for s, pr in pruning.items()},
            "already zero": {s: 100 * pr.already_zero.mean() for s, pr in pruning.items()},
            "activation sum removed": {s: 100 * pr.mass_removed.mean() for s, pr in pruning.items()},
            "ASH-S scale exp(s₁/s₂)": {s: pr.scale.mean() for s, pr in pruning.items()}})
        st.markdown("**Per set, averaged over its images**")
        st.dataframe(table, column_config={
            "_index": st.column_config.TextColumn("set"),
            "active units zeroed": st.column_config.NumberColumn(format="%.1f %%",
                                                                 help="Units that were > 0 and are set to 0"),
            "already zero": st.column_config.NumberColumn(format="%.1f %%", help="Units the ReLU had already zeroed"),
            "activation sum removed": st.column_config.NumberColumn(format="%.1f %%", help="1 − s₂/s₁"),
            "ASH-S scale exp(s₁/s₂)": st.column_config.NumberColumn(format="%.2f"),
        })
    auroc_summary(shift, f"ASH-{mode.upper()} (p = {p:g})")
    energy_section(shift, "act-ash-energy")
    samples_behind(exp, shift, sets, "act-ash-gallery")


def main() -> None:
    st.title("Activations: why shaping the penultimate layer helps")
    ui.tutorial(
        "The network's second-to-last layer has one **activation** per unit for every image. The energy score "
        "(higher = more OOD) is computed from the logits, which are a weighted sum of these activations. "
        "Three post-hoc methods reshape that sum — without retraining — so that ID and OOD energies move apart: "
        "**ReAct** clips unusually large activations, **DICE** drops unimportant weights, **ASH** prunes each "
        "image's weak activations. Move the slider and watch the energy histograms and the AUROC change.")
    exp = ui.get_experiment()
    if exp is None:
        return
    if not exp.is_classifier:
        st.info("This view needs a **classifier**: ReAct, DICE and ASH reshape the activations that feed a classifier's "
                "last layer and read the energy of its logits. The current experiment's one-class model "
                f"({exp.spec.model}) has no classifier head. Choose an OOD-detection or open-set experiment on the "
                "Experiment page to see it.")
        return
    top = ui.chart_first()  # presentation mode: the view's main chart, above every choice
    c1, c2 = st.columns([2, 3])
    with c1:
        sets = st.multiselect("OOD sets", exp.ood_names, key="act-sets",
                              default=ui.url_choices("sets", exp.ood_names, default_ood_sets(exp.ood_names)))
    with c2:
        which = st.radio("Method", list(VIEWS), index=list(VIEWS).index(ui.url_choice("view", list(VIEWS), "react")),
                         format_func=VIEWS.get, key="act-view", horizontal=True)
    ui.remember_in_url("sets", sets)
    ui.remember_in_url("view", which)
    ui.forget_in_url(*[k for k in st.query_params if k.split(".")[0] in VIEWS and not k.startswith(which + ".")])
    if not sets:
        st.info("Pick at least one OOD set above to compare its activations with the ID test images.")
        return
    try:
        with st.spinner("Collecting activation statistics…"):
            view = ui.activation_view(ui.experiment_id(exp), tuple(sets), exp)
    except Exception as e:  # e.g. a model without a linear head
        st.error(f"Could not compute the activation statistics: {brief(str(e))}")
        return
    {"react": react_view, "dice": dice_view, "ash": ash_view}[which](exp, view, sets, top)


if __name__ == "__main__":
    main()
