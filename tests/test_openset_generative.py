"""The open-set regimes that train extra networks beside the classifier: ARPL+CS, CROSR, OSRCI and G-OpenMax.

Known answers: ARPL+CS's confusion loss and OSRCI's unknown-class loss on hand-made logits; CROSR's OpenMax on
[logits, latents] and G-OpenMax's OpenMax beside the generated class against the OpenMax formula written out on
hand-made cases; the counterfactual search lowering the
known classes' confidence; the GAN step training the generator alone, never the classifier or its BatchNorm statistics.
Then a tiny OSR training in each regime: well above chance on the unknown digits, fitted and trained on the known
classes only, reported epoch by epoch and cancellable.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, TrainConfig, estimates, metrics, pipeline
from ood_core.detectors import REGISTRY, FitContext, create
from ood_core.detectors.openset import av_distance, fit_weibull_high, weibull_high_cdf
from ood_core.inference import ModelAdapter, Outputs
from ood_core.jobs import Cancelled
from ood_core.models import train_model
from ood_core.models.openset_generative import (CS_BETA, ConfusingSamples, HierarchicalReconstruction,
                                                confusion_loss, counterfactual_search, extra_epochs, layer_means,
                                                mixed_conditions, unknown_logit_loss)
from ood_core.settings import is_applicable
from ood_core.spec import REGIME_TITLES, REGIMES

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread

NEW = ("arpl_cs", "crosr", "osrci", "gopenmax")


# --- known answers -----------------------------------------------------------------------------------------------

def test_confusion_loss_is_exp_minus_the_mean_entropy():
    # uniform over 2 classes: sum p log p = -log 2 -> exp = 1/2; a sure prediction: 0 -> 1
    assert float(confusion_loss(torch.zeros(3, 2))) == pytest.approx(0.5)
    assert float(confusion_loss(torch.tensor([[100.0, 0.0, 0.0]]))) == pytest.approx(1.0, abs=1e-6)
    # the mean is over samples before the exp: rows (uniform over 4) and (sure) -> exp((-log 4 + 0) / 2) = 1/2
    assert float(confusion_loss(torch.tensor([[0.0, 0.0, 0.0, 0.0], [200.0, 0.0, 0.0, 0.0]]))) == pytest.approx(0.5)


def test_unknown_logit_loss_is_the_cross_entropy_towards_a_zero_logit_class():
    # log(1 + e^0 + e^0) = log 3; log(1 + e^{log 2}) = log 3 too
    z = torch.tensor([[0.0, 0.0], [np.log(2.0), -1e4]])
    assert float(unknown_logit_loss(z)) == pytest.approx(np.log(3.0), rel=1e-6)


def test_osrci_score_on_a_hand_made_case():
    z = np.array([[0.0, 0.0], [np.log(3.0), -50.0]])
    out = Outputs(z.astype(np.float32), np.zeros((2, 1), np.float32), np.array([0, 1]))
    # softmax(z, 0) at the extra class: 1 / (1 + 1 + 1) and 1 / (1 + 3)
    np.testing.assert_allclose(create("osrci").fit(FitContext(train=out)).score(out), [1 / 3, 1 / 4], rtol=1e-6)
    np.testing.assert_allclose(create("osrci", form="max_known_logit").fit(FitContext(train=out)).score(out),
                               [0.0, -np.log(3.0)], rtol=1e-6)


class IdentityConvNet(nn.Module):
    """A 1x1 identity convolution and a ReLU on (n, D, 1, 1) inputs: the layer's spatial mean is relu(x) itself."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(d, d, 1, bias=False), nn.ReLU())
        self.head = nn.Linear(d, k)
        with torch.no_grad():
            self.body[0].weight.copy_(torch.eye(d)[:, :, None, None])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _openmax_logits_by_hand(v: np.ndarray, av: np.ndarray, mavs: np.ndarray, weibull: list, alpha: int) -> np.ndarray:
    """OpenMax written out row by row: rank r of each class, w = 1 - (alpha - r + 1) / alpha * CDF for the top alpha;
    returns the rows (v^ = v w, v_0 = sum v (1 - w))."""
    rows = []
    for row, a in zip(v, av):
        w = np.ones_like(row)
        for rank, c in enumerate(np.argsort(-row, kind="stable")[:alpha], start=1):
            d = av_distance(a[None], mavs[c][None], "eucos")[0, 0]
            w[c] = 1.0 - (alpha - rank + 1) / alpha * float(weibull_high_cdf(np.array([d]), *weibull[c])[0])
        rows.append(np.concatenate([row * w, [np.sum(row * (1.0 - w))]]))
    return np.array(rows)


def _openmax_by_hand(v: np.ndarray, av: np.ndarray, mavs: np.ndarray, weibull: list, alpha: int) -> np.ndarray:
    """The unknown class's probability in softmax(v^, v_0)."""
    z = _openmax_logits_by_hand(v, av, mavs, weibull, alpha)
    return np.exp(z[:, -1]) / np.exp(z).sum(1)


def test_crosr_is_openmax_on_logits_and_latents_on_a_hand_made_case():
    rng = np.random.default_rng(0)
    d, k, n = 3, 2, 12
    y = np.arange(n) % k
    x = (np.abs(rng.normal(size=(n, d, 1, 1))) + 2.0 * np.eye(d)[y][:, :, None, None]).astype(np.float32)
    logits = (np.eye(k)[y] * 3.0 + 0.3 * rng.normal(size=(n, k))).astype(np.float32)
    out = Outputs(logits, x.reshape(n, d), y, x)
    model = IdentityConvNet(d, k)
    det = create("crosr", tail_size=4, alpha=2).fit(FitContext(train=out, model=ModelAdapter(model, device="cpu")))
    test_x = np.abs(rng.normal(size=(5, d, 1, 1))).astype(np.float32)
    test_logits = rng.normal(size=(5, k)).astype(np.float32)
    test = Outputs(test_logits, test_x.reshape(5, d), np.zeros(5, int), test_x)
    # by hand: the latents are relu(x) = x, the activation vector [logits, x]
    av = np.concatenate([logits, x.reshape(n, d)], axis=1).astype(np.float64)
    mavs = np.stack([av[y == c].mean(0) for c in range(k)])  # every training sample is classified correctly
    assert np.all(logits.argmax(1) == y)
    weibull = [fit_weibull_high(av_distance(av[y == c], mavs[c][None], "eucos")[:, 0], 4) for c in range(k)]
    test_av = np.concatenate([test_logits, test_x.reshape(5, d)], axis=1).astype(np.float64)
    expected = _openmax_by_hand(test_logits.astype(np.float64), test_av, mavs, weibull, alpha=2)
    np.testing.assert_allclose(det.score(test), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer_means(model, test_x, "cpu"), test_x.reshape(5, d), rtol=1e-6)


class LinearNet(nn.Module):
    """A head alone: no ReLU layer, so no latents."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_crosr_without_convolutional_layers_is_openmax_on_the_logits():
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    logits = (np.eye(3)[y] * 4.0 + rng.normal(size=(30, 3))).astype(np.float32)
    out = Outputs(logits, np.zeros((30, 2), np.float32), y, np.zeros((30, 2), np.float32))
    ctx = FitContext(train=out, model=ModelAdapter(LinearNet(), device="cpu"))
    np.testing.assert_allclose(create("crosr").fit(ctx).score(out), create("openmax").fit(ctx).score(out), rtol=1e-12)
    with pytest.raises(ValueError, match="input images"):
        create("crosr").fit(ctx).score(Outputs(logits, out.features, y, None))


def test_gopenmax_is_openmax_with_the_generated_class_counted_as_unknown():
    rng = np.random.default_rng(2)
    y = np.arange(40) % 2
    logits = (np.eye(2)[y] * 3.0 + 0.5 * rng.normal(size=(40, 2))).astype(np.float32)
    out = Outputs(logits, np.zeros((40, 1), np.float32), y)
    det = create("gopenmax", tail_size=5, alpha=2).fit(FitContext(train=out))
    v = logits.astype(np.float64)
    correct = v.argmax(1) == y
    mavs = np.stack([v[correct & (y == c)].mean(0) for c in range(2)])
    weibull = [fit_weibull_high(av_distance(v[correct & (y == c)], mavs[c][None], "eucos")[:, 0], 5) for c in range(2)]
    test = rng.normal(size=(6, 2)).astype(np.float32)
    z = _openmax_logits_by_hand(test.astype(np.float64), test.astype(np.float64), mavs, weibull, alpha=2)
    # softmax over (v^_1, v^_2, 0, v_0): the generated class's e^0 and OpenMax's e^v_0 are both unknown mass
    expected = (1.0 + np.exp(z[:, -1])) / (np.exp(z).sum(1) + 1.0)
    t_out = Outputs(test, np.zeros((6, 1), np.float32), np.zeros(6, int))
    np.testing.assert_allclose(det.score(t_out), expected, rtol=1e-9)
    assert np.all(det.score(t_out) > create("openmax", tail_size=5, alpha=2).fit(FitContext(train=out)).score(t_out))


def test_mixed_conditions_blend_two_distinct_classes():
    cond, dominant = mixed_conditions(5, 200, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(cond.sum(1).numpy(), 1.0, rtol=1e-6)
    assert torch.all((cond > 0).sum(1) <= 2) and torch.all(cond.max(1).values >= 0.5)
    assert torch.equal(cond.argmax(1), dominant)


def test_the_counterfactual_search_lowers_the_known_classes_confidence():
    g = torch.Generator().manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    classifier = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        for p in [*generator.parameters(), *classifier.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
        classifier[0].bias.add_(3.0)  # every known class is confident at the start
    z0 = torch.randn(16, 4, generator=g)

    def known_mass(z):  # sum_k softmax(f, 0)_k: the known classes' share when the (K+1)th logit is 0
        with torch.no_grad():
            f = classifier(generator(z))
            return torch.sigmoid(torch.logsumexp(f, dim=1))

    def objective(z):
        with torch.no_grad():
            f = classifier(generator(z))
            return (z - z0).pow(2).sum(1) + torch.logsumexp(torch.cat([f, torch.zeros(len(f), 1)], 1), 1)

    before = [p.clone() for p in classifier.parameters()]
    z_star = counterfactual_search(classifier, generator, z0, steps=60, lr=0.05)
    assert torch.all(known_mass(z_star) < known_mass(z0))
    assert torch.all(objective(z_star) < objective(z0))  # and it stays near the real image's code
    assert all(torch.equal(a, b) for a, b in zip(before, classifier.parameters()))


def test_a_confusing_samples_step_trains_the_generator_alone():
    from ood_core.models.cnn import SmallCNN

    g = torch.Generator().manual_seed(0)
    model = SmallCNN(1, 3)
    model.train()
    cs = ConfusingSamples(1, 8, np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32), g, "cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g_before = [p.clone() for p in cs.generator.parameters()]
    fakes = cs.step(model, torch.randn(6, 1, 8, 8, generator=g), g)
    assert fakes.shape == (6, 1, 8, 8) and not fakes.requires_grad
    # neither the classifier's weights nor its BatchNorm statistics moved, and it gathered no gradient
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert any(not torch.equal(a, b) for a, b in zip(g_before, cs.generator.parameters()))
    term = cs.classifier_loss(model, fakes)
    with torch.no_grad():
        assert float(term.detach()) == pytest.approx(CS_BETA * float(confusion_loss(model.eval()(fakes))), rel=1e-5)


def test_the_reconstruction_hooks_every_convolutional_layer_and_lets_go():
    from ood_core.models.cnn import SmallCNN

    model = SmallCNN(1, 3)
    rec = HierarchicalReconstruction(model, 1, 8, torch.Generator().manual_seed(0), "cpu")
    assert [m for m in rec.layers] == [m for m in model.body if isinstance(m, nn.ReLU)]  # the four conv blocks
    x = torch.randn(4, 1, 8, 8)
    model(x)
    expected = (rec.decoder([model.body[:i + 1](x) for i in (2, 5, 9, 12)]) - x).pow(2).mean()
    assert float(rec.loss(x).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    rec.detach()
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no nn.ReLU"):
        head_only = nn.Sequential(nn.Flatten())
        HierarchicalReconstruction(head_only, 1, 8, torch.Generator(), "cpu")


# --- registry, applicability, costs ------------------------------------------------------------------------------

def test_the_new_regimes_are_offered_with_their_scores():
    assert set(NEW) <= set(REGIMES) and set(NEW) <= set(REGIME_TITLES)
    for regime in REGIMES:
        for name in ("crosr", "osrci", "gopenmax"):
            assert is_applicable(name, "osr", "small_cnn", 6, regime) == (regime == name)
    for name in ("crosr", "osrci", "gopenmax"):
        cls = REGISTRY[name]
        assert cls.family == "open_set" and cls.references() and cls.formula and cls.latex
    assert REGISTRY["crosr"].runs_network and not REGISTRY["osrci"].runs_network


def test_the_regimes_cost_is_said_before_training():
    base = estimates.training(Spec(setting="osr", training=TrainConfig(epochs=10)), 1000).seconds
    for regime in NEW:
        est = estimates.training(Spec(setting="osr", training=TrainConfig(epochs=10, regime=regime)), 1000)
        assert est.seconds == pytest.approx(base * estimates.regime_epochs(regime, 10) / 10) and est.trains == 1
        assert est.seconds > base and "extra networks" in est.what
    assert extra_epochs("osrci") == extra_epochs("gopenmax") > 0 == extra_epochs("crosr")
    assert "min on 2 cores" in estimates.cost_words("osrci") and "GAN" in estimates.cost_words("osrci")
    assert "crosr regime" in estimates.cost_words("crosr")


# --- tiny trainings ----------------------------------------------------------------------------------------------

TINY = Spec(setting="osr", image_size=8, known_classes=3, training=TrainConfig(epochs=6, batch_size=64, lr=5e-3))


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    cache = tmp_path_factory.mktemp("osr-generative-cache")
    return {r: pipeline.prepare(TINY.replace(training=TrainConfig(epochs=6, batch_size=64, lr=5e-3, regime=r)),
                                cache_dir=cache, device="cpu", ood_sets=()) for r in NEW}


@pytest.mark.parametrize("regime, name", [("arpl_cs", "rpl"), ("crosr", "crosr"), ("osrci", "osrci"),
                                          ("gopenmax", "gopenmax")])
def test_each_regime_beats_chance_on_the_unknown_digits(experiments, regime, name):
    exp = experiments[regime]
    assert set(np.unique(exp.bench.train.y)) == {0, 1, 2}  # trained on the known classes only
    ctx = exp.fit_context()
    assert ctx.train is exp.outputs["train"] and ctx.val is exp.outputs["val"]
    det = create(name).fit(ctx)  # fitted on ID data; the unknowns only scored
    auroc = metrics.auroc(det.score(exp.outputs["test"]), det.score(exp.outputs["unknown"]))
    assert exp.id_accuracy > 0.7 and auroc > 0.7, f"{regime}: accuracy {exp.id_accuracy:.2f}, AUROC {auroc:.3f}"


@pytest.mark.parametrize("regime", ["osrci", "gopenmax"])
def test_the_generative_stages_report_their_passes_and_stop_when_cancelled(experiments, regime):
    spec = TINY.replace(training=TrainConfig(epochs=1, batch_size=64, lr=5e-3, regime=regime))
    bench = experiments[regime].bench
    seen = []
    result = train_model(spec, bench, progress=seen.append, device="cpu")
    total = 1 + extra_epochs(regime)
    assert [p.epoch for p in seen] == list(range(1, total + 1)) and {p.epochs for p in seen} == {total}
    assert len(result.history) == total
    cancel = threading.Event()

    def stop_after_the_first(p):
        cancel.set()

    with pytest.raises(Cancelled):
        train_model(spec, bench, progress=stop_after_the_first, device="cpu", cancel=cancel)


def test_a_new_regime_is_deterministic(experiments, tmp_path):
    from ood_core.models import get_model

    exp = experiments["arpl_cs"]
    again = get_model(exp.spec, exp.bench, cache_dir=tmp_path, device="cpu", retrain=True)
    sa, sb = exp.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_crosr_says_it_runs_the_network_on_the_training_images_too(experiments):
    exp = experiments["crosr"]
    scored = len(exp.outputs["test"]) + len(exp.outputs["unknown"])
    est = estimates.detector(exp, "crosr", splits=["test", "unknown"])
    forward = estimates.model_forward(exp)  # its own model's forward pass, timed once
    assert forward.measured
    assert est.seconds == pytest.approx(estimates.NETWORK_FORWARDS["crosr"] * (scored + len(exp.outputs["train"]))
                                        * forward.seconds)
    assert "latents" in est.what and "timed here" in est.what and REGISTRY["crosr"].slow()


def test_the_bench_merges_runs_over_disjoint_splits(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_openset.py"
    spec = importlib.util.spec_from_file_location("bench_openset", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def one_split(split: int, auroc: float, oscr: float, acc: float) -> str:
        doc = {"command": f"split {split}", "dataset": "mnist-sample", "image_size": 28, "known": 6, "splits": 1,
               "epochs": 15, "trainings": {"crosr": [{"split": split, "train_seconds": 10.0 * (split + 1),
                                                      "id_accuracy": acc}]},
               "methods": [{"regime": "crosr", "label": "CROSR", "auroc": [auroc, 0.0], "oscr": [oscr, 0.0],
                            "auroc_per_split": [auroc], "fit_seconds_median": 2.0}]}
        file = tmp_path / f"{split}.json"
        file.write_text(json.dumps(doc))
        return str(file)

    merged = bench.merge([one_split(0, 80.0, 78.0, 0.9), one_split(1, 90.0, 86.0, 1.0)])
    (row,) = merged["methods"]
    assert merged["splits"] == 2 and row["auroc_per_split"] == pytest.approx([80.0, 90.0])
    assert row["auroc"] == pytest.approx([85.0, np.std([80.0, 90.0], ddof=1)])
    assert row["oscr"] == pytest.approx([82.0, np.std([78.0, 86.0], ddof=1)])
    assert row["id_accuracy"][0] == pytest.approx(95.0) and row["train_seconds_median"] == 15.0
    assert row["survey_mnist_auroc"] == 99.2
    with pytest.raises(SystemExit, match="repeat a split"):
        bench.merge([one_split(0, 80.0, 78.0, 0.9), one_split(0, 80.0, 78.0, 0.9)])
