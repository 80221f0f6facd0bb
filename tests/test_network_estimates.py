"""What the detectors that run the network again are estimated to cost: forward passes of the experiment's own model,
timed once on its device (estimates.model_forward), or the reference rate where there is no model to time yet.

No timing is asserted here beyond a lower bound a sleep guarantees: the forward pass is replaced by known values
where the arithmetic is checked.
"""
from __future__ import annotations

import re
import time
import types
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, estimates, pipeline
from ood_core.data.benchmark import Split
from ood_core.inference import ModelAdapter
from ood_core.models import MODELS


def _scored(exp, splits=None):
    return sum(len(exp.outputs[s]) for s in (splits or ("test", *exp.ood_names)))


@pytest.fixture
def fresh_timings(monkeypatch):
    """No model timed yet, and the timings of this test forgotten after it."""
    monkeypatch.setattr(estimates, "_timed", weakref.WeakKeyDictionary())


def test_the_forward_pass_is_timed_once_per_model_on_its_test_images(default_experiment, fresh_timings, monkeypatch):
    exp, calls = default_experiment, []
    real = estimates.time_forward

    def counted(adapter, x):
        calls.append((adapter, x.shape))
        return real(adapter, x)

    monkeypatch.setattr(estimates, "time_forward", counted)
    first = estimates.model_forward(exp)
    assert first.measured and first.seconds > 0
    assert first.head_only  # the small CNN's one dropout layer sits between features and head: MC dropout's shortcut
    assert estimates.model_forward(exp) is first and len(calls) == 1  # kept: the second estimate times nothing
    adapter, shape = calls[0]
    assert adapter is exp.adapter and shape == (estimates.PROBE_IMAGES, *exp.bench.input_shape[-3:])


def test_network_running_estimates_are_forward_passes_of_the_model(default_experiment, monkeypatch):
    """A model whose forward pass takes 2 ms per image: each detector costs its forward passes per image times 2 ms
    times the images it runs the network on (Gram's fit reads the ID training and validation images too)."""
    exp = default_experiment
    monkeypatch.setattr(estimates, "model_forward", lambda e: estimates.Forward(0.002, True, True))
    n = _scored(exp)
    odin = estimates.detector(exp, "odin")
    assert odin.seconds == pytest.approx(estimates.NETWORK_FORWARDS["odin"] * 0.002 * n)
    assert "2 ms per forward pass of this model, timed here" in odin.what
    gram = estimates.detector(exp, "gram")
    n_gram = n + len(exp.outputs["train"]) + len(exp.outputs["val"])
    assert gram.seconds == pytest.approx(estimates.NETWORK_FORWARDS["gram"] * 0.002 * n_gram)
    for passes in (20, 100):  # the shortcut: the features once, then dropout and the head per pass
        mc = estimates.detector(exp, "mc_dropout", {"passes": passes})
        per_image = estimates.MC_FEATURES + estimates.MC_HEAD_PASS * passes
        assert mc.seconds == pytest.approx(per_image * 0.002 * n)
        assert f"{passes} stochastic passes of dropout and the head, on features computed once" in mc.what
    # a model ten times as slow costs ten times as much
    monkeypatch.setattr(estimates, "model_forward", lambda e: estimates.Forward(0.02, True, True))
    assert estimates.detector(exp, "odin").seconds == pytest.approx(10 * odin.seconds)
    # the ensemble's other members each run once over the scored images, at the same rate
    ens = estimates.detector(exp, "ensemble", {"members": 3})
    train_s = ens.trains * estimates.training_seconds(exp)
    assert ens.seconds - train_s == pytest.approx(2 * 0.02 * n)
    assert "20 ms per forward pass of this model, timed here" in ens.what


class Sleepy(nn.Module):
    """Sleeps `nap` seconds at every call, of any size; records the size of each call."""

    def __init__(self, nap: float):
        super().__init__()
        self.head, self.nap, self.sizes = nn.Linear(4, 2), nap, []

    def features(self, x):
        self.sizes.append(len(x))
        time.sleep(self.nap)
        return x.flatten(1)


def test_the_timed_forward_pass_is_at_least_what_the_model_sleeps():
    net = Sleepy(0.02)
    x = np.zeros((16, 1, 2, 2), np.float32)
    seconds = estimates.time_forward(ModelAdapter(net, "cpu"), x)
    assert net.sizes[:2] == [8, 8]  # untimed: first-call costs, then the size of the timed runs
    assert len(net.sizes) == 5 and net.sizes[2] == net.sizes[3] == net.sizes[4]  # three timed runs, the fastest
    assert seconds >= 0.02 / net.sizes[2]  # each timed run is one call: at least one sleep


def test_a_slow_model_is_timed_on_fewer_images_a_fast_one_on_a_whole_batch():
    """Each timed run lasts about PROBE_SECONDS: a model that takes at least 0.1 s per call (12.5 ms per image of the
    8 that size the runs) is timed on at most PROBE_SECONDS / 12.5 ms = 16 images; a fast one on all it is given,
    up to the adapter's batch."""
    x = np.zeros((300, 1, 2, 2), np.float32)
    slow = Sleepy(0.1)
    estimates.time_forward(ModelAdapter(slow, "cpu"), x)
    assert 8 <= slow.sizes[-1] <= int(estimates.PROBE_SECONDS / (0.1 / 8))
    fast = Sleepy(0.0)
    estimates.time_forward(ModelAdapter(fast, "cpu", batch_size=256), x)
    assert fast.sizes[-1] == 256  # one batch of the adapter's, not all 300
    with pytest.raises(ValueError, match="no image"):
        estimates.time_forward(ModelAdapter(fast, "cpu"), x[:0])


class DropoutInside(nn.Module):
    """Dropout inside the features: MC dropout cannot compute them once, each pass runs the whole network."""

    def __init__(self, d_in: int, k: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, k)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_dropout_inside_the_features_costs_whole_passes(tmp_path, fresh_timings):
    from ood_core.data import build_benchmark

    spec = Spec()
    bench = build_benchmark(spec, ())
    torch.manual_seed(0)
    net = DropoutInside(int(np.prod(bench.input_shape[-3:])), bench.num_classes)
    exp = pipeline.prepare(spec, model=net, bench=bench, cache_dir=tmp_path, device="cpu")
    forward = estimates.model_forward(exp)
    assert forward.measured and not forward.head_only
    n = _scored(exp)
    twenty, forty = (estimates.detector(exp, "mc_dropout", {"passes": p}) for p in (20, 40))
    assert twenty.seconds == pytest.approx(estimates.MC_FULL_PASS * 20 * forward.seconds * n)
    assert forty.seconds == pytest.approx(2 * twenty.seconds)  # the whole network on every pass
    assert "of the whole network (its dropout sits inside the features)" in twenty.what
    assert not exp.model.body[3]._forward_hooks  # the check ran on a private copy


def test_without_a_model_the_reference_rate_follows_size_and_model():
    """The CLI counts runs before anything trains: the small CNN's forward pass at 16 px, times the size factor, times
    the model's registry training rate over the small CNN's."""
    assert estimates.reference_forward(Spec()) == estimates.Forward(estimates.REFERENCE_FORWARD_S, False)
    assert estimates.reference_forward(Spec(image_size=32)).seconds == pytest.approx(4 * estimates.REFERENCE_FORWARD_S)
    res = MODELS["resnet18_cifar"]
    spec = Spec(model="resnet18_cifar", image_size=32)
    want = (estimates.REFERENCE_FORWARD_S * estimates.size_factor(32, res.size_overhead)
            * res.train_seconds / MODELS["small_cnn"].train_seconds)
    assert estimates.reference_forward(spec).seconds == pytest.approx(want)
    assert res.train_seconds / MODELS["small_cnn"].train_seconds > 10  # a ResNet-18 is far dearer than the small CNN
    est = estimates.own_cost("odin", {}, 1000, {"train": 0, "val": 0}, estimates.reference_forward(spec))
    assert est.seconds == pytest.approx(estimates.NETWORK_FORWARDS["odin"] * want * 1000)
    assert "timed here" not in est.what


def test_a_model_that_cannot_be_timed_falls_back_on_the_reference_rate(fresh_timings):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def features(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    x = np.zeros((4, 1, 2, 2), np.float32)
    exp = types.SimpleNamespace(is_classifier=True, spec=Spec(), adapter=ModelAdapter(Broken(), "cpu"),
                                bench=types.SimpleNamespace(test=Split(x, np.zeros(4, dtype=np.int64))))
    assert estimates.model_forward(exp) == estimates.reference_forward(Spec())
    assert len(estimates._timed) == 0  # nothing kept: a later estimate tries again
    one_class = types.SimpleNamespace(is_classifier=False, spec=Spec(model="deep_svdd"))
    assert estimates.model_forward(one_class) == estimates.reference_forward(Spec(model="deep_svdd"))


def test_the_methods_cards_say_how_many_forward_passes_a_detector_costs():
    from ood_core.detectors import default_params

    odin = estimates.cost_words("odin")
    assert odin.startswith("**runs the network again** (slower)")
    assert f"about {estimates.NETWORK_FORWARDS['odin']:.1f} forward passes of the model per image" in odin
    assert "ID training and validation images its fit reads" in estimates.cost_words("gram")
    mc = estimates.cost_words("mc_dropout")
    passes = default_params("mc_dropout")["passes"]
    shortcut = estimates.MC_FEATURES + estimates.MC_HEAD_PASS * passes
    assert f"about {shortcut:.1f} forward passes of the model per image at {passes} passes" in mc
    assert f"{estimates.MC_FULL_PASS * passes:.0f} where the dropout sits inside the features" in mc
    more = default_params("ensemble")["members"] - 1
    assert f"trains {more} more networks once (cached for next time)" in estimates.cost_words("ensemble")
    assert estimates.cost_words("msp") == "scores the cached outputs of one forward pass (fast)"


def test_the_one_class_score_card_says_what_each_model_costs_to_train():
    """model_score's cost line lists every one-class model with a training, cheapest first, in the two cases of
    ONE_CLASS_CASES: the registry's rate x the normal images x the size factor, by hand for CSI."""
    from ood_core.models import MODELS

    words = estimates.cost_words("model_score")
    assert words.startswith("trains the one-class model first, once per normal class (then cached)")
    (_, side0, n0), (_, side1, n1) = estimates.ONE_CLASS_CASES
    csi = MODELS["csi"]
    default = csi.train_seconds * n0 * estimates.size_factor(side0, csi.size_overhead)
    mnist = csi.train_seconds * n1 * estimates.size_factor(side1, csi.size_overhead)
    assert default < 60 <= mnist  # seconds in the first case, minutes in the second (the format below)
    assert f"CSI {default:.0f} s / {mnist / 60:.1f} min" in words
    listed = re.findall(r"(?:: | · )([^·:]+?) (?:<1 s|\d+ s|[\d.]+ min|[\d.]+ h) / ", words)
    assert set(listed) == {m.short for m in MODELS.values() if m.kind != "classifier" and m.own_score
                           and m.train_seconds > 0}  # the raw and smoothed pixels train nothing: not listed
    cheapest, dearest = listed[0], listed[-1]
    assert MODELS[next(k for k, m in MODELS.items() if m.short == cheapest)].train_seconds <= \
        MODELS[next(k for k, m in MODELS.items() if m.short == dearest)].train_seconds


def test_the_one_class_cases_are_the_data_sets_sizes():
    """ONE_CLASS_CASES' image counts are those the benchmarks build: digit 0 of the digits (the default novelty
    experiment) and a digit of the MNIST sample."""
    from ood_core.data import build_benchmark

    for dataset, side, n in estimates.ONE_CLASS_CASES:
        spec = Spec(setting="nd", dataset=dataset, image_size=side, model="deep_svdd", normal_class=0)
        assert len(build_benchmark(spec, ood_sets=()).train) == n
