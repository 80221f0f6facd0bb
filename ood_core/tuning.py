"""Tuning detector parameters honestly: on held-out OOD *validation* data, never on a test set.

The validation OOD sets of an experiment are drawn apart from every test set:
- the setting's natural set from the validation split (OSR's unknown classes, ND/AD's other classes:
  Benchmark.val_ood), and
- each synthetic or transformed OOD set of the experiment made again from the ID *validation* images (transformed
  sets) or from the set's own random stream under another seed (synthetic sets), so no test image is ever in them.
Natural sets from other datasets or the user's folders are left out: a second draw from them could share images
with the test draw.

`tune(exp, name)` picks each parameter of a detector from its sweep list (Param.sweep, or the choices of a choice
parameter; the default always among them), one parameter at a time in declaration order, the others held at their
best so far, by the mean AUROC of ID validation against each validation OOD set (ties keep the default, then the
earlier value). Detectors that run the network again are not tuned (each value would cost a pass over the data);
detectors that train a network of their own on the cached outputs are tuned only in the parameters they name
(Detector.tune_params: OpenGAN's training length, which its paper picks on validation data), each value one training;
detectors without parameters keep none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from . import linalg, metrics
from .data.benchmark import Split
from .data.registry import OOD_SETS, make_ood_set
from .detectors import REGISTRY, default_params, shares_search
from .inference import Outputs, run_inference
from .jobs import check_cancelled

VAL_SEED_OFFSET = 7_919_111  # the validation draws' seed: spec.seed + this (the test draws use spec.seed)
VAL_FRACTION = 0.2  # each validation OOD set: this fraction of the ID validation size (as the test sets of test)


def validation_sets(exp) -> dict[str, Split]:
    """The experiment's OOD validation sets (see the module's docstring), by the name of the test set they stand
    for, normalised like the benchmark. Empty when there is none (e.g. only natural sets from other datasets)."""
    bench = exp.bench
    out = dict(bench.val_ood)
    val_pixels = bench.to_pixels(bench.val.x)
    n = max(1, int(round(VAL_FRACTION * len(val_pixels))))
    for name in bench.ood:
        info = OOD_SETS.get(name)
        if info is None or info.kind not in ("synthetic", "transformed") or name in out:
            continue
        p = make_ood_set(name, val_pixels, n, exp.spec.seed + VAL_SEED_OFFSET)
        out[name] = Split(bench.normalise(p), np.full(len(p), -1, dtype=np.int64))
    return out


def validation_outputs(exp) -> dict[str, Outputs]:
    """The one forward pass of each OOD validation set, computed once per experiment (kept on it)."""
    cached = getattr(exp, "_validation_outputs", None)
    if cached is None:
        cached = {name: run_inference(exp.model, split.x, split.y, exp.device)
                  for name, split in validation_sets(exp).items()}
        exp._validation_outputs = cached
    return cached


def candidates(name: str) -> dict[str, list]:
    """Each tuned parameter's values to try: its sweep list (or its choices) with the default first. The tuned
    parameters are all of them, or only Detector.tune_params for a detector that trains a network of its own."""
    cls = REGISTRY[name]
    names = cls.tune_params if cls.trains_network else tuple(cls.params)
    out = {}
    for pname in names:
        p = cls.params[pname]
        values = list(p.choices) if p.kind == "choice" else list(p.sweep)
        out[pname] = [p.default, *[v for v in values if v != p.default]]
    return out


def is_tunable(name: str) -> bool:
    """Whether `tune` tunes this detector: it has parameters and scores the cached outputs alone, never running the
    network again; one that trains a network of its own is tuned only when it names parameters to tune (tune_params)."""
    cls = REGISTRY[name]
    if cls.runs_network:
        return False
    return bool(cls.tune_params) if cls.trains_network else bool(cls.params)


@dataclass
class Tuned:
    """The outcome of tuning one detector: the chosen parameters and every value tried."""

    detector: str
    params: dict
    val_auroc: Optional[float]  # mean validation AUROC at the chosen parameters (None: nothing to validate on)
    default_val_auroc: Optional[float]  # the same at the default parameters
    tried: list[dict] = field(default_factory=list)  # {param, value, val_auroc} in the order tried
    sets: list[str] = field(default_factory=list)  # the validation sets used

    def changed(self) -> dict:
        """The parameters whose chosen value differs from the default."""
        d = default_params(self.detector)
        return {k: v for k, v in self.params.items() if d.get(k) != v}


def validation_auroc(exp, name: str, params: Mapping, val_outputs: Mapping[str, Outputs]) -> float:
    """Mean AUROC of ID validation (negatives) against each validation OOD set (positives), the detector fitted on
    ID training data as always."""
    det = exp.fit_detector(name, dict(params))
    s_id = det.score(exp.outputs["val"])
    return float(np.mean([metrics.auroc(s_id, det.score(o)) for o in val_outputs.values()]))


def tune(exp, name: str, progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> Tuned:
    """Choose `name`'s parameters on the experiment's OOD validation sets (see the module's docstring)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown detector {name!r}")
    best = default_params(name)
    val = validation_outputs(exp)
    if not is_tunable(name) or not val:
        return Tuned(name, best, None, None, sets=list(val))
    grid = candidates(name)
    total, done = sum(len(v) for v in grid.values()), 0
    tried: list[dict] = []
    best_score = default_score = None
    together = shares_search(name)
    with linalg.sharing():  # what the values compute alike (ViM's covariance, KNN's bank) is computed once
        for pname, values in grid.items():
            if together:  # a neighbour search: every value of this parameter in one search pass per split
                check_cancelled(cancel)
                if progress:
                    progress(done / total, f"{REGISTRY[name].title}: {pname} = {', '.join(map(str, values))}")
                results = _validation_aurocs(exp, name, [{**best, pname: v} for v in values], val, cancel)
            else:
                results = []
                for v in values:
                    check_cancelled(cancel)
                    if progress:
                        progress((done + len(results)) / total, f"{REGISTRY[name].title}: {pname} = {v}")
                    try:
                        results.append(validation_auroc(exp, name, {**best, pname: v}, val))
                    except Exception as e:  # a value the detector refuses on this data: skipped, said in `tried`
                        results.append(e)
            scores = []
            for v, r in zip(values, results):
                if isinstance(r, Exception):
                    tried.append({"param": pname, "value": v, "val_auroc": None, "error": str(r)})
                    r = -np.inf
                else:
                    tried.append({"param": pname, "value": v, "val_auroc": r})
                if default_score is None and v == best[pname]:
                    default_score = r
                scores.append(r)
            done += len(values)
            i = int(np.argmax(scores))  # the first of equal scores: the default comes first
            if np.isfinite(scores[i]):
                best[pname], best_score = values[i], scores[i]
    return Tuned(name, best, best_score, default_score, tried, list(val))


def _validation_aurocs(exp, name: str, param_sets: list[dict], val_outputs: Mapping[str, Outputs],
                       cancel=None) -> list:
    """validation_auroc of each parameter set (or the exception it raised), all of them scored together
    (pipeline.score_values: one search pass per split for a neighbour search, the same numbers as each alone)."""
    from .pipeline import score_values  # at call time: pipeline imports this module

    results = score_values(exp, name, param_sets, [exp.outputs["val"], *val_outputs.values()], cancel=cancel)
    out = []
    for r in results:
        try:
            out.append(r if isinstance(r, Exception) else float(np.mean([metrics.auroc(r[0], s) for s in r[1:]])))
        except Exception as e:
            out.append(e)
    return out


def tune_all(exp, names: Iterable[str], progress: Optional[Callable[[float, str], None]] = None,
             cancel=None) -> dict[str, Tuned]:
    """tune() each detector of `names` that is tunable; the others are left out of the result."""
    names = [n for n in names if is_tunable(n)]
    out = {}
    for i, n in enumerate(names):
        sub = (lambda f, m, i=i: progress((i + f) / len(names), m)) if progress else None
        out[n] = tune(exp, n, sub, cancel)
    return out
