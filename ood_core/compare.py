"""Comparing detectors: over seeds (mean ± sample std), as tables, and over a parameter's sweep list."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from . import linalg, metrics
from .jobs import check_cancelled
from .metrics import sample_std
from .detectors import REGISTRY, shares_search
from .pipeline import Experiment, evaluate, resolve_detectors, score_values

METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_error")
OPTIONAL_KEYS = ("oscr",)  # present in open-set recognition rows only
METRIC_LABELS = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95TPR",
                 "detection_error": "Detection error", "oscr": "OSCR"}
HIGHER_IS_BETTER = {"auroc": True, "aupr_in": True, "aupr_out": True, "fpr95": False, "detection_error": False,
                    "oscr": True}


def summarise_by(rows: list[dict], keys: tuple[str, ...], metrics: tuple[str, ...] = ("auroc",)) -> list[dict]:
    """Mean and sample std (ddof=1; None from one value) of each metric over the rows sharing `keys`; errors
    are counted and listed, never averaged. Each summary row: the key fields, n (rows without error), n_errors,
    errors, <m>_mean, <m>_std."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for g, rs in groups.items():
        ok = [r for r in rs if r.get("error") is None]
        s = dict(zip(keys, g))
        s.update(n=len(ok), n_errors=len(rs) - len(ok), errors=sorted({r["error"] for r in rs if r.get("error")}))
        for m in metrics:
            v = np.array([r[m] for r in ok if r.get(m) is not None], dtype=float)
            s[f"{m}_mean"] = float(v.mean()) if len(v) else None
            s[f"{m}_std"] = sample_std(v)
        out.append(s)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds per (detector, OOD set), every metric (OSCR when the rows have it)."""
    keys = METRIC_KEYS + tuple(k for k in OPTIONAL_KEYS if any(k in r for r in rows))
    out = summarise_by(rows, ("detector", "ood_set"), keys)
    for s in out:
        s["n_seeds"] = s["n"]
    return out


def run_seeds(get_experiment: Callable[[int], Experiment], seeds: Iterable[int],
              detectors: str | Iterable[str] = "all", params: Optional[Mapping[str, Mapping]] = None,
              on_progress: Optional[Callable[[float, str], None]] = None, all_splits: bool = False,
              on_seed: Optional[Callable[[int, Experiment, list[dict], dict], None]] = None,
              cancel=None, tune: bool = False) -> tuple[list[dict], list[float]]:
    """Evaluate the detectors on each seed's experiment; rows gain a `seed` field. Returns (rows, ID accuracies).

    `detectors`: "all" means every detector that applies to each seed's experiment; named detectors are
    checked before any experiment is prepared. `on_seed(seed, exp, rows, scores)` is called after each seed
    with that seed's rows and scores (train and val scores too when `all_splits`), e.g. to save them.
    `cancel` (an Event): jobs.Cancelled between seeds and detectors when set (get_experiment checks it too if
    the caller passes it on to pipeline.prepare). `tune`: each seed's detectors are tuned on its OOD validation
    sets first (pipeline.evaluate).
    """
    seeds = list(seeds)
    if not (isinstance(detectors, str) and detectors.strip() == "all"):
        detectors = resolve_detectors(detectors)  # unknown names fail before any training
    rows, accs = [], []
    for i, seed in enumerate(seeds):
        check_cancelled(cancel)
        if on_progress:
            on_progress(i / len(seeds), f"seed {seed}: preparing the model")
        exp = get_experiment(seed)

        def inner(j, n, name, i=i, seed=seed):
            if on_progress and name:
                on_progress((i + j / max(n, 1)) / len(seeds), f"seed {seed}: {name}")

        r, scores = evaluate(exp, detectors, params, on_progress=inner, all_splits=all_splits, cancel=cancel,
                             tune=tune)
        for row in r:
            row["seed"] = seed
        if on_seed:
            on_seed(seed, exp, r, scores)
        rows += r
        accs.append(exp.id_accuracy)
    if on_progress:
        on_progress(1.0, "done")
    return rows, accs


def pivot(summary: list[dict], metric: str, stat: str = "mean") -> tuple[list[str], list[str], np.ndarray]:
    """(detectors, OOD sets, matrix) of `metric`'s mean or std; NaN where a detector failed."""
    dets = list(dict.fromkeys(s["detector"] for s in summary))
    oods = list(dict.fromkeys(s["ood_set"] for s in summary))
    m = np.full((len(dets), len(oods)), np.nan)
    for s in summary:
        v = s[f"{metric}_{stat}"]
        if v is not None:
            m[dets.index(s["detector"]), oods.index(s["ood_set"])] = v
    return dets, oods, m


def with_group_means(oods: list[str], mean: np.ndarray, std: np.ndarray, dataset: str
                     ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Append the survey's near-OOD and far-OOD averages (OpenOOD v1.5's layout) as columns "near-OOD mean" and
    "far-OOD mean": each the mean over the sets of that group present in `oods` (a failed cell leaves the group's
    mean NaN). No columns when the dataset has no survey pairs or none of its sets is here; their std is NaN."""
    from .data.registry import survey_sets

    near, far = survey_sets(dataset)
    cols, extra = list(oods), []
    for title, group in (("near-OOD mean", near), ("far-OOD mean", far)):
        idx = [i for i, o in enumerate(oods) if o in group]
        if idx:
            cols.append(title)
            extra.append(mean[:, idx].mean(axis=1))
    if not extra:
        return list(oods), mean, std
    grown = np.column_stack([mean, *extra])
    return cols, grown, np.column_stack([std, np.full((len(mean), len(extra)), np.nan)])


def best_per_column(matrix: np.ndarray, metric: str) -> np.ndarray:
    """Boolean mask of the best value(s) in each column (ties all marked); NaN never best."""
    m = matrix if HIGHER_IS_BETTER[metric] else -matrix
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isnan(m), -np.inf, m), axis=0)
        return np.isclose(m, best[None, :], rtol=0, atol=1e-12) & ~np.isnan(m)


def sweep(exp: Experiment, detector: str, param: str, values: Optional[Iterable] = None,
          ood_sets: Optional[Iterable[str]] = None, fixed: Optional[Mapping] = None,
          on_progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> list[dict]:
    """AUROC (and FPR@95) of `detector` on each OOD set for each value of one parameter, others fixed.

    Rows: {"value", "ood_set", "auroc", "fpr95", "error"}; scored from the experiment's cached outputs.
    `on_progress(fraction, message)` after each value; `cancel` (an Event): jobs.Cancelled between values and
    splits (and inside the ensemble's trainings), never recorded as a value's error.
    """
    cls = REGISTRY[detector]
    if param not in cls.params:
        raise ValueError(f"{detector} has no parameter {param!r}; it has: {', '.join(cls.params) or 'none'}")
    values = list(values if values is not None else cls.params[param].sweep)
    if not values:
        raise ValueError(f"{detector}.{param} has no sweep list")
    oods = list(ood_sets or exp.ood_names)
    with linalg.sharing():  # what the values compute alike (ViM's covariance, KNN's normalised bank) is done once
        if shares_search(detector):
            rows = _sweep_search(exp, detector, param, values, oods, fixed, on_progress, cancel)
        else:
            rows = []
            for i, v in enumerate(values):
                check_cancelled(cancel)
                if on_progress:
                    on_progress(i / len(values), f"{param} = {v} ({i + 1}/{len(values)})")
                try:
                    det = exp.fit_detector(detector, {**(fixed or {}), param: v}, cancel=cancel)
                    rows += _sweep_rows(v, oods, exp.score(det, ["test", *oods], cancel))
                except Exception as e:  # one bad value shows as an error point; the sweep goes on
                    rows += _sweep_rows(v, oods, error=e)
    if on_progress:
        on_progress(1.0, "done")
    return rows


def _sweep_rows(value, oods: list[str], scores: Optional[dict] = None, error: Optional[Exception] = None) -> list[dict]:
    """sweep's rows of one value: its AUROC and FPR@95 on each OOD set, or the error on each."""
    if scores is None:
        msg = f"{type(error).__name__}: {error}"
        return [{"value": value, "ood_set": o, "auroc": None, "fpr95": None, "error": msg} for o in oods]
    return [{"value": value, "ood_set": o, "auroc": metrics.auroc(scores["test"], scores[o]),
             "fpr95": metrics.fpr95(scores["test"], scores[o]), "error": None} for o in oods]


def _sweep_search(exp: Experiment, detector: str, param: str, values: list, oods: list[str],
                  fixed: Optional[Mapping], on_progress, cancel) -> list[dict]:
    """sweep for a detector whose scores rest on a neighbour search (KNN, NNGuide): every value is fitted first
    (sharing the normalised bank), then each split is scored for all values at once (pipeline.score_values: ONE
    pass of the query-bank product instead of one per value, the same numbers; an error stays with its value)."""
    splits = ["test", *oods]
    results = score_values(exp, detector, [{**(fixed or {}), param: v} for v in values],
                           [exp.outputs[s] for s in splits], on_progress, cancel, [f"{param} = {v}" for v in values])
    rows = []
    for v, r in zip(values, results):
        failed = isinstance(r, Exception)
        rows += _sweep_rows(v, oods, error=r) if failed else _sweep_rows(v, oods, dict(zip(splits, r)))
    return rows
