"""Compare page: every detector on every OOD set, as the survey's Table 6 — a sortable table and a heatmap.

The view of the current model (one seed) shows at once from cached scores; "start comparison" trains the
spec with the next seeds (each a fresh model, cached on disk) and shows mean ± std over them. In ND/AD the
one-vs-all protocol (and in AD the contamination curve) run on request below the table.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Optional

import numpy as np
import pandas as pd
import streamlit as st

from ood_core import compare, estimates, figures, jobs, metrics, pipeline, protocols, report, tuning
from ood_core.data import OOD_SETS, osr_splits
from ood_core.detectors import FAMILIES, REGISTRY
from ood_core.spec import ONE_CLASS_SETTINGS
from pages import _support as ui

TABLE_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")  # the survey's Table 6 columns
METRIC_LABELS = compare.METRIC_LABELS
HIGHER_IS_BETTER = compare.HIGHER_IS_BETTER
DEFAULT_SEEDS = 3
DEFAULT_SPLITS = 5  # OSR: the protocol's default number of random known/unknown splits (protocols.run_osr)
RATIOS = protocols.CURVE_RATIOS  # AD contamination curve, as protocols.contamination_curve's default
HEATMAP_PRESENT_HEIGHT = 600  # presentation mode: the heatmap fits a 1024x768 screen (rows get thinner)
HEATMAP_PRESENT_FONT = 13  # ... and every detector's name still shows on one of 30 thin rows
BEST_STYLE = "background-color: #d7f0d2; font-weight: bold"
ERROR_STYLE = "color: #b00020; font-style: italic"

# measured on the default experiment (digits, 2 CPU cores shared with other jobs): the 30 post-hoc detectors
# together take about 3 s the first time (11 s on a heavily loaded machine), then come from the cache; the five
# that run the network again add about 14 s (each 8-16 s under load), and the deep ensemble first trains 4
# more models when they are not on disk (minutes) — so they are opt-in, off by default.
NETWORK_HELP = ("These methods run the network again instead of scoring the cached outputs of the one forward "
                "pass: ODIN and Mahalanobis with input pre-processing (a backward pass per image), Gram matrices "
                "(feature maps), MC dropout (many stochastic passes) and the deep ensemble (which trains 4 extra "
                "models the first time); OpenGAN and C2AE first train a small network on the cached features "
                "(seconds on the sample datasets, minutes on 60,000 images). Together they add about 15 s on a CPU, "
                "more on a busy machine, the ensemble's first training minutes; all other detectors together take "
                "about 3 s, once. They run as one background job (an estimate first, then a progress bar and a "
                "Cancel button) and join the table when it lands.")


# --- computing --------------------------------------------------------------------------------------

def network_rows(exp, network: list[str]) -> Optional[list[dict]]:
    """Rows of the slow detectors, which run or train a network (all of them that apply, whatever the family filter),
    as one background job: the rows once it has landed, else None (its estimate, panel or outcome is drawn)."""
    if not network:
        return []
    key = ui.job_key("compare-network", ui.experiment_id(exp), network)

    def work(progress, cancel):
        def on_detector(i, n, name):
            if name:
                progress(i / max(n, 1), f"{REGISTRY[name].title} ({i + 1}/{n})")
        return pipeline.evaluate(exp, network, on_progress=on_detector, cancel=cancel)[0]

    _, rows = ui.run_job(key, f"Scoring {len(network)} methods that run the network again or train one", work,
                         lambda: estimates.detectors(exp, network), start_label="Score them")
    return rows


def single_seed(exp, names: list[str]) -> tuple[list[dict], float, int]:
    """Rows of the current model for `names`; a progress bar shows while detectors not yet cached run.

    Returns (rows, seconds, how many detectors were computed now rather than read from the cache). Only quick
    (post-hoc) detectors belong here: those that run or train a network go through `network_rows`, a job.
    """
    exp_id = ui.experiment_id(exp)
    seen = st.session_state.setdefault("compare-computed", set())
    todo = [n for n in names if (exp_id, n) not in seen]
    slot = st.empty()
    bar = slot.progress(0.0, text="scoring the detectors…") if todo else None
    rows: list[dict] = []
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        if bar is not None and name in todo:
            bar.progress(i / len(names), text=f"scoring with {REGISTRY[name].title} ({i + 1}/{len(names)})…")
        rows += ui.detector_rows(exp_id, name, "{}", exp)
        seen.add((exp_id, name))
    slot.empty()
    return rows, time.perf_counter() - t0, len(todo)


def multi_seed_work(exp, names: list[str], seeds: list[int], tune: bool = False):
    """The job's work `fn(progress, cancel)`: compare.run_seeds over `seeds`; the current seed is `exp`, the others
    are prepared (trained or loaded). No Streamlit inside: it runs in a background thread."""
    spec = exp.spec
    osr = spec.setting == "osr"

    def name(seed: int) -> str:
        return f"split {seeds.index(seed) + 1}/{len(seeds)} (seed {seed})" if osr else f"seed {seed}"

    def work(progress, cancel):
        def get_experiment(seed: int):
            if seed == spec.seed:
                return exp
            i = seeds.index(seed)

            def on_epoch(p) -> None:
                progress((i + 0.6 * p.epoch / p.epochs) / len(seeds), f"{name(seed)}: training epoch "
                         f"{p.epoch}/{p.epochs} · validation accuracy {p.val_accuracy:.1%}")

            with ui.training_lock(spec.with_seed(seed)):  # never train a model another session is training
                return pipeline.prepare(spec.with_seed(seed), progress=on_epoch, cancel=cancel)

        t0 = time.perf_counter()
        rows, accs = compare.run_seeds(get_experiment, seeds, names, on_progress=progress, cancel=cancel, tune=tune)
        return {"rows": rows, "seeds": seeds, "accuracies": accs, "seconds": time.perf_counter() - t0}
    return work


def tuned_rows(exp, names: list[str]) -> Optional[list[dict]]:
    """The rows of the tunable `names` with their parameters chosen on OOD validation data (tuning.py), as a job;
    None until it lands (its panel is drawn)."""
    if not names:
        return []
    key = ui.job_key("tune", ui.experiment_id(exp), names)
    values = sum(len(v) for n in names for v in tuning.candidates(n).values())

    def estimate() -> jobs.Estimate:
        seconds = 0.0
        for n in names:
            grid = tuning.candidates(n)
            trainings = estimates.tuning_seconds(exp, n, grid)  # OpenGAN: one training per value tried
            seconds += trainings if trainings is not None else \
                sum(len(v) for v in grid.values()) * (ui.detector_cost(exp, n) or 0.05)
        return jobs.Estimate(seconds, f"fits {len(names)} detectors at {values} parameter values in all, scored on "
                                      "the OOD validation sets")

    def work(progress, cancel):
        return pipeline.evaluate(exp, names, on_progress=lambda i, n, name: progress(i / max(n, 1), name),
                                 cancel=cancel, tune=True)[0]

    _, rows = ui.run_job(key, f"Tuning {len(names)} detectors on validation data", work, estimate,
                         start_label="Tune them")
    return rows


def show_tuned(rows: list[dict]) -> None:
    """The parameters chosen on validation data and what they gained there, one row per detector (and seed)."""
    seen, table = set(), []
    for r in rows:
        key = (r["detector"], r.get("seed"))
        if "tuned" not in r or key in seen:
            continue
        seen.add(key)
        v = r["val_auroc"]
        table.append({"detector": REGISTRY[r["detector"]].title, **({"seed": r["seed"]} if "seed" in r else {}),
                      "chosen (differs from the default)": ", ".join(f"{k} = {x}" for k, x in r["tuned"].items())
                      or "the defaults",
                      "validation AUROC, default (%)": None if v["default"] is None else 100 * v["default"],
                      "validation AUROC, tuned (%)": None if v["tuned"] is None else 100 * v["tuned"]})
    if table:
        with st.expander(f"Parameters tuned on validation data ({len(table)})", expanded=True):
            st.caption(TUNE_HELP)
            st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.1f") for c in table[0]
                                        if c.startswith("validation")})


def summarise(rows: list[dict], osr: bool) -> list[dict]:
    """compare.summarise (it carries OSCR's mean and std when the rows have it)."""
    return compare.summarise(rows)


def best_mask(matrix: np.ndarray, metric: str) -> np.ndarray:
    return compare.best_per_column(matrix, metric)


# --- showing ----------------------------------------------------------------------------------------

def metric_help(metric: str) -> str:
    return metrics.DEFINITIONS.get(metric, "")


def results_table(labels: list[str], families: list[str], oods: list[str], values: np.ndarray, best: np.ndarray,
                  errors: dict[str, str], metric: str, stat: str) -> None:
    """The sortable detectors x OOD sets table: percent, best per column highlighted, 'error' in failed cells."""
    df = pd.DataFrame(100 * values, index=pd.Index(labels, name="Detector"), columns=oods)
    df.insert(0, "Family", families)
    if errors:
        df["Error"] = [errors.get(lab, "") for lab in labels]
    fmt = "± {:.1f} %" if stat == "std" else "{:.1f} %"

    def styles(_):
        css = np.where(best, BEST_STYLE, "") if stat == "mean" else np.full(best.shape, "", dtype=object)
        css = np.where(np.isnan(values), ERROR_STYLE, css)
        return pd.DataFrame(css, index=df.index, columns=oods)

    styled = df.style.format(fmt, subset=oods, na_rep="error").apply(styles, axis=None, subset=oods)
    what = "sample standard deviation (ddof=1) over seeds (OSR: splits) of " if stat == "std" else ""
    config = {o: st.column_config.NumberColumn(
        o, help=f"{what}{METRIC_LABELS[metric]} on {o} (%): {metric_help(metric)}"
                + (f" — {OOD_SETS[o].description}" if o in OOD_SETS else "")) for o in oods}
    config["Family"] = st.column_config.TextColumn("Family", help="The method's family in the survey's taxonomy")
    if errors:
        config["Error"] = st.column_config.TextColumn("Error", help="Why this detector gave no result", width="large")
    st.dataframe(styled, column_config=config, height=min(35 * len(df) + 42, 1400), key="compare-table")


def unit(spec) -> str:
    """What one more trained model is called: in OSR each seed draws its own known classes, a split."""
    return "split" if spec.setting == "osr" else "seed"


def show_comparison(exp, rows: list[dict], seeds: list[int], accs: list, families: list[str],
                    sets: list[str], top=None) -> None:
    """Metric line, table, heatmap, errors and downloads of one set of result rows (the heatmap in `top` when given:
    presentation mode draws it first)."""
    spec = exp.spec
    osr = spec.setting == "osr"
    u = unit(spec)
    keep = [r for r in rows if r["detector"] in REGISTRY and REGISTRY[r["detector"]].family in families
            and r["ood_set"] in sets]
    if not keep:
        st.info("No detector of the chosen families applies here, or no OOD set is chosen.")
        return
    summary = summarise(keep, osr)
    n_seeds = len(seeds)
    accs = [a for a in accs if a is not None]
    if accs:
        label = ui.accuracy_label(spec)
        value = f"{100 * np.mean(accs):.1f} %" + (f" ± {100 * metrics.sample_std(accs):.1f}" if len(accs) > 1 else "")
        st.metric(label, value, help=ui.accuracy_help(spec))

    c1, c2 = st.columns([2, 1])
    metric = metric_picker(spec, c1)
    stat = "mean"
    if n_seeds > 1:
        stat = c2.radio("Table shows", ("mean", "std"), horizontal=True, key="compare-stat",
                        index=("mean", "std").index(ui.url_choice("stat", ("mean", "std"), "mean")),
                        format_func=lambda s: {"mean": f"mean over {u}s", "std": "± sample std"}[s])
        ui.remember_in_url("stat", stat, default="mean")
    dets, oods, mean = compare.pivot(summary, metric, "mean")
    _, _, std = compare.pivot(summary, metric, "std")
    oods, mean, std = compare.with_group_means(oods, mean, std, exp.spec.dataset)  # the survey's near/far averages
    best = best_mask(mean, metric)
    labels = [REGISTRY[d].title or d for d in dets]
    fams = [ui.family_label(REGISTRY[d].family) for d in dets]
    errors = {REGISTRY[s["detector"]].title or s["detector"]: "; ".join(s["errors"]) for s in summary if s["errors"]}

    arrow = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
    st.markdown(f"**{METRIC_LABELS[metric]}** ({arrow}) in percent"
                + (f", mean ± sample std over {n_seeds} {u}s ({'seeds ' if osr else ''}{', '.join(map(str, seeds))})"
                   if n_seeds > 1
                   else f", seed {seeds[0]}")
                + ". The best detector per OOD set is highlighted; click a column header to sort.")
    results_table(labels, fams, oods, std if stat == "std" else mean, best, errors, metric, stat)
    show_notes(surprising_notes(exp, summary))

    fig = figures.metric_heatmap(labels, oods, mean, std if n_seeds > 1 else None, best, METRIC_LABELS[metric],
                                 HIGHER_IS_BETTER[metric])
    fig.update_layout(title=f"{METRIC_LABELS[metric]} (%) — ★ best per OOD set"
                            + (f" · mean ± sample std over {n_seeds} {u}s" if n_seeds > 1 else ""))
    ui.main_chart(fig, top, height=min(fig.layout.height or 450, HEATMAP_PRESENT_HEIGHT),
                  font_size=HEATMAP_PRESENT_FONT, width="stretch", key="compare-heatmap")

    if errors:
        st.warning(f"{len(errors)} detector(s) failed; their cells say *error*. The others are unaffected.")
        with st.expander(f"Errors ({len(errors)})"):
            for lab, msg in errors.items():
                st.markdown(f"- **{lab}**: {msg}")
    downloads(exp, keep, summary, seeds, accs, families, sets)


def surprising_notes(exp, summary: list[dict]) -> list[str]:
    """ood_core.report.explain_result's notes on the table's (mean) AUROCs, each once, with the detector's name.
    Scores (to tell constant ones) are the current model's, looked up only where the AUROC is exactly 50%."""
    groups: dict[str, list[list[str]]] = {}  # per detector, in the table's order: its notes per OOD set
    contexts = {}
    for s in summary:
        d, o, auroc = s["detector"], s["ood_set"], s["auroc_mean"]
        if d not in REGISTRY or auroc is None:
            continue
        if d not in contexts:
            contexts[d] = report.explain_context(exp, d, {})
        s_id = s_ood = None
        if auroc == 0.5:
            sc, _ = ui.detector_scores(exp, d, {})
            if sc is not None and o in sc:
                s_id, s_ood = sc["test"], sc[o]
        groups.setdefault(d, []).append(report.explain_result(d, exp.spec.setting, s_id, s_ood, auroc,
                                                              {**contexts[d], "ood_set": o}))
    return [f"**{REGISTRY[d].title}**: {n}" for d, per_set in groups.items() for n in report.merge_notes(per_set)]


def show_notes(notes: list[str]) -> None:
    """The notes right under the table they explain; open when there are only a few."""
    if notes:
        with st.expander(f"Why some of these numbers look wrong ({len(notes)} note{'s' if len(notes) > 1 else ''})",
                         expanded=len(notes) <= 3, icon=":material/lightbulb:"):
            st.markdown("\n".join(f"- {n}" for n in notes))


def downloads(exp, rows: list[dict], summary: list[dict], seeds: list[int], accs: list, families: list[str],
              sets: list[str]) -> None:
    """CSV (one line per detector and OOD set, every metric, fractions) and JSON in the CLI's layout; the file
    name says whether the table was filtered (families, OOD sets) or holds everything."""
    spec = exp.spec
    every_family = list(dict.fromkeys(REGISTRY[n].family for n in ui.detector_options(exp)))
    doc = report.seeds_doc(spec, seeds, rows, summary, accs, exp.bench.meta.get("n_dataset_classes"))
    table = pd.DataFrame([{**s, "title": REGISTRY[s["detector"]].title if s["detector"] in REGISTRY else "",
                           "family": REGISTRY[s["detector"]].family if s["detector"] in REGISTRY else "",
                           "errors": "; ".join(s["errors"])} for s in summary])
    front = ["detector", "title", "family", "ood_set", "n_seeds"]
    table = table[front + [c for c in table.columns if c not in front]]
    stem = report.compare_export_stem(spec, seeds, families, every_family, sets, exp.ood_names)
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button("Download CSV", table.to_csv(index=False), f"{stem}.csv", "text/csv", key="compare-csv",
                       help="One line per detector and OOD set: mean and sample std (ddof=1) of every metric (fractions, "
                            "not %).")
    c2.download_button("Download JSON", report.to_json(doc), f"{stem}.json", "application/json",
                       key="compare-json", help="The layout of `python -m ood_core run --json`: spec, seeds, "
                                                "results (one row per seed, detector and OOD set) and summary.")


# --- ND / AD protocols --------------------------------------------------------------------------------

def protocol_job(key: str, title: str, fn: Callable, estimate, start_label: str, button_key: str) -> Optional[dict]:
    """Run `fn(on_progress, cancel)` (a protocol) as a background job after the user's click, and keep its rows
    under `key` in results_store() once it lands; returns {"rows", "seconds"} when there, else None."""
    res = ui.results_store().get(key)
    if res is not None:
        return res

    def work(progress, cancel):
        out = fn(progress, cancel)
        return {"rows": out.rows, "seconds": out.seconds}

    _, res = ui.run_job(key, title, work, estimate, start_label=start_label, auto_start=False, button_key=button_key)
    if res is not None:
        ui.remember(key, res)
    return res


def one_class_section(exp) -> None:
    """ND/AD: the one-vs-all table (methods x normal classes) and, in AD, the contamination curve."""
    spec = exp.spec
    n_classes = int(exp.bench.meta.get("n_dataset_classes", 10))
    st.divider()
    st.subheader("One-vs-all protocol: each class in turn is the normal one")
    ui.tutorial("The table above scores one normal class. The survey's protocol trains a one-class model per "
                "class and per method, scores the other classes as novel"
                + (" (with the training set contaminated)" if spec.setting == "ad" else "")
                + ", and averages the AUROC over classes. Models are trained once and cached on disk; the first run "
                   "trains each chosen model once per class, so it takes a while.")
    labels = [protocols.method_label(*m) for m in protocols.ONE_CLASS_METHODS]
    c1, c2 = st.columns([1, 2])
    classes = c1.multiselect("Normal classes", list(range(n_classes)), default=list(range(n_classes)),
                             key="compare-oc-classes")
    defaults = [protocols.method_label(*m) for m in protocols.DEFAULT_ONE_CLASS_METHODS]
    chosen = c2.multiselect("Methods", labels, default=defaults, key="compare-oc-methods",
                            help="(model, detector) pairs: the one-class models' own scores and classic detectors "
                                 "on raw pixels or on the models' features. Chosen at first: all but the models that "
                                 "take minutes per normal class on 2 CPU cores (Deep SVDD with pretraining, OC-GAN, "
                                 "AnoGAN, CSI, U-std, multiresolution KD): add them here; the estimate below says "
                                 "what they cost before anything starts.")
    methods = [m for m, lab in zip(protocols.ONE_CLASS_METHODS, labels) if lab in chosen]
    if not classes or not methods:
        st.info("Choose at least one normal class and one method.")
        return
    key = json.dumps(["one-vs-all", ui.spec_json(spec), classes, chosen])
    res = protocol_job(key, "One-vs-all protocol", lambda cb, cancel: protocols.run_one_class(
        spec, spec.setting, spec.contamination, classes, methods, on_progress=cb, cancel=cancel),
        lambda: estimates.one_class(spec, spec.setting, spec.contamination, classes, methods, len(exp.bench.train)),
        "Run the one-vs-all protocol", "compare-oc-run")
    if res:
        one_vs_all_table(res["rows"], spec.setting)
        one_vs_all_downloads(spec, res, classes, chosen, labels, n_classes)
        st.caption(f"Ran in {res['seconds']:.0f} s.")
    if spec.setting == "ad":
        contamination_section(spec, classes, methods, chosen, len(exp.bench.train))


def one_vs_all_table(rows: list[dict], setting: str) -> None:
    table = 100 * report.one_vs_all_frame(rows).drop(columns="n").rename(columns={"sample std": "± std"})
    table.index.name = "Method"
    cfg = {c: st.column_config.NumberColumn(c, format="%.1f %%", help=metric_help("auroc")) for c in table.columns}
    cfg["± std"] = st.column_config.NumberColumn("± std", format="%.1f %%", help="sample standard deviation (ddof=1) over classes")
    st.markdown(f"**AUROC (%) per normal class**, mean ± sample std over {len(table.columns) - 2} classes")
    st.dataframe(table, column_config=cfg, key="compare-oc-table")
    show_notes(list(dict.fromkeys(
        f"**{r['method']}**: {n}" for r in rows if r.get("auroc") is not None
        for n in report.explain_result(r["detector"], setting, None, None, r["auroc"],
                                       {"ood_set": f"normal class {r['normal_class']}"}))))
    failed = sorted({f"{r['method']} (class {r['normal_class']}): {r['error']}" for r in rows if r.get("error")})
    if failed:
        with st.expander(f"Errors ({len(failed)})"):
            st.markdown("\n".join(f"- {f}" for f in failed))


def one_vs_all_downloads(spec, res: dict, classes: list[int], chosen: list[str], labels: list[str],
                         n_classes: int) -> None:
    """The one-vs-all table as CSV (fractions) and the run as JSON in the layout of `run --setting nd|ad --json`."""
    rows = res["rows"]
    stem = report.one_vs_all_export_stem(spec, classes, chosen, labels, n_classes)
    doc = report.protocol_doc(spec, spec.setting, rows, [], res["seconds"],
                              {"summary": protocols.summarise_by(rows, ("method",))})
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button("Download one-vs-all CSV", report.one_vs_all_frame(rows).to_csv(), f"{stem}.csv", "text/csv",
                       key="compare-oc-csv", help="One line per method: AUROC per normal class, mean, sample std "
                                                  "(ddof=1) over classes and n (fractions, not %).")
    c2.download_button("Download one-vs-all JSON", report.to_json(doc), f"{stem}.json", "application/json",
                       key="compare-oc-json", help="The layout of `python -m ood_core run --setting "
                                                   f"{spec.setting} --json`: spec, setting, results (one row per "
                                                   "method and normal class), seconds and summary.")


def contamination_section(spec, classes: list[int], methods: list, chosen: list[str], train_size: int) -> None:
    st.subheader("Contamination curve")
    ui.tutorial("Anomaly detection trains on data that is secretly contaminated. How fast does each method "
                "degrade as the share of anomalies in the training set grows?")
    ratios = st.multiselect("Contamination ratios", list(RATIOS), default=list(RATIOS), key="compare-ad-ratios",
                            format_func=lambda r: f"{100 * r:.0f}%")
    if not ratios:
        st.info("Choose at least one ratio.")
        return
    ratios = sorted(ratios)
    key = json.dumps(["contamination", ui.spec_json(spec), classes, chosen, ratios])
    res = protocol_job(key, "Contamination curve", lambda cb, cancel: protocols.contamination_curve(
        spec, ratios, classes, methods, on_progress=cb, cancel=cancel),
        lambda: estimates.contamination_curve(spec, ratios, classes, methods, train_size),
        "Run the contamination curve", "compare-ad-run")
    if res:
        summary = protocols.summarise_by(res["rows"], ("method", "contamination"))
        st.plotly_chart(figures.contamination_figure(summary), width="stretch", key="compare-ad-curve")
        st.caption(f"Ran in {res['seconds']:.0f} s.")


# --- the page -----------------------------------------------------------------------------------------

def metric_picker(spec, where=st) -> str:
    """The metric of the table and heatmap: Table 6's four, plus OSCR in open-set recognition."""
    options = TABLE_METRICS + (("oscr",) if spec.setting == "osr" else ())
    default = ui.url_choice("metric", options, options[0])
    metric = where.radio("Metric", options, index=options.index(default), format_func=lambda m: METRIC_LABELS[m],
                         key="compare-metric", horizontal=True,
                         help="\n".join(f"- **{METRIC_LABELS[m]}**: {metric_help(m)}" for m in options))
    ui.remember_in_url("metric", metric)
    return metric


TUNE_HELP = ("Each detector's parameters are chosen from its sweep list by the mean AUROC of ID validation images "
             "against OOD *validation* sets: the validation split's own unknowns (open-set and one-class settings) and "
             "the synthetic and transformed sets drawn again from the validation images. No test image is ever used "
             "to choose; the table then scores the test sets with the chosen values. Methods that run the network "
             "again, and natural sets from other datasets or your folders, are not used for tuning.")


def controls(exp, options: list[str]) -> tuple[list[str], list[str], bool, bool]:
    """Families, OOD sets, the network opt-in and tuning on validation; returns them."""
    present = [f for f in FAMILIES if any(REGISTRY[n].family == f for n in options)]
    c2, c3 = st.columns(2)
    families = c2.multiselect("Families", present, default=ui.url_choices("families", present, present),
                              format_func=ui.family_label, key="compare-families",
                              help="The survey's taxonomy:\n" + "\n".join(f"- **{ui.family_label(f)}**: {FAMILIES[f]}"
                                                                          for f in present))
    sets = c3.multiselect("OOD sets", exp.ood_names, default=ui.url_choices("sets", exp.ood_names, exp.ood_names),
                          key="compare-sets",
                          help="\n".join(f"- **{s}**: {OOD_SETS[s].description}" for s in exp.ood_names
                                         if s in OOD_SETS) or None)
    ui.remember_in_url("families", families, default=present)
    ui.remember_in_url("sets", sets, default=exp.ood_names)
    slow = [n for n in options if REGISTRY[n].slow()]
    network = False
    if slow:
        network = st.checkbox(f"Include methods that run the network again or train one (slower: "
                              f"{', '.join(REGISTRY[n].title for n in slow)})", value=ui.url_flag("network", False),
                              key="compare-network", help=NETWORK_HELP)
        ui.remember_in_url("network", network, default=False)
    tune = st.checkbox("Tune parameters on validation data (never on the test sets)", value=ui.url_flag("tune", False),
                       key="compare-tune", help=TUNE_HELP)
    ui.remember_in_url("tune", tune, default=False)
    return families, sets, network, tune


def main() -> None:
    st.title("Compare: every detector on every OOD set")
    ui.tutorial("One row per detector, one column per OOD set — the layout of the survey's Table 6. The table "
                "below comes from the current model at once; **start comparison** trains the same experiment with "
                "more seeds (each a freshly trained model, cached on disk) and reports mean ± sample std (ddof=1), as papers do. "
                "In open-set recognition each seed is one of the protocol's random known/unknown splits.")
    exp = ui.get_experiment()
    if exp is None:
        return
    spec = exp.spec
    top = ui.chart_first()
    options = ui.detector_options(exp)
    families, sets, network, tune = controls(exp, options)
    if not network and any(REGISTRY[n].slow() for n in options):
        st.caption("Methods that run the network again or train one are left out (tick the box to include them); "
                   "all others score the cached outputs of one forward pass.")
    names = [n for n in options if network or not REGISTRY[n].slow()]

    uploaded = ui.active_user_model(spec) is not None
    s1, s2, s3 = st.columns([1, 1.3, 3], vertical_alignment="bottom")
    osr = spec.setting == "osr"
    u = unit(spec)
    help_text = (f"Seeds {spec.seed}, {spec.seed + 1}, …: each trains a fresh model of this experiment (new data "
                 "split, initialisation and batch order).")
    if osr:
        help_text = (f"The open-set protocol's random splits: split i uses seed {spec.seed} + i, which draws its own "
                     f"{spec.known_classes} known classes (the others are the unknowns) and trains a fresh model on "
                     "them, as `python -m ood_core run --setting osr --splits N` does.")
        if spec.osr_splits == "literature":
            help_text = (f"The published splits of the OSR literature: split i uses seed {spec.seed} + i, which picks "
                         "published split i (five per dataset) and trains a fresh model on its known classes, as "
                         "`python -m ood_core run --setting osr --osr-splits literature` does.")
    left = osr_splits.splits_left(spec) if osr else None  # literature mode: only as many as were published
    most = 10 if left is None else max(2, min(10, left))
    n_seeds = s1.number_input(f"{u.capitalize()}s", min_value=2, max_value=most,
                              value=ui.url_number("seeds", 2, most, min(most, DEFAULT_SPLITS if osr else DEFAULT_SEEDS),
                                                  int),
                              step=1, key="compare-seeds", disabled=uploaded, help=help_text)
    ui.remember_in_url("seeds", int(n_seeds), default=DEFAULT_SPLITS if osr else DEFAULT_SEEDS)
    seeds = list(range(spec.seed, spec.seed + int(n_seeds)))
    key = json.dumps(["seeds", ui.experiment_id(exp), ui.spec_json(spec), seeds, names, tune])
    multi = None if uploaded else ui.results_store().get(key)
    job = None if uploaded or multi is not None else jobs.runner().get(key)
    busy = uploaded or multi is not None or (job is not None and job.active)
    est = None if busy else estimates.seeds(exp, seeds, names)  # what it will cost, said before it starts
    start = s2.button(f"Start comparison over {len(seeds)} {u}s", key="compare-start", type="primary",
                      disabled=busy, help=f"{est.words()}." if est else None)
    if uploaded:
        s3.caption("Multi-seed comparison trains fresh models of the spec, so it is off while your uploaded model "
                   "is in use.")
    else:
        s3.caption(f"{u.capitalize()}s {seeds[0]}–{seeds[-1]}: models not yet on disk are trained first "
                   f"({spec.training.epochs} epochs each), then every detector is scored on each"
                   + (f" — {est.words()}." if est else "."))
    if not uploaded and multi is None:
        title = f"Comparison over {len(seeds)} {u}s"
        if start:
            job = ui.start_job(key, title, multi_seed_work(exp, names, seeds, tune), est)
        elif job is not None and job.active:
            ui.job_panel(key)
        elif job is not None and job.state == jobs.DONE:
            multi = job.result
            ui.remember(key, multi)
        else:
            ui.job_outcome(job, title)

    chosen = [n for n in names if REGISTRY[n].family in families]
    if multi is not None:
        st.success(f"Mean ± sample std over {unit(spec)}s {seeds[0]}–{seeds[-1]} ({len(seeds)} {unit(spec)}s, "
                   f"{len(names)} detectors, "
                   f"{multi['seconds']:.0f} s).")
        show_comparison(exp, multi["rows"], seeds, multi["accuracies"], families, sets, top)
        show_tuned(multi["rows"])
    elif not chosen or not sets:
        st.info("Choose at least one family and one OOD set.")
    else:
        rows, seconds, computed = single_seed(exp, [n for n in chosen if not REGISTRY[n].slow()])
        if computed:
            st.caption(f"Scored {computed} detector(s) in {seconds:.1f} s; they now come from the cache.")
        more = network_rows(exp, [n for n in names if REGISTRY[n].slow()])
        if more is None:
            st.caption("The table shows the other detectors meanwhile; the slow ones join it when their job lands.")
        rows += [r for r in more or [] if r["detector"] in chosen]
        if tune:
            tuned = tuned_rows(exp, [n for n in chosen if tuning.is_tunable(n)])
            if tuned is None:
                st.caption("The table shows the default parameters meanwhile; the tuned ones replace them when the "
                           "job lands.")
            else:
                done = {r["detector"] for r in tuned}
                rows = [r for r in rows if r["detector"] not in done] + tuned
        show_comparison(exp, rows, [spec.seed], [ui.id_accuracy(exp)], families, sets, top)
        if tune:
            show_tuned(rows)
    if spec.setting in ONE_CLASS_SETTINGS:
        one_class_section(exp)


main()
