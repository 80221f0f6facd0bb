"""Scores page: one detector's unfamiliarity scores on ID test vs OOD sets, its curves, metrics and a threshold."""
import json

import streamlit as st

from ood_core import figures, metrics, report
from ood_core.data import OOD_SETS
from ood_core.detectors import FAMILIES, REGISTRY
from ood_core.detectors.classic import fit_bank_note
from ood_core.settings import default_ood_sets
from pages import _support as ui

DEFAULT_DETECTOR = "msp"
THRESHOLD_FOR = "scores-threshold-for"  # session_state: the detector and parameters the threshold slider is for


def choose_detector(exp) -> str:
    """Detector selectbox, each labelled with its family; returns the registry name."""
    options = ui.detector_options(exp)
    default = ui.url_choice("detector", options, DEFAULT_DETECTOR if DEFAULT_DETECTOR in options else options[0])
    name = st.selectbox("Detector", options, index=options.index(default), format_func=ui.detector_format(exp),
                        key="scores-detector",
                        help="Grouped by the survey's taxonomy (Salehi et al. 2022): family · method. " + ui.SLOW_HELP
                             + " " + ui.COST_HELP)
    ui.remember_in_url("detector", name)
    return name


def choose_sets(available: list[str]) -> list[str]:
    """OOD set multiselect; the default is a natural set (unknown classes) if any, else one near and one far set."""
    default = ui.url_choices("sets", available, default_ood_sets(available, fallback=1))
    described = "\n".join(f"- **{s}**: {OOD_SETS[s].description}" for s in available if s in OOD_SETS)
    sets = st.multiselect("OOD sets", available, default=default, key="scores-sets",
                          help="Which unfamiliar samples to compare with the ID test images:\n" + described)
    ui.remember_in_url("sets", sets)
    return sets


def detector_card(name: str) -> dict:
    """The formula, intuition and reference of a detector, and its parameter widgets; returns the params."""
    cls = REGISTRY[name]
    with st.container(border=True):
        st.markdown(f"**{cls.title}** — {FAMILIES.get(cls.family, '')}")
        if cls.latex:
            st.latex(cls.latex)
        if cls.intuition:
            ui.tutorial(cls.intuition)
        st.caption(ui.reference_line(name))
        ui.forget_other_params(cls.params)  # another detector's parameters
        if not cls.params:
            st.caption("This detector has no parameters to tune.")
            return {}
        cols = st.columns(min(3, len(cls.params)))
        params = {}
        for i, (pname, p) in enumerate(cls.params.items()):
            with cols[i % len(cols)]:
                params[pname] = ui.param_widget(pname, p, key=f"param-{name}-{pname}",
                                                value=ui.url_param(f"p.{pname}", pname, p))
                ui.remember_in_url(f"p.{pname}", params[pname])
        st.caption(f"Defaults: {', '.join(f'{k} = {p.default}' for k, p in cls.params.items())}. "
                   "Moving a slider re-scores from the cached network outputs.")
        return params


def threshold_section(name: str, params: dict, scores: dict, id_scores, ood: dict):
    """Threshold slider (default keeps 95% of ID); returns the threshold and the confusion counts at it (None
    when all scores are equal)."""
    every = [v for k, v in scores.items()]  # range over all scored splits, so it doesn't jump when sets change
    lo, hi = min(float(v.min()) for v in every), max(float(v.max()) for v in every)
    t95 = metrics.threshold_at_tpr(id_scores, 0.95)
    if hi <= lo:
        st.info("All scores are equal, so no threshold separates anything.")
        return t95, None
    key = f"threshold-{name}-{json.dumps(params, sort_keys=True)}"
    t_default = min(max(t95, lo), hi)
    if st.session_state.get(THRESHOLD_FOR, key) != key:  # the detector or its parameters changed: a threshold in
        ui.forget_in_url("threshold")                     # the URL was on another score scale
    st.session_state[THRESHOLD_FOR] = key
    t = st.slider("Threshold t (flag as OOD when score > t)", lo, hi, ui.url_number("threshold", lo, hi, t_default),
                  step=(hi - lo) / 500, format=ui.slider_format(lo, hi), key=key,
                  help=f"Starts at {t95:.4g}, the threshold that keeps 95% of ID test images (the FPR@95TPR operating point).")
    if t == t_default:
        ui.forget_in_url("threshold")
    else:
        ui.remember_in_url("threshold", float(t))
    table = report.confusion_frame(id_scores, ood, t)
    kept = table["ID kept"].iloc[0] / len(id_scores)
    st.markdown(f"At t = {t:.4g}: **{kept:.1%}** of ID test images are kept; the counts at t are under the "
                "histogram.")
    return t, table


def confusion_table(table) -> None:
    """The counts at the threshold, full width (in the threshold's narrow column its last column was clipped)."""
    st.markdown("**Counts at the threshold**")
    st.dataframe(table, column_config={
        "_index": st.column_config.TextColumn("OOD set"),
        "ID kept": st.column_config.NumberColumn("ID kept", help="ID test images with score ≤ t (true negatives)"),
        "ID flagged": st.column_config.NumberColumn("ID flagged", help="ID test images with score > t (false alarms)"),
        "OOD missed": st.column_config.NumberColumn("OOD missed", help="OOD images with score ≤ t, accepted as ID"),
        "OOD caught": st.column_config.NumberColumn("OOD caught", help="OOD images with score > t, flagged"),
    })


def main() -> None:
    st.title("Scores: how unfamiliar does each image look?")
    ui.tutorial("A detector gives every image an **unfamiliarity score** (higher = more likely out-of-distribution). "
                "A good detector puts the ID test images (blue) to the left and the OOD images to the right, so one "
                "threshold separates them. Pick a detector and OOD sets; the curves and metrics update at once.")
    exp = ui.get_experiment()
    if exp is None:
        return
    top = ui.chart_first()
    c1, c2 = st.columns([1, 1])
    with c1:
        name = choose_detector(exp)
    with c2:
        sets = choose_sets(exp.ood_names)
    params = detector_card(name)
    fit_note = fit_bank_note(name, params, len(exp.outputs["train"]))  # OC-SVM, LOF: a capped fit bank
    if fit_note:
        st.caption(fit_note)
    if not sets:
        st.info("Pick at least one OOD set above to see the scores.")
        return
    if REGISTRY[name].slow():  # seconds to minutes: a background job; the widgets above stay usable
        scores, error = ui.detector_scores_job(exp, name, params)
        if scores is None and error is None:
            return  # waiting to start, running (its panel is drawn) or cancelled
    else:
        with st.spinner(f"Scoring with {REGISTRY[name].title}…"):
            scores, error = ui.detector_scores(exp, name, params)
    if error:
        st.error(f"{REGISTRY[name].title} failed with these settings: {error}. "
                 "Try other parameter values or another detector.")
        return
    id_scores, ood = scores["test"], {s: scores[s] for s in sets}

    osr = exp.spec.setting == "osr"
    id_correct = exp.id_correct if osr else None
    acc = ui.id_accuracy(exp)
    if acc is None:  # one-class settings: no classifier, so no accuracy metric; say what is reported instead
        st.caption(ui.no_accuracy_note(exp.spec))
        m2 = st.container()
    else:
        m1, m2 = st.columns([1.4, 5])
        m1.metric(ui.accuracy_label(exp.spec), f"{acc:.1%}", help=ui.accuracy_help(exp.spec))
    key = (ui.experiment_id(exp), name, json.dumps(dict(params), sort_keys=True), tuple(sets))
    table = ui.scores_table(*key, exp, _given=scores)
    m2.dataframe(table, column_config=ui.metric_column_config())
    st.caption("Metrics in percent, OOD as the positive class (hover a column header for its definition).")
    context = report.explain_context(exp, name, params)
    notes = report.merge_notes([report.explain_result(
        name, exp.spec.setting, id_scores, ood[o], table.loc[o, report.METRIC_COLUMNS["auroc"]] / 100,
        {**context, "ood_set": o}) for o in sets])
    if notes:  # numbers that look wrong, explained where they appear (decided in ood_core.report)
        st.info("\n".join(f"- {n}" for n in notes), icon=":material/lightbulb:")

    h1, h2 = st.columns([3, 2])
    with h2:
        t, counts = threshold_section(name, params, scores, id_scores, ood)
    with h1:
        fig = figures.score_histogram(id_scores, ood, threshold=t, x_label=f"{REGISTRY[name].title} score",
                                      title="Score distributions (ID test vs OOD)")
        log_y = st.toggle("Logarithmic density axis", key="scores-log-y", value=ui.url_flag("log", False),
                          help="Shows small bars next to tall ones, e.g. when most scores pile up in one bin.")
        ui.remember_in_url("log", log_y, default=False)
        if log_y:
            fig.update_yaxes(**figures.LOG_TICKS, title="density (log scale, 10^k per decade)")
        ui.main_chart(fig, top, width="stretch", key="scores-histogram")
    if counts is not None:
        confusion_table(counts)
    roc, pr = ui.scores_curves(*key, exp, _given=scores)
    r1, r2 = st.columns(2)
    with r1:
        st.plotly_chart(roc, width="stretch")
    with r2:
        st.plotly_chart(pr, width="stretch")
    if osr:
        o1, o2 = st.columns([3, 2])
        with o1:
            st.plotly_chart(figures.oscr_figure(id_scores, id_correct, ood), width="stretch", key="scores-oscr")
        with o2:
            ui.tutorial("**Open-set classification rate.** An open-set recogniser must both reject the unknown "
                        "classes and classify the known ones. As the threshold rises, the curve counts the known "
                        "test images that are accepted *and* correctly classified (CCR) against the unknowns "
                        "accepted (FPR). Its area is OSCR (Dhamija et al., NeurIPS 2018); it can never exceed the "
                        "closed-set accuracy, so a better classifier raises it even with the same detector.")


main()
