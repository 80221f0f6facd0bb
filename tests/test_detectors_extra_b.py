"""Known answers for the distance, density and classic detectors added in the second batch.

rmd, residual, she, nnguide, fdbd, nci (features.py); gmm, gram (density.py); ocsvm, iforest, lof (classic.py);
and the exact neighbour search behind KNN / NNGuide (numpy and faiss back ends).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp as sp_logsumexp
from scipy.special import softmax as sp_softmax
from scipy.stats import multivariate_normal
from sklearn.covariance import EmpiricalCovariance
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from torch import nn

from ood_core import metrics
from ood_core.detectors import REGISTRY, FitContext, NotFittedError, create
from ood_core import neighbours as F
from ood_core.detectors.density import gram_row_sums
from ood_core.inference import ModelAdapter, Outputs, run_inference

NEW = ("rmd", "residual", "she", "nnguide", "fdbd", "nci", "gmm", "gram", "ocsvm", "iforest", "lof")
D, K = 12, 3  # features: dims 0..8 hold three class blocks, 9..11 are nuisance dims the head ignores


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- two tiny real networks ------------------------------------------------------------------------

class FeatureNet(nn.Module):
    """features(x) = x: inputs are feature vectors, so Outputs hold hand-made features and logits = W h + b."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        super().__init__()
        self.body = nn.Sequential()
        self.head = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(w, dtype=torch.float32))
            self.head.bias.copy_(torch.tensor(b, dtype=torch.float32))

    def features(self, x):
        return x

    def forward(self, x):
        return self.head(self.features(x))


class TinyCNN(nn.Module):
    """conv(1->3)-ReLU-conv(3->4)-ReLU-GAP-fc(6)-head(3): the SmallCNN interface at toy size."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(),
                                  nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
        self.fc1 = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def feature_maps(self, x):
        return self.body(x)

    def features(self, x):
        return self.fc1(self.body(x).mean(dim=(2, 3)))  # no ReLU: keeps every toy prediction distinct

    def forward(self, x):
        return self.head(self.features(x))


def _head() -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((K, D))
    for c in range(K):
        w[c, 3 * c:3 * c + 3] = 1.0
    return w, np.array([0.1, -0.05, 0.02])


def _id_features(n, rng):
    y = np.arange(n) % K
    h = np.abs(rng.normal(0.0, 0.3, size=(n, D)))
    for c in range(K):
        h[y == c, 3 * c:3 * c + 3] += 4.0
    return h.astype(np.float32), y


def _ood_between(n, rng):
    """Between the classes (near the mean ID feature): no class claims it, its direction is ambiguous."""
    h = np.abs(rng.normal(0.0, 0.3, size=(n, D)))
    h[:, :9] += 4.0 / 3.0
    return h.astype(np.float32)


def _ood_off_subspace(n, rng):
    """Like ID, but far along the nuisance dims, which vary little in ID (outside the principal subspace)."""
    h, _ = _id_features(n, rng)
    h[:, 9:] += 3.0
    return h


def _ood_small(n, rng):
    """Weak features near the origin: little evidence for any class, small norm and low energy."""
    return np.abs(rng.normal(0.0, 0.3, size=(n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    w, b = _head()
    model = FeatureNet(w, b).eval()
    adapter = ModelAdapter(model, "cpu", batch_size=32)

    def out(h, y):
        return run_inference(model, h, y, "cpu", batch_size=32)

    h_tr, y_tr = _id_features(300, rng)
    h_va, y_va = _id_features(60, rng)
    h_te, y_te = _id_features(120, rng)
    ctx = FitContext(train=out(h_tr, y_tr), val=out(h_va, y_va), model=adapter, num_classes=K, seed=0)
    ood = {kind: out(f(120, rng), np.full(120, -1)) for kind, f in
           (("between", _ood_between), ("off_subspace", _ood_off_subspace), ("small", _ood_small))}
    return {"ctx": ctx, "test": out(h_te, y_te), "ood": ood, "w": w, "b": b}


@pytest.fixture(scope="module")
def cnn():
    """The toy CNN on 6x6 images: ID = smooth positive blobs of one of three shapes, OOD = strong noise."""
    rng = np.random.default_rng(1)
    model = TinyCNN().eval()
    adapter = ModelAdapter(model, "cpu", batch_size=16)
    yy, xx = np.mgrid[0:6, 0:6]
    shapes = np.stack([np.exp(-((yy - 1.5) ** 2 + (xx - 1.5) ** 2) / 3), np.exp(-((yy - 3.5) ** 2) / 2) + 0 * xx,
                       np.exp(-((xx - 3.5) ** 2) / 2) + 0 * yy])

    def images(n):
        y = np.arange(n) % 3
        x = shapes[y] * rng.uniform(0.8, 1.2, size=(n, 1, 1)) + rng.normal(0, 0.05, size=(n, 6, 6))
        return x[:, None].astype(np.float32), y

    def out(x, y):
        return run_inference(model, x, y, "cpu", batch_size=16)

    tr, va, te = images(90), images(30), images(60)
    ood_x = (3.0 * rng.uniform(0, 1, size=(60, 1, 6, 6))).astype(np.float32)
    ctx = FitContext(train=out(*tr), val=out(*va), model=adapter, num_classes=3, seed=0)
    return {"ctx": ctx, "test": out(*te), "ood": out(ood_x, np.full(60, -1)), "model": model}


def _concat(a: Outputs, b: Outputs) -> Outputs:
    return Outputs(np.concatenate([a.logits, b.logits]), np.concatenate([a.features, b.features]),
                   np.concatenate([a.labels, b.labels]), np.concatenate([a.inputs, b.inputs]))


def _hand(features, logits, labels=None) -> Outputs:
    logits = np.asarray(logits, dtype=np.float32)
    labels = logits.argmax(1) if labels is None else np.asarray(labels)
    return Outputs(logits, np.asarray(features, dtype=np.float32), labels)


# --- features.py: known answers --------------------------------------------------------------------

def test_rmd_matches_sklearn_empirical_covariance(toy):
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["between"])
    h, y = ctx.train.features.astype(np.float64), ctx.train.labels
    means = np.stack([h[y == c].mean(0) for c in range(K)])
    shared = EmpiricalCovariance(assume_centered=True).fit(h - means[y])
    x = q.features.astype(np.float64)
    md_c = np.stack([np.einsum("nd,de,ne->n", x - m, shared.precision_, x - m) for m in means], axis=1)
    md_0 = EmpiricalCovariance().fit(h).mahalanobis(x)  # one Gaussian on all ID train features
    ref = md_c.min(axis=1) - md_0
    s = create("rmd").fit(ctx).score(q)
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())


def test_residual_is_norm_outside_the_top_principal_directions(toy):
    ctx, q = toy["ctx"], toy["test"]
    w, b = toy["w"], toy["b"]
    h = ctx.train.features.astype(np.float64)
    u = np.linalg.lstsq(w, -b, rcond=None)[0]  # minimum-norm solution of W u = -b, i.e. -W^+ b
    _, _, vt = np.linalg.svd(h - u, full_matrices=True)  # right singular vectors = eigenvectors of (h-u)'(h-u)
    for dim in (2, 5, 9):
        c = q.features.astype(np.float64) - u
        ref = np.sqrt(np.maximum((c ** 2).sum(1) - ((c @ vt[:dim].T) ** 2).sum(1), 0))
        np.testing.assert_allclose(create("residual", dim=dim).fit(ctx).score(q), ref, rtol=1e-6, atol=1e-8)


def test_residual_shares_vims_subspace(toy):
    ctx, q = toy["ctx"], toy["ood"]["off_subspace"]
    vim, res = create("vim", dim=5).fit(ctx), create("residual", dim=5).fit(ctx)
    np.testing.assert_allclose(vim.score(q), vim.alpha_ * res.score(q) - sp_logsumexp(q.logits, axis=1), rtol=1e-6)


def test_she_hand_case():
    # class 0 patterns: (1,0) and (3,0) correct -> mean (2,0); (5,5) is labelled 1 but predicted 0: excluded
    h = [[1, 0], [3, 0], [0, 2], [5, 5]]
    z = [[2, 0], [2, 0], [0, 2], [2, 0]]
    det = create("she").fit(FitContext(train=_hand(h, z, [0, 0, 1, 1]), num_classes=2))
    np.testing.assert_allclose(det.patterns_, [[2, 0], [0, 2]])
    q = _hand([[1, 1], [4, 1], [0, 0]], [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_allclose(det.score(q), [-2.0, -8.0, 0.0])
    np.testing.assert_allclose(create("she", metric="euclidean").fit(det_ctx := FitContext(
        train=_hand(h, z, [0, 0, 1, 1]))).score(q), [np.sqrt(2), np.sqrt(5), 2.0])
    np.testing.assert_allclose(create("she", metric="cosine").fit(det_ctx).score(q)[:2],
                               [-1 / np.sqrt(2), -4 / np.sqrt(17)])


def test_she_matches_loop_and_falls_back_when_a_class_is_never_correct(toy):
    ctx, q = toy["ctx"], toy["ood"]["between"]
    det = create("she").fit(ctx)
    h, y, pred = ctx.train.features.astype(np.float64), ctx.train.labels, ctx.train.logits.argmax(1)
    for c in range(K):
        np.testing.assert_allclose(det.patterns_[c], h[(y == c) & (pred == c)].mean(0), rtol=1e-10)
    ref = [-float(np.dot(q.features[i], det.patterns_[q.logits[i].argmax()])) for i in range(len(q))]
    np.testing.assert_allclose(det.score(q), ref, rtol=1e-6)
    # every class-1 sample predicted as 0: class 1's pattern falls back to all its samples
    bad = _hand([[1, 0], [0, 2], [0, 4]], [[1, 0], [1, 0], [1, 0]], [0, 1, 1])
    np.testing.assert_allclose(create("she").fit(FitContext(train=bad)).patterns_, [[1, 0], [0, 3]])


def _nnguide_by_hand(bank_h, bank_z, q_h, q_z, k):
    bank = [np.asarray(b, float) / np.linalg.norm(b) * sp_logsumexp(z) for b, z in zip(bank_h, bank_z)]
    out = []
    for h, z in zip(q_h, q_z):
        zq = np.asarray(h, float) / np.linalg.norm(h)
        sims = sorted((float(zq @ b) for b in bank), reverse=True)[:k]
        out.append(-np.mean(sims) * sp_logsumexp(z))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_nnguide_by_hand(toy, k):
    ctx, q = toy["ctx"], _concat(toy["test"].subset(np.arange(20)), toy["ood"]["small"].subset(np.arange(20)))
    s = create("nnguide", k=k).fit(ctx).score(q)
    ref = _nnguide_by_hand(ctx.train.features, ctx.train.logits, q.features, q.logits, k)
    np.testing.assert_allclose(s, ref, rtol=1e-5)


def test_nnguide_tiny_hand_value():
    # bank: e1 with confidence log(e^0 + e^0) = log 2, e2 with confidence log(e^2 + e^0)
    train = _hand([[1, 0], [0, 3]], [[0, 0], [2, 0]], [0, 0])
    det = create("nnguide", k=1).fit(FitContext(train=train))
    q = _hand([[2, 0]], [[1, 1]])  # z = e1: top inner product log 2; own confidence log(2e)
    assert det.score(q)[0] == pytest.approx(-np.log(2) * (1 + np.log(2)), rel=1e-6)


def test_nnguide_bank_fraction_is_a_seeded_subset(toy):
    ctx = toy["ctx"]
    a = create("nnguide", bank_fraction=0.1).fit(ctx)
    b = create("nnguide", bank_fraction=0.1).fit(ctx)
    assert len(a.bank_) == 30
    np.testing.assert_array_equal(a.bank_, b.bank_)
    full = create("nnguide").fit(ctx).bank_
    assert all(np.any(np.all(np.isclose(full, row), axis=1)) for row in a.bank_)  # rows of the full bank


def test_fdbd_matches_loop_over_classes(toy):
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["between"])
    w, b = toy["w"], toy["b"]
    mu = ctx.train.features.astype(np.float64).mean(0)
    for normaliser in ("distance_to_mean", "norm"):
        s = create("fdbd", normaliser=normaliser).fit(ctx).score(q)
        ref = []
        for h, z in zip(q.features.astype(np.float64), q.logits):
            p = int(np.argmax(z))
            d = [abs((w[p] - w[c]) @ h + b[p] - b[c]) / np.linalg.norm(w[p] - w[c]) for c in range(K) if c != p]
            ref.append(-np.mean(d) / np.linalg.norm(h - mu if normaliser == "distance_to_mean" else h))
        np.testing.assert_allclose(s, ref, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.1])
def test_nci_formula(toy, alpha):
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["between"])
    w = toy["w"]
    mu = ctx.train.features.astype(np.float64).mean(0)
    ref = []
    for h, z in zip(q.features.astype(np.float64), q.logits):
        c = h - mu
        ref.append(-(w[int(np.argmax(z))] @ c / np.linalg.norm(c) + alpha * np.abs(h).sum()))
    np.testing.assert_allclose(create("nci", alpha=alpha).fit(ctx).score(q), ref, rtol=1e-6)


# --- density.py: known answers ---------------------------------------------------------------------

def test_gmm_single_full_gaussian_equals_scipy_logpdf(toy):
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["between"])
    h, y = ctx.train.features.astype(np.float64), ctx.train.labels
    reg = 1e-3 * h.var(axis=0).mean()
    ll = np.stack([multivariate_normal(h[y == c].mean(0), np.cov(h[y == c].T, bias=True) + reg * np.eye(D))
                   .logpdf(q.features.astype(np.float64)) for c in range(K)], axis=1)
    prior = np.log(np.bincount(y) / len(y))
    det = create("gmm", n_components=1, covariance="full", dim=D).fit(ctx)
    np.testing.assert_allclose(det.score(q), -sp_logsumexp(ll + prior, axis=1), rtol=1e-6)
    det_max = create("gmm", n_components=1, covariance="full", dim=D, combine="max").fit(ctx)
    np.testing.assert_allclose(det_max.score(q), -ll.max(axis=1), rtol=1e-6)


def test_gmm_is_seeded_and_uses_pca(toy):
    ctx, q = toy["ctx"], toy["ood"]["between"]
    a = create("gmm", n_components=3, covariance="diag", dim=4).fit(ctx)
    b = create("gmm", n_components=3, covariance="diag", dim=4).fit(ctx)
    np.testing.assert_array_equal(a.score(q), b.score(q))
    assert a.pca_.n_components_ == 4 and a.gmms_[0].means_.shape == (3, 4)


def _gram_by_hand(model, ctx, q, powers, divide_by_msp=True):
    """Explicit C x C Gram matrices, min/max loops per predicted class, deviations, val normalisation."""
    def layers(x):
        with torch.no_grad():
            t = torch.tensor(x)
            a = torch.relu(model.body[0](t))
            return [a.numpy(), torch.relu(model.body[2](a)).numpy()]

    def stats(x):  # list over samples of list over layers of (P, C)
        maps = layers(x)
        res = []
        for i in range(len(x)):
            per_layer = []
            for m in maps:
                f = m[i].reshape(m.shape[1], -1).astype(np.float64)
                per_layer.append(np.stack([((f ** p) @ (f ** p).T).sum(axis=1) ** (1 / p) for p in powers]))
            res.append(per_layer)
        return res

    tr = stats(ctx.train.inputs)
    pred_tr = ctx.train.logits.argmax(1)
    lo, hi = {}, {}
    for c in range(3):
        idx = [i for i in range(len(tr)) if pred_tr[i] == c] or list(range(len(tr)))
        lo[c] = [np.min([tr[i][l] for i in idx], axis=0) for l in range(2)]
        hi[c] = [np.max([tr[i][l] for i in idx], axis=0) for l in range(2)]

    def deviations(out):
        st, pred = stats(out.inputs), out.logits.argmax(1)
        msp = sp_softmax(out.logits.astype(np.float64), axis=1).max(1)
        dev = np.zeros((len(out), 2))
        for i in range(len(out)):
            for l in range(2):
                mn, mx, g = lo[pred[i]][l], hi[pred[i]][l], st[i][l]
                dev[i, l] = (np.maximum(mn - g, 0) / np.abs(mn + 1e-6)
                             + np.maximum(g - mx, 0) / np.abs(mx + 1e-6)).sum()
            if divide_by_msp:
                dev[i] /= msp[i]
        return dev

    norm = deviations(ctx.val).mean(axis=0) + 1e-7
    return (deviations(q) / norm).sum(axis=1)


@pytest.mark.parametrize("max_power,divide", [(1, True), (3, True), (3, False)])
def test_gram_by_hand(cnn, max_power, divide):
    q = _concat(cnn["test"].subset(np.arange(12)), cnn["ood"].subset(np.arange(12)))
    det = create("gram", max_power=max_power, divide_by_msp=divide).fit(cnn["ctx"])
    ref = _gram_by_hand(cnn["model"], cnn["ctx"], q, range(1, max_power + 1), divide)
    np.testing.assert_allclose(det.score(q), ref, rtol=1e-6, atol=1e-9)


def test_gram_row_sums_equal_explicit_gram_matrices():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 2, size=(4, 5, 3, 3))
    g = gram_row_sums(x, (1, 2, 7))
    for i in range(4):
        f = x[i].reshape(5, -1)
        for j, p in enumerate((1, 2, 7)):
            np.testing.assert_allclose(g[i, j], ((f ** p) @ (f ** p).T).sum(1) ** (1 / p), rtol=1e-12)
    with pytest.raises(ValueError, match="ascending"):
        gram_row_sums(x, (2, 1))


def test_gram_needs_inputs(cnn):
    det = create("gram", max_power=2).fit(cnn["ctx"])
    t = cnn["test"]
    with pytest.raises(ValueError, match="input images"):
        det.score(Outputs(t.logits, t.features, t.labels, None))
    with pytest.raises(ValueError, match="train images"):
        create("gram").fit(FitContext(train=Outputs(t.logits, t.features, t.labels, None), model=cnn["ctx"].model))


def test_gram_does_not_depend_on_the_adapters_batch_size(cnn):
    q = _concat(cnn["test"], cnn["ood"])
    a = create("gram", max_power=3).fit(cnn["ctx"]).score(q)
    ctx = cnn["ctx"]
    small = ModelAdapter(cnn["model"], "cpu", batch_size=5)
    b = create("gram", max_power=3).fit(FitContext(train=ctx.train, val=ctx.val, model=small, num_classes=3)).score(q)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# --- classic.py: equal to identically configured scikit-learn estimators ---------------------------

@pytest.mark.parametrize("l2", [False, True])
def test_classic_detectors_equal_negated_sklearn(toy, l2):
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["off_subspace"])

    def prep(h):
        h = h.astype(np.float64)
        return h / np.linalg.norm(h, axis=1, keepdims=True) if l2 else h

    sc = StandardScaler().fit(prep(ctx.train.features))
    x_tr, x_q = sc.transform(prep(ctx.train.features)), sc.transform(prep(q.features))
    ref = {
        "ocsvm": -OneClassSVM(nu=0.1, gamma="scale").fit(x_tr).decision_function(x_q),
        "iforest": -IsolationForest(n_estimators=100, random_state=0).fit(x_tr).score_samples(x_q),
        "lof": -LocalOutlierFactor(n_neighbors=20, novelty=True).fit(x_tr).score_samples(x_q),
    }
    for name, r in ref.items():
        np.testing.assert_allclose(create(name, l2_normalise=l2).fit(ctx).score(q), r, rtol=1e-7, atol=1e-9)


def test_classic_detectors_with_ruff_scaling_equal_sklearn_on_gcn_min_max_features(toy):
    # scaling="gcn_minmax": each sample centred and divided by its mean absolute deviation, then (g - lo) / (hi - lo)
    # with lo, hi the extremes over the ID train features only (the scored set does not move them)
    ctx, q = toy["ctx"], _concat(toy["test"], toy["ood"]["off_subspace"])

    def gcn(h):
        h = h.astype(np.float64) - h.astype(np.float64).mean(axis=1, keepdims=True)
        return h / np.abs(h).mean(axis=1, keepdims=True)

    g_tr = gcn(ctx.train.features)
    lo, hi = g_tr.min(), g_tr.max()
    x_tr, x_q = (g_tr - lo) / (hi - lo), (gcn(q.features) - lo) / (hi - lo)
    assert x_tr.min() == pytest.approx(0.0) and x_tr.max() == pytest.approx(1.0)
    ref = {
        "ocsvm": -OneClassSVM(nu=0.1, gamma="scale").fit(x_tr).decision_function(x_q),
        "lof": -LocalOutlierFactor(n_neighbors=20, novelty=True).fit(x_tr).score_samples(x_q),
    }
    for name, r in ref.items():
        det = create(name, scaling="gcn_minmax").fit(ctx)
        # the bounds are kept as float32 buffers (as in Deep SVDD's checkpoint): equal to ~1e-8
        np.testing.assert_allclose(det.transform(q.features), x_q, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(det.score(q), r, rtol=1e-5, atol=1e-6)


def test_iforest_follows_the_seed(toy):
    ctx, q = toy["ctx"], toy["test"]
    a = create("iforest").fit(ctx).score(q)
    b = create("iforest").fit(FitContext(train=ctx.train, seed=1)).score(q)
    assert np.array_equal(a, create("iforest").fit(ctx).score(q)) and not np.array_equal(a, b)


# --- the easy separable case, order and batch independence, bad parameters -------------------------

# which OOD kind each method is built to catch (RMD cancels directions that vary alike in every class, so
# its easy case lies between the classes; SHE / NNGuide / NCI reward strong, well-aligned features)
EASY = {"rmd": "between", "residual": "off_subspace", "she": "small", "nnguide": "small", "fdbd": "between",
        "nci": "between", "gmm": "between", "ocsvm": "off_subspace", "iforest": "off_subspace",
        "lof": "off_subspace"}


@pytest.mark.parametrize("name", sorted(EASY))
def test_sign_on_easy_separable_case(toy, name):
    det = create(name, **({"dim": 3} if name == "residual" else {})).fit(toy["ctx"])
    s_id, s_ood = det.score(toy["test"]), det.score(toy["ood"][EASY[name]])
    assert np.all(np.isfinite(s_id)) and np.all(np.isfinite(s_ood))
    assert metrics.auroc(s_id, s_ood) > 0.95, f"{name}: OOD must score higher"


def test_gram_sign_on_easy_case(cnn):
    det = create("gram").fit(cnn["ctx"])
    assert metrics.auroc(det.score(cnn["test"]), det.score(cnn["ood"])) > 0.95


@pytest.mark.parametrize("name", NEW)
def test_scores_do_not_depend_on_order_or_batching(toy, cnn, name):
    setup = cnn if name == "gram" else toy
    det = create(name, **({"max_power": 3} if name == "gram" else {})).fit(setup["ctx"])
    ood = setup["ood"] if name == "gram" else setup["ood"]["between"]
    q = _concat(setup["test"], ood)
    full = det.score(q)
    perm = np.random.default_rng(5).permutation(len(q))
    np.testing.assert_allclose(det.score(q.subset(perm)), full[perm], rtol=1e-5, atol=1e-6)
    half = len(q) // 2
    halves = np.concatenate([det.score(q.subset(np.arange(half))), det.score(q.subset(np.arange(half, len(q))))])
    np.testing.assert_allclose(halves, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,params", [
    ("rmd", {"shrink": 1}), ("residual", {"dim": 0}), ("she", {"metric": "l1"}), ("nnguide", {"k": 0}),
    ("nnguide", {"bank_fraction": 1.5}), ("fdbd", {"normaliser": "l2"}), ("nci", {"alpha": -1}),
    ("gmm", {"n_components": 6}), ("gmm", {"covariance": "spherical"}), ("gmm", {"reg_covar": 0}),
    ("gram", {"max_power": 11}), ("gram", {"max_power": 2.5}), ("ocsvm", {"nu": 0}), ("ocsvm", {"gamma": 0.1}),
    ("iforest", {"n_estimators": 5}), ("lof", {"n_neighbors": 0}), ("lof", {"l2_normalise": "yes"}),
])
def test_bad_parameters_raise_clear_errors(name, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        create(name, **params)


@pytest.mark.parametrize("name", NEW)
def test_scoring_before_fit_raises(name, toy):
    with pytest.raises(NotFittedError, match=name):
        create(name).score(toy["test"])


@pytest.mark.parametrize("name", NEW)
def test_registry_metadata(name):
    cls = REGISTRY[name]
    assert cls.family == ("density" if name in ("gmm", "gram") else "classic" if name in ("ocsvm", "iforest", "lof")
                          else "distance")
    assert cls.intuition.count(". ") >= 1 and "\n" not in cls.formula
    assert all(p.sweep and p.help for p in cls.params.values())
    assert cls.runs_network == (name == "gram")


# --- exact neighbour search (KNN, NNGuide): numpy and faiss agree with float64 brute force -------------

@pytest.fixture(scope="module")
def bank_queries():
    rng = np.random.default_rng(11)
    bank = F.l2_normalise(rng.normal(size=(700, 24)))
    queries = F.l2_normalise(rng.normal(size=(130, 24)))
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    ip = queries.astype(np.float64) @ bank.T.astype(np.float64)
    return bank, queries, np.sort(d, axis=1), -np.sort(-ip, axis=1)


BACKENDS = ["numpy"] + (["faiss"] if F.faiss_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 7, 50, 700, 1000])
def test_kth_neighbour_distance_equals_brute_force(bank_queries, backend, k):
    bank, queries, d_sorted, _ = bank_queries
    for chunk in (1, 33, 4096):
        got = F.kth_neighbour_distance(queries, bank, k, chunk=chunk, backend=backend)
        # candidates come from float32, but their distances are recomputed in float64: equal to brute force
        np.testing.assert_allclose(got, d_sorted[:, min(k, len(bank)) - 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kth_neighbour_distance_is_exact_for_near_duplicates(backend):
    # neighbours 1e-4 away: |q|^2 + |b|^2 - 2 q.b cancels in float32, the float64 recomputation does not
    rng = np.random.default_rng(2)
    queries = F.l2_normalise(rng.normal(size=(40, 16)))
    bank = np.concatenate([queries + rng.normal(0, 1e-4, size=(40, 16)).astype(np.float32) for _ in range(6)])
    ref = np.sort(np.sqrt(((queries[:, None].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)), 1)
    got = F.kth_neighbour_distance(queries, bank, 3, backend=backend)
    np.testing.assert_allclose(got, ref[:, 2], rtol=1e-10)
    one = F.kth_neighbour_distance(queries[7:8], bank, 3, backend=backend)
    assert one[0] == got[7]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 10, 700])
def test_top_k_inner_products_equal_brute_force(bank_queries, backend, k):
    bank, queries, _, ip_sorted = bank_queries
    got = np.sort(F.top_k_inner_products(queries, bank, k, chunk=17, backend=backend), axis=1)[:, ::-1]
    np.testing.assert_allclose(got, ip_sorted[:, :k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [5000, 5003])
def test_top_columns_through_strided_tiles_are_exact(n):
    rng = np.random.default_rng(n)
    block = rng.normal(size=(37, n)).astype(np.float32)
    block[3, 100:120] = 9.0  # ties inside one tile and across tiles
    block[4, ::17] = 7.0
    for m in (1, 10, 58):
        assert n // F.TILE >= 4 * m  # the tiled path, not the argpartition fallback
        cols, vals = F._top_columns(block.copy(), m)
        assert cols.shape == (37, m) and all(len(set(r)) == m for r in cols)
        np.testing.assert_array_equal(vals, np.take_along_axis(block, cols, 1))
        np.testing.assert_array_equal(np.sort(np.take_along_axis(block, cols, 1), 1),
                                      np.sort(block, 1)[:, n - m:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [5, 20])
def test_large_bank_search_equals_brute_force(backend, k):
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(3001, 20)).astype(np.float32)
    queries = rng.normal(size=(70, 20)).astype(np.float32)
    d = np.sqrt(((queries[:, None].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    got = F.kth_neighbour_distance(queries, bank, k, chunk=32, backend=backend)
    np.testing.assert_allclose(got, np.sort(d, 1)[:, k - 1], rtol=1e-12)
    ip = queries.astype(np.float64) @ bank.T.astype(np.float64)
    top = np.sort(F.top_k_inner_products(queries, bank, k, chunk=32, backend=backend), 1)
    np.testing.assert_allclose(top, np.sort(ip, 1)[:, -k:], rtol=1e-12)


def test_neighbour_search_errors(bank_queries):
    bank, queries, _, _ = bank_queries
    with pytest.raises(ValueError, match="empty"):
        F.kth_neighbour_distance(queries, bank[:0], 3)
    with pytest.raises(ValueError, match="backend"):
        F.top_k_inner_products(queries, bank, 3, backend="annoy")
    with pytest.raises(ValueError, match="dimension"):
        F.kth_neighbour_distance(queries[:, :5], bank, 3)
    assert F.kth_neighbour_distance(queries[:0], bank, 3).shape == (0,)


def test_without_faiss_numpy_still_works_and_faiss_says_why(bank_queries, monkeypatch):
    bank, queries, d_sorted, _ = bank_queries
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # makes `import faiss` fail
    assert not F.faiss_available()
    with pytest.raises(ImportError, match="backend='numpy'"):
        F.kth_neighbour_distance(queries, bank, 3, backend="faiss")
    np.testing.assert_allclose(F.kth_neighbour_distance(queries, bank, 3), d_sorted[:, 2], rtol=1e-12)


def test_numpy_block_stays_within_its_memory_budget():
    assert F._query_chunk(100_000, 2048) * 100_000 * 4 <= F.BLOCK_BYTES
    assert F._query_chunk(10, 2048) == 2048 and F._query_chunk(10 ** 12, 2048) == 1
