"""The survey's open-set methods: RPL / ARPL (a training regime and its score), OpenGAN and C2AE on features.

Known answers: distances to reciprocal points on a hand-made case and their linear form in the head; the regime's
loss against its formula; OpenGAN's discriminator separating a Gaussian cluster from uniform features; C2AE
reconstructing better under the matching condition; every method well above chance on an easy separable toy set,
fitted on ID data only (the unknowns appear only when scoring).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ood_core import Spec, TrainConfig, estimates, metrics, pipeline
from ood_core.data import build_benchmark
from ood_core.detectors import REGISTRY, FitContext, create
from ood_core.detectors.classic import fit_bank_note, stratified_subsample
from ood_core.inference import Outputs
from ood_core.jobs import Cancelled
from ood_core.models import get_model
from ood_core.models.openset import (ARPL_MARGIN, RPL_WEIGHT, ReciprocalPoints, linear_head, reciprocal_logits,
                                     reciprocal_loss)
from ood_core.models.train import regime_loss
from ood_core.settings import detectors_for, is_applicable
from ood_core.spec import REGIME_TITLES, REGIMES

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread


def _outputs(h: np.ndarray, y: np.ndarray, logits: np.ndarray | None = None) -> Outputs:
    h = np.asarray(h, dtype=np.float32)
    z = np.zeros((len(h), 2), np.float32) if logits is None else np.asarray(logits, dtype=np.float32)
    return Outputs(z, h, np.asarray(y))


# --- reciprocal points -------------------------------------------------------------------------------------------

def test_reciprocal_distances_on_a_hand_made_case():
    h = torch.tensor([[2.0, 0.0]])
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # RPL: ||h - P_k||^2 / D = (4 / 2, (1 + 1) / 2); ARPL subtracts h.P_k = (0, 2)
    np.testing.assert_allclose(reciprocal_logits(h, points, adversarial=False).numpy(), [[2.0, 1.0]])
    np.testing.assert_allclose(reciprocal_logits(h, points, adversarial=True).numpy(), [[2.0, -1.0]])


@pytest.mark.parametrize("adversarial", [False, True])
def test_the_head_holds_the_linear_form_of_the_distances(adversarial):
    g = torch.Generator().manual_seed(0)
    h, points = torch.rand(20, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    w, b = linear_head(points, adversarial)
    direct = ((h[:, None, :] - points[None]) ** 2).mean(2) - (h @ points.T if adversarial else 0.0)
    np.testing.assert_allclose((h @ w.T + b + (h * h).sum(1, keepdim=True) / 7).numpy(), direct.numpy(), rtol=1e-12)


@pytest.mark.parametrize("adversarial", [False, True])
def test_reciprocal_loss_matches_its_formula(adversarial):
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y, radius = torch.tensor([0, 1]), torch.tensor(0.3)
    logits = reciprocal_logits(h, points, adversarial).numpy().astype(np.float64)
    ce = np.mean([np.log(np.exp(row).sum()) - row[t] for row, t in zip(logits, [0, 1])])
    own = np.array([4.0 / 2, 1.0 / 2])  # ||h - P_y||^2 / D: (2, 0) to (0, 0); (0, 1) to (1, 1)
    open_space = np.maximum(own - 0.3 + ARPL_MARGIN, 0).mean() if adversarial else ((own - 0.3) ** 2).mean()
    got = float(reciprocal_loss(h, y, points, radius, adversarial))
    assert got == pytest.approx(ce + RPL_WEIGHT * open_space, rel=1e-6)


def test_regime_loss_needs_the_reciprocal_points():
    with pytest.raises(ValueError, match="reciprocal points"):
        regime_loss("rpl", torch.zeros(2, 3), torch.tensor([0, 1]))


def test_reciprocal_points_train_instead_of_the_head_and_keep_it_in_step():
    head_only = torch.nn.Sequential()
    head_only.head = torch.nn.Linear(5, 3)
    state = ReciprocalPoints(head_only, "arpl", torch.Generator().manual_seed(1))
    w, b = linear_head(state.points.detach(), adversarial=True)
    assert torch.equal(head_only.head.weight, w) and torch.equal(head_only.head.bias, b)
    assert not any(p.requires_grad for p in head_only.head.parameters())
    h = torch.rand(6, 5)
    logits = head_only.head(h)  # what the classifier's forward pass runs; the hook catches h
    loss = state.loss(torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert state.points.grad is not None and state.radius.grad is not None
    with torch.no_grad():
        state.points.add_(0.5)
    state.write_head()
    np.testing.assert_allclose((head_only.head(h) + (h * h).sum(1, keepdim=True) / 5).detach().numpy(),
                               reciprocal_logits(h, state.points.detach(), True).numpy(), rtol=1e-5, atol=1e-6)
    assert logits.shape == (6, 3)
    state.detach()
    assert all(p.requires_grad for p in head_only.head.parameters())
    with pytest.raises(ValueError, match="reciprocal points are the regimes"):
        ReciprocalPoints(head_only, "ce", torch.Generator())


def test_rpl_detector_on_a_hand_made_case():
    # logits = W h + b; the score adds ||h||^2 / D back: h = (1, 3), D = 2 -> 5; max logit 2 -> -(2 + 5)
    out = _outputs([[1.0, 3.0], [0.0, 0.0]], [0, 1], logits=[[2.0, -1.0], [0.5, 0.25]])
    s = create("rpl").fit(FitContext(train=out)).score(out)
    np.testing.assert_allclose(s, [-7.0, -0.5])


def test_rpl_applies_only_to_classifiers_trained_with_reciprocal_points():
    assert {"rpl", "arpl"} <= set(REGIMES) and {"rpl", "arpl"} <= set(REGIME_TITLES)
    for regime in REGIMES:
        assert is_applicable("rpl", "osr", "small_cnn", 6, regime) == (
            regime in ("rpl", "arpl", "arpl_cs", "rpl_closedset", "arpl_closedset"))
    assert "rpl" not in detectors_for("osr", "small_cnn", 6)  # default regime: cross-entropy
    assert not is_applicable("rpl", "nd", "deep_svdd", 1, "rpl")
    assert {"opengan", "c2ae"} <= set(detectors_for("osr", "small_cnn", 6, "rpl"))


# a tiny OSR training in each reciprocal regime: 8 px digits, 3 known classes, a few epochs
TINY = Spec(setting="osr", image_size=8, known_classes=3, training=TrainConfig(epochs=4, batch_size=64, lr=5e-3))


@pytest.fixture(scope="module")
def reciprocal_experiments(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rpl-cache")
    return {r: pipeline.prepare(TINY.replace(training=TrainConfig(epochs=4, batch_size=64, lr=5e-3, regime=r)),
                                cache_dir=cache, device="cpu", ood_sets=()) for r in ("rpl", "arpl")}


@pytest.mark.parametrize("regime", ["rpl", "arpl"])
def test_a_reciprocal_training_keeps_a_linear_head_that_gives_the_distances(reciprocal_experiments, regime):
    exp = reciprocal_experiments[regime]
    w = exp.model.head.weight.detach().double()
    d = w.shape[1]
    points = -w / (2.0 / d + (1.0 if regime == "arpl" else 0.0))  # the points, recovered from the head
    np.testing.assert_allclose(exp.model.head.bias.detach().double().numpy(), (points ** 2).sum(1).numpy() / d,
                               rtol=1e-5, atol=1e-6)  # b_k = ||P_k||^2 / D: the head is the points' linear form
    unknown = exp.outputs["unknown"]
    h = torch.tensor(unknown.features, dtype=torch.float64)
    direct = reciprocal_logits(h, points, regime == "arpl").numpy()
    s = create("rpl").fit(exp.fit_context()).score(unknown)
    np.testing.assert_allclose(s, -direct.max(axis=1), rtol=1e-4, atol=1e-4)
    assert exp.id_accuracy > 0.8  # a classifier: argmax of the distances
    assert all(p.requires_grad for p in exp.model.head.parameters())  # the hook and the freeze are gone


def test_reciprocal_regimes_are_cached_by_their_own_key_and_are_deterministic(reciprocal_experiments, tmp_path):
    exp = reciprocal_experiments["rpl"]
    assert exp.spec.key() != TINY.key() != reciprocal_experiments["arpl"].spec.key()
    again = get_model(exp.spec, exp.bench, cache_dir=tmp_path, device="cpu", retrain=True)
    sa, sb = exp.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_rpl_is_refused_by_name_on_a_cross_entropy_classifier(reciprocal_experiments):
    exp = reciprocal_experiments["rpl"]
    ce = pipeline.Experiment(exp.spec.replace(training=TrainConfig(epochs=4, batch_size=64, lr=5e-3)), exp.bench,
                             exp.training, exp.outputs)
    with pytest.raises(ValueError, match="trained in regime 'ce'.*rpl or arpl"):
        pipeline.resolve_detectors(["rpl"], ce)
    assert "rpl" in pipeline.resolve_detectors("all", exp)


# --- OpenGAN and C2AE on features --------------------------------------------------------------------------------

def _toy(rng: np.random.Generator, n_per_class: int, d: int = 8, k: int = 3):
    """k well-separated Gaussian classes in d dimensions, and a cluster of unknowns between them."""
    centres = 4.0 * np.eye(k, d)
    y = np.repeat(np.arange(k), n_per_class)
    h = centres[y] + 0.4 * rng.normal(size=(len(y), d))
    unknown = 4.0 * np.ones(d) / np.sqrt(d) * 1.2 + 0.4 * rng.normal(size=(n_per_class, d))
    return h, y, unknown


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    h, y, _ = _toy(rng, 200)
    h_te, y_te, unknown = _toy(rng, 100)
    return {"ctx": FitContext(train=_outputs(h, y), num_classes=3, seed=0), "test": _outputs(h_te, y_te),
            "unknown": _outputs(unknown, np.full(len(unknown), -1))}


@pytest.mark.parametrize("name", ["opengan", "c2ae"])
def test_beats_chance_on_an_easy_separable_set_fitted_on_id_only(toy, name):
    det = create(name).fit(toy["ctx"])  # the fit sees the ID training split alone
    auroc = metrics.auroc(det.score(toy["test"]), det.score(toy["unknown"]))
    assert auroc > 0.95, f"{name}: AUROC {auroc:.3f}"


def test_opengan_discriminator_separates_a_gaussian_cluster_from_uniform_features():
    rng = np.random.default_rng(1)
    d = 6
    id_train = 3.0 + 0.5 * rng.normal(size=(600, d))
    id_test = 3.0 + 0.5 * rng.normal(size=(200, d))
    uniform = rng.uniform(0.0, 6.0, size=(200, d))  # the box around the cluster
    det = create("opengan").fit(FitContext(train=_outputs(id_train, np.zeros(600, int)), seed=0))
    assert metrics.auroc(det.score(_outputs(id_test, np.zeros(200, int))), det.score(_outputs(uniform, -np.ones(200))))\
        > 0.97


def test_opengan_is_seeded_by_the_experiment(toy):
    a = create("opengan", steps=12).fit(toy["ctx"]).score(toy["unknown"])
    b = create("opengan", steps=12).fit(toy["ctx"]).score(toy["unknown"])
    np.testing.assert_array_equal(a, b)
    other = FitContext(train=toy["ctx"].train, num_classes=3, seed=1)
    assert not np.array_equal(a, create("opengan", steps=12).fit(other).score(toy["unknown"]))


def test_c2ae_reconstructs_best_under_the_matching_condition(toy):
    det = create("c2ae").fit(toy["ctx"])
    errors = det.errors(toy["test"])
    y = toy["test"].labels
    matching = errors[np.arange(len(y)), y]
    others = np.where(np.eye(3, dtype=bool)[y], np.inf, errors).min(axis=1)
    assert np.mean(matching < others) > 0.95
    np.testing.assert_allclose(det.score(toy["test"]), errors.min(axis=1))


def test_c2ae_trains_on_a_seeded_stratified_subsample_of_a_large_bank(toy):
    # under the cap: every training feature, the same model as without one
    whole = create("c2ae", epochs=3).fit(toy["ctx"])
    assert whole.n_fit_ == whole.n_bank_ == 600
    np.testing.assert_array_equal(create("c2ae", epochs=3, max_fit=600).fit(toy["ctx"]).score(toy["unknown"]),
                                  whole.score(toy["unknown"]))
    # over it: 150 features, 50 of each class (the shares kept), the same draw again for the same seed
    capped = create("c2ae", epochs=3, max_fit=150).fit(toy["ctx"])
    assert (capped.n_fit_, capped.n_bank_) == (150, 600)
    keep = stratified_subsample(toy["ctx"].train.labels, 150, toy["ctx"].seed)
    assert np.bincount(toy["ctx"].train.labels[keep]).tolist() == [50, 50, 50]
    np.testing.assert_array_equal(create("c2ae", epochs=3, max_fit=150).fit(toy["ctx"]).score(toy["unknown"]),
                                  capped.score(toy["unknown"]))
    assert not np.array_equal(capped.score(toy["unknown"]), whole.score(toy["unknown"]))
    assert "Fit on 150 of 600" in fit_bank_note("c2ae", {"max_fit": 150}, 600)
    # the estimate counts the features it trains on
    assert estimates.fit_seconds("c2ae", 50_000, {"epochs": 30, "max_fit": 10_000}) == pytest.approx(
        estimates.fit_seconds("c2ae", 10_000, {"epochs": 30, "max_fit": 10_000}))


def test_c2ae_needs_two_labelled_classes():
    one_class = FitContext(train=_outputs(np.random.default_rng(0).normal(size=(20, 4)), np.zeros(20, int)))
    with pytest.raises(ValueError, match="at least two classes"):
        create("c2ae").fit(one_class)


@pytest.mark.parametrize("name, params, reports", [("opengan", {"steps": 40}, 20), ("c2ae", {"epochs": 4}, 4)])
def test_fits_report_progress_and_stop_when_cancelled(toy, name, params, reports):
    seen = []
    ctx = FitContext(train=toy["ctx"].train, num_classes=3, progress=lambda f, m: seen.append((f, m)))
    create(name, **params).fit(ctx)
    # OpenGAN reports every 40 // 20 = 2 steps, C2AE after each epoch
    assert [f for f, _ in seen] == [(i + 1) / reports for i in range(reports)]
    assert seen[-1][1].endswith(("step 40/40", "epoch 4/4"))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        create(name, **params).fit(FitContext(train=toy["ctx"].train, num_classes=3, cancel=cancel))


def test_the_new_methods_have_cards_in_the_open_set_family():
    for name in ("rpl", "opengan", "c2ae"):
        cls = REGISTRY[name]
        assert cls.family == "open_set" and cls.references() and cls.formula and cls.latex


def test_the_methods_that_train_a_network_are_slow_and_their_cost_is_said_first(reciprocal_experiments):
    from ood_core import estimates

    trainers = {n for n, cls in REGISTRY.items() if cls.trains_network}
    assert trainers == {"opengan", "c2ae"} == set(estimates.FIT_WHAT)
    assert all(REGISTRY[n].slow() and not REGISTRY[n].runs_network for n in trainers)
    exp = reciprocal_experiments["rpl"]
    n = len(exp.outputs["train"])
    est = estimates.detector(exp, "opengan", {"steps": 300, "width": 64})
    assert est.seconds == pytest.approx(estimates.OPENGAN_S_PER_STEP * 300 * 4)  # width 2x: 4x
    assert "300 steps" in est.what and f"{n:,} ID training features" in est.what
    est = estimates.detector(exp, "c2ae", {"epochs": 20})
    assert n < 10_000 and est.seconds == pytest.approx(estimates.C2AE_S_PER_SAMPLE_EPOCH * n * 20) and "20 epochs" in est.what
    assert estimates.fit_share(exp, "c2ae") == 0.9
    assert "rpl, arpl, arpl_cs, rpl_closedset or arpl_closedset regime" in estimates.cost_words("rpl") and "s per 1,000" in estimates.cost_words("c2ae")
    assert "per 1,000" not in estimates.cost_words("opengan")  # a fixed number of steps, whatever the data size


def test_opengan_auxiliary_outliers_are_the_oe_regimes_made_from_the_normalised_images(reciprocal_experiments):
    from ood_core.data.auxiliary import make_auxiliary

    exp = reciprocal_experiments["rpl"]
    x, y = exp.bench.train.x, exp.bench.train.y
    # mixup and jigsaw commute with the per-channel normalisation: made from normalised inputs, they are the
    # normalised auxiliary outliers of the oe regime
    np.testing.assert_allclose(make_auxiliary(x, y, 50, exp.spec.seed),
                               exp.bench.normalise(make_auxiliary(exp.bench.to_pixels(x), y, 50, exp.spec.seed)),
                               rtol=1e-5, atol=1e-5)
    det = create("opengan", outliers="auxiliary", steps=10).fit(exp.fit_context())
    assert det.score(exp.outputs["unknown"]).shape == (len(exp.outputs["unknown"]),)
    with pytest.raises(ValueError, match="needs the classifier"):
        create("opengan", outliers="auxiliary").fit(FitContext(train=exp.outputs["train"]))
