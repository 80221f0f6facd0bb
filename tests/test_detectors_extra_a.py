"""Known-answer tests of the detectors added in logits.py (klm, gen, cosine), gradients.py (gradnorm,
mahalanobis_pre), activations.py (ash_p, ash_b, ash_s, scale, dice, vra), openset.py (openmax) and
uncertainty.py (mc_dropout, ensemble): each formula recomputed independently on small arrays, the sign on an
easy separable case, independence from sample order and batch size, and MC-dropout determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial import distance as spd
from torch import nn

from ood_core import metrics
from ood_core.detectors import REGISTRY, FitContext, NotFittedError, create
from ood_core.inference import ModelAdapter, Outputs, run_inference

NEW = ["klm", "gen", "cosine", "gradnorm", "mahalanobis_pre", "ash_p", "ash_b", "ash_s", "scale", "dice", "vra",
       "openmax", "mc_dropout", "ensemble"]


# --- a tiny real network: features h = ReLU(fc1(body(x))), dropout, linear head --------------------------------

class TinyNet(nn.Module):
    def __init__(self, d_in: int = 12, d_feat: int = 12, k: int = 3, p: float = 0.5, dropout: bool = True):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten())
        self.fc1 = nn.Linear(d_in, d_feat)
        self.dropout = nn.Dropout(p) if dropout else nn.Identity()
        self.head = nn.Linear(d_feat, k)

    def features(self, x):
        return torch.relu(self.fc1(self.body(x)))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def block_net(k: int = 3, units: int = 4, jitter: float = 0.0, seed: int = 0, dropout: bool = True) -> TinyNet:
    """fc1 = identity (h = ReLU(x)); head row c = indicator of units 4c..4c+3, bias 0 (plus optional jitter)."""
    d = k * units
    net = TinyNet(d, d, k, dropout=dropout)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.fc1.weight.copy_(torch.eye(d))
        net.fc1.bias.zero_()
        w = torch.zeros(k, d)
        for c in range(k):
            w[c, units * c:units * (c + 1)] = 1.0
        net.head.weight.copy_(w + jitter * torch.randn(k, d, generator=g))
        net.head.bias.zero_()
    return net.eval()


def easy_inputs(n_per_class: int, n_ood: int, seed: int, k: int = 3, units: int = 4):
    """ID: a strong block of activations (3 on the class's 4 units); OOD: one weak spike (0.5) on a random unit."""
    rng = np.random.default_rng(seed)
    d = k * units
    y = np.repeat(np.arange(k), n_per_class)
    x = np.abs(rng.normal(0, 0.05, (len(y), d)))
    for i, c in enumerate(y):
        x[i, units * c:units * (c + 1)] += 3.0 + rng.normal(0, 0.2, units)
    xo = np.abs(rng.normal(0, 0.05, (n_ood, d)))
    xo[np.arange(n_ood), rng.integers(0, d, n_ood)] += 0.5
    return x.astype(np.float32), y, xo.astype(np.float32)


def mixture_inputs(n: int, seed: int, k: int = 3, units: int = 4):
    """Open-set style unknowns: half-strength blocks of two known classes at once (large, ambiguous logits)."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(0, 0.05, (n, k * units)))
    for i in range(n):
        for c in rng.choice(k, 2, replace=False):
            x[i, units * c:units * (c + 1)] += 1.5 + rng.normal(0, 0.1, units)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def easy():
    net = block_net()
    adapter = ModelAdapter(net, "cpu", batch_size=16)
    xtr, ytr, _ = easy_inputs(200, 0, seed=1)
    xva, yva, _ = easy_inputs(10, 0, seed=2)
    xte, yte, xood = easy_inputs(20, 60, seed=3)
    xmix = mixture_inputs(60, seed=4)
    splits = {"train": (xtr, ytr), "val": (xva, yva), "test": (xte, yte), "ood": (xood, np.zeros(len(xood), int)),
              "ood_mix": (xmix, np.zeros(len(xmix), int))}
    out = {name: run_inference(net, x, y) for name, (x, y) in splits.items()}
    members = {i: ModelAdapter(block_net(jitter=0.1, seed=i), "cpu", batch_size=16) for i in range(1, 10)}
    calls = []

    def member_models(i):
        calls.append(i)
        return members[i]

    ctx = FitContext(train=out["train"], val=out["val"], model=adapter, num_classes=3, member_models=member_models,
                     seed=0)
    return {"net": net, "adapter": adapter, "out": out, "ctx": ctx, "calls": calls}


EASY_PARAMS = {"dice": {"sparsity": 50.0}}  # 24 of the 36 contributions are 0 here, so p = 90 would drop classes
# OpenMax's unknown logit is a share of the top logits, so unknowns with tiny logits (the weak spikes) can never
# get much unknown mass; its easy case is the open-set one: large logits between two known classes
EASY_OOD = {"openmax": "ood_mix"}


def entropy_rows(p):
    return np.array([stats.entropy(r) for r in p])


def softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def energy_np(h, w, b):
    z = np.asarray(h, dtype=np.float64) @ w.T + b
    m = z.max(axis=1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def outputs_of(logits, feats=None, labels=None):
    logits = np.asarray(logits, dtype=np.float64)
    n = len(logits)
    return Outputs(logits, np.zeros((n, 1)) if feats is None else np.asarray(feats, dtype=np.float64),
                   np.zeros(n, int) if labels is None else np.asarray(labels))


# --- registry metadata ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_metadata_and_sweeps(name):
    cls = REGISTRY[name]
    assert cls.title and cls.formula and cls.latex and cls.intuition and cls.reference
    assert "\n" not in cls.formula
    for pname, spec in cls.params.items():
        spec.validate(pname, spec.default)
        if spec.kind == "choice":
            assert spec.default in spec.choices
        else:
            assert len(spec.sweep) >= 3, f"{name}.{pname} needs a sweep list"
            for v in spec.sweep:
                spec.validate(pname, v)
    with pytest.raises(NotFittedError):
        create(name).score(outputs_of(np.zeros((2, 3))))


# --- output family ---------------------------------------------------------------------------------------------

def test_klm_matches_scipy_kl_to_validation_templates():
    rng = np.random.default_rng(0)
    val_logits = rng.normal(0, 2, (40, 4))
    val_logits[:, 3] -= 20  # class 3 is never predicted on validation: it has no template
    train = outputs_of(rng.normal(0, 2, (40, 4)))  # different data: the templates must come from val
    ctx = FitContext(train=train, val=outputs_of(val_logits), num_classes=4)
    test_logits = rng.normal(0, 3, (15, 4))
    got = create("klm").fit(ctx).score(outputs_of(test_logits))
    pv = softmax_np(val_logits)
    pred = pv.argmax(1)
    templates = [pv[pred == k].mean(0) for k in range(4) if (pred == k).any()]
    assert len(templates) == 3
    want = [min(stats.entropy(p, d) for d in templates) for p in softmax_np(test_logits)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # without a validation split the train split is used
    got_train = create("klm").fit(FitContext(train=outputs_of(val_logits))).score(outputs_of(test_logits))
    np.testing.assert_allclose(got_train, want, rtol=1e-9, atol=1e-12)


def test_klm_templates_stay_finite_where_the_mean_softmax_underflows():
    """Gaps of 800-900 nats: the softmax of the other classes is 0 in float64, so the mean probabilities underflow;
    KLM's templates are then recomputed in log space and equal log(mean_i p_i) computed by scipy's logsumexp."""
    from scipy.special import logsumexp as lse, log_softmax as lsm

    val = np.array([[0.0, -800.0, -900.0], [0.0, -850.0, -820.0], [0.0, -1.0, -2.0], [-3.0, 0.0, -900.0]])
    det = create("klm").fit(FitContext(train=outputs_of(val)))
    logp = lsm(val, axis=1)
    pred = val.argmax(1)
    want = np.stack([lse(logp[pred == k], axis=0) - np.log((pred == k).sum()) for k in (0, 1)])
    assert np.all(np.isfinite(det.log_templates_))
    np.testing.assert_allclose(det.log_templates_, want, rtol=1e-12)
    assert list(det.template_classes_) == [0, 1]


def test_gen_by_formula():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (20, 5))
    p = softmax_np(z)
    ps = -np.sort(-p, axis=1)
    for gamma, m in [(0.1, 100), (0.5, 2), (1.0, 1)]:
        got = create("gen", gamma=gamma, M=m).fit(FitContext(train=outputs_of(z))).score(outputs_of(z))
        top = ps[:, :min(m, 5)]
        np.testing.assert_allclose(got, (top ** gamma * (1 - top) ** gamma).sum(1), rtol=1e-9)
    # a hand case: p = (0.5, 0.25, 0.25), gamma = 1 -> 0.25 + 0.1875 + 0.1875
    z = np.log([[0.5, 0.25, 0.25]])
    assert create("gen", gamma=1.0).fit(FitContext(train=outputs_of(z))).score(outputs_of(z))[0] == pytest.approx(0.625)


def test_gen_on_many_rows_by_formula():
    """From 256 rows GEN sums over the classes column by column (softmax_columns, x^gamma as exp(gamma log x)):
    the formula to 1e-12, saturated rows (p_max = 1.0 in float64) still ranked, and an exact 0 term gives 0."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (600, 7))
    z[0] = [60.0, 0, 0, 0, 0, 0, 0]
    z[1] = [50.0, 0, 0, 0, 0, 0, 0]
    z[2] = [0.0, -800, 0, 0, 0, 0, 0]  # p_1 underflows to 0: its term is 0
    p = softmax_np(z)
    for gamma in (0.1, 1.0):
        got = create("gen", gamma=gamma).fit(FitContext(train=outputs_of(z))).score(outputs_of(z))
        q = 1 - p
        top = p.argmax(1)
        q[np.arange(len(p)), top] = np.array([np.delete(r, t).sum() for r, t in zip(p, top)])
        np.testing.assert_allclose(got, ((p * q) ** gamma).sum(1), rtol=1e-12)
        assert got[0] < got[1] and got[0] > 0


def test_gen_saturated_softmax_keeps_ranking():
    # p_max rounds to 1.0 in float64 for both rows; 1 - p_max must still differ
    z = np.array([[60.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    s = create("gen").fit(FitContext(train=outputs_of(z))).score(outputs_of(z))
    assert s[0] < s[1] and np.all(s > 0)


def test_cosine_by_hand(easy):
    rng = np.random.default_rng(2)
    h = np.abs(rng.normal(0, 1, (10, 12)))
    h[0] = 0.0  # zero vector: similarity 0
    w = easy["adapter"].head_weight
    got = create("cosine").fit(easy["ctx"]).score(outputs_of(np.zeros((10, 3)), h))
    want = [-max(0.0 if not r.any() else 1 - spd.cosine(r, wk) for wk in w) for r in h]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # a feature along class 1's weight vector has similarity 1
    e = np.zeros((1, 12))
    e[0, 4:8] = 2.0
    assert create("cosine").fit(easy["ctx"]).score(outputs_of(np.zeros((1, 3)), e))[0] == pytest.approx(-1.0)


# --- gradient family -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gradnorm_matches_autograd_per_sample(temperature):
    torch.manual_seed(0)
    head = nn.Linear(6, 4).double()
    h = torch.relu(torch.randn(12, 6, dtype=torch.float64)) * 3
    with torch.no_grad():
        logits = head(h)
    want = []
    for i in range(len(h)):
        head.zero_grad()
        logp = torch.log_softmax(head(h[i:i + 1]) / temperature, dim=1)
        u = torch.full_like(logp, 1.0 / 4)
        kl = (u * (torch.log(u) - logp)).sum()  # KL(uniform || softmax(f / T))
        kl.backward()
        want.append(-head.weight.grad.abs().sum().item())
    out = outputs_of(logits.numpy(), h.numpy())
    got = create("gradnorm", temperature=temperature).fit(FitContext(train=out)).score(out)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _mahalanobis_stats(feats, labels):
    """Independent class means and tied covariance (with the same tiny ridge as the shared helper)."""
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(feats)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov)


def test_mahalanobis_pre_epsilon_zero_is_mahalanobis(easy):
    ctx, out = easy["ctx"], easy["out"]
    a = create("mahalanobis_pre", epsilon=0.0).fit(ctx).score(out["ood"])
    b = create("mahalanobis").fit(ctx).score(out["ood"])
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_mahalanobis_pre_matches_per_sample_autograd():
    torch.manual_seed(3)
    net = TinyNet(d_in=8, d_feat=5, k=3).eval()
    adapter = ModelAdapter(net, "cpu", batch_size=4, input_std=0.5)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (30, 2, 2, 2)).astype(np.float32)
    y = np.arange(30) % 3
    train = run_inference(net, x, y)
    means, prec = _mahalanobis_stats(train.features.astype(np.float64), y)
    xt = rng.normal(0, 1.5, (7, 2, 2, 2)).astype(np.float32)
    eps = 0.01
    det = create("mahalanobis_pre", epsilon=eps).fit(FitContext(train=train, model=adapter, num_classes=3))
    got = det.score(run_inference(net, xt, np.zeros(7, int)))
    mu, pr = torch.tensor(means), torch.tensor(prec)
    want = []
    for i in range(len(xt)):
        xi = torch.tensor(xt[i:i + 1], requires_grad=True)
        h = net.features(xi).double()[0]
        d = torch.stack([(h - mu[c]) @ pr @ (h - mu[c]) for c in range(3)])
        d[d.argmin()].backward()
        x2 = xi.detach() - (eps / 0.5) * xi.grad.sign()
        with torch.no_grad():
            h2 = net.features(x2).double()[0]
            want.append(min(((h2 - mu[c]) @ pr @ (h2 - mu[c])).item() for c in range(3)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the step goes towards the closest class: the ID distances shrink
    d0 = create("mahalanobis_pre", epsilon=0.0).fit(FitContext(train=train, model=adapter, num_classes=3)).score(train)
    assert np.mean(det.score(train) < d0) > 0.9


# --- activation family -----------------------------------------------------------------------------------------

H10 = np.array([[0.5, 3.0, 0.0, 1.0, 2.0, 0.1, 4.0, 0.2, 1.5, 0.7]])  # sum 13.0; top 3: 4 (6), 3 (1), 2 (4)


@pytest.fixture(scope="module")
def head10():
    torch.manual_seed(5)
    net = TinyNet(d_in=10, d_feat=10, k=3).eval()
    return ModelAdapter(net, "cpu")


def _fit_on(name, adapter, train_feats=None, **params):
    feats = H10 if train_feats is None else train_feats
    train = outputs_of(np.zeros((len(feats), 3)), feats)
    return create(name, **params).fit(FitContext(train=train, model=adapter, num_classes=3))


def test_ash_by_hand(head10):
    w, b = head10.head_weight, head10.head_bias
    out = outputs_of(np.zeros((1, 3)), H10)
    # p = 70: k = 10 - round(7) = 3 kept
    ash_p = np.array([[0, 3.0, 0, 0, 2.0, 0, 4.0, 0, 0, 0]])
    ash_b = np.array([[0, 13 / 3, 0, 0, 13 / 3, 0, 13 / 3, 0, 0, 0]])
    ash_s = ash_p * np.exp(13.0 / 9.0)
    for name, shaped in [("ash_p", ash_p), ("ash_b", ash_b), ("ash_s", ash_s)]:
        got = _fit_on(name, head10, percentile=70.0).score(out)
        np.testing.assert_allclose(got, energy_np(shaped, w, b), rtol=1e-12, err_msg=name)
    # p = 90: k = 1 kept
    got = _fit_on("ash_b", head10, percentile=90.0).score(out)
    np.testing.assert_allclose(got, energy_np(np.array([[0, 0, 0, 0, 0, 0, 13.0, 0, 0, 0]]), w, b), rtol=1e-12)


def test_ash_ties_and_zero_features(head10):
    w, b = head10.head_weight, head10.head_bias
    h = np.array([[1.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0, 0], [0.0] * 10])
    got = _fit_on("ash_b", head10, percentile=80.0).score(outputs_of(np.zeros((2, 3)), h))  # k = 2
    want = energy_np(np.array([[1.5, 1.5, 0, 0, 0, 0, 0, 0, 0, 0], [0.0] * 10]), w, b)  # ties: lower index kept
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.all(np.isfinite(_fit_on("ash_s", head10).score(outputs_of(np.zeros((2, 3)), h))))
    assert np.all(np.isfinite(_fit_on("scale", head10).score(outputs_of(np.zeros((2, 3)), h))))


def test_scale_by_hand(head10):
    w, b = head10.head_weight, head10.head_bias
    got = _fit_on("scale", head10, percentile=70.0).score(outputs_of(np.zeros((1, 3)), H10))
    # s1 = 13, s2 = 4 + 3 + 2 = 9; the whole unpruned h is scaled, the bias is not
    np.testing.assert_allclose(got, energy_np(H10 * np.exp(13 / 9), w, b), rtol=1e-12)


def test_dice_mask_by_hand():
    net = TinyNet(d_in=3, d_feat=3, k=2).eval()
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]]))
        net.head.bias.copy_(torch.tensor([0.1, -0.2]))
    adapter = ModelAdapter(net)
    train_h = np.array([[0.0, 4.0, 1.0], [2.0, 0.0, 0.0]])  # mean (1, 2, 0.5)
    # contributions (1, -2, 1; 0.5, 6, -1); 50th percentile of {-2, -1, 0.5, 1, 1, 6} = 0.75
    det = _fit_on("dice", adapter, train_h, sparsity=50.0)
    np.testing.assert_array_equal(det.mask_, [[True, False, True], [False, True, False]])
    h = np.array([[1.0, 2.0, 3.0]])
    got = det.score(outputs_of(np.zeros((1, 2)), h))
    w_masked = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    np.testing.assert_allclose(got, energy_np(h, w_masked, np.array([0.1, -0.2])), rtol=1e-6)


def test_vra_by_hand():
    net = TinyNet(d_in=2, d_feat=2, k=2).eval()
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 0.2]]))
        net.head.bias.copy_(torch.tensor([0.0, 0.4]))
    adapter = ModelAdapter(net)
    train_h = np.stack([np.arange(11.0), np.arange(11.0) * 10], axis=1)  # per unit: q60 = (6, 60), q90 = (9, 90)
    det = _fit_on("vra", adapter, train_h, q_low=60.0, q_high=90.0, gamma=0.5)
    np.testing.assert_allclose(det.alpha_, [6, 60])
    np.testing.assert_allclose(det.beta_, [9, 90])
    h = np.array([[5.0, 95.0], [7.0, 50.0], [9.5, 60.0]])
    shaped = np.array([[0.0, 90.0], [7.5, 0.0], [9.0, 60.5]])  # < alpha -> 0, > beta -> beta, else + gamma
    got = det.score(outputs_of(np.zeros((3, 2)), h))
    np.testing.assert_allclose(got, energy_np(shaped, adapter.head_weight, adapter.head_bias), rtol=1e-6)
    with pytest.raises(ValueError, match="q_low"):
        _fit_on("vra", adapter, train_h, q_low=80.0, q_high=70.0)


# --- open set --------------------------------------------------------------------------------------------------

def test_weibull_fit_high_is_scipy_mle():
    from ood_core.detectors.openset import fit_weibull_high, weibull_high_cdf

    rng = np.random.default_rng(4)
    data = rng.weibull(1.7, 300) * 2.0
    tail = np.sort(data)[-40:]
    k, log_scale, small = fit_weibull_high(data, 40, translate=1.0)
    assert small == tail[0]
    c, _, sc = stats.weibull_min.fit(tail + 1.0 - tail[0], floc=0)
    assert k == pytest.approx(c, rel=1e-3) and np.exp(log_scale) == pytest.approx(sc, rel=1e-3)
    x = np.array([tail[0], tail[20], tail[-1]])
    np.testing.assert_allclose(weibull_high_cdf(x, k, log_scale, small, translate=1.0),
                               stats.weibull_min.cdf(x + 1.0 - small, k, scale=np.exp(log_scale)), rtol=1e-9)
    # libMR's default shift of 10000: still the likelihood maximum (any nearby parameters fit worse)
    k, log_scale, small = fit_weibull_high(data, 20)
    t = np.sort(data)[-20:] + 10000.0 - small

    def nll(kk, ll):
        return -stats.weibull_min.logpdf(t, kk, scale=np.exp(ll)).sum()

    best = nll(k, log_scale)
    for dk, dl in [(1.01, 0), (0.99, 0), (1, 1e-7), (1, -1e-7)]:
        assert nll(k * dk, log_scale + dl) > best


def _openmax_reference(train_logits, labels, test_logits, tail_size, alpha):
    """OpenMax written out per sample after the paper's / OpenOOD's loops (eucos distance)."""
    from ood_core.detectors.openset import fit_weibull_high

    k = train_logits.shape[1]
    correct = train_logits.argmax(1) == labels
    mavs, models = [], []
    for c in range(k):
        av = train_logits[correct & (labels == c)]
        mav = av.mean(0)
        d = np.array([spd.euclidean(mav, a) / 200.0 + spd.cosine(mav, a) for a in av])
        mavs.append(mav)
        models.append(fit_weibull_high(d, tail_size))
    probs = []
    for v in test_logits:
        ranked = v.argsort()[::-1][:alpha]
        omega = np.zeros(k)
        omega[ranked] = [(alpha + 1 - i) / alpha for i in range(1, alpha + 1)]
        scores, scores_u = [], []
        for c in range(k):
            shape, log_scale, small = models[c]
            dist = spd.euclidean(mavs[c], v) / 200.0 + spd.cosine(mavs[c], v)
            wscore = stats.weibull_min.cdf(dist + 10000.0 - small, shape, scale=np.exp(log_scale))
            modified = v[c] * (1 - wscore * omega[c])
            scores.append(modified)
            scores_u.append(v[c] - modified)
        e = np.exp(np.array(scores))
        eu = np.exp(np.sum(scores_u))
        probs.append(eu / (e.sum() + eu))
    return np.array(probs)


def test_openmax_matches_reference_loop():
    rng = np.random.default_rng(6)
    k = 4
    labels = np.repeat(np.arange(k), 25)
    train = rng.normal(0, 1.0, (len(labels), k)) + 6.0 * np.eye(k)[labels]
    train[:3] = rng.normal(0, 1.0, (3, k)) + 6.0 * np.eye(k)[(labels[:3] + 1) % k]  # misclassified: excluded
    test = np.concatenate([rng.normal(0, 1.0, (6, k)) + 6.0 * np.eye(k)[rng.integers(0, k, 6)],
                           rng.normal(0, 2.0, (6, k))])
    ctx = FitContext(train=outputs_of(train, labels=labels), num_classes=k)
    det = create("openmax", tail_size=10, alpha=2).fit(ctx)
    got = det.score(outputs_of(test))
    np.testing.assert_allclose(got, _openmax_reference(train, labels, test, 10, 2), rtol=1e-7, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1))


def test_openmax_needs_correct_samples_per_class():
    logits = np.array([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0]])
    with pytest.raises(ValueError, match="class 1"):
        create("openmax").fit(FitContext(train=outputs_of(logits, labels=np.array([0, 0, 1]))))


# --- uncertainty -----------------------------------------------------------------------------------------------

def test_mc_dropout_known_answer_and_determinism(easy):
    net, adapter, ctx = easy["net"], easy["adapter"], easy["ctx"]
    out = easy["out"]["ood"].subset(np.arange(10))
    passes = 5
    det = create("mc_dropout", passes=passes).fit(ctx)
    got = det.score(out)
    # the documented masks: pass t keeps unit j where default_rng([seed, t, 0]).random(D) >= p, scaled by 1/(1-p)
    with torch.no_grad():
        h = net.features(torch.from_numpy(out.inputs)).double()
        w, b = net.head.weight.double(), net.head.bias.double()
        probs = []
        for t in range(passes):
            keep = np.random.default_rng([0, t, 0]).random(12) >= 0.5
            probs.append(torch.softmax((h * torch.tensor(keep * 2.0)) @ w.T + b, 1).numpy())
    probs = np.stack(probs)
    np.testing.assert_allclose(got, entropy_rows(probs.mean(0)), rtol=1e-5)
    mi = create("mc_dropout", passes=passes, measure="mutual_info").fit(ctx).score(out)
    want_mi = entropy_rows(probs.mean(0)) - np.mean([entropy_rows(p) for p in probs], axis=0)
    np.testing.assert_allclose(mi, want_mi, rtol=1e-4, atol=1e-7)
    # same seed, same scores; another seed, other scores; the model is left deterministic and in eval mode
    np.testing.assert_array_equal(create("mc_dropout", passes=passes).fit(ctx).score(out), got)
    other = FitContext(train=ctx.train, model=adapter, num_classes=3, seed=1)
    assert not np.allclose(create("mc_dropout", passes=passes).fit(other).score(out), got)
    assert not net.training and not net.dropout._forward_hooks
    np.testing.assert_allclose(adapter.forward(out.inputs)[0], out.logits, rtol=1e-6)


class DropoutInsideFeatures(TinyNet):
    """Dropout inside `features` too: the features-once shortcut must not apply."""

    def features(self, x):
        return self.dropout(torch.relu(self.fc1(self.body(x))))

    def forward(self, x):
        return self.head(self.features(x))


def test_mc_dropout_shortcut_equals_full_passes(easy):
    from ood_core.detectors.uncertainty import mc_dropout_logits

    x = easy["out"]["ood"].inputs[:13]
    fast = mc_dropout_logits(easy["adapter"], x, 6, seed=3)
    full = mc_dropout_logits(easy["adapter"], x, 6, seed=3, shortcut=False)
    np.testing.assert_allclose(fast, full, rtol=1e-6, atol=1e-6)
    # dropout inside features: full passes, each sample's features masked once per pass
    torch.manual_seed(0)
    net = DropoutInsideFeatures(d_in=12, d_feat=5, k=3).eval()
    got = mc_dropout_logits(ModelAdapter(net, batch_size=4), x, 3, seed=2)
    with torch.no_grad():
        h = torch.relu(net.fc1(torch.from_numpy(x))).double()
        for t in range(3):
            keep = np.random.default_rng([2, t, 0]).random(5) >= 0.5
            want = (h * torch.tensor(keep * 2.0)) @ net.head.weight.double().T + net.head.bias.double()
            np.testing.assert_allclose(got[t], want.numpy(), rtol=1e-5, atol=1e-6)


def test_the_cost_estimate_knows_which_models_take_mc_dropouts_shortcut(easy):
    """reruns_head_only answers what mc_dropout_logits does: the shortcut for dropout between features and head, whole
    passes for dropout inside the features; on a copy of the network (no hook left on the shared one)."""
    from ood_core.detectors.uncertainty import reruns_head_only

    x = easy["out"]["ood"].inputs[:13]
    assert reruns_head_only(easy["adapter"], x)
    torch.manual_seed(0)
    net = DropoutInsideFeatures(d_in=12, d_feat=5, k=3).eval()
    assert not reruns_head_only(ModelAdapter(net, batch_size=4), x)
    assert not net.dropout._forward_hooks and not easy["adapter"].model.dropout._forward_hooks
    with pytest.raises(ValueError, match="no dropout"):
        reruns_head_only(ModelAdapter(block_net(dropout=False)), x)


def test_mc_dropout_needs_dropout():
    adapter = ModelAdapter(block_net(dropout=False))
    x, y, _ = easy_inputs(3, 0, seed=0)
    with pytest.raises(ValueError, match="no dropout"):
        create("mc_dropout").fit(FitContext(train=run_inference(adapter.model, x, y), model=adapter))


def test_ensemble_entropy_of_mean_softmax(easy):
    ctx, out = easy["ctx"], easy["out"]["ood"]
    easy["calls"].clear()
    det = create("ensemble", members=3).fit(ctx)
    assert easy["calls"] == [1, 2]  # member 0 is the main model: its cached logits are used
    got = det.score(out)
    members = [out.logits] + [ctx.member_models(i).forward(out.inputs)[0] for i in (1, 2)]
    p = softmax_np(np.stack(members))
    np.testing.assert_allclose(got, entropy_rows(p.mean(0)), rtol=1e-5)
    mp = create("ensemble", members=3, measure="max_prob").fit(ctx).score(out)
    np.testing.assert_allclose(mp, -p.mean(0).max(1), rtol=1e-6)
    with pytest.raises(ValueError, match="member"):
        create("ensemble").fit(FitContext(train=ctx.train, model=ctx.model))


# --- every new detector: sign on an easy case, order and batch-size independence --------------------------------

@pytest.mark.parametrize("name", NEW)
def test_sign_on_easy_separable_case(easy, name):
    det = create(name, **EASY_PARAMS.get(name, {})).fit(easy["ctx"])
    s_id, s_ood = det.score(easy["out"]["test"]), det.score(easy["out"][EASY_OOD.get(name, "ood")])
    assert np.all(np.isfinite(s_id)) and np.all(np.isfinite(s_ood))
    assert metrics.auroc(s_id, s_ood) > 0.95


@pytest.mark.parametrize("name", NEW)
def test_independent_of_order_and_batch_size(easy, name):
    params = dict(EASY_PARAMS.get(name, {}), **({"passes": 4} if name == "mc_dropout" else {}))
    det = create(name, **params).fit(easy["ctx"])
    test = easy["out"]["test"]
    base = det.score(test)
    perm = np.random.default_rng(7).permutation(len(test))
    np.testing.assert_allclose(det.score(test.subset(perm)), base[perm], rtol=1e-6, atol=1e-9)
    if REGISTRY[name].runs_network:
        adapters = [easy["adapter"]] + ([] if name != "ensemble" else det.members_)
        sizes = [a.batch_size for a in adapters]
        try:
            for a in adapters:
                a.batch_size = 7
            np.testing.assert_allclose(det.score(test), base, rtol=1e-5, atol=1e-7)
            # scored alone, a sample gets the same score as within its split
            np.testing.assert_allclose(det.score(test.subset(np.array([5]))), base[[5]], rtol=1e-5, atol=1e-7)
        finally:
            for a, s in zip(adapters, sizes):
                a.batch_size = s
