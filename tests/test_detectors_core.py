"""Detectors: each formula recomputed independently, and registry-wide contract checks.

The contract checks iterate ood_core.detectors.REGISTRY, so detectors added later are covered too.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.special import logsumexp as sp_logsumexp
from scipy.special import softmax as sp_softmax
from scipy.stats import entropy as sp_entropy
from sklearn.covariance import EmpiricalCovariance
from torch import nn

from ood_core import metrics
from ood_core.detectors import FAMILIES, REGISTRY, FitContext, NotFittedError, Param, create, default_params
from ood_core.detectors.base import NEEDS
from ood_core.detectors.logits import fit_temperature
from ood_core.inference import ModelAdapter, Outputs, run_inference


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread


# --- a tiny real network ---------------------------------------------------------------------------

class TinyNet(nn.Module):
    """Same interface as SmallCNN: body (conv + ReLU), feature_maps, features, head, dropout, forward.

    With the default identity weights, features(x) = spatial mean of relu(x): inputs are feature vectors
    laid out as (n, D, 2, 2) images, so the features of hand-made inputs are known.
    """

    def __init__(self, d: int = 16, k: int = 3, identity: bool = True, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(d, d, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(d, d)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(d, k)
        with torch.no_grad():
            if identity:
                self.body[0].weight.copy_(torch.eye(d)[:, :, None, None])
                self.fc1.weight.copy_(torch.eye(d))
                self.fc1.bias.zero_()
            else:
                for p in (self.body[0].weight, self.fc1.weight, self.fc1.bias, self.head.weight, self.head.bias):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.in_channels, self.num_classes, self.feature_dim = d, k, d

    @property
    def last_conv(self) -> nn.Module:
        return self.body[-1]

    def feature_maps(self, x):
        return self.body(x)

    def features_from_maps(self, maps):
        return torch.relu(self.fc1(self.pool(maps).flatten(1)))

    def features(self, x):
        return self.features_from_maps(self.feature_maps(x))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


D, K = 16, 3  # feature dim, classes; dims 0..8 are three class blocks, 9..15 nuisance dims the head ignores


def _class_head(model: TinyNet) -> None:
    with torch.no_grad():
        w = torch.zeros(K, D)
        for c in range(K):
            w[c, 3 * c:3 * c + 3] = 1.0
        model.head.weight.copy_(w)
        model.head.bias.copy_(torch.tensor([0.1, -0.05, 0.02]))


def _id_features(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % K
    h = np.abs(rng.normal(0.0, 0.3, size=(n, D)))
    h[:, 9:] *= 0.2  # the nuisance dims vary least: they span the residual (non-principal) subspace of ID
    for c in range(K):
        h[y == c, 3 * c:3 * c + 3] += 4.0
    return h, y


def _ood_features(n: int, rng: np.random.Generator) -> np.ndarray:
    h = np.abs(rng.normal(0.0, 0.3, size=(n, D)))
    # far away along directions the head ignores, with a feature norm like ID's (norm-based scores stay fair)
    h[:, 9:] += 2.0 + rng.normal(0.0, 0.3, size=(n, D - 9))
    return h


def _as_images(h: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, D) non-negative features -> (n, D, 2, 2) inputs whose spatial mean is h."""
    jitter = rng.uniform(-0.02, 0.02, size=(len(h), D, 2, 2))
    jitter -= jitter.mean(axis=(2, 3), keepdims=True)
    x = h[:, :, None, None] + jitter
    return np.maximum(x, 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def easy():
    """ID: confident, clustered; OOD: far away with flat logits. Outputs from real forward passes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyNet(D, K)
    _class_head(model)
    model.eval()
    adapter = ModelAdapter(model, "cpu", batch_size=64, input_std=1.0)

    def outputs(h, y):
        return run_inference(model, _as_images(h, rng), y, "cpu", batch_size=64)

    # many train samples per class: methods that reject the tail of each class's train distribution (OpenMax's
    # Weibull fit on the 20 largest distances) then flag only a small fraction of ID test samples
    h_tr, y_tr = _id_features(1500, rng)
    h_va, y_va = _id_features(90, rng)
    h_te, y_te = _id_features(150, rng)
    h_ood = _ood_features(150, rng)

    def member(i: int) -> ModelAdapter:
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            m.head.weight.add_(0.05 * torch.randn(m.head.weight.shape, generator=g))
        return ModelAdapter(m.eval(), "cpu", batch_size=64, input_std=1.0)

    ctx = FitContext(train=outputs(h_tr, y_tr), val=outputs(h_va, y_va), model=adapter, num_classes=K,
                     member_models=member, seed=0)
    return {"ctx": ctx, "test": outputs(h_te, y_te), "ood": outputs(h_ood, np.full(150, -1)), "model": model}


def _concat(a: Outputs, b: Outputs) -> Outputs:
    return Outputs(np.concatenate([a.logits, b.logits]), np.concatenate([a.features, b.features]),
                   np.concatenate([a.labels, b.labels]), np.concatenate([a.inputs, b.inputs]))


def _hand_outputs(logits, features=None, labels=None) -> Outputs:
    logits = np.asarray(logits, dtype=np.float32)
    n = len(logits)
    if features is None:
        features = np.zeros((n, 2), np.float32)
    if labels is None:
        labels = logits.argmax(1)
    return Outputs(logits, np.asarray(features, dtype=np.float32), np.asarray(labels))


@pytest.fixture(scope="module")
def random_logits():
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 3.0, size=(40, 5))
    z[0] = [1.0, 1.0, 1.0, 1.0, 1.0]  # a flat row
    z[1] = [30.0, -5.0, 0.0, 2.0, 1.0]  # a saturated row
    return z


def _fit(name, ctx=None, **params):
    ctx = ctx if ctx is not None else FitContext(train=_hand_outputs(np.zeros((2, 2))))
    return create(name, **params).fit(ctx)


# --- output-based: formulas ------------------------------------------------------------------------

def test_msp_is_negative_max_softmax(random_logits):
    out = _hand_outputs(random_logits)
    s = _fit("msp").score(out)
    ref = -torch.softmax(torch.tensor(out.logits, dtype=torch.float64), dim=1).max(1).values.numpy()
    np.testing.assert_allclose(s, ref, rtol=1e-12, atol=1e-12)
    assert s[0] == pytest.approx(-1 / 5)  # flat logits: max softmax = 1/K
    # hand case: logits (0, log 3) -> softmax (1/4, 3/4)
    assert _fit("msp").score(_hand_outputs([[0.0, np.log(3.0)]]))[0] == pytest.approx(-0.75, abs=1e-7)


def test_max_logit(random_logits):
    out = _hand_outputs(random_logits)
    np.testing.assert_allclose(_fit("max_logit").score(out), -out.logits.max(axis=1), rtol=1e-12)
    assert _fit("max_logit").score(_hand_outputs([[1.0, 7.0, -2.0]]))[0] == -7.0


@pytest.mark.parametrize("t", [1.0, 2.5, 0.3, 100.0])
def test_energy_is_negative_free_energy(random_logits, t):
    out = _hand_outputs(random_logits)
    s = _fit("energy", temperature=t).score(out)
    ref = (-t * torch.logsumexp(torch.tensor(out.logits, dtype=torch.float64) / t, dim=1)).numpy()
    np.testing.assert_allclose(s, ref, rtol=1e-10, atol=1e-10)


def test_energy_hand_value():
    # logits (0, 0): -log(2)
    assert _fit("energy").score(_hand_outputs([[0.0, 0.0]]))[0] == pytest.approx(-np.log(2.0))


def test_entropy_matches_scipy(random_logits):
    out = _hand_outputs(random_logits)
    s = _fit("entropy").score(out)
    p = sp_softmax(out.logits.astype(np.float64), axis=1)
    np.testing.assert_allclose(s, sp_entropy(p, axis=1), rtol=1e-9, atol=1e-12)
    assert s[0] == pytest.approx(np.log(5.0))  # uniform: log K
    assert s[1] == pytest.approx(0.0, abs=1e-10)  # saturated: ~0


def _nll(z, y, t):
    zt = z / t
    return float(np.mean(sp_logsumexp(zt, axis=1) - zt[np.arange(len(y)), y]))


@pytest.fixture(scope="module")
def overconfident():
    """Logits of a miscalibrated classifier: 70% correct but very confident, so the best T is well above 1."""
    rng = np.random.default_rng(11)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, k, n)) % k)
    z = rng.normal(0.0, 1.0, size=(n, k))
    z[np.arange(n), pred] += 8.0
    return z, y


def test_temperature_minimises_nll(overconfident):
    z, y = overconfident
    t_fit = fit_temperature(z, y)

    def grid_nll(grid):
        zt = z[None] / grid[:, None, None]  # (grid, n, K)
        return (sp_logsumexp(zt, axis=2) - zt[:, np.arange(len(y)), y]).mean(axis=1)

    coarse = np.exp(np.linspace(np.log(0.05), np.log(20.0), 301))  # 2% steps over the fitting range
    t_coarse = coarse[grid_nll(coarse).argmin()]
    fine = t_coarse * np.exp(np.linspace(-0.03, 0.03, 301))  # 0.02% steps around it
    nlls = grid_nll(fine)
    t_grid = fine[nlls.argmin()]
    assert t_fit > 1.5  # overconfident -> soften
    assert t_fit == pytest.approx(t_grid, rel=1e-3)
    assert _nll(z, y, t_fit) <= nlls.min() + 1e-9


def test_temp_scaling_detector_fits_on_val_and_is_rank_equivalent_to_msp(overconfident):
    z, y = overconfident
    rng = np.random.default_rng(2)
    train = _hand_outputs(rng.normal(size=(50, 4)), labels=rng.integers(0, 4, 50))  # must not be used
    val = _hand_outputs(z, labels=y)
    det = create("temp_scaling").fit(FitContext(train=train, val=val))
    assert det.temperature_ == pytest.approx(fit_temperature(val.logits, y), rel=1e-6)
    q = _hand_outputs(rng.normal(0.0, 4.0, size=(60, 4))).logits.astype(np.float64)
    s = det.score(_hand_outputs(q))
    p = sp_softmax(q / det.temperature_, axis=1).max(axis=1)
    np.testing.assert_allclose(s, -np.log(p), rtol=1e-8, atol=1e-10)
    # same order as -MSP at T*
    np.testing.assert_array_equal(np.argsort(s, kind="stable"), np.argsort(-p, kind="stable"))
    # without a validation split it falls back to train
    det2 = create("temp_scaling").fit(FitContext(train=val, val=None))
    assert det2.temperature_ == pytest.approx(det.temperature_, rel=1e-9)


def test_temp_scaling_keeps_ranking_when_softmax_saturates():
    # at a small T both rows have max softmax == 1.0 in float64, but the second is less confident
    det = create("temp_scaling")
    det.temperature_, det.fitted_ = 0.05, True
    s = det.score(_hand_outputs([[20.0, 0.0], [15.0, 0.0]]))
    assert sp_softmax(np.array([[20.0, 0.0], [15.0, 0.0]]) / 0.05, axis=1).max() == 1.0
    assert s[1] > s[0] > 0


# --- distance-based: formulas ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(5)
    n, d, k = 240, 6, 3
    y = np.arange(n) % k
    # a well-conditioned mixing (singular values 1..3), so the code's tiny ridge stays negligible
    a = np.linalg.qr(rng.normal(size=(d, d)))[0] @ np.diag(np.linspace(1.0, 3.0, d))
    h = rng.normal(size=(n, d)) @ a + 3.0 * np.eye(k, d)[y] * 2.0 + 1.0
    q = rng.normal(size=(50, d)) @ a * 1.5 + 0.5
    return h.astype(np.float32), y, q.astype(np.float32)


def test_mahalanobis_matches_sklearn_empirical_covariance(feats):
    h, y, q = feats
    ctx = FitContext(train=_hand_outputs(np.zeros((len(h), 3)), h, y), num_classes=3)
    s = create("mahalanobis").fit(ctx).score(_hand_outputs(np.zeros((len(q), 3)), q))
    h64, q64 = h.astype(np.float64), q.astype(np.float64)
    means = np.stack([h64[y == c].mean(0) for c in range(3)])
    prec = EmpiricalCovariance(assume_centered=True).fit(h64 - means[y]).precision_
    ref = np.min([np.einsum("nd,de,ne->n", q64 - m, prec, q64 - m) for m in means], axis=0)
    np.testing.assert_allclose(s, ref, rtol=1e-4)


def test_mahalanobis_hand_case():
    # two classes at (0,0) and (10,0), within-class covariance diag(1, 4) (from +-1 and +-2 offsets)
    offs = np.array([[1, 2], [1, -2], [-1, 2], [-1, -2]], float)
    h = np.concatenate([offs, offs + [10, 0]])
    y = np.array([0] * 4 + [1] * 4)
    det = create("mahalanobis").fit(FitContext(train=_hand_outputs(np.zeros((8, 2)), h, y), num_classes=2))
    s = det.score(_hand_outputs(np.zeros((3, 2)), [[0, 0], [2, 2], [9, 4]]))
    # (2,2): 4/1 + 4/4 = 5 ; (9,4) nearest class 1: 1/1 + 16/4 = 5
    np.testing.assert_allclose(s, [0.0, 5.0, 5.0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_is_kth_neighbour_distance_of_normalised_features(feats, k):
    h, y, q = feats
    det = create("knn", k=k).fit(FitContext(train=_hand_outputs(np.zeros((len(h), 3)), h, y)))
    s = det.score(_hand_outputs(np.zeros((len(q), 3)), q))
    zb = h.astype(np.float64) / np.linalg.norm(h.astype(np.float64), axis=1, keepdims=True)
    zq = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    ref = np.array([np.sort(np.linalg.norm(zb - v, axis=1))[k - 1] for v in zq])
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-5)


def test_knn_hand_case():
    # bank directions at 0, 90 and 180 degrees; query at 0 degrees (any length)
    bank = np.array([[1.0, 0.0], [0.0, 5.0], [-2.0, 0.0]])
    det = create("knn", k=2).fit(FitContext(train=_hand_outputs(np.zeros((3, 2)), bank, [0, 1, 0])))
    s = det.score(_hand_outputs(np.zeros((1, 2)), [[3.0, 0.0]]))
    assert s[0] == pytest.approx(np.sqrt(2.0), rel=1e-6)  # neighbours at distance 0, sqrt 2, 2


def _vim_reference(w, b, h_train, logit_train, h_test, logit_test, dim):
    """ViM as in the authors' code (haoqiwang/vim), negated to an unfamiliarity score."""
    u = -np.matmul(np.linalg.pinv(w), b)
    ec = EmpiricalCovariance(assume_centered=True)
    ec.fit(h_train - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    eig_vals, eigen_vectors = eig_vals.real, eigen_vectors.real
    ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
    vlogit_train = np.linalg.norm(np.matmul(h_train - u, ns), axis=-1)
    alpha = logit_train.max(axis=-1).mean() / vlogit_train.mean()
    vlogit = np.linalg.norm(np.matmul(h_test - u, ns), axis=-1) * alpha
    energy = sp_logsumexp(logit_test, axis=-1)
    return -(-vlogit + energy)


@pytest.mark.parametrize("dim", [3, 8])
def test_vim_matches_reference_implementation(dim):
    torch.manual_seed(3)
    d, k = 12, 4
    model = TinyNet(d, k, identity=False, seed=3).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.5, -1.0, 0.3, 2.0]))  # u = -W^+ b is non-zero
    adapter = ModelAdapter(model)
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(d, d))
    x_tr = (rng.normal(size=(200, d)) @ mix)[:, :, None, None].repeat(2, 2).repeat(2, 3).astype(np.float32)
    x_te = (rng.normal(size=(40, d)) @ mix * 2.0)[:, :, None, None].repeat(2, 2).repeat(2, 3).astype(np.float32)
    tr = run_inference(model, x_tr, np.zeros(200, int))
    te = run_inference(model, x_te, np.zeros(40, int))
    s = create("vim", dim=dim).fit(FitContext(train=tr, model=adapter, num_classes=k)).score(te)
    w = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    ref = _vim_reference(w, b, tr.features.astype(np.float64), tr.logits.astype(np.float64),
                         te.features.astype(np.float64), te.logits.astype(np.float64), dim)
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)


def test_vim_dim_is_capped_below_feature_dim(easy):
    # dim >= D leaves no residual space; the detector keeps one residual direction (dim = D - 1)
    ctx = easy["ctx"]
    a = create("vim", dim=2048).fit(ctx).score(easy["test"])
    b = create("vim", dim=D - 1).fit(ctx).score(easy["test"])
    np.testing.assert_allclose(a, b, rtol=1e-10)


# --- activation shaping: ReAct ---------------------------------------------------------------------

@pytest.mark.parametrize("p", [90.0, 70.0, 99.0])
def test_react_threshold_and_score(easy, p):
    ctx, test, model = easy["ctx"], easy["test"], easy["model"]
    det = create("react", percentile=p).fit(ctx)
    c = np.percentile(ctx.train.features, p)  # global over units and samples
    assert det.threshold_ == pytest.approx(c, rel=1e-6)
    with torch.no_grad():
        h = torch.tensor(test.features, dtype=torch.float64).clamp(max=float(c))
        ref = -torch.logsumexp(h @ model.head.weight.double().T + model.head.bias.double(), dim=1).numpy()
    np.testing.assert_allclose(det.score(test), ref, rtol=1e-6)


def test_react_with_high_percentile_equals_energy_when_nothing_is_clipped():
    model = TinyNet(4, 2, identity=False, seed=1).eval()
    adapter = ModelAdapter(model)
    h = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]] * 5)
    logits = h @ adapter.head_weight.T + adapter.head_bias
    ctx = FitContext(train=_hand_outputs(logits, h, [0, 1] * 5), model=adapter)
    det = create("react", percentile=99.9).fit(ctx)
    assert det.threshold_ == pytest.approx(np.percentile(h, 99.9))
    q = _hand_outputs(logits[:1], h[:1])  # (0, 1, 2, 3): all below the threshold, nothing clipped
    np.testing.assert_allclose(det.score(q), -sp_logsumexp(logits[:1], axis=1), rtol=1e-6)


# --- gradient-based: ODIN --------------------------------------------------------------------------

def _odin_reference(model, x: np.ndarray, temperature: float, eps_pixels: float, std: float) -> np.ndarray:
    """ODIN (Liang et al. 2018), one sample at a time with autograd: x~ = x - eps sign(-grad log S_yhat(x; T))."""
    out = []
    for xi in x:
        xt = torch.tensor(xi[None], requires_grad=True)
        logits = model.head(model.features(xt)) / temperature
        log_s = torch.log_softmax(logits, dim=1)
        log_s_max = log_s[0, logits.argmax(1)[0]]
        (g,) = torch.autograd.grad(log_s_max, xt)
        x_tilde = xt.detach() - (eps_pixels / std) * torch.sign(-g)
        with torch.no_grad():
            p = torch.softmax(model.head(model.features(x_tilde)).double() / temperature, dim=1)
        out.append(-float(p.max()))
    return np.array(out)


@pytest.fixture(scope="module")
def odin_setup():
    torch.manual_seed(4)
    model = TinyNet(6, 3, identity=False, seed=4).eval()
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, size=(30, 6, 2, 2)).astype(np.float32)
    return model, x


@pytest.mark.parametrize("temperature,eps", [(1000.0, 0.0014), (1.0, 0.05), (10.0, 0.0)])
@pytest.mark.parametrize("std", [1.0, 0.3])
def test_odin_matches_autograd_reference(odin_setup, temperature, eps, std):
    model, x = odin_setup
    adapter = ModelAdapter(model, batch_size=7, input_std=std)
    out = Outputs(np.zeros((len(x), 3), np.float32), np.zeros((len(x), 6), np.float32), np.zeros(len(x), int), x)
    det = create("odin", temperature=temperature, epsilon=eps).fit(FitContext(train=out, model=adapter))
    ref = _odin_reference(model, x, temperature, eps, std)
    np.testing.assert_allclose(det.score(out), ref, rtol=1e-6, atol=1e-9)


def test_odin_epsilon_is_in_pixel_units(odin_setup):
    model, x = odin_setup
    out = Outputs(np.zeros((len(x), 3), np.float32), np.zeros((len(x), 6), np.float32), np.zeros(len(x), int), x)
    a = create("odin", temperature=1.0, epsilon=0.02).fit(FitContext(train=out, model=ModelAdapter(model, input_std=0.5)))
    b = create("odin", temperature=1.0, epsilon=0.04).fit(FitContext(train=out, model=ModelAdapter(model, input_std=1.0)))
    np.testing.assert_allclose(a.score(out), b.score(out), rtol=1e-6)
    # and the step matters: without it the score is plain MSP at temperature 1
    c = create("odin", temperature=1.0, epsilon=0.0).fit(FitContext(train=out, model=ModelAdapter(model)))
    logits, _ = ModelAdapter(model).forward(x)
    np.testing.assert_allclose(c.score(out), -sp_softmax(logits.astype(np.float64), axis=1).max(1), rtol=1e-6)
    assert not np.allclose(a.score(out), c.score(out))
    # the step raises the confidence of the predicted class (first-order ODIN effect)
    assert np.mean(a.score(out) < c.score(out)) > 0.9


def test_odin_without_inputs_raises_value_error(odin_setup):
    model, x = odin_setup
    out = Outputs(np.zeros((3, 3), np.float32), np.zeros((3, 6), np.float32), np.zeros(3, int), None)
    det = create("odin").fit(FitContext(train=out, model=ModelAdapter(model)))
    with pytest.raises(ValueError, match="input"):
        det.score(out)


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if "model" in c.needs))
def test_detectors_needing_the_model_refuse_to_fit_without_it(name):
    out = _hand_outputs(np.eye(3) * 5, np.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match="model"):
        create(name).fit(FitContext(train=out, model=None, num_classes=3))


# --- registry-wide contract ------------------------------------------------------------------------

PROVIDED = {"logits", "features", "model", "feature_maps"}  # what the `easy` fixture can give (a classifier)
ALL = sorted(REGISTRY)
COVERED = [n for n in ALL if set(REGISTRY[n].needs) <= PROVIDED]
SKIPPED = [n for n in ALL if n not in COVERED]


def _covered(name: str) -> None:
    if name in SKIPPED:
        pytest.skip(f"{name} needs {set(REGISTRY[name].needs) - PROVIDED}, which this fixture does not provide")


@pytest.fixture(scope="module")
def fitted(easy):
    return {n: create(n).fit(easy["ctx"]) for n in COVERED}


@pytest.mark.parametrize("name", ALL)
def test_sign_on_easy_separable_case(name, easy, fitted):
    _covered(name)
    det = fitted[name]
    s_id, s_ood = det.score(easy["test"]), det.score(easy["ood"])
    assert s_id.shape == (len(easy["test"]),) and s_ood.shape == (len(easy["ood"]),)
    assert np.all(np.isfinite(s_id)) and np.all(np.isfinite(s_ood))
    assert metrics.auroc(s_id, s_ood) > 0.95, f"{name}: OOD must score higher (higher = more unfamiliar)"


@pytest.mark.parametrize("name", ALL)
def test_scoring_before_fit_raises(name, easy):
    with pytest.raises(NotFittedError):
        create(name).score(easy["test"])


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_raises(name):
    with pytest.raises(ValueError, match="unknown parameter"):
        create(name, no_such_parameter=1)


def _bad_values(p):
    if p.kind == "choice":
        return ["__not_a_choice__"]
    bad = ["abc", float("nan"), float("inf")]
    if p.low is not None:
        bad.append(p.low - max(1.0, abs(p.low)))
    if p.high is not None:
        bad.append(p.high + max(1.0, abs(p.high)))
    if p.kind == "int":
        bad.append(p.default + 0.5)
    return bad


@pytest.mark.parametrize("name", ALL)
def test_out_of_range_parameters_raise(name):
    for pname, p in REGISTRY[name].params.items():
        for v in _bad_values(p):
            with pytest.raises(ValueError, match=pname):
                create(name, **{pname: v})


@pytest.mark.parametrize("name", ALL)
def test_scores_do_not_depend_on_sample_order(name, easy, fitted):
    _covered(name)
    det = fitted[name]
    q = _concat(easy["test"], easy["ood"])
    perm = np.random.default_rng(9).permutation(len(q))
    np.testing.assert_allclose(det.score(q.subset(perm)), det.score(q)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_scores_do_not_depend_on_batch_size(name, easy, fitted):
    _covered(name)
    det = fitted[name]
    q = _concat(easy["test"], easy["ood"])
    half = len(q) // 2 + 3
    parts = np.concatenate([det.score(q.subset(np.arange(half))), det.score(q.subset(np.arange(half, len(q))))])
    np.testing.assert_allclose(parts, det.score(q), rtol=1e-5, atol=1e-6)
    one = det.score(q.subset(np.arange(5, 6)))
    np.testing.assert_allclose(one, det.score(q)[5:6], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_empty_split_gives_empty_scores(name, easy, fitted):
    _covered(name)
    assert fitted[name].score(easy["test"].subset(np.arange(0))).shape == (0,)


@pytest.mark.parametrize("name", ALL)
def test_fit_returns_self_and_does_not_mutate_params(name, easy):
    _covered(name)
    det = create(name)
    before = det.get_params()
    assert det.fit(easy["ctx"]) is det
    assert det.get_params() == before


@pytest.mark.parametrize("name", ALL)
def test_registry_entry_is_complete(name):
    cls = REGISTRY[name]
    assert cls.name == name
    for attr in ("title", "formula", "latex"):
        assert isinstance(getattr(cls, attr), str) and getattr(cls, attr).strip(), f"{name}.{attr} is empty"
    assert cls.references(), f"{name} cites no paper"  # their fields: tests/test_docs.py
    assert cls.family in FAMILIES
    assert cls.needs and set(cls.needs) <= set(NEEDS)
    for pname, p in cls.params.items():
        assert p.kind in ("float", "int", "choice"), pname
        assert p.scale in ("linear", "log"), pname
        if p.kind == "choice":
            assert p.default in p.choices
        else:
            if p.low is not None:
                assert p.low <= p.default, f"{name}.{pname}: default below low"
            if p.high is not None:
                assert p.default <= p.high, f"{name}.{pname}: default above high"
            if p.scale == "log":
                assert p.low is not None and p.low > 0, f"{name}.{pname}: a log slider needs low > 0"
        assert p.validate(pname, p.default) == p.default
        for v in p.sweep:
            p.validate(pname, v)  # raises if a sweep value is out of range
    # default construction works and stores the defaults
    det = cls()
    assert det.get_params() == {p: spec.default for p, spec in cls.params.items()}


# --- parameter specs: slider values ------------------------------------------------------------------

def test_param_grid_is_log_spaced_and_includes_default_sweep_and_bounds():
    p = Param(1000.0, 1.0, 10000.0, scale="log", sweep=(1.0, 10.0, 100.0, 1000.0, 5000.0))
    # nine log-spaced points over four decades (half a decade apart, 2 significant digits) plus the sweep's 5000
    assert p.grid(9) == [1.0, 3.2, 10.0, 32.0, 100.0, 320.0, 1000.0, 3200.0, 5000.0, 10000.0]
    opts = p.grid()
    assert opts == sorted(opts) and len(set(opts)) == len(opts) and 25 <= len(opts) <= 26
    assert {1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0} <= set(opts)
    ratios = np.diff(np.log10([v for v in opts if v != 5000.0]))
    assert ratios == pytest.approx(np.full(len(ratios), 4 / 24), abs=0.02)  # equal steps on a log axis
    off = Param(0.37, 0.01, 1.0, scale="log")
    assert off.grid(3) == [0.01, 0.1, 0.37, 1.0]  # a default off the grid is still offered
    k = Param(50, 1, 500, scale="log", kind="int", sweep=(1, 5, 10, 20, 50, 100, 200))
    assert k.grid(3) == [1, 5, 10, 20, 22, 50, 100, 200, 500]  # sqrt(500) = 22.4
    assert all(isinstance(v, int) for v in k.grid())


def test_param_slider_step_hits_the_default_and_the_sweep():
    eps = Param(0.0014, 0.0, 0.1, sweep=(0.0, 0.0005, 0.001, 0.0014, 0.002))
    step, decimals = eps.slider_step()
    assert decimals == 4 and step == pytest.approx(1e-4)
    assert Param(90.0, 50.0, 99.9, sweep=(70.0, 99.0)).slider_step() == (pytest.approx(0.1), 1)
    assert Param(0.5, 0.0, 1.0).slider_step() == (pytest.approx(0.01), 2)  # a hundredth of the range


def test_param_slider_options_offer_decades_where_a_linear_slider_would_be_unusable():
    # NCI's alpha: a plain slider over [0, 10] in steps of 1e-4 would take 100,000 steps; offered instead: 0, then
    # five log-spaced values a decade from the smallest positive default/sweep value (1e-4) up to the bound (10)
    alpha = Param(1e-4, 0.0, 10.0, sweep=(0.0, 1e-4, 1e-3, 1e-2, 1e-1))
    assert alpha.slider_options() == [0.0, 1e-4, 1.6e-4, 2.5e-4, 4e-4, 6.3e-4, 1e-3, 1.6e-3, 2.5e-3, 4e-3, 6.3e-3,
                                      0.01, 0.016, 0.025, 0.04, 0.063, 0.1, 0.16, 0.25, 0.4, 0.63, 1.0, 1.6, 2.5, 4.0,
                                      6.3, 10.0]
    assert set(alpha.sweep) <= set(alpha.slider_options())  # every sweep value can be chosen
    assert REGISTRY["nci"].params["alpha"].slider_options()[:2] == [0.0, 1e-4]
    # a plain slider where it has at most MAX_SLIDER_STEPS steps (ODIN's epsilon: 1,000 steps of 1e-4)
    assert Param(0.0014, 0.0, 0.1, sweep=(0.0, 0.0005, 0.001, 0.0014, 0.002)).slider_options() is None
    assert Param(0.5, 0.0, 1.0).slider_options() is None
    assert Param(5, 0, 100000, kind="int").slider_options() is None  # ints: a plain integer slider
    assert Param(0.0, 0.0, 1e6).slider_options() is None  # no positive value to start the decades from
    log = Param(1000.0, 1.0, 10000.0, scale="log")
    assert log.slider_options() == log.grid()
    assert Param("a", kind="choice", choices=("a", "b")).slider_options() is None


def test_default_params_are_every_parameter_at_its_default():
    assert default_params("knn") == {"k": REGISTRY["knn"].params["k"].default}
    assert default_params("msp") == {}
    for name, cls in REGISTRY.items():
        assert cls(**default_params(name)).get_params() == cls().get_params()


def test_runs_network_marks_the_detectors_that_need_the_network_again():
    # pages opt in to these as slow; feature maps come from another pass of the network
    assert all(cls.runs_network for cls in REGISTRY.values() if "feature_maps" in cls.needs)
    assert {"odin", "mahalanobis_pre", "gram", "mc_dropout", "ensemble"} <= {
        n for n, cls in REGISTRY.items() if cls.runs_network}
    # GradNorm's gradient is of the head only, in closed form from the cached outputs: not slow
    assert REGISTRY["gradnorm"].family == "gradient" and not REGISTRY["gradnorm"].runs_network
