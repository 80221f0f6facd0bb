"""The one model registry (every entry builds and runs on its declared inputs, serves its settings, a model registered
here shows up everywhere models are listed), LeNet-5's classifier contract, and the device chosen once."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, TrainConfig, estimates, pipeline, settings
from ood_core.spec import SETTING_TITLES
from ood_core.device import (amp_dtype, check_device, default_device, describe_device, grad_scaler, resolve_device,
                             training_autocast)
from ood_core.inference import ModelAdapter, run_inference
from ood_core.models import MODELS, InputContract, ModelEntry, build_model, get_entry, model_title, register_model
from ood_core.models.cnn import SmallCNN
from ood_core.models.lenet import LeNet5
from ood_core.models.registry import models_fitting, unfit_reasons, unregister_model
from ood_core.models.reproducible import seeded_init_
from ood_core.models.train import train_classifier, train_model
from ood_core.protocols import method_label

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread


def _sides(contract: InputContract) -> list[int]:
    """The smallest, a middle and the largest side the contract accepts (64 px when it has no upper bound)."""
    top = contract.max_side if contract.max_side is not None else 64
    mid = (contract.min_side + top) // 2
    sides = {contract.min_side, mid - mid % contract.multiple_of, top - top % contract.multiple_of}
    return sorted(s for s in sides if contract.accepts(1, s))


# --- the registry --------------------------------------------------------------------------------------

def test_the_registry_holds_the_projects_models_with_their_settings():
    assert settings.CLASSIFIER_MODELS == ("small_cnn", "lenet5", "resnet18_cifar")
    assert settings.ONE_CLASS_MODELS[:6] == ("deep_svdd", "deep_svdd_pretrained", "autoencoder", "geotrans", "pixels",
                                             "pixels_smooth")
    assert set(settings.ONE_CLASS_MODELS[6:]) == {"lsa", "ocgan", "anogan", "csi", "ustd", "mkd", "ustd_imagenet",
                                                  "mkd_imagenet", "ustd_lite0", "mkd_lite0"}  # oneclass_gen.py, oneclass_ssl.py
    for setting in ("ood", "osr"):
        assert settings.models_for(setting) == settings.CLASSIFIER_MODELS
    for setting in ("nd", "ad"):
        assert settings.models_for(setting) == settings.ONE_CLASS_MODELS
    assert all(MODELS[n].settings == ("ood", "osr") for n in settings.CLASSIFIER_MODELS)
    assert all(MODELS[n].settings == ("nd", "ad") for n in settings.ONE_CLASS_MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_entry_builds_and_runs_on_every_side_and_channel_count_its_contract_declares(name):
    entry = MODELS[name]
    channels = entry.contract.channels or (1, 3)
    for c in channels:
        for side in _sides(entry.contract):
            model = seeded_init_(build_model(name, c, 5, side), torch.Generator().manual_seed(0)).eval()
            x = torch.randn(2, c, side, side, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                feats = model.features(x)
                if entry.kind == "classifier":
                    logits = model(x)
                    assert logits.shape == (2, 5) and feats.shape == (2, model.head.in_features), (c, side)
                else:
                    score = model.anomaly_score(x)
                    assert feats.ndim == 2 and len(feats) == 2, (c, side)
                    assert (score is None) == (not entry.own_score)
                    assert score is None or score.shape == (2,)


@pytest.mark.parametrize("name", list(MODELS))
def test_images_outside_a_contract_are_refused_in_one_sentence(name):
    contract = MODELS[name].contract
    bad = contract.min_side - 4 if contract.max_side is None else contract.max_side + 4
    with pytest.raises(ValueError) as e:
        build_model(name, 1, 5, bad)
    text = str(e.value)
    assert text.startswith(f"model {name!r} ({MODELS[name].short}) does not fit these images: it takes ")
    assert text.endswith(f"not {bad} px ones") and "\n" not in text


def test_an_unknown_model_is_refused_with_the_list_of_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vgg99'; available: small_cnn, lenet5, .*resnet18_cifar"):
        build_model("vgg99", 1, 10, 16)
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        get_entry("vgg99")
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        train_model(Spec(model="vgg99"), None)  # refused before the data is touched


def test_contracts_in_words_and_which_models_fit_which_images():
    lenet = MODELS["lenet5"].contract
    assert lenet.describe() == "any channels, 28 px only"
    assert lenet.problem(1, 16) == "it takes 28 px images only, not 16 px ones" and lenet.accepts(3, 28)
    svdd = MODELS["deep_svdd"].contract
    assert svdd.sides_text() == "8 px or more, multiples of 4" and svdd.problem(1, 30) is not None
    rgb = InputContract(channels=(3,), min_side=16, max_side=64)
    assert rgb.problem(1, 32) == "it takes 3-channel images, not 1-channel ones"
    assert rgb.problem(3, 8) == "it takes images of 16–64 px, not 8 px ones"
    # digits at 16 px: no LeNet-5, and the reason; at 28 px it is offered
    assert models_fitting("ood", 1, 16) == ("small_cnn", "resnet18_cifar")
    assert unfit_reasons("ood", 1, 16) == {"lenet5": "it takes 28 px images only, not 16 px ones"}
    assert settings.models_for("osr", 1, 28) == ("small_cnn", "lenet5", "resnet18_cifar")
    assert unfit_reasons("nd", 1, 16) == {}


def test_a_wrong_entry_is_refused_when_registered():
    def make(**kw):
        base = dict(name="x", title="X", short="x", description="", kind="classifier", settings=("ood",),
                    contract=InputContract(), build=lambda c, k, s: SmallCNN(c, k), train=train_classifier,
                    train_seconds=1e-3)
        return ModelEntry(**{**base, **kw})

    with pytest.raises(ValueError, match="kind must be one of classifier, one_class"):
        make(kind="detector")
    with pytest.raises(ValueError, match="a classifier serves only ood, osr"):
        make(settings=("ood", "nd"))
    with pytest.raises(ValueError, match="default side 16 px breaks its own contract"):
        make(contract=InputContract(min_side=32, max_side=32))
    with pytest.raises(ValueError, match="registered twice"):
        register_model(make(name="small_cnn"))


class TinyNet(SmallCNN):
    """A classifier of this test file: the small CNN at width 4, for 12 px images only."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes, width=4, feature_dim=8)


@pytest.fixture
def tiny_model():
    """A model registered by this file (one entry, nothing else), removed afterwards."""
    entry = register_model(ModelEntry(
        name="tiny_test_net", title="Tiny test network", short="tiny", description="A test's own model.",
        kind="classifier", settings=("ood",), contract=InputContract(min_side=12, max_side=12),
        build=lambda c, k, side: TinyNet(c, k), train=train_classifier, train_seconds=1e-4, default_side=12))
    yield entry
    unregister_model(entry.name)


def test_a_model_registered_in_one_file_is_listed_built_trained_and_scored_everywhere(tiny_model, tmp_path):
    name = tiny_model.name
    assert name in settings.models_for("ood") and name in settings.CLASSIFIER_MODELS
    assert name not in settings.models_for("osr")  # it serves OOD detection only
    assert name in settings.models_for("ood", 1, 12) and name not in settings.models_for("ood", 1, 16)
    assert model_title(name) == "Tiny test network" and method_label(name, "knn", {"k": 1}) == "tiny · knn (k=1)"
    assert estimates._seconds_per_image(name) == 1e-4
    assert isinstance(build_model(name, 1, 10), TinyNet)  # its default side, 12
    # the pipeline trains it by its entry's trainer, caches it and runs every split through it
    spec = Spec(model=name, image_size=12, train_per_class=5, training=TrainConfig(epochs=1, batch_size=16))
    exp = pipeline.prepare(spec, cache_dir=tmp_path, device="cpu", ood_sets=("gaussian",))
    assert isinstance(exp.model, TinyNet) and exp.outputs["test"].features.shape[1] == 8
    again = pipeline.prepare(spec, cache_dir=tmp_path, device="cpu", ood_sets=("gaussian",))
    assert again.training.from_cache
    np.testing.assert_array_equal(again.outputs["test"].logits, exp.outputs["test"].logits)
    assert "msp" in settings.detectors_for("ood", name, 10)


def test_the_cli_offers_every_registered_classifier():
    from ood_core.cli import build_parser

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "model")
    assert tuple(run.choices) == settings.CLASSIFIER_MODELS


# --- LeNet-5 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet():
    return seeded_init_(LeNet5(1, 10), torch.Generator().manual_seed(0)).eval()


def test_lenet5_has_lenet5s_shape(lenet):
    # conv 1x6x5x5+6, conv 6x16x5x5+16, fc 400x120+120, fc 120x84+84, head 84x10+10
    assert sum(p.numel() for p in lenet.parameters()) == 156 + 2416 + 48120 + 10164 + 850 == 61_706
    assert isinstance(build_model("lenet5", 1, 10), LeNet5)  # its default side is 28


def test_lenet5_keeps_the_classifier_contract(lenet):
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h, maps, logits = lenet.features(x), lenet.feature_maps(x), lenet(x)
    assert h.shape == (6, 84) and maps.shape == (6, 16, 10, 10) and (h >= 0).all()
    torch.testing.assert_close(lenet.head(h), logits)  # in eval mode the dropout is the identity
    torch.testing.assert_close(logits, h @ lenet.head.weight.T + lenet.head.bias)
    torch.testing.assert_close(lenet.features_from_maps(maps), h)
    seen = []
    handle = lenet.last_conv.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        lenet(x)
    handle.remove()
    torch.testing.assert_close(seen[0], maps)  # Grad-CAM's layer gives the maps the features are made from
    lenet.train()
    try:  # in training mode the dropout drops: the forward pass is no longer head(features)
        assert not torch.equal(lenet(x), logits)
    finally:
        lenet.eval()
    adapter = ModelAdapter(lenet, "cpu")
    got_logits, got_feats = adapter.forward(x.numpy())
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_feats, h.numpy(), rtol=1e-5, atol=1e-5)


# --- the device ----------------------------------------------------------------------------------------

def test_the_default_device_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.delenv("OOD_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu" and resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda" and resolve_device(None) == "cuda"
    assert resolve_device("cpu") == "cpu"  # a device the caller names wins


def test_ood_device_forces_the_cpu_even_where_cuda_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("OOD_DEVICE", " CPU ")
    assert default_device() == "cpu"
    model = nn.Linear(2, 2)
    assert ModelAdapter(model).device == "cpu"  # placements with no device named follow it
    assert next(model.parameters()).device.type == "cpu"


def test_a_wrong_ood_device_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OOD_DEVICE", "cuda")
    with pytest.raises(ValueError) as e:
        default_device()
    assert str(e.value) == "OOD_DEVICE=cuda: this machine has no usable CUDA device; set OOD_DEVICE=cpu or unset it"
    monkeypatch.setenv("OOD_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"^OOD_DEVICE must be cpu, cuda or cuda:N, got 'gpu'$"):
        default_device()
    with pytest.raises(ValueError, match=r"^--device cuda:1: this machine has no usable CUDA device; use --device cpu$"):
        check_device("cuda:1")


def test_every_placement_with_no_device_named_asks_the_default_device(monkeypatch, tmp_path):
    """OOD_DEVICE=cuda on a machine without CUDA: each call that places tensors without a device named must refuse
    with the variable's message, which shows it asked default_device(); with OOD_DEVICE=cpu the same calls work."""
    from ood_core.data import build_benchmark
    from ood_core.models import get_model
    from ood_core.models.oneclass import train_pixels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = Spec(image_size=8, train_per_class=3, training=TrainConfig(epochs=1, batch_size=8))
    bench = build_benchmark(spec, ())
    model = seeded_init_(SmallCNN(1, 10, width=4, feature_dim=8), torch.Generator().manual_seed(0))
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64)
    calls = {"ModelAdapter": lambda: ModelAdapter(model), "run_inference": lambda: run_inference(model, x, y),
             "compute_outputs": lambda: pipeline.compute_outputs(model, bench),
             "prepare": lambda: pipeline.prepare(spec, cache_dir=tmp_path, bench=bench),
             "get_model": lambda: get_model(spec, bench, cache_dir=tmp_path),
             "train_model": lambda: train_model(spec, bench), "train_pixels": lambda: train_pixels(spec, bench)}
    monkeypatch.setenv("OOD_DEVICE", "cuda")
    for what, call in calls.items():
        with pytest.raises(ValueError, match="^OOD_DEVICE=cuda: this machine has no usable CUDA device"):
            call()
            pytest.fail(f"{what} placed tensors without asking default_device()")
    monkeypatch.setenv("OOD_DEVICE", "cpu")
    assert run_inference(model, x, y).logits.shape == (4, 10)
    res = train_model(spec, bench)
    assert {p.device.type for p in res.model.parameters()} == {"cpu"}


def test_mixed_precision_is_for_cuda_only(monkeypatch):
    with training_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not grad_scaler("cpu").is_enabled()  # a plain backward and optimiser step on the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype() == torch.bfloat16  # no loss scaling needed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype() == torch.float16  # older GPUs: float16 with a GradScaler


def test_the_device_in_words():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_device("cpu") == "CPU (1 thread)"
        torch.set_num_threads(2)
        assert describe_device("cpu") == "CPU (2 threads)"
    finally:
        torch.set_num_threads(n)


def test_no_tensor_placement_bypasses_the_device_module():
    """No `.cuda()` and no hard-wired "cpu" default device in ood_core: a device left unnamed means default_device().
    (torch.load(map_location="cpu") stays: a checkpoint is read on the CPU, then moved.)"""
    offenders = []
    for path in (ROOT / "ood_core").rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ".cuda(" in line or re.search(r'\bdevice\s*(:\s*[\w\[\], |]+)?=\s*"cpu"', line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize("setting, model, serves", [("nd", "small_cnn", "out-of-distribution detection"),
                                                    ("ad", "lenet5", "open-set recognition"),
                                                    ("osr", "deep_svdd", "novelty detection"),
                                                    ("ood", "autoencoder", "anomaly detection")])
def test_a_model_is_refused_in_a_setting_it_does_not_serve_before_anything_trains(setting, model, serves, tmp_path,
                                                                                 monkeypatch):
    """A hand-made link or script may ask a classifier to be a one-class model (or the reverse): a clear error in
    one sentence that names what the model serves, and no training, no checkpoint."""
    from ood_core.data import build_benchmark
    from ood_core.models import get_model, train

    spec = Spec(setting=setting, model=model)
    monkeypatch.setattr(train, "train_model", lambda *a, **k: pytest.fail("nothing may train"))
    with pytest.raises(ValueError, match=f"serves .*{serves}.*, not {re.escape(SETTING_TITLES[setting].lower())}"):
        get_model(spec, build_benchmark(spec, ood_sets=()), cache_dir=tmp_path, device="cpu")
    assert not any(tmp_path.iterdir())
