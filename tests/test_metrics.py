"""Known-answer tests of ood_core.metrics (OOD positive for AUROC / AUPR-Out, ID positive for AUPR-In)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ood_core import metrics as M

# --- AUROC ---------------------------------------------------------------------------------------

def test_auroc_hand_computed():
    # pairs (ood > id): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert M.auroc([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.75)


def test_auroc_three_vs_one():
    # ood 0.3 beats 0.1 and 0.2 but not 0.5 -> 2/3
    assert M.auroc([0.1, 0.2, 0.5], [0.3]) == pytest.approx(2 / 3)


def test_auroc_counts_ties_as_half():
    assert M.auroc([0.5], [0.5]) == pytest.approx(0.5)
    # id=[1,2], ood=[2,3]: (2>1)=1, (2=2)=0.5, (3>1)=1, (3>2)=1 -> 3.5/4
    assert M.auroc([1, 2], [2, 3]) == pytest.approx(0.875)


def test_identical_distributions_give_chance():
    s = [0.1, 0.2, 0.3, 0.7]
    assert M.auroc(s, s) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    assert M.auroc(a, b) == pytest.approx(0.5, abs=0.02)


def test_perfect_separation():
    ids, ood = [0.0, 1.0, 2.0], [5.0, 6.0]
    assert M.auroc(ids, ood) == 1.0
    assert M.aupr_in(ids, ood) == 1.0
    assert M.aupr_out(ids, ood) == 1.0
    assert M.fpr95(ids, ood) == 0.0
    assert M.detection_error(ids, ood) == 0.0


def test_reversed_scores():
    ids, ood = [2.0, 3.0], [0.0, 1.0]
    assert M.auroc(ids, ood) == 0.0
    # every ID kept means every OOD accepted too
    assert M.fpr95(ids, ood) == 1.0
    # the best is to decide at random: accept all (FPR 1) or none (TPR 0) -> 1/2
    assert M.detection_error(ids, ood) == pytest.approx(0.5)


def test_auroc_is_invariant_to_monotone_transform():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(1.0, size=40)
    assert M.auroc(np.exp(a), np.exp(b)) == pytest.approx(M.auroc(a, b))


# --- AUPR ----------------------------------------------------------------------------------------

def test_aupr_hand_computed_symmetric_case():
    # OOD positive, by score descending: 0.8(O) P=1, 0.4(I), 0.35(O) P=2/3 -> AP = (1 + 2/3) / 2
    assert M.aupr_out([0.1, 0.4], [0.35, 0.8]) == pytest.approx(5 / 6)
    # ID positive, by score ascending: 0.1(I) P=1, 0.35(O), 0.4(I) P=2/3, 0.8(O) -> (1 + 2/3) / 2
    assert M.aupr_in([0.1, 0.4], [0.35, 0.8]) == pytest.approx(5 / 6)


def test_aupr_in_uses_id_as_positive():
    idv, ood = [0.1, 0.2, 0.5], [0.3]
    # OOD positive, descending: 0.5(I), 0.3(O) -> precision 1/2 at the only OOD -> AP = 1/2
    assert M.aupr_out(idv, ood) == pytest.approx(0.5)
    # ID positive, ascending: 0.1(I) 1, 0.2(I) 1, 0.3(O), 0.5(I) 3/4 -> AP = (1 + 1 + 3/4) / 3 = 11/12
    assert M.aupr_in(idv, ood) == pytest.approx(11 / 12)
    # swapping the roles (and negating the scores) turns AUPR-In into AUPR-Out and back
    assert M.aupr_out(-np.asarray(ood), -np.asarray(idv)) == pytest.approx(11 / 12)
    assert M.aupr_in(-np.asarray(ood), -np.asarray(idv)) == pytest.approx(0.5)


def test_aupr_five_samples():
    idv, ood = [0.1, 0.2, 0.5], [0.3, 0.9]
    assert M.aupr_out(idv, ood) == pytest.approx(5 / 6)   # 0.9 P=1, 0.3 P=2/3
    assert M.aupr_in(idv, ood) == pytest.approx(11 / 12)  # 0.1, 0.2 P=1, 0.5 P=3/4
    assert M.auroc(idv, ood) == pytest.approx(5 / 6)


def test_aupr_baseline_is_prevalence_for_uninformative_scores():
    # constant scores: precision = prevalence at the single threshold
    assert M.aupr_out([1.0] * 3, [1.0]) == pytest.approx(0.25)
    assert M.aupr_in([1.0] * 3, [1.0]) == pytest.approx(0.75)


# --- FPR@95TPR -----------------------------------------------------------------------------------

def test_fpr95_exactly_k_ood_below_threshold():
    idv = np.arange(100, dtype=float)  # keeping 95% of ID means accepting scores <= 94
    k_low = [10.5, 50.5, 94.0]  # 94.0 ties the threshold: accepted as ID
    high = list(np.arange(97) + 100.0)
    assert M.fpr95(idv, k_low + high) == pytest.approx(3 / 100)
    # fewer OOD samples: 6 of 40 at or below 94
    ood = [0, 20, 30, 40, 93.9, 94] + list(np.linspace(94.5, 200, 34))
    assert M.fpr95(idv, ood) == pytest.approx(6 / 40)
    # just above the threshold is rejected
    assert M.fpr95(idv, [94.01] * 5) == 0.0


def test_fpr95_needs_at_least_95_percent_of_id():
    # with 10 ID samples 95% means all 10: threshold = 9
    idv = np.arange(10, dtype=float)
    assert M.fpr95(idv, [8.5, 9.5, 20.0]) == pytest.approx(1 / 3)
    assert M.fpr_at_tpr(idv, [8.5, 9.5, 20.0], tpr=0.9) == 0.0                    # keeps 0..8
    assert M.fpr_at_tpr(idv, [7.5, 9.5, 20.0], tpr=0.9) == pytest.approx(1 / 3)   # 7.5 <= 8 accepted
    assert M.fpr_at_tpr(idv, [7.5, 9.5, 20.0], tpr=0.8) == 0.0                    # keeps 0..7


def test_fpr95_agrees_with_confusion_at_threshold():
    rng = np.random.default_rng(3)
    idv = rng.normal(size=200)
    ood = rng.normal(1.5, size=150)
    t = M.threshold_at_tpr(idv, 0.95)
    c = M.confusion_at(idv, ood, t)
    assert c.id_accepted == 190
    assert M.fpr95(idv, ood) == pytest.approx(c.fpr_ood)
    assert M.fpr95(idv, ood) == pytest.approx(np.mean(ood <= t))


# --- detection error, accuracy -------------------------------------------------------------------

def test_detection_error_hand_computed():
    # ID positive, accept s <= t: t=0.1 -> TPR 1/2, FPR 0 -> 1/4; t=0.4 -> TPR 1, FPR 1/2 -> 1/4; others 1/2
    assert M.detection_error([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.25)
    # id=[0,1,2,3], ood=[2.5, 10]: accept <= 2 -> TPR 3/4, FPR 0 -> 1/8; <= 3 -> TPR 1, FPR 1/2 -> 1/4
    assert M.detection_error([0, 1, 2, 3], [2.5, 10]) == pytest.approx(0.125)


def test_accuracy():
    logits = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert M.accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert M.accuracy(logits, np.array([1, 0, 1])) == 1.0
    with pytest.raises(ValueError):
        M.accuracy(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_all_metrics_matches_individual_functions():
    idv, ood = [0.1, 0.2, 0.5], [0.3, 0.9]
    d = M.all_metrics(idv, ood).as_dict()
    assert d == pytest.approx({"auroc": 5 / 6, "aupr_in": 11 / 12, "aupr_out": 5 / 6,
                               "fpr95": M.fpr95(idv, ood), "detection_error": M.detection_error(idv, ood)})
    # every metric has a definition to show in the UI
    assert set(d) <= set(M.DEFINITIONS)


# --- confusion counts and thresholds -------------------------------------------------------------

def test_confusion_at_counts():
    c = M.confusion_at([0.1, 0.4, 0.6], [0.35, 0.8], 0.4)
    assert (c.id_accepted, c.id_rejected, c.ood_accepted, c.ood_rejected) == (2, 1, 1, 1)
    assert c.threshold == 0.4
    assert c.tpr_id == pytest.approx(2 / 3)
    assert c.fpr_ood == pytest.approx(0.5)
    c = M.confusion_at([0.1, 0.4, 0.6], [0.35, 0.8], -1.0)
    assert (c.id_accepted, c.id_rejected, c.ood_accepted, c.ood_rejected) == (0, 3, 0, 2)


def test_threshold_at_tpr():
    assert M.threshold_at_tpr(np.arange(100), 0.95) == 94.0
    assert M.threshold_at_tpr(np.arange(1, 11), 0.95) == 10.0   # ceil(9.5) = 10 of 10
    assert M.threshold_at_tpr(np.arange(1, 11), 0.5) == 5.0
    assert M.threshold_at_tpr([5.0, 1.0, 3.0, 2.0, 4.0], 0.6) == 3.0  # order of input does not matter
    assert M.threshold_at_tpr([7.0], 0.95) == 7.0
    rng = np.random.default_rng(0)
    a = rng.normal(size=333)
    for tpr in (0.1, 0.5, 0.9, 0.95, 0.99):
        t = M.threshold_at_tpr(a, tpr)
        assert np.mean(a <= t) >= tpr
        assert np.mean(a < t) < tpr  # the smallest such threshold


# --- input validation ----------------------------------------------------------------------------

ALL_PAIR_FUNCTIONS = [M.auroc, M.aupr_in, M.aupr_out, M.fpr95, M.detection_error, M.all_metrics,
                      M.roc_points, M.pr_points, lambda a, b: M.confusion_at(a, b, 0.5)]


@pytest.mark.parametrize("fn", ALL_PAIR_FUNCTIONS)
def test_empty_inputs_raise_value_error(fn):
    with pytest.raises(ValueError, match="at least one"):
        fn([], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        fn([0.1, 0.2], [])


@pytest.mark.parametrize("fn", ALL_PAIR_FUNCTIONS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise_value_error(fn, bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn([0.1, bad], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn([0.1, 0.2], [bad, 0.3])


def test_threshold_at_tpr_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        M.threshold_at_tpr([], 0.95)
    # a NaN ID score must not silently become the threshold
    with pytest.raises(ValueError):
        M.threshold_at_tpr([0.0, 1.0, math.nan], 0.95)


def test_pr_points_positive_class():
    idv, ood = [0.1, 0.2, 0.5], [0.3]
    r, p = M.pr_points(idv, ood, positive="ood")
    assert np.all((r >= 0) & (r <= 1)) and np.all((p >= 0) & (p <= 1))
    # AP = sum (R_n - R_{n-1}) P_n over the curve, which sklearn returns with decreasing recall
    assert -np.sum(np.diff(r) * p[:-1]) == pytest.approx(M.aupr_out(idv, ood))
    r, p = M.pr_points(idv, ood, positive="id")
    assert -np.sum(np.diff(r) * p[:-1]) == pytest.approx(M.aupr_in(idv, ood))
    with pytest.raises(ValueError):
        M.pr_points(idv, ood, positive="both")


def test_roc_points_are_ood_positive():
    fpr, tpr, _ = M.roc_points([0.1, 0.4], [0.35, 0.8])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
