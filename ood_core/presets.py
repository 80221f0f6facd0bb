"""Teaching presets: named one-click scenarios, each showing one lesson of the survey on the offline digits data.

A preset is an experiment (a Spec), the page that shows the lesson and that page's choices (its URL query
parameters), a two-sentence lesson, and `check(experiment)`, which recomputes the lesson's inequality from the
experiment it is given (never from stored numbers) and says it in one sentence with the numbers. The seeds and
settings were chosen so that each lesson holds on the shipped default model (seed 0, 30 epochs), and the lessons
were kept only where they held on every one of seeds 0-4 (tests/test_presets.py checks seed 0, the one shipped).
No Streamlit in here: the UI applies a preset by writing `query()` into the URL and switching to `page`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np

from . import activation_stats, metrics
from .spec import Spec, TrainConfig

Prepare = Callable[[Spec], object]  # spec -> Experiment (trained or loaded); the check's companion experiments


class Lesson(NamedTuple):
    """What check() found: whether the lesson's inequality holds on this experiment, and the numbers, in words."""

    holds: bool
    message: str


@dataclass(frozen=True)
class Preset:
    """One scenario: the experiment, the page (its URL path) and the page's choices that show one lesson."""

    name: str  # URL value: ?preset=<name>
    title: str
    lesson: str  # two sentences: what to look at and why it happens
    spec: Spec
    page: str  # the page's URL path: "scores", "compare", "activations", ...
    choices: Mapping[str, str] = field(default_factory=dict)  # the page's query parameters
    companions: tuple[Spec, ...] = ()  # other experiments check() compares with (prepared by the caller)
    _check: Optional[Callable] = field(default=None, repr=False, compare=False)

    def query(self) -> dict[str, str]:
        """The URL query parameters of the view: the experiment, the page's choices and the preset's name."""
        return {**self.spec.to_query(), **dict(self.choices), "preset": self.name}

    def check(self, experiment, prepare: Optional[Prepare] = None) -> Lesson:
        """Recompute the lesson's inequality from `experiment` (of `self.spec`); `prepare(spec)` gives the
        companion experiments (default: pipeline.prepare with the experiment's cache folder and device)."""
        if experiment.spec != self.spec:
            raise ValueError(f"preset {self.name!r} is about the experiment {self.spec.key()}, "
                             f"got {experiment.spec.key()}")
        if prepare is None:
            from . import pipeline

            def prepare(spec):
                return pipeline.prepare(spec, cache_dir=experiment.cache_dir, device=experiment.device)

        return self._check(experiment, prepare)


# --- the lessons' computations (each from the experiment it is given) ------------------------------------

def _auroc(exp, detector: str, ood_set: str, params: Optional[Mapping] = None) -> float:
    scores = exp.score(exp.fit_detector(detector, params), ["test", ood_set])
    return metrics.auroc(scores["test"], scores[ood_set])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _check_outlier_exposure(exp, prepare: Prepare) -> Lesson:
    """MSP's AUROC on Gaussian noise: outlier exposure (this experiment) > cross-entropy (its companion)."""
    ce = prepare(dataclasses.replace(exp.spec, training=dataclasses.replace(exp.spec.training, regime="ce")))
    oe_auc, ce_auc = _auroc(exp, "msp", "gaussian"), _auroc(ce, "msp", "gaussian")
    below = " (below chance: it finds noise more familiar than digits)" if ce_auc < 0.5 else ""
    return Lesson(oe_auc > ce_auc, f"MSP's AUROC on Gaussian noise is {_pct(ce_auc)} for the network trained with "
                                   f"cross-entropy{below} and {_pct(oe_auc)} with outlier exposure.")


def _check_near_far(exp, prepare: Prepare) -> Lesson:
    """Mahalanobis's AUROC: far OOD (Gaussian noise) > near OOD (mirrored digits)."""
    far, near = _auroc(exp, "mahalanobis", "gaussian"), _auroc(exp, "mahalanobis", "flipped")
    return Lesson(far > near, f"Mahalanobis's AUROC is {_pct(far)} on Gaussian noise (far OOD) but {_pct(near)} on "
                              f"mirrored digits (near OOD).")


def _check_react(exp, prepare: Prepare, ood_set: str = "rotated", percentile: float = 90.0) -> Lesson:
    """ReAct: clipping at c removes more activation from an OOD image than from an ID one, and raises the energy
    score's AUROC (activation_stats.react_at: the numbers the Activations page shows)."""
    view = activation_stats.activation_view_from_experiment(exp, [ood_set], seed=exp.spec.seed)
    shift = activation_stats.react_at(view, percentile)
    c = shift.threshold

    def clipped(split: str) -> float:  # the activation sum min(h, c) removes, per image
        return float(np.clip(exp.outputs[split].features - c, 0, None).sum(axis=1).mean())

    cut_id, cut_ood = clipped("test"), clipped(ood_set)
    before, after = shift.auroc_before[ood_set], shift.auroc_after[ood_set]
    return Lesson(cut_ood > cut_id and after > before,
                  f"Clipping at c = {c:.2f} (p = {percentile:g}) removes an activation sum of {cut_ood:.1f} per "
                  f"{ood_set} digit against {cut_id:.1f} per ID test digit, and raises the energy score's AUROC on "
                  f"{ood_set} digits from {_pct(before)} to {_pct(after)}.")


FEATURE_METHODS = ("mahalanobis", "vim", "knn")
OUTPUT_METHODS = ("msp", "max_logit", "energy")


def _check_features_beat_outputs(exp, prepare: Prepare) -> Lesson:
    """Mean AUROC over every OOD set: the worst of Mahalanobis, ViM, KNN > the best of MSP, max logit, energy."""
    mean = {}
    for name in FEATURE_METHODS + OUTPUT_METHODS:
        scores = exp.score(exp.fit_detector(name))
        mean[name] = float(np.mean([metrics.auroc(scores["test"], scores[s]) for s in exp.ood_names]))
    worst = min(FEATURE_METHODS, key=mean.get)
    best = max(OUTPUT_METHODS, key=mean.get)

    def listed(names):
        return ", ".join(f"{n} {_pct(mean[n])}" for n in names)

    return Lesson(mean[worst] > mean[best],
                  f"Mean AUROC over the {len(exp.ood_names)} OOD sets — feature space: {listed(FEATURE_METHODS)}; "
                  f"outputs: {listed(OUTPUT_METHODS)}. The weakest feature method ({worst}) beats the strongest "
                  f"output method ({best}).")


def _check_open_set(exp, prepare: Prepare) -> Lesson:
    """Open-set recognition: Mahalanobis's AUROC on the unknown digits < on noise and on rotated digits."""
    sets = ("unknown", "gaussian", "rotated")
    scores = exp.score(exp.fit_detector("mahalanobis"), ["test", *sets])
    auc = {s: metrics.auroc(scores["test"], scores[s]) for s in sets}
    missed = metrics.fpr95(scores["test"], scores["unknown"])
    return Lesson(auc["unknown"] < min(auc["gaussian"], auc["rotated"]),
                  f"Mahalanobis's AUROC is {_pct(auc['unknown'])} on the unknown digits, against "
                  f"{_pct(auc['gaussian'])} on Gaussian noise and {_pct(auc['rotated'])} on rotated digits; at the "
                  f"threshold that keeps 95% of the known digits it still accepts {missed:.0%} of the unknown ones.")


# --- the presets -----------------------------------------------------------------------------------------

_DEFAULT = Spec()
_OE = Spec(training=TrainConfig(regime="oe"))

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("outlier-exposure", "Softmax is over-confident on noise; outlier exposure fixes it",
           "A network trained with plain cross-entropy can give Gaussian noise a higher maximum softmax probability "
           "than real digits, so MSP misses the noise. Outlier exposure also trains it to spread its softmax on "
           "auxiliary outliers, and the same MSP then flags noise almost perfectly.",
           _OE, "scores", {"detector": "msp", "sets": "gaussian"},
           companions=(_DEFAULT,), _check=_check_outlier_exposure),
    Preset("near-far", "Near OOD is harder than far OOD",
           "Noise lies far from every digit in feature space, so a distance-based detector flags almost all of it. "
           "Mirrored digits are near OOD: many of them (0, 1, 8) still look like digits, and the same detector "
           "separates them much less well.",
           _DEFAULT, "scores", {"detector": "mahalanobis", "sets": "gaussian,flipped"}, _check=_check_near_far),
    Preset("react", "ReAct clips what OOD inputs inflate",
           "Rotated digits drive some penultimate units far above their usual ID level, and those spikes inflate the "
           "logits and the confidence. ReAct clips every unit at an ID percentile, which removes exactly that excess "
           "and separates ID from OOD better.",
           _DEFAULT, "activations", {"view": "react", "sets": "rotated", "react.p": "90"}, _check=_check_react),
    Preset("features-beat-outputs", "Feature-space methods beat output methods on this model",
           "Output methods (MSP, max logit, energy) only see the logits, where this small network is confident on "
           "almost anything. Distance methods in the penultimate feature space (Mahalanobis, ViM, KNN) see that OOD "
           "inputs land away from the ID clusters, and win on average over every OOD set.",
           _DEFAULT, "compare", {"metric": "auroc", "families": "output,distance"},
           _check=_check_features_beat_outputs),
    Preset("open-set", "Open-set: unknown digits look familiar",
           "Trained on 6 of the 10 digits, the network meets the other 4 at test time. Those unknown digits share "
           "strokes with the known ones and land near them in feature space, so they are much harder to reject than "
           "noise or rotated digits.",
           Spec(setting="osr"), "scores", {"detector": "mahalanobis", "sets": "unknown,gaussian,rotated"},
           _check=_check_open_set),
)}
