"""Results as tables and documents: metric and confusion tables per OOD set (pandas), and the one JSON layout
that `python -m ood_core run --json` writes and the Compare page downloads."""
from __future__ import annotations

import json
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .data.benchmark import known_classes_for
from .spec import Spec

METRIC_COLUMNS = {  # metric key -> column label; arrows say which direction is better
    "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑", "aupr_out": "AUPR-Out ↑", "fpr95": "FPR@95TPR ↓",
    "detection_error": "Detection error ↓",
}
OSCR_COLUMN = "OSCR ↑"  # open-set recognition only


def metrics_frame(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                  id_correct: Optional[np.ndarray] = None) -> pd.DataFrame:
    """One row per OOD set, the five detection metrics in percent (from ood_core.metrics); with `id_correct`
    (open-set recognition: which known test images the classifier gets right) an OSCR column too."""
    rows = {}
    for name, s in ood_scores.items():
        rows[name] = {METRIC_COLUMNS[k]: 100 * v for k, v in metrics.all_metrics(id_scores, s).as_dict().items()}
        if id_correct is not None:
            rows[name][OSCR_COLUMN] = 100 * metrics.oscr(id_scores, id_correct, s)
    return pd.DataFrame.from_dict(rows, orient="index")


def confusion_frame(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], threshold: float) -> pd.DataFrame:
    """Counts at a threshold per OOD set (flagged as OOD when score > threshold)."""
    rows = {}
    for name, s in ood_scores.items():
        c = metrics.confusion_at(id_scores, s, threshold)
        rows[name] = {"ID kept": c.id_accepted, "ID flagged": c.id_rejected,
                      "OOD missed": c.ood_accepted, "OOD caught": c.ood_rejected}
    return pd.DataFrame.from_dict(rows, orient="index")


def one_vs_all_frame(rows: list[dict]) -> pd.DataFrame:
    """The one-vs-all table as fractions: one row per method (index "method"), its AUROC per normal class
    ("class c"), then "mean", "sample std" (ddof=1 over classes; NaN from one class) and "n" (classes without
    error). Failed cells are NaN."""
    from .compare import summarise_by  # compare imports the pipeline; keep report light to import

    frame = pd.DataFrame(rows)
    table = frame.pivot(index="method", columns="normal_class", values="auroc").astype(float)
    summ = {s["method"]: s for s in summarise_by(rows, ("method",))}
    table = table.loc[list(summ)]
    table.columns = [f"class {c}" for c in table.columns]
    table["mean"] = [np.nan if s["auroc_mean"] is None else s["auroc_mean"] for s in summ.values()]
    table["sample std"] = [np.nan if s["auroc_std"] is None else s["auroc_std"] for s in summ.values()]
    table["n"] = [s["n"] for s in summ.values()]
    table.index.name = "method"
    return table


# --- file names of the exports ---------------------------------------------------------------------------

def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(name))


def _listed(names: Sequence, every: Sequence, what: str, most: int = 3) -> str:
    """"" when `names` is all of `every`; else the names joined by '+' (at most `most`), or 'Kof<N><what>'."""
    if set(names) >= set(every):
        return ""
    if len(names) <= most:
        return f"{what}-" + "+".join(_safe(n) for n in names)
    return f"{len(names)}of{len(every)}{what}"


def compare_export_stem(spec: Spec, seeds: Sequence[int], families: Sequence[str], all_families: Sequence[str],
                        sets: Sequence[str], all_sets: Sequence[str]) -> str:
    """File name (no extension) of a Compare export that says what is inside: dataset, setting, seeds, then
    "all" when every family and OOD set is in, else the families and sets kept, e.g.
    'ood-compare-digits-ood-seeds0-2-families-output-sets-gaussian+rotated'."""
    parts = [p for p in (_listed(families, all_families, "families"), _listed(sets, all_sets, "sets")) if p]
    return (f"ood-compare-{_safe(spec.dataset)}-{spec.setting}-seeds{seeds[0]}-{seeds[-1]}-"
            + ("-".join(parts) if parts else "all"))


def one_vs_all_export_stem(spec: Spec, classes: Sequence[int], methods: Sequence[str],
                           all_methods: Sequence[str], n_classes: int) -> str:
    """File name (no extension) of a one-vs-all export: dataset, setting (AD: contamination), the normal classes
    and, when not all, the methods, e.g. 'ood-one-vs-all-digits-ad-contamination5pct-classes0+3-2of12methods'."""
    cls = "classes-all" if set(classes) >= set(range(n_classes)) else "classes" + "+".join(map(str, sorted(classes)))
    contam = f"-contamination{100 * spec.contamination:g}pct" if spec.setting == "ad" else ""
    meth = _listed(methods, all_methods, "methods", most=0)  # method labels are long: a count
    return f"ood-one-vs-all-{_safe(spec.dataset)}-{spec.setting}{contam}-{cls}" + (f"-{meth}" if meth else "")


# --- the JSON export ---------------------------------------------------------------------------------

def accuracy_fields(accuracies: Iterable[Optional[float]], per: Sequence[str]) -> dict:
    """id_accuracy (mean), id_accuracy_std (sample std, ddof=1; None from one value) and id_accuracy_per_<p> for each p in `per` (e.g. "seed", "split");
    empty when there is no accuracy (one-class models have no classifier)."""
    accs = [float(a) for a in accuracies if a is not None]
    if not accs:
        return {}
    out = {"id_accuracy": float(np.mean(accs)), "id_accuracy_std": metrics.sample_std(accs)}
    out.update({f"id_accuracy_per_{p}": list(accs) for p in per})
    return out


def seeds_doc(spec: Spec, seeds: Sequence[int], rows: list[dict], summary: list[dict],
              accuracies: Iterable[Optional[float]], n_dataset_classes: Optional[int] = None) -> dict:
    """A comparison over seeds as `python -m ood_core run --json` writes it and the Compare page downloads it:
    spec, seeds, the ID accuracy (mean, std, per seed), results (one row per seed, detector and OOD set, without
    the timing; a row without `seed` is of the first seed) and the summary (compare.summarise of the rows).

    Open-set recognition (each seed one of the protocol's splits), as `run --setting osr --json`: rows gain
    `split` and their `known_classes` (drawn from `n_dataset_classes`), the document `setting`, `splits` and
    the accuracy per split.
    """
    seeds = list(seeds)
    results = [{**{k: v for k, v in r.items() if k != "seconds"}, "seed": r.get("seed", seeds[0])} for r in rows]
    doc: dict = {"spec": spec.to_dict(), "seeds": seeds}
    per = ["seed"]
    if spec.setting == "osr":
        if n_dataset_classes is None:
            raise ValueError("an open-set export needs the dataset's number of classes")
        for r in results:
            r.update(split=seeds.index(r["seed"]),
                     known_classes=known_classes_for(r["seed"], n_dataset_classes, spec.known_classes))
        doc.update(setting="osr", splits=len(seeds))
        per.append("split")
    doc.update(accuracy_fields(accuracies, per))
    doc.update(results=results, summary=summary)
    return doc


def protocol_doc(spec: Spec, setting: str, rows: list[dict], accuracies: Iterable[Optional[float]], seconds: float,
                 extra: Optional[Mapping] = None) -> dict:
    """A protocol run (OSR splits, ND/AD one-vs-all, the contamination curve) as `run --setting ... --json`
    writes it: spec, setting, results, seconds, the accuracy per split when there is one, then `extra`."""
    doc = {"spec": spec.to_dict(), "setting": setting, "results": rows, "seconds": seconds}
    doc.update(accuracy_fields(accuracies, ["split"]))
    doc.update(extra or {})
    return doc


def to_json(doc: Mapping) -> str:
    """The text of an exported document (numpy numbers become plain floats)."""
    return json.dumps(doc, indent=1, default=float)
