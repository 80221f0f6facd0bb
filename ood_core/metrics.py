"""Detection metrics, OOD as the positive class unless named otherwise; computed with sklearn.metrics.

Scores are unfamiliarity scores: higher = more OOD.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

DEFINITIONS = {
    "auroc": "Area under the ROC curve, OOD as the positive class: the probability that a random OOD sample "
             "scores higher than a random ID sample (0.5 = chance, 1 = perfect).",
    "aupr_in": "Area under the precision-recall curve with ID as the positive class (scores negated); "
               "average precision.",
    "aupr_out": "Area under the precision-recall curve with OOD as the positive class; average precision.",
    "fpr95": "FPR@95TPR: the fraction of OOD samples accepted as ID at the threshold that keeps 95% of ID "
             "samples (Liang et al. 2018). Lower is better.",
    "detection_error": "min over thresholds of ½(1 − TPR) + ½ FPR, with ID as positive: the best achievable "
                       "error when ID and OOD are equally likely. Lower is better.",
    "id_accuracy": "Top-1 accuracy of the classifier on the ID test split.",
}


def _check(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(id_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("scores contain NaN or infinite values")
    return a, b


def _labels_scores(id_scores, ood_scores):
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])  # OOD = 1
    return y, np.concatenate([a, b])


def auroc(id_scores, ood_scores) -> float:
    y, s = _labels_scores(id_scores, ood_scores)
    return float(roc_auc_score(y, s))


def aupr_out(id_scores, ood_scores) -> float:
    y, s = _labels_scores(id_scores, ood_scores)
    return float(average_precision_score(y, s))


def aupr_in(id_scores, ood_scores) -> float:
    y, s = _labels_scores(id_scores, ood_scores)
    return float(average_precision_score(1 - y, -s))


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Fraction of OOD accepted as ID at the first ROC point (ID positive) whose TPR reaches `tpr`."""
    y, s = _labels_scores(id_scores, ood_scores)
    fpr, tpr_curve, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    i = int(np.searchsorted(tpr_curve, tpr, side="left"))
    return float(fpr[min(i, len(fpr) - 1)])


def fpr95(id_scores, ood_scores) -> float:
    return fpr_at_tpr(id_scores, ood_scores, 0.95)


def detection_error(id_scores, ood_scores) -> float:
    y, s = _labels_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    return float(np.min(0.5 * (1 - tpr) + 0.5 * fpr))


def sample_std(values) -> Optional[float]:
    """The sample standard deviation (ddof=1, as papers report over seeds): sqrt(sum (v - mean)^2 / (n - 1));
    None for fewer than two values, where it is undefined."""
    v = np.asarray(list(values), dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 else None


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy needs at least one sample")
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


@dataclass
class Metrics:
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    detection_error: float

    def as_dict(self) -> dict:
        return asdict(self)


def all_metrics(id_scores, ood_scores) -> Metrics:
    return Metrics(auroc(id_scores, ood_scores), aupr_in(id_scores, ood_scores), aupr_out(id_scores, ood_scores),
                   fpr95(id_scores, ood_scores), detection_error(id_scores, ood_scores))


def roc_points(id_scores, ood_scores):
    """(fpr, tpr, thresholds) with OOD positive, for plotting."""
    y, s = _labels_scores(id_scores, ood_scores)
    return roc_curve(y, s)


def pr_points(id_scores, ood_scores, positive: str = "ood"):
    """(recall, precision) for the chosen positive class ("ood" or "id")."""
    y, s = _labels_scores(id_scores, ood_scores)
    if positive == "ood":
        p, r, _ = precision_recall_curve(y, s)
    elif positive == "id":
        p, r, _ = precision_recall_curve(1 - y, -s)
    else:
        raise ValueError("positive must be 'ood' or 'id'")
    return r, p


@dataclass
class Confusion:
    """Counts at a threshold t: a sample is flagged OOD when its score > t."""

    threshold: float
    id_accepted: int  # true negatives (ID kept)
    id_rejected: int  # false positives (ID flagged)
    ood_accepted: int  # false negatives (OOD missed)
    ood_rejected: int  # true positives (OOD caught)

    @property
    def tpr_id(self) -> float:
        return self.id_accepted / max(1, self.id_accepted + self.id_rejected)

    @property
    def fpr_ood(self) -> float:
        """Fraction of OOD accepted as ID at this threshold."""
        return self.ood_accepted / max(1, self.ood_accepted + self.ood_rejected)


def confusion_at(id_scores, ood_scores, threshold: float) -> Confusion:
    a, b = _check(id_scores, ood_scores)
    return Confusion(float(threshold), int((a <= threshold).sum()), int((a > threshold).sum()),
                     int((b <= threshold).sum()), int((b > threshold).sum()))


def threshold_at_tpr(id_scores, tpr: float = 0.95) -> float:
    """The threshold that keeps (at least) a fraction `tpr` of ID scores at or below it."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    a = np.sort(np.asarray(id_scores, dtype=np.float64).reshape(-1))
    if len(a) == 0:
        raise ValueError("need ID scores")
    if not np.all(np.isfinite(a)):
        raise ValueError("scores contain NaN or infinite values")
    return float(a[min(len(a) - 1, int(np.ceil(tpr * len(a))) - 1)])


def oscr_curve(id_scores, id_correct, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, CCR) of Dhamija et al. 2018 as the threshold sweeps up: accept as known when score <= t.

    CCR(t) = fraction of known test samples accepted AND correctly classified; FPR(t) = fraction of unknowns accepted.
    """
    a, b = _check(id_scores, ood_scores)
    correct = np.asarray(id_correct, dtype=bool).reshape(-1)
    if len(correct) != len(a):
        raise ValueError("id_correct must have one entry per ID score")
    thresholds = np.unique(np.concatenate([a, b]))
    b_sorted = np.sort(b)
    a_correct_sorted = np.sort(a[correct])
    ccr = np.searchsorted(a_correct_sorted, thresholds, side="right") / len(a)
    fpr = np.searchsorted(b_sorted, thresholds, side="right") / len(b)
    return np.r_[0.0, fpr], np.r_[0.0, ccr]


def oscr(id_scores, id_correct, ood_scores) -> float:
    """Area under the CCR-vs-FPR curve (Dhamija et al. 2018); its maximum equals closed-set accuracy."""
    fpr, ccr = oscr_curve(id_scores, id_correct, ood_scores)
    return float(np.trapezoid(ccr, fpr))


DEFINITIONS["oscr"] = ("Open-set classification rate (Dhamija et al. 2018): area under the curve of the correct "
                       "classification rate of known samples (accepted and correctly classified) against the "
                       "fraction of unknowns accepted; its maximum is the closed-set accuracy.")
