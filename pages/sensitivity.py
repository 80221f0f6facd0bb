"""Sensitivity page: how a detector's AUROC (and FPR@95) moves with each of its parameters.

One chart per parameter over its sweep list (OpenOOD's declarative sweeps), the other parameters held at
values the user sets (the defaults to start with); scored from the cached outputs of the one forward pass.
"""
from __future__ import annotations

import json
from typing import Optional

import plotly.graph_objects as go
import streamlit as st

from ood_core import compare, estimates, figures, metrics, report
from ood_core.data import OOD_SETS
from ood_core.detectors import FAMILIES, REGISTRY, Param
from ood_core.settings import NEAR_FAR_OOD, default_ood_sets
from ood_core.text import brief
from pages import _support as ui

DEFAULT_DETECTORS = ("knn", "react", "energy")  # the first that applies is preselected
SENSITIVITY_PRESENT_HEIGHT = 400  # presentation mode: the first parameter's chart fits a 1024x768 screen


# --- helpers --------------------------------------------------------------------------------------

def sweep_values(p: Param) -> list:
    """The values a parameter is swept over: its sweep list, or every choice when it has none."""
    return list(p.sweep) if p.sweep else list(p.choices)


def choose_detector(exp) -> Optional[str]:
    options = [n for n in ui.detector_options(exp) if REGISTRY[n].params]
    if not options:
        st.info("No detector with parameters applies to this experiment.")
        return None
    default = ui.url_choice("detector", options, next((d for d in DEFAULT_DETECTORS if d in options), options[0]))
    name = st.selectbox("Detector", options, index=options.index(default), format_func=ui.detector_format(exp),
                        key="sens-detector",
                        help="Only detectors with parameters are listed. " + ui.SLOW_HELP + " " + ui.COST_HELP)
    ui.remember_in_url("detector", name)
    return name


def choose_sets(available: list[str]) -> list[str]:
    default = ui.url_choices("sets", available, default_ood_sets(available, with_natural=NEAR_FAR_OOD, fallback=1))
    described = "\n".join(f"- **{s}**: {OOD_SETS[s].description}" for s in available if s in OOD_SETS)
    sets = st.multiselect("OOD sets", available, default=default, key="sens-sets",
                          help="One line per set in every chart.\n" + described)
    ui.remember_in_url("sets", sets)
    return sets


def held_values(name: str) -> dict:
    """Widgets for every parameter (from its Param); the others are held at these values while one is swept."""
    cls = REGISTRY[name]
    ui.forget_other_params(cls.params)  # another detector's parameters
    with st.expander("Values the other parameters are held at (the defaults to start with)",
                     expanded=False):
        cols = st.columns(min(3, len(cls.params)))
        held = {}
        for i, (pname, p) in enumerate(cls.params.items()):
            with cols[i % len(cols)]:
                held[pname] = ui.param_widget(pname, p, key=f"sens-param-{name}-{pname}",
                                              value=ui.url_param(f"p.{pname}", pname, p))
            ui.remember_in_url(f"p.{pname}", held[pname], default=p.default)  # only values moved off the default
    return held


def sweep_figure(rows: list[dict], pname: str, p: Param, metric: str) -> go.Figure:
    log_x = p.kind != "choice" and p.scale == "log" and p.low is not None and p.low > 0
    return figures.sensitivity_figure(rows, pname, log_x=log_x, metric=metric, default=p.default)


def parameter_chart(exp, name: str, pname: str, p: Param, sets: list[str], held: dict, with_fpr: bool,
                    main: bool = False) -> None:
    """One parameter's sweep; `main`: the page's main chart (presentation mode: larger fonts, drawn first)."""
    values = sweep_values(p)
    st.markdown(f"**{pname}** — {p.help or 'no description'}  \n"
                f"default {p.default} · swept over {', '.join(map(str, values))}"
                + (" (log axis)" if p.scale == "log" and p.kind != "choice" else ""))
    fixed = {k: v for k, v in held.items() if k != pname}
    moved = {k: v for k, v in fixed.items() if v != REGISTRY[name].params[k].default}
    if REGISTRY[name].slow():  # seconds per value, minutes for the ensemble: a job, asked for first
        key = ui.job_key("sweep", ui.experiment_id(exp), name, pname, values, sets, fixed)

        def work(progress, cancel):
            return compare.sweep(exp, name, pname, values, sets, fixed, on_progress=progress, cancel=cancel)

        _, rows = ui.run_job(key, f"Sweeping {pname} of {REGISTRY[name].title} over {len(values)} values", work,
                             lambda: estimates.sweep(exp, name, pname, values, sets, fixed),
                             start_label=f"Sweep {pname}", auto_start=False)
        if rows is None:
            return
    else:
        with st.spinner(f"Sweeping {pname} over {len(values)} values…"):
            try:
                rows = ui.sensitivity_sweep(ui.experiment_id(exp), name, pname, json.dumps(values), json.dumps(sets),
                                            json.dumps(fixed, sort_keys=True), exp)
            except Exception as e:  # e.g. a held value the other parameter's range rejects
                st.error(f"The sweep of {pname} failed: {brief(f'{type(e).__name__}: {e}')}")
                return
    cols = st.columns(2 if with_fpr else 1)
    for col, metric in zip(cols, ("auroc", "fpr95")):
        fig = sweep_figure(rows, pname, p, metric)
        fig.update_layout(height=340, title=f"{'AUROC ↑' if metric == 'auroc' else 'FPR@95TPR ↓'} vs {pname}")
        chart_key = f"sens-chart-{name}-{pname}-{metric}"
        if main:
            ui.main_chart(fig, col, height=SENSITIVITY_PRESENT_HEIGHT, width="stretch", key=chart_key)
        else:
            col.plotly_chart(fig, width="stretch", key=chart_key)
    failed = {}
    for r in rows:
        if r["error"]:
            failed.setdefault(str(r["value"]), brief(r["error"]))
    if failed:
        st.warning("No result (a gap in the line) at " + "; ".join(f"{pname} = {v}: {e}" for v, e in failed.items()))
    for note in report.explain_sweep(name, exp.spec.setting, report.explain_context(exp, name, fixed), pname, values):
        st.caption(note)
    if moved:
        st.caption("Other parameters held at " + ", ".join(f"{k} = {v}" for k, v in moved.items()) + ".")


def main() -> None:
    st.title("Sensitivity: how much does each parameter matter?")
    ui.tutorial("A detector's parameters are often tuned on the test OOD set in papers; here you see how much "
                "they matter. Each chart moves one parameter over its sweep list while the others stay put, "
                "re-scoring from the cached network outputs. A flat line means the method is robust to that choice.")
    exp = ui.get_experiment()
    if exp is None:
        return
    top = ui.chart_first()
    c1, c2 = st.columns(2)
    with c1:
        name = choose_detector(exp)
    if name is None:
        return
    with c2:
        sets = choose_sets(exp.ood_names)
    cls = REGISTRY[name]
    st.caption(f"{ui.family_label(cls.family)} — {FAMILIES.get(cls.family, '')}")
    if cls.latex:
        st.latex(cls.latex)
    held = held_values(name)
    with_fpr = st.checkbox("Also show FPR@95TPR", value=ui.url_flag("fpr", False), key="sens-fpr",
                           help=metrics.DEFINITIONS["fpr95"])
    ui.remember_in_url("fpr", with_fpr, default=False)
    if not sets:
        st.info("Pick at least one OOD set above to see the sweeps.")
        return
    if cls.slow():
        what = "runs the network again" if cls.runs_network else "trains a network"
        st.info(f"{cls.title} {what} for every value, so each sweep starts on request: it runs in "
                "the background with a progress bar and a Cancel button, and is kept once done.",
                icon=":material/hourglass_top:")
    for i, (pname, p) in enumerate(cls.params.items()):
        with (top if i == 0 and top is not None else st).container(border=True):
            if not sweep_values(p):
                st.markdown(f"**{pname}** has no sweep list.")
                continue
            parameter_chart(exp, name, pname, p, sets, held, with_fpr, main=i == 0)


main()
