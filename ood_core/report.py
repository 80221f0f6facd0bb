"""Results as tables and documents: metric and confusion tables per OOD set (pandas), and the one JSON layout
that `python -m ood_core run --json` writes and the Compare page downloads."""
from __future__ import annotations

import json
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .data.osr_splits import known_classes_of
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
                     known_classes=known_classes_of(spec.with_seed(r["seed"]), n_dataset_classes))
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


# --- explaining surprising numbers -------------------------------------------------------------------------

DEAD_SHARE = 0.99  # a penultimate unit is "dead" when it is exactly 0 for at least this share of ID train images
MANY_DEAD = 0.10  # DICE gets a note when at least this fraction of the units are dead


def dead_units(features: np.ndarray, share: float = DEAD_SHARE) -> np.ndarray:
    """Boolean mask (D,) of the units that are exactly 0 for at least `share` of the rows of `features` (n, D)."""
    f = np.asarray(features)
    return (f == 0).mean(axis=0) >= share if len(f) else np.zeros(f.shape[1], dtype=bool)


def _constant(*arrays) -> bool:
    v = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return len(v) > 0 and bool(np.all(np.isfinite(v))) and float(np.ptp(v)) <= 1e-12 * max(1.0, float(np.abs(v).max()))


def _family(detector: str) -> str:
    from .detectors import REGISTRY

    return REGISTRY[detector].family if detector in REGISTRY else ""


def explain_result(detector: str, setting: str, scores_id: Optional[np.ndarray], scores_ood: Optional[np.ndarray],
                   auroc: Optional[float], context: Optional[Mapping] = None) -> list[str]:
    """Plain-text notes on a result that looks wrong, for the page to show beside the number; [] when none.

    - every score equal (AUROC exactly 50%): the detector carries no information here, and for RMD with a single
      ID class (ND/AD) why: its class-conditional and class-agnostic Gaussians are the same fit;
    - AUROC below 50%: the detector ranks the wrong way on that set;
    - KNN with k above the smallest ID class's training count: the k-th neighbour lies in another class;
    - DICE on a model with many dead penultimate units (0 for >= 99% of ID train images).

    `scores_id` / `scores_ood` may be None (only the AUROC is known, e.g. a mean over seeds). `context` keys, all
    optional: "ood_set" (name for the text), "params" (the detector's parameters), "class_counts" (ID train images
    per class), "n_classes", "dead_units" / "n_units" (counts), "dice_kept_per_class" (mean weights DICE keeps
    per class), as `explain_context` builds them from an experiment.
    """
    ctx = dict(context or {})
    where = f" on {ctx['ood_set']}" if ctx.get("ood_set") else ""
    params = dict(ctx.get("params") or {})
    notes: list[str] = []
    if scores_id is not None and scores_ood is not None and _constant(scores_id, scores_ood):
        note = (f"AUROC is exactly 50%{where} because every image gets the same score: this detector carries no "
                "information in this setting.")
        one_class = setting in ("nd", "ad") or ctx.get("n_classes") == 1
        if detector == "rmd" and one_class:
            note += (" RMD subtracts the Mahalanobis distance under one class-agnostic Gaussian (all ID training "
                     "features) from the distance to the nearest class-conditional Gaussian; with a single ID class "
                     "the two are the same Gaussian, so they cancel and S(x) = 0 for every input.")
        notes.append(note)
    elif auroc is not None and np.isfinite(auroc) and auroc < 0.5:
        notes.append(f"AUROC {100 * auroc:.1f}% is below 50%{where}: the detector ranks the wrong way on this set, "
                     "finding these images more familiar than the ID test images (50% is chance; the flipped sign "
                     f"would give {100 * (1 - auroc):.1f}%, but a sign chosen on the test set would be cheating)."
                     + (" Output-based scores are over-confident far from the training data (Hein et al., CVPR "
                        "2019); distance-based detectors (Mahalanobis, KNN) often do better there."
                        if _family(detector) == "output" else ""))
    counts = ctx.get("class_counts")
    if detector == "knn" and counts is not None and len(counts) > 1 and "k" in params:
        counts = np.asarray(counts)
        smallest = int(counts.min())
        if int(params["k"]) > smallest:
            notes.append(f"k = {int(params['k'])} is larger than the smallest ID class's training count (n = "
                         f"{smallest}): for an image of that class the k-th nearest training neighbour lies in "
                         f"another class, so familiar images look far away too. Use k ≤ {smallest}.")
    n_dead, n_units = ctx.get("dead_units"), ctx.get("n_units")
    if detector == "dice" and n_dead is not None and n_units and n_dead / n_units >= MANY_DEAD:
        p = float(params.get("sparsity", 90.0))
        kept = ctx.get("dice_kept_per_class")
        kept_txt = f" (about {kept:.0f} weights per class here)" if kept is not None else ""
        notes.append(f"{n_dead} of the {n_units} penultimate units are dead (0 for at least {DEAD_SHARE:.0%} of ID "
                     f"training images), so the class evidence rests on {n_units - n_dead} live units. DICE still "
                     f"keeps only the top {100 - p:g}% of all class × unit weights, as if every unit carried "
                     f"evidence{kept_txt}: after the dead units' weights (contribution ≈ 0) the cut falls on live "
                     "units and prunes weights the ID classes rely on. A lower sparsity (Sensitivity page) prunes "
                     "less.")
    return notes


def merge_notes(groups: Sequence[Sequence[str]]) -> list[str]:
    """One list of the notes of several results (one detector's OOD sets): each note once; first the notes about one
    result, in order, then those that several share (DICE's dead units under every set), so that a shared cause
    follows the numbers it explains instead of sitting between two sets' notes."""
    count: dict[str, int] = {}
    for group in groups:
        for n in dict.fromkeys(group):
            count[n] = count.get(n, 0) + 1
    return [n for n in count if count[n] == 1] + [n for n in count if count[n] > 1]


def explain_sweep(detector: str, setting: str, context: Mapping, param: str, values: Sequence) -> list[str]:
    """explain_result's notes on the values of a parameter sweep where the value itself explains a bend in the line
    (KNN: k above the smallest ID class's training count), each naming its value ("At k = 200: ..." unless it
    does). A note that holds at every value (DICE's dead units) is about the model, not the parameter: none then."""
    per_value = {v: explain_result(detector, setting, None, None, None,
                                   {**context, "params": {**dict(context.get("params") or {}), param: v}})
                 for v in values}
    if all(per_value.values()):
        return []
    return [n if f"{param} = {v}" in n else f"At {param} = {v}: {n}" for v, notes in per_value.items() for n in notes]


def explain_context(exp, detector: str, params: Optional[Mapping] = None, ood_set: Optional[str] = None) -> dict:
    """The context `explain_result` reads, from an experiment: setting facts and, per detector, what its note
    needs (KNN: ID train images per class; DICE: dead units and the weights its mask keeps per class)."""
    from .detectors import default_params
    from .detectors.activations import dice_contribution, dice_mask
    from .linalg import feature_mean

    full = {**default_params(detector), **dict(params or {})}
    ctx: dict = {"params": full, "n_classes": exp.bench.num_classes}
    if ood_set:
        ctx["ood_set"] = ood_set
    train = exp.outputs.get("train")
    if train is None:
        return ctx
    if detector == "knn" and exp.bench.num_classes > 1:
        ctx["class_counts"] = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=exp.bench.num_classes)
    if detector == "dice" and exp.adapter is not None:
        h = np.asarray(train.features)  # no float64 copy: the mean is DICE's own, chunked and shared
        ctx["dead_units"], ctx["n_units"] = int(dead_units(h).sum()), int(h.shape[1])
        mask = dice_mask(dice_contribution(feature_mean(h), exp.adapter.head_weight), float(full["sparsity"]))
        ctx["dice_kept_per_class"] = float(mask.sum(axis=1).mean())
    return ctx
