"""Speed work must not move a score: every detector that issue 14 made faster, against a plain float64 formula.

The formulas below are the detectors' definitions written the slow, obvious way (per-class loops, explicit
inverses, full eigendecompositions, brute-force neighbours), on fixed seeded arrays shaped like penultimate
features (ReLU, class structure, a decaying spectrum). Each detector's scores must equal them to 1e-6 relative.
A second set of arrays has a nearly singular covariance, where float32 whitening would not be accurate enough:
the detectors must notice and stay exact there too. Chunked scoring must equal scoring in one chunk.
No timing is asserted here: speed is measured by scripts/bench_reference.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from ood_core import linalg
from ood_core.detectors import FitContext, create
from ood_core.detectors.activations import exact_percentile, top_k_mask
from ood_core.inference import Outputs

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = float(__import__("os").environ.get("SPEED_RTOL", "1e-6"))
K = 6


class Head:
    """The two things detectors read from the model: logits = W h + b (float64 copies, as ModelAdapter gives)."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.head_weight = np.asarray(w, dtype=np.float64)
        self.head_bias = np.asarray(b, dtype=np.float64)


def _arrays(seed: int, d: int, n_train: int, n_test: int, ill_conditioned: bool = False):
    """ID train, ID test and OOD Outputs of a linear head on ReLU features with a power-law spectrum."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mix = basis * (1.0 / (1.0 + np.arange(d))) ** 0.6
    means = rng.normal(0.0, 1.2, size=(K, d)) + 0.8

    def feats(n, scale=1.0, shift=0.0):
        y = np.arange(n) % K
        h = means[y] + shift + scale * rng.normal(size=(n, d)) @ mix.T
        h = np.maximum(h, 0.0)
        if ill_conditioned:  # three units that nearly copy others: covariance condition number ~1e8
            h[:, -3:] = h[:, :3] + 1e-4 * rng.normal(size=(n, 3))
        return h.astype(np.float32), y

    # a nearest-class-mean head, W h + b = s (mu_c.h - |mu_c|^2 / 2), plus noise: every training sample is predicted right
    s = 8.0 / d
    w = (s * means + 0.2 * rng.normal(size=(K, d)) / np.sqrt(d)).astype(np.float32)
    b = (-0.5 * s * (means ** 2).sum(1) + rng.normal(0.0, 0.3, size=K)).astype(np.float32)

    def outputs(h, y):
        return Outputs((h @ w.T + b).astype(np.float32), h, y)

    train = outputs(*feats(n_train))
    test = outputs(*feats(n_test))
    ood_h, _ = feats(n_test // 2, scale=1.8, shift=-0.4)
    ood = outputs(ood_h, np.full(len(ood_h), -1))
    both = Outputs(np.concatenate([test.logits, ood.logits]), np.concatenate([test.features, ood.features]),
                   np.concatenate([test.labels, ood.labels]))
    return train, both, Head(w, b)


@pytest.fixture(scope="module")
def data():
    return _arrays(0, 48, 3000, 1200)


@pytest.fixture(scope="module")
def ill():
    return _arrays(1, 40, 2500, 800, ill_conditioned=True)


def _score(name, data, **params):
    train, test, head = data
    return create(name, **params).fit(FitContext(train=train, model=head, num_classes=K, seed=0)).score(test)


def _close(got, ref, terms=None):
    """|got - ref| <= 1e-6 |ref| element-wise; for a difference of terms (RMD, ViM), relative to the largest term."""
    scale = np.abs(ref) if terms is None else np.max(np.abs(np.stack(terms)), axis=0)
    err = np.abs(np.asarray(got, dtype=np.float64) - ref)
    worst = float(np.max(err / np.maximum(scale, 1e-300)))
    assert worst <= RTOL, f"max relative error {worst:.3g} > {RTOL}"


# --- the formulas, the slow obvious way ------------------------------------------------------------------

def _h(o):
    return np.asarray(o.features, dtype=np.float64)


def _z(o):
    return np.asarray(o.logits, dtype=np.float64)


def _tied_gaussian(h, y):
    classes = np.unique(y)
    means = np.stack([h[y == c].mean(0) for c in classes])
    centred = h - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / len(h)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov)


def _md(h, means, precision):
    return np.stack([np.einsum("nd,de,ne->n", h - m, precision, h - m) for m in means], axis=1)


def ref_mahalanobis(train, test):
    means, p = _tied_gaussian(_h(train), train.labels)
    return _md(_h(test), means, p).min(1)


def ref_rmd_terms(train, test):
    h = _h(train)
    means, p = _tied_gaussian(h, train.labels)
    mean0, p0 = _tied_gaussian(h, np.zeros(len(h), int))
    return _md(_h(test), means, p).min(1), _md(_h(test), mean0, p0)[:, 0]


def _residual_basis(train, head, dim):
    w, b = head.head_weight, head.head_bias
    u = -np.linalg.pinv(w) @ b
    c = _h(train) - u
    val, vec = np.linalg.eigh(c.T @ c / len(c))
    return u, vec[:, np.argsort(val)[::-1][dim:]]


def ref_vim_terms(train, test, head, dim=64):
    u, ns = _residual_basis(train, head, min(dim, train.features.shape[1] - 1))
    alpha = _z(train).max(1).mean() / np.linalg.norm((_h(train) - u) @ ns, axis=1).mean()
    return alpha * np.linalg.norm((_h(test) - u) @ ns, axis=1), logsumexp(_z(test), axis=1)


def ref_residual(train, test, head, dim=64):
    u, ns = _residual_basis(train, head, min(dim, train.features.shape[1] - 1))
    return np.linalg.norm((_h(test) - u) @ ns, axis=1)


def ref_gmm_one_gaussian(train, test, reg_covar=1e-3):
    """One full-covariance Gaussian per class on the raw features (dim >= D: no PCA), prior-weighted mixture."""
    h, y = _h(train), train.labels
    scale = h.var(0).mean()
    ll = []
    for c in np.unique(y):
        hc = h[y == c]
        cov = np.cov(hc.T, bias=True) + reg_covar * scale * np.eye(h.shape[1])
        ll.append(np.log((y == c).mean()) + multivariate_normal(hc.mean(0), cov).logpdf(_h(test)))
    return -logsumexp(np.stack(ll, 1), axis=1)


def ref_knn(train, test, k):
    bank = _h(train) / np.linalg.norm(_h(train), axis=1, keepdims=True)
    q = _h(test) / np.linalg.norm(_h(test), axis=1, keepdims=True)
    d = np.sqrt(np.maximum(2.0 - 2.0 * q @ bank.T, 0.0))
    return np.sort(d, 1)[:, k - 1]


def ref_nnguide(train, test, k):
    bank = _h(train) / np.linalg.norm(_h(train), axis=1, keepdims=True) * logsumexp(_z(train), axis=1)[:, None]
    bank = bank.astype(np.float32).astype(np.float64)  # the detector stores its bank in float32
    q = _h(test) / np.linalg.norm(_h(test), axis=1, keepdims=True)
    guidance = np.sort(q @ bank.T, 1)[:, -k:].mean(1)
    return -guidance * logsumexp(_z(test), axis=1)


def ref_she(train, test, metric="inner_product"):
    h, y, pred = _h(train), train.labels, _z(train).argmax(1)
    patterns = np.stack([h[(y == c) & (pred == c)].mean(0) for c in range(K)])
    q, m = _h(test), patterns[_z(test).argmax(1)]
    if metric == "euclidean":
        return np.sqrt(((q - m) ** 2).sum(1))
    sim = (q * m).sum(1)
    if metric == "cosine":
        sim = sim / (np.sqrt((q * q).sum(1)) * np.sqrt((m * m).sum(1)))
    return -sim


def _energy(h, w, b):
    return -logsumexp(h @ w.T + b, axis=1)


def ref_dice(train, test, head, p=90.0):
    w = head.head_weight
    contrib = _h(train).mean(0)[None, :] * w
    return _energy(_h(test), w * (contrib > np.percentile(contrib, p)), head.head_bias)


def ref_react(train, test, head, p=90.0):
    c = np.percentile(_h(train), p)
    return _energy(np.minimum(_h(test), c), head.head_weight, head.head_bias)


def _top_mask(h, p):
    d = h.shape[1]
    k = max(1, d - int(np.round(d * p / 100.0)))
    mask = np.zeros(h.shape, bool)
    for i, row in enumerate(h):
        mask[i, np.argsort(-row, kind="stable")[:k]] = True
    return mask


def ref_ash(test, head, variant, p=90.0):
    h = _h(test)
    m = _top_mask(h, p)
    if variant == "p":
        shaped = h * m
    elif variant == "b":
        shaped = m * (h.sum(1) / m.sum(1))[:, None]
    else:
        shaped = h * m * np.exp(h.sum(1) / (h * m).sum(1))[:, None]
    return _energy(shaped, head.head_weight, head.head_bias)


def ref_scale(test, head, p=85.0):
    h = _h(test)
    r = np.exp(h.sum(1) / (h * _top_mask(h, p)).sum(1))
    return _energy(h * r[:, None], head.head_weight, head.head_bias)


def ref_fdbd(train, test, head):
    w, b, h = head.head_weight, head.head_bias, _h(test)
    f = h @ w.T + b
    pred = _z(test).argmax(1)
    out = np.empty(len(h))
    for i in range(len(h)):
        p = pred[i]
        d = [abs(f[i, p] - f[i, c]) / np.linalg.norm(w[p] - w[c]) for c in range(K) if c != p]
        out[i] = -np.mean(d) / np.linalg.norm(h[i] - _h(train).mean(0))
    return out


def ref_nci(train, test, head, alpha=1e-4):
    c = _h(test) - _h(train).mean(0)
    wp = head.head_weight[_z(test).argmax(1)]
    return -((c * wp).sum(1) / np.linalg.norm(c, axis=1) + alpha * np.abs(_h(test)).sum(1))


def ref_klm(train, test):
    def softmax(z):
        return np.exp(z - logsumexp(z, axis=1)[:, None])

    p_fit = softmax(_z(train))
    pred = p_fit.argmax(1)
    templates = np.stack([p_fit[pred == k].mean(0) for k in np.unique(pred)])
    p = softmax(_z(test))
    kl = np.stack([(p * (np.log(p) - np.log(t))).sum(1) for t in templates], 1)
    return kl.min(1)


LOGIT_REFS = {
    "msp": lambda z: -np.exp(z - logsumexp(z, axis=1)[:, None]).max(1),
    "max_logit": lambda z: -z.max(1),
    "energy": lambda z: -logsumexp(z, axis=1),
    "entropy": lambda z: -(np.exp(z - logsumexp(z, axis=1)[:, None]) * (z - logsumexp(z, axis=1)[:, None])).sum(1),
}


# --- the tests -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["data", "ill"])
def test_mahalanobis_scores_unchanged(case, request):
    d = request.getfixturevalue(case)
    _close(_score("mahalanobis", d), ref_mahalanobis(d[0], d[1]))


@pytest.mark.parametrize("case", ["data", "ill"])
def test_rmd_scores_unchanged(case, request):
    d = request.getfixturevalue(case)
    md, md0 = ref_rmd_terms(d[0], d[1])
    _close(_score("rmd", d), md - md0, terms=(md, md0))


@pytest.mark.parametrize("case", ["data", "ill"])
@pytest.mark.parametrize("dim", [8, 30])
def test_vim_and_residual_scores_unchanged(case, dim, request):
    d = request.getfixturevalue(case)
    v, e = ref_vim_terms(d[0], d[1], d[2], dim)
    _close(_score("vim", d, dim=dim), v - e, terms=(v, e))
    _close(_score("residual", d, dim=dim), ref_residual(d[0], d[1], d[2], dim))


@pytest.mark.parametrize("case", ["data", "ill"])
def test_gmm_one_gaussian_per_class_scores_unchanged(case, request):
    d = request.getfixturevalue(case)
    got = _score("gmm", d, n_components=1, covariance="full", dim=4096)
    _close(got, ref_gmm_one_gaussian(d[0], d[1]))


def test_gmm_default_scores_unchanged(data):
    """The default (PCA to 32 dimensions, then one Gaussian per class): as scikit-learn computes it."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    train, test, _ = data
    h, y = _h(train), train.labels
    pca = PCA(n_components=32, random_state=0).fit(h)
    z, zt = pca.transform(h), pca.transform(_h(test))
    scale = z.var(0).mean()
    ll = [np.log((y == c).mean()) + GaussianMixture(1, covariance_type="full", reg_covar=1e-3 * scale,
                                                     random_state=0, max_iter=200).fit(z[y == c]).score_samples(zt)
          for c in np.unique(y)]
    _close(_score("gmm", data), -logsumexp(np.stack(ll, 1), axis=1))


@pytest.mark.parametrize("k", [1, 50])
def test_knn_scores_unchanged(data, k):
    _close(_score("knn", data, k=k), ref_knn(data[0], data[1], k))


def test_nnguide_scores_unchanged(data):
    _close(_score("nnguide", data, k=10), ref_nnguide(data[0], data[1], 10))


def test_she_fdbd_nci_scores_unchanged(data):
    train, test, head = data
    for metric in ("inner_product", "cosine", "euclidean"):
        _close(_score("she", data, metric=metric), ref_she(train, test, metric))
    _close(_score("fdbd", data), ref_fdbd(train, test, head))
    _close(_score("nci", data), ref_nci(train, test, head))


def test_activation_shaping_scores_unchanged(data):
    train, test, head = data
    _close(_score("dice", data), ref_dice(train, test, head))
    _close(_score("react", data), ref_react(train, test, head))
    for v in "pbs":
        _close(_score(f"ash_{v}", data), ref_ash(test, head, v))
    _close(_score("scale", data), ref_scale(test, head))


def test_logit_scores_unchanged(data):
    train, test, _ = data
    for name, ref in LOGIT_REFS.items():
        _close(_score(name, data), ref(_z(test)))
    _close(_score("klm", data), ref_klm(train, test))


CHUNKED = ("mahalanobis", "rmd", "vim", "residual", "gmm", "react", "ash_p", "ash_b", "ash_s", "scale", "dice",
           "vra", "she", "fdbd", "nci")


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_equals_one_chunk(name, data, monkeypatch):
    """Fitting and scoring 64 rows at a time gives the scores of one chunk (the test arrays fit one chunk)."""
    params = {"dim": 4096, "n_components": 1} if name == "gmm" else {}
    whole = _score(name, data, **params)
    monkeypatch.setattr(linalg, "CHUNK_BYTES", 1)  # chunk_rows() then gives its minimum, 64 rows
    assert linalg.chunk_rows(data[0].features.shape[1]) == 64
    chunked = _score(name, data, **params)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())


def test_top_k_mask_by_selection_equals_stable_sort():
    rng = np.random.default_rng(5)
    for shape in [(300, 37), (200, 128), (10, 1), (50, 2)]:
        h = np.round(np.maximum(rng.normal(size=shape), 0.0), 1)  # many ties, at 0 and elsewhere
        h[::3, :5] = 1.0
        for p in (0, 10, 50, 65, 90, 99, 100):
            d = h.shape[1]
            k = max(1, d - int(np.round(d * p / 100)))
            ref = np.zeros(h.shape, bool)
            np.put_along_axis(ref, np.argsort(-h, axis=1, kind="stable")[:, :k], True, axis=1)
            np.testing.assert_array_equal(top_k_mask(h, p), ref)


def test_exact_percentile_equals_numpy_in_float64():
    rng = np.random.default_rng(6)
    qs = (0, 10, 33.3333, 50, 50.0001, 60, 90, 90.01, 99.9, 100)  # close pairs share or neighbour a rank
    for shape in [(1000, 37), (5, 1), (2, 3), (301, 128), (5000, 1000)]:  # the last: several blocks of columns
        a = np.round(np.maximum(rng.normal(size=shape), 0.0), 1).astype(np.float32)  # ties, many zeros
        a64 = a.astype(np.float64)
        for q, per_column, overall in zip(qs, exact_percentile(a, qs, axis=0), exact_percentile(a, qs)):
            np.testing.assert_array_equal(per_column, np.percentile(a64, q, axis=0))
            assert overall == np.percentile(a64, q)
        assert exact_percentile(a, 90) == np.percentile(a64, 90)
    a[0, 0] = np.nan
    assert np.isnan(exact_percentile(a, 50))


@pytest.mark.parametrize("case", ["data", "ill"])
@pytest.mark.parametrize("combine", ["mixture", "max"])
def test_gmm_float32_screening_keeps_scores(case, combine, request, monkeypatch):
    """With float32 screening of the classes (on from density.SCREEN_DIM dimensions, lowered here to the test's
    48/40), the scores equal the float64 formula; nearly singular covariances are noticed and not screened."""
    from ood_core.detectors import density

    d = request.getfixturevalue(case)
    monkeypatch.setattr(density, "SCREEN_DIM", 8)
    # on the nearly singular features, the smallest ridge leaves the covariances nearly singular too
    reg = 1e-3 if case == "data" else 1e-8
    params = dict(n_components=1, covariance="full", dim=4096, combine=combine, reg_covar=reg)
    det = create("gmm", **params).fit(FitContext(train=d[0], model=d[2], num_classes=K, seed=0))
    got = det.score(d[1])
    if combine == "mixture":
        _close(got, ref_gmm_one_gaussian(d[0], d[1], reg))
    monkeypatch.setattr(density, "SCREEN_DIM", 10**6)
    plain = create("gmm", **params).fit(FitContext(train=d[0], model=d[2], num_classes=K, seed=0))
    assert not plain._screens()
    _close(got, plain.score(d[1]))
    if case == "data":  # screening ran and left most classes out (the classes are well separated)
        assert det._screens()
        ll = det.class_log_likelihoods(d[1].features, det.log_prior_)
        assert np.isinf(ll).mean() > 0.5
        monkeypatch.setattr(linalg, "CHUNK_BYTES", 1)  # screened by chunks of 64 rows: the same scores
        np.testing.assert_allclose(det.score(d[1]), got, rtol=1e-12)
    else:  # the nearly singular covariances: float32 distances are too far off, so no class is screened
        assert not det._screens()


def _old_row_reduce(ufunc, z, keepdims=False):
    """row_reduce as it was before the transposed logsumexp (the column loop from a copy of the first column)."""
    if z.ndim != 2 or not 1 <= z.shape[1] <= 32 or len(z) < 256:
        return ufunc.reduce(z, axis=1, keepdims=keepdims)
    out = z[:, 0].copy()
    for j in range(1, z.shape[1]):
        ufunc(out, z[:, j], out=out)
    return out[:, None] if keepdims else out


def _old_logsumexp(z):
    z = np.asarray(z, dtype=np.float64)
    m = _old_row_reduce(np.maximum, z, keepdims=True)
    return (m + np.log(_old_row_reduce(np.add, np.exp(z - m), keepdims=True)))[:, 0]


@pytest.mark.parametrize("k", [1, 2, 10, 32, 33, 100])
@pytest.mark.parametrize("n", [100, 3000])
def test_logsumexp_and_row_reduce_unchanged(k, n):
    """The transposed logsumexp of short rows gives the old row-by-row result bit for bit (longer rows: to 1e-15),
    and max logit / energy / entropy are built on it."""
    from ood_core.detectors.base import logsumexp, row_reduce

    rng = np.random.default_rng(k)
    for dtype in (np.float32, np.float64):
        z = (rng.normal(size=(n, k)) * 6).astype(dtype)
        if k > 1:
            z[::7, 0] = -np.inf  # a class with probability 0 in some rows
        got, old = logsumexp(z), _old_logsumexp(z)
        if k <= 32:
            np.testing.assert_array_equal(got, old)
        else:
            np.testing.assert_allclose(got, old, rtol=1e-15)
        for ufunc in (np.maximum, np.minimum, np.add):
            np.testing.assert_array_equal(row_reduce(ufunc, z), _old_row_reduce(ufunc, z))
    zz = rng.normal(size=(n, k)).astype(np.float32)
    max_logit = create("max_logit").fit(FitContext(train=Outputs(zz, zz, np.zeros(n, int)))).score(Outputs(zz, zz, np.zeros(n, int)))
    np.testing.assert_array_equal(max_logit, -_old_row_reduce(np.maximum, zz).astype(np.float64))


def test_whitening_by_the_inverse_factor_equals_a_solve():
    """linalg.whiten multiplies by L^-1 (formed once by triangular_inverse) instead of solving with L per chunk:
    the same z = L^-1 (x - c) as a float64 solve, on a hand-made factor and on an ill-conditioned covariance."""
    chol = np.array([[2.0, 0.0], [1.0, 4.0]])
    inverse = linalg.triangular_inverse(chol)
    np.testing.assert_allclose(inverse, [[0.5, 0.0], [-0.125, 0.25]], rtol=0, atol=1e-15)  # by hand
    x = np.array([[4.0, 6.0], [2.0, 1.0]], dtype=np.float32)
    # z1 = (x1 - 0) / 2, z2 = (x2 - 1 - z1) / 4
    np.testing.assert_allclose(linalg.whiten(inverse, x, np.array([0.0, 1.0])), [[2.0, 0.75], [1.0, -0.25]],
                               rtol=0, atol=1e-15)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 40)) * np.logspace(0, -3, 40)  # condition number of the covariance ~1e6
    cov = a.T @ a / len(a)
    chol = np.linalg.cholesky(cov)
    q = rng.standard_normal((50, 40)).astype(np.float32)
    centre = a.mean(axis=0)
    expected = np.linalg.solve(chol, (q.astype(np.float64) - centre).T).T
    got = linalg.whiten(linalg.triangular_inverse(chol), q, centre)
    assert np.max(np.abs(got - expected)) <= 1e-9 * np.max(np.abs(expected))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        linalg.triangular_inverse(np.array([[1.0, 0.0], [2.0, 0.0]]))


def test_cholesky_by_lapack_equals_numpy_and_refuses_bad_matrices():
    """linalg.cholesky calls potrf on the C-ordered matrix in place of np.linalg.cholesky's copies: the same lower
    factor, by hand and on an ill-conditioned covariance; a clear error for each kind of bad matrix."""
    np.testing.assert_allclose(linalg.cholesky(np.array([[4.0, 2.0], [2.0, 17.0]])), [[2.0, 0.0], [1.0, 4.0]],
                               rtol=0, atol=1e-15)  # 2 * 2 = 4, 2 / 2 = 1, sqrt(17 - 1) = 4
    rng = np.random.default_rng(4)
    a = rng.standard_normal((300, 40)) * np.logspace(0, -3, 40)
    cov = a.T @ a / len(a)
    got = linalg.cholesky(cov)
    np.testing.assert_allclose(got, np.linalg.cholesky(cov), rtol=1e-12, atol=1e-15 * np.abs(got).max())
    assert np.all(np.triu(got, 1) == 0)
    inverse = linalg.triangular_inverse(got)
    assert inverse.flags["F_CONTIGUOUS"] and np.all(np.triu(inverse, 1) == 0)
    np.testing.assert_allclose(inverse @ got, np.eye(40), atol=1e-8)
    with pytest.raises(np.linalg.LinAlgError, match="covariance of the ID features is singular"):
        linalg.cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]))  # indefinite
    with pytest.raises(np.linalg.LinAlgError, match="my matrix is singular"):
        linalg.cholesky(np.array([[1.0, np.nan], [np.nan, 1.0]]), what="my matrix")
    with pytest.raises(ValueError, match="square"):
        linalg.cholesky(np.ones((2, 3)))


def test_triangular_product_by_pointer_equals_scipy_and_refuses_bad_layouts():
    """linalg.triangular_product calls BLAS trmm through scipy's C function pointer (the GIL released): rows @ T'
    by hand, the same bits as scipy.linalg.blas's trmm in float64 and float32, and a clear error for bad layouts."""
    from scipy.linalg import blas

    assert all(linalg._native_routine(name) is not None for name in linalg._ROUTINES)  # trmm, potrf, trtri
    tri = np.asfortranarray([[2.0, 0.0], [1.0, 4.0]])
    rows = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])
    # tri @ (1, 2) = (2, 9), tri @ (3, -1) = (6, -1), tri @ (0, 0.5) = (0, 2)
    got = linalg.triangular_product(tri, rows)
    assert got is rows
    np.testing.assert_array_equal(got, [[2.0, 9.0], [6.0, -1.0], [0.0, 2.0]])
    rng = np.random.default_rng(5)
    for dtype, ref in ((np.float64, blas.dtrmm), (np.float32, blas.strmm)):
        t = np.asfortranarray(np.tril(rng.standard_normal((70, 70))).astype(dtype))
        x = rng.standard_normal((33, 70)).astype(dtype)
        np.testing.assert_array_equal(linalg.triangular_product(t, x.copy()), ref(1.0, t, x.T, lower=1).T)
    assert linalg.triangular_product(tri, np.empty((0, 2))).shape == (0, 2)
    for bad_tri, bad_rows in ((np.ascontiguousarray(tri), rows), (tri, np.asfortranarray(rows)),
                              (tri.astype(np.float32), rows), (tri, np.ones((3, 3)))):
        with pytest.raises(ValueError, match="Fortran-ordered"):
            linalg.triangular_product(bad_tri, bad_rows)


def test_without_the_c_pointers_the_f2py_routines_give_the_same_bits(monkeypatch):
    """Where scipy exports no C pointer (an older or newer scipy), linalg falls back on scipy.linalg.blas/lapack:
    the same factor, inverse and products, bit for bit, and the same errors."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((200, 30)) * np.logspace(0, -2, 30)
    cov = a.T @ a / len(a)
    x = rng.standard_normal((17, 30)).astype(np.float32)
    centre = a.mean(axis=0)

    def everything():
        chol = linalg.cholesky(cov)
        inverse = linalg.triangular_inverse(chol)
        z32 = linalg.triangular_product(np.asfortranarray(inverse.astype(np.float32)), x.copy())
        return chol, inverse, linalg.whiten(inverse, x, centre), z32

    native = everything()
    monkeypatch.setattr(linalg, "_native", {name: None for name in linalg._ROUTINES})
    assert linalg._native_routine("dtrmm") is None
    for got, want in zip(everything(), native):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        linalg.cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        linalg.triangular_inverse(np.array([[1.0, 0.0], [2.0, 0.0]]))


def test_gmm_screen_scores_do_not_depend_on_the_thread_count(data, monkeypatch):
    """The screen (float32, centred once per chunk for all classes) and the float64 recomputation run in the chunk
    workers: the same scores, bit for bit, whatever the number of workers."""
    from ood_core.detectors import density

    monkeypatch.setattr(density, "SCREEN_DIM", 8)
    det = create("gmm", n_components=1, covariance="full", dim=4096).fit(
        FitContext(train=data[0], model=data[2], num_classes=K, seed=0))
    assert det._screens()
    scores = {}
    for n in (1, 2, 3):
        monkeypatch.setattr(linalg, "workers", lambda n=n: n)
        scores[n] = det.score(data[1])
    np.testing.assert_array_equal(scores[1], scores[2])
    np.testing.assert_array_equal(scores[1], scores[3])


def test_residual_norms_thin_residuals_stay_exact():
    """residual_norms takes |c|^2 - |V'c|^2 through a leading basis and recomputes rows whose residual is a thin
    share of |c| from the residual vector: both kinds of row equal the plain formula || c - V V'c ||."""
    basis = np.array([[1.0], [0.0], [0.0]])  # V = e1 in R^3: the residual is (0, c2, c3)
    x = np.array([[1.0, 2.0, 2.0], [1e3, 1e-3, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    got = linalg.residual_norms(x, np.zeros(3), basis)
    # by hand: sqrt(4 + 4) = 2 sqrt 2; the thin row's residual is its second coordinate (1e-3 in float32); zero
    np.testing.assert_allclose(got, [2 * np.sqrt(2.0), float(np.float32(1e-3)), 0.0], rtol=1e-12, atol=0)
    rng = np.random.default_rng(4)
    d, k = 64, 8
    v = np.linalg.qr(rng.standard_normal((d, k)))[0]
    # rows of size ~1e6 in the subspace but for their float32 rounding (~0.03 per coordinate): |r|^2 / |c|^2 ~ 1e-14,
    # where |c|^2 - |V'c|^2 would lose every digit; and ordinary rows
    inside = rng.standard_normal((100, k)) @ v.T * 1e6
    rows = np.vstack([inside, rng.standard_normal((100, d))]).astype(np.float32)
    origin = v @ rng.standard_normal(k)  # in the subspace too
    c = rows.astype(np.float64) - origin
    expected = np.linalg.norm(c - (c @ v) @ v.T, axis=1)
    np.testing.assert_allclose(linalg.residual_norms(rows, origin, v), expected, rtol=1e-6)


def test_float64_blocks_cover_the_rows_in_reused_thread_buffers():
    """float64_blocks yields consecutive blocks of block_rows(D) rows covering x once, as float64 (centred when a
    centre is given), all in one buffer; the next walk in this thread reuses it, and a walk nested in another
    gets a buffer of its own."""
    d = 300
    step = linalg.block_rows(d)
    assert step == 2**19 // (8 * d) and linalg.block_rows(10**6) == 8
    x = np.random.default_rng(5).standard_normal((2 * step + 7, d)).astype(np.float32)
    centre = np.linspace(-1.0, 1.0, d)
    spans, starts = [], set()
    for start, stop, rows in linalg.float64_blocks(x, centre):
        assert rows.dtype == np.float64 and rows.shape == (stop - start, d)
        np.testing.assert_array_equal(rows, x[start:stop].astype(np.float64) - centre)
        spans.append((start, stop))
        starts.add(rows.ctypes.data)
        for _, _, inner in linalg.float64_blocks(x[:3]):  # nested: must not overwrite the outer block
            assert not np.shares_memory(inner, rows)
        np.testing.assert_array_equal(rows, x[start:stop].astype(np.float64) - centre)
    assert spans == [(0, step), (step, 2 * step), (2 * step, 2 * step + 7)]
    assert len(starts) == 1  # one buffer for the walk
    walked = [(rows.ctypes.data, rows.copy()) for _, _, rows in linalg.float64_blocks(x)]
    assert len({a for a, _ in walked}) == 1
    np.testing.assert_array_equal(np.concatenate([r for _, r in walked]), x.astype(np.float64))
    again = [rows.ctypes.data for _, _, rows in linalg.float64_blocks(x)]
    assert set(again) == {walked[0][0]}  # the finished walk's buffer, reused


def test_nci_where_the_centred_projection_cancels():
    """NCI takes w.(h - mu) as w.h - w.mu; where that difference cancels to below 1e-8 of its terms (h near mu and
    h - mu nearly orthogonal to w_pred) it recomputes w.(h - mu) from h - mu. A hand-made row where the difference
    would carry a relative error of about 1e-5: the score equals the exact float64 value to 1e-7."""
    rng = np.random.default_rng(6)
    d = 16
    centre = (100.0 + rng.integers(0, 64, d) / 8.0).astype(np.float32)
    spread = (rng.integers(1, 32, (3, d)) / 4.0).astype(np.float32)
    train_h = np.vstack([centre + spread, centre - spread])  # float64 sums exact: mu = centre exactly
    query = (centre + (rng.integers(-64, 64, d) / 4096.0)).astype(np.float32)  # near mu; h - mu exact in float64
    c = query.astype(np.float64) - centre
    r = rng.standard_normal(d)
    w0 = r - (r @ c) / (c @ c) * c + 1e-6 * c / np.linalg.norm(c)  # w0.c = 1e-6 |c|, against w0.h ~ 1e2
    w = np.vstack([w0, rng.standard_normal((2, d))])
    queries = np.vstack([query, centre + rng.integers(-64, 64, (4, d)).astype(np.float32)]).astype(np.float32)
    logits = np.zeros((len(queries), 3), dtype=np.float32)
    logits[:, 0] = 1.0  # every query predicted as class 0
    train = Outputs(np.zeros((len(train_h), 3), dtype=np.float32), train_h, np.arange(len(train_h)) % 3)
    det = create("nci", alpha=0.0).fit(FitContext(train=train, model=Head(w, np.zeros(3)), num_classes=3, seed=0))
    cs = queries.astype(np.float64) - centre
    expected = -(cs @ w0) / np.linalg.norm(cs, axis=1)
    np.testing.assert_allclose(det.score(Outputs(logits, queries, np.zeros(len(queries), dtype=int))), expected,
                               rtol=1e-7)
    wh, wm = query.astype(np.float64) @ w0, centre.astype(np.float64) @ w0
    assert abs(wh - wm) < 1e-8 * (abs(wh) + abs(wm))  # the first row does take the direct route


def test_nci_l1_norm_of_signed_features(data):
    """NCI's |h|_1 sums magnitudes: on features with negative entries (a network without a final ReLU) the score
    equals the formula with alpha large enough for the norm to count, across several blocks of rows."""
    train, test, head = data
    shift = lambda o: Outputs(o.logits, (o.features - np.float32(0.7)).astype(np.float32), o.labels)  # noqa: E731
    signed_train, signed_test = shift(train), shift(test)
    assert (signed_test.features < 0).mean() > 0.2
    assert len(signed_test) > linalg.block_rows(signed_test.features.shape[1])
    got = create("nci", alpha=0.1).fit(FitContext(train=signed_train, model=head, num_classes=K, seed=0)) \
        .score(signed_test)
    h = signed_test.features.astype(np.float64)
    c = h - signed_train.features.astype(np.float64).mean(0)
    wp = head.head_weight[signed_test.logits.argmax(1)]
    expected = -((c * wp).sum(1) / np.linalg.norm(c, axis=1) + 0.1 * np.abs(h).sum(1))
    _close(got, expected)


def test_l2_normalise_and_nnguide_bank_keep_their_bits():
    """l2_normalise works by blocks of rows in the chunk workers, and NNGuide scales its bank chunk by chunk into
    float32: both give the bits of the one-call formulas, x / max(|x|, 1e-12) and (z * E).astype(float32), on an
    array of many chunks and blocks with a zero row."""
    from ood_core.neighbours import l2_normalise

    rng = np.random.default_rng(7)
    x = rng.standard_normal((40_005, 40)).astype(np.float32)
    x[3] = 0.0
    expected = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    got = l2_normalise(x)
    assert got.dtype == np.float32 and len(linalg.row_chunks(len(x), 40)) > 1 and linalg.block_rows(40) < 13_000
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[3], 0.0)
    logits = rng.normal(0.0, 3.0, (len(x), K)).astype(np.float32)
    det = create("nnguide", k=5).fit(FitContext(train=Outputs(logits, x, np.arange(len(x)) % K), model=None,
                                                  num_classes=K, seed=0))
    from ood_core.detectors.base import logsumexp as confidence_of  # NNGuide's E, the bits it scales by

    confidence = confidence_of(logits)
    np.testing.assert_allclose(confidence, logsumexp(logits.astype(np.float64), axis=1), rtol=1e-12)
    np.testing.assert_array_equal(det.bank_, (expected * confidence[:, None]).astype(np.float32))
