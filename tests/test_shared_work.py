"""Work shared between detectors: one pass of the query-bank product for several exact searches
(neighbours.shared_search), the detectors that use it together (detectors.score_together: KNN and NNGuide),
evaluate's grouping of them, and the statistics computed once within linalg.sharing() (the tied covariance, its
whitening and the whitened queries of Mahalanobis and RMD, the residual space of ViM and Residual). Sharing is a
speed change only: every number must be the one the detector gives alone."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import linalg, pipeline
from ood_core import neighbours as nb
from ood_core.detectors import FitContext, create, score_together
from ood_core.inference import Outputs


@pytest.fixture(scope="module")
def bank_queries():
    rng = np.random.default_rng(5)
    bank = nb.l2_normalise(rng.normal(size=(900, 20)) + 1.0)
    queries = nb.l2_normalise(rng.normal(size=(150, 20)) + 1.0)
    return bank, queries


@pytest.mark.parametrize("chunk", [7, 4096])
def test_shared_search_equals_each_search_alone(bank_queries, chunk):
    bank, queries = bank_queries
    scale = np.random.default_rng(1).uniform(0.5, 3.0, len(bank))
    scaled = (bank * scale[:, None]).astype(np.float32)
    kth, top, top_scaled = nb.shared_search(queries, bank, [
        nb.KthDistance(12, bank), nb.TopInnerProducts(5, bank), nb.TopInnerProducts(9, scaled, scale=scale)], chunk)
    np.testing.assert_array_equal(kth, nb.kth_neighbour_distance(queries, bank, 12, chunk))
    np.testing.assert_array_equal(np.sort(top, 1), np.sort(nb.top_k_inner_products(queries, bank, 5, chunk), 1))
    np.testing.assert_allclose(np.sort(top_scaled, 1), np.sort(nb.top_k_inner_products(queries, scaled, 9), 1),
                               rtol=1e-12)


def test_shared_search_matches_brute_force(bank_queries):
    """The known answer, float64 brute force: the 12th distance, and the 9 largest confidence-weighted products."""
    bank, queries = bank_queries
    q64, b64 = queries.astype(np.float64), bank.astype(np.float64)
    scale = np.linspace(0.5, 2.0, len(bank))
    scaled = (bank * scale[:, None]).astype(np.float32)
    d = np.sqrt(((q64[:, None, :] - b64[None]) ** 2).sum(-1))
    ip = q64 @ scaled.astype(np.float64).T
    kth, top = nb.shared_search(queries, bank, [nb.KthDistance(12, bank), nb.TopInnerProducts(9, scaled, scale)], 13)
    np.testing.assert_allclose(kth, np.sort(d, 1)[:, 11], rtol=1e-12)
    np.testing.assert_allclose(np.sort(top, 1), np.sort(ip, 1)[:, -9:], rtol=1e-12)


def test_shared_search_of_no_queries_and_k_past_the_bank(bank_queries):
    bank, queries = bank_queries
    kth, top = nb.shared_search(queries[:0], bank, [nb.KthDistance(3, bank), nb.TopInnerProducts(4, bank)])
    assert kth.shape == (0,) and top.shape == (0, 4)
    (top,) = nb.shared_search(queries[:3], bank[:6], [nb.TopInnerProducts(50, bank[:6])])
    assert top.shape == (3, 6)  # k is capped at the bank's size, as top_k_inner_products does


def _outputs(rng, n, centre, k=4):
    feats = np.abs(rng.normal(centre, 1.0, size=(n, 16))).astype(np.float32)
    logits = rng.normal(0, 2, size=(n, k)).astype(np.float32)
    return Outputs(logits, feats, rng.integers(0, k, n))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_score_together_gives_each_detector_its_own_scores(fraction):
    rng = np.random.default_rng(0)
    train, test = _outputs(rng, 400, 2.0), _outputs(rng, 120, 1.0)
    ctx = FitContext(train=train, num_classes=4, seed=3)
    dets = [create("knn", k=7).fit(ctx), create("msp").fit(ctx), create("nnguide", k=5, bank_fraction=fraction).fit(ctx),
            create("knn", k=1).fit(ctx)]
    together = score_together(dets, test)
    for det, got in zip(dets, together):
        np.testing.assert_array_equal(got, det.score(test))
    # the whole train set as NNGuide's bank can share KNN's pass; a subset of it cannot
    assert (dets[2].neighbour_plan() is not None) == (fraction == 1.0)


def test_score_together_needs_fitted_detectors():
    with pytest.raises(Exception, match="not fitted"):
        score_together([create("knn")], _outputs(np.random.default_rng(0), 5, 1.0))


def test_work_units_put_the_sharing_detectors_together():
    assert pipeline._work_units(["msp", "knn", "energy", "nnguide"]) == [["msp"], ["knn", "nnguide"], ["energy"]]
    assert pipeline._work_units(["knn", "msp"]) == [["knn"], ["msp"]]


def test_evaluate_scores_shared_detectors_as_alone_and_keeps_the_order(default_experiment, monkeypatch):
    exp = default_experiment
    names = ["nnguide", "msp", "knn"]
    rows, scores = pipeline.evaluate(exp, names)
    assert [r["detector"] for r in rows][::len(exp.ood_names)] == names
    assert all(r["error"] is None for r in rows)
    for name in ("knn", "nnguide"):
        alone = exp.score(exp.fit_detector(name))
        for split, v in alone.items():
            np.testing.assert_array_equal(scores[name][split], v)

    # a failure of the shared pass is not fatal: each detector is then scored alone, with the same numbers
    def broken(dets, out):
        raise MemoryError("no room for the shared pass")

    monkeypatch.setattr(pipeline, "score_together", broken)
    rows2, scores2 = pipeline.evaluate(exp, names)
    assert all(r["error"] is None for r in rows2)
    for name in names:
        for split, v in scores[name].items():
            np.testing.assert_array_equal(scores2[name][split], v)


class _Head:
    def __init__(self, w, b):
        self.head_weight, self.head_bias = w, b


def _gaussian_ctx():
    rng = np.random.default_rng(7)
    labels = np.arange(600) % 3
    feats = (rng.normal(size=(600, 12)) + 2.0 * labels[:, None]).astype(np.float32)
    train = Outputs(rng.normal(size=(600, 3)).astype(np.float32), feats, labels)
    head = _Head(rng.normal(size=(3, 12)), rng.normal(size=3))
    test = Outputs(rng.normal(size=(50, 3)).astype(np.float32), (rng.normal(size=(50, 12)) + 1.0).astype(np.float32),
                   np.full(50, -1))
    return FitContext(train=train, model=head, num_classes=3), test


NAMES = ("mahalanobis", "rmd", "vim", "residual")


def test_sharing_computes_the_tied_gaussian_once_with_the_same_scores():
    ctx, test = _gaussian_ctx()
    alone = {n: create(n).fit(ctx).score(test) for n in NAMES}
    with linalg.sharing():
        dets = {n: create(n).fit(ctx) for n in NAMES}
        assert dets["mahalanobis"].gaussian_ is dets["rmd"].gaussian_  # one Cholesky for both
        assert dets["vim"].basis_ is dets["residual"].basis_  # one eigendecomposition for both
        for n in NAMES:
            np.testing.assert_array_equal(dets[n].score(test), alone[n])
    # outside the context nothing is kept
    assert create("mahalanobis").fit(ctx).gaussian_ is not create("mahalanobis").fit(ctx).gaussian_


def test_shared_values_are_not_changed_by_the_callers():
    """tied_covariance hands out copies (callers add their ridge in place): a second caller sees the same matrix."""
    from ood_core.detectors.features import tied_covariance

    ctx, _ = _gaussian_ctx()
    with linalg.sharing():
        first = tied_covariance(ctx.train.features, ctx.train.labels)[2]
        want = first.copy()
        first += 1.0
        np.testing.assert_array_equal(tied_covariance(ctx.train.features, ctx.train.labels)[2], want)


def test_evaluate_shares_statistics_and_gives_the_scores_of_each_alone(default_experiment):
    exp = default_experiment
    _, scores = pipeline.evaluate(exp, list(NAMES))
    for n in NAMES:
        for split, v in exp.score(exp.fit_detector(n)).items():
            np.testing.assert_array_equal(scores[n][split], v)


# --- sweeps (the Sensitivity page): the values of one detector share work too ------------------------------------

def _alone_rows(exp, name, param, values, fixed=None):
    from ood_core import metrics

    oods = list(exp.ood_names)
    rows = []
    for v in values:
        sc = exp.score(exp.fit_detector(name, {**(fixed or {}), param: v}))
        rows += [{"value": v, "ood_set": o, "auroc": metrics.auroc(sc["test"], sc[o]),
                  "fpr95": metrics.fpr95(sc["test"], sc[o]), "error": None} for o in oods]
    return rows


@pytest.mark.parametrize("name, param, values", [("knn", "k", [1, 5, 50]), ("nnguide", "k", [1, 5, 20]),
                                                 ("nnguide", "bank_fraction", [0.5, 1.0]),
                                                 ("vim", "dim", [8, 16, 32]), ("mahalanobis", None, None)])
def test_a_sweep_gives_the_numbers_of_each_value_alone(default_experiment, name, param, values):
    from ood_core import compare

    if param is None:  # a detector without parameters cannot be swept: a clear error
        with pytest.raises(ValueError, match="no parameter"):
            compare.sweep(default_experiment, name, "k")
        return
    progress = []
    rows = compare.sweep(default_experiment, name, param, values, on_progress=lambda f, m: progress.append(f))
    assert rows == _alone_rows(default_experiment, name, param, values)
    assert progress == sorted(progress) and progress[-1] == 1.0


@pytest.mark.parametrize("name", ["knn", "nnguide"])
def test_a_k_sweep_shares_one_bank_and_one_search_pass(default_experiment, monkeypatch, name):
    """Every k of the sweep is fitted on one bank, and each split is searched once for all of them."""
    from ood_core import compare
    from ood_core.detectors import base

    calls = []
    real = nb.shared_search

    def counting(queries, bank, searches, *a, **k):
        calls.append(len(searches))
        return real(queries, bank, searches, *a, **k)

    monkeypatch.setattr(nb, "shared_search", counting)
    banks = []
    real_fit = base.Detector.fit

    def spy_fit(self, ctx):
        out = real_fit(self, ctx)
        banks.append(getattr(self, "bank_", None))
        return out

    monkeypatch.setattr(base.Detector, "fit", spy_fit)
    compare.sweep(default_experiment, name, "k", [1, 5, 50])
    assert len(banks) == 3 and banks[0] is banks[1] is banks[2]
    assert calls == [3] * (1 + len(default_experiment.ood_names))  # one pass per split, three searches in it


def test_a_vim_sweep_computes_the_covariance_once(default_experiment, monkeypatch):
    from ood_core import compare

    calls = []
    real = linalg.scatter
    monkeypatch.setattr(linalg, "scatter", lambda *a, **k: calls.append(1) or real(*a, **k))
    compare.sweep(default_experiment, "vim", "dim", [8, 16, 32])
    assert len(calls) == 1


def test_a_sweep_value_that_fails_stays_an_error_of_that_value(default_experiment, monkeypatch):
    """If the joint search pass fails, each value is scored alone: one broken value does not take the others."""
    from ood_core import compare
    from ood_core.neighbours import KthDistance

    real = KthDistance.__init__

    def picky(self, k, bank, *a, **kw):
        if k == 5:
            raise RuntimeError("k = 5 is broken here")
        real(self, k, bank, *a, **kw)

    monkeypatch.setattr(KthDistance, "__init__", picky)
    rows = compare.sweep(default_experiment, "knn", "k", [1, 5, 50])
    bad = [r for r in rows if r["value"] == 5]
    assert bad and all(r["auroc"] is None and "k = 5 is broken" in r["error"] for r in bad)
    good = [r for r in rows if r["value"] != 5]
    assert good == [r for r in _alone_rows(default_experiment, "knn", "k", [1, 50])]


def test_nnguide_keeps_no_normalised_copy_when_alone():
    """Outside a sharing() context NNGuide holds its weighted bank only: the normalised rows it could share are
    held weakly, so they are gone after its fit (no second copy of the train features for a detector alone)."""
    rng = np.random.default_rng(3)
    train = _outputs(rng, 300, 1.0)
    det = create("nnguide", k=5).fit(FitContext(train=train, num_classes=4))
    assert det.base_() is None and det.neighbour_plan().base is None
    with linalg.sharing():
        shared = create("nnguide", k=5).fit(FitContext(train=train, num_classes=4))
        assert shared.neighbour_plan().base is not None



def test_the_estimate_of_a_knn_sweep_counts_one_shared_pass(default_experiment):
    """estimates.sweep: values of a neighbour search share a pass (the dearest value plus 15% per other one);
    the values of other detectors add up."""
    from ood_core import estimates

    exp, sets = default_experiment, default_experiment.ood_names
    one = [estimates.detector(exp, "knn", {"k": k}, ["test", *sets]).seconds for k in (1, 5, 50)]
    got = estimates.sweep(exp, "knn", "k", [1, 5, 50], sets).seconds
    assert got == pytest.approx(max(one) * (1 + 2 * estimates.SHARED_SWEEP_EXTRA))
    each = [estimates.detector(exp, "vim", {"dim": d}, ["test", *sets]).seconds for d in (8, 16)]
    assert estimates.sweep(exp, "vim", "dim", [8, 16], sets).seconds == pytest.approx(sum(each))


def test_the_mean_train_feature_is_computed_once_for_fdbd_nci_and_dice():
    ctx, test = _gaussian_ctx()
    names = ("fdbd", "nci", "dice")
    alone = {n: create(n).fit(ctx).score(test) for n in names}
    with linalg.sharing():
        dets = {n: create(n).fit(ctx) for n in names}
        assert dets["fdbd"].mean_ is dets["nci"].mean_ and not dets["fdbd"].mean_.flags.writeable
        for n in names:
            np.testing.assert_array_equal(dets[n].score(test), alone[n])
    np.testing.assert_allclose(linalg.feature_mean(ctx.train.features), ctx.train.features.astype(np.float64).mean(0),
                               rtol=1e-12)
