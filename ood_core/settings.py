"""What each of the survey's four settings offers: its models, its detectors, its metrics, in words."""
from __future__ import annotations

from typing import Optional

from .data.registry import OOD_SETS
from .detectors import REGISTRY
from .models.registry import MODELS, model_names, models_fitting
from .spec import SETTINGS

EXPLANATIONS = {
    "ood": ("The model is trained on every class of the dataset; at test time it meets inputs from other "
            "distributions (noise, transformed images) and must flag them, while still classifying ID inputs."),
    "osr": ("Only K of the N classes are known at training; the other classes appear at test time as unknowns. "
            "The model must classify the known classes and reject the unknown ones (closed-set accuracy, AUROC, OSCR)."),
    "nd": ("One class is normal and the model is trained on it alone; every other class is novel at test time. "
           "The one-vs-all protocol makes each class the normal one in turn and averages the AUROC."),
    "ad": ("As novelty detection, but the training set is contaminated with a small, unlabelled fraction of "
           "anomalies from the other classes; robust methods degrade gracefully as that fraction grows."),
}

# which classes are seen at training and at test (the survey's Fig. 1), for the small diagram
SEEN = {
    "ood": ("all N classes", "all N classes + other distributions"),
    "osr": ("K known classes", "K known + N−K unknown classes"),
    "nd": ("one normal class", "normal + all other classes"),
    "ad": ("one normal class + unlabelled anomalies", "normal + all other classes"),
}

METRICS = {
    "ood": ("id_accuracy", "auroc", "aupr_in", "aupr_out", "fpr95", "detection_error"),
    "osr": ("id_accuracy", "auroc", "fpr95", "oscr", "aupr_in", "aupr_out", "detection_error"),
    "nd": ("auroc", "aupr_in", "aupr_out", "fpr95"),
    "ad": ("auroc", "aupr_in", "aupr_out", "fpr95"),
}


def __getattr__(name: str) -> tuple[str, ...]:
    """CLASSIFIER_MODELS and ONE_CLASS_MODELS: the registered models of each kind, read from the model registry
    whenever asked (so a model registered later is in them too)."""
    kinds = {"CLASSIFIER_MODELS": "classifier", "ONE_CLASS_MODELS": "one_class"}
    if name in kinds:
        return model_names(kind=kinds[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def models_for(setting: str, channels: Optional[int] = None, side: Optional[int] = None) -> tuple[str, ...]:
    """The registered models that serve `setting`; with `channels` and `side`, only those whose input contract
    accepts such images (models.registry)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}")
    if channels is None or side is None:
        return model_names(setting=setting)
    return models_fitting(setting, channels, side)


def is_applicable(name: str, setting: str, model: str, num_classes: int, regime: str = "ce") -> bool:
    """Whether detector `name` can score a `model` trained in `regime` in `setting` with `num_classes` ID classes (a
    model not in the registry is taken for a classifier)."""
    cls = REGISTRY[name]
    needs = set(cls.needs)
    entry = MODELS.get(model)
    if cls.regimes and ((entry is not None and entry.kind == "one_class") or regime not in cls.regimes):
        return False  # a method that scores what a training regime learned (RPL's reciprocal points)
    if entry is not None and entry.kind == "one_class":
        # one-class models give features (and maybe their own score): no logits, no classifier head
        if needs - {"features", "model_score"}:
            return False
        if "model_score" in needs and not entry.own_score:
            return False
    elif "model_score" in needs:
        return False
    return num_classes >= cls.min_classes


def detectors_for(setting: str, model: str, num_classes: int, net=None, regime: str = "ce") -> list[str]:
    """The detectors that apply to a `model` trained in `regime`; with `net` (the model itself), only those it can
    serve: a brought model without a linear head, say, has no features (models.foreign.detector_unavailable says
    why)."""
    names = [n for n in REGISTRY if is_applicable(n, setting, model, num_classes, regime)]
    if net is None:
        return names
    from .models.foreign import detector_unavailable

    return [n for n in names if detector_unavailable(n, net) is None]


NEAR_FAR_OOD = ("rotated", "gaussian")  # one near (transformed ID) and one far (noise) OOD set


def default_ood_sets(available: list[str], with_natural: tuple[str, ...] = ("rotated",), fallback: int = 2) -> list[str]:
    """The OOD sets a view starts with: the setting's natural set (OSR's unknown classes, ND's novel class, ...)
    followed by `with_natural` if there is one, else one near and one far set; of those, the available ones in
    that order, or the first `fallback` available sets when none is."""
    natural = [s for s in available if s not in OOD_SETS]
    default = natural[:1] + list(with_natural) if natural else list(NEAR_FAR_OOD)
    return [s for s in default if s in available] or list(available[:fallback])
