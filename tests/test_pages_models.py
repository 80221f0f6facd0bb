"""The Experiment page's model picker reads the model registry: it offers every model that serves the chosen setting
and accepts the chosen dataset's images, says why the others are not offered, and trains what it offers."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ood_core import settings
from ood_core.device import describe_device
from ood_core.models import MODELS, InputContract, ModelEntry, checkpoint_path, register_model
from ood_core.models.cnn import SmallCNN
from ood_core.models.registry import unregister_model
from ood_core.models.train import train_classifier
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture
def app(default_experiment) -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def picker(at: AppTest, label: str = "Classifier"):
    return next(s for s in at.selectbox if s.label == label)


@pytest.fixture
def tiny_model():
    """A classifier registered by this test file alone, for 12 px images only; removed afterwards."""
    entry = register_model(ModelEntry(
        name="tiny_page_net", title="Tiny page-test network", short="tiny", description="A test's own model.",
        kind="classifier", settings=("ood", "osr"), contract=InputContract(min_side=12, max_side=12),
        build=lambda c, k, side: SmallCNN(c, k, width=4, feature_dim=8), train=train_classifier,
        train_seconds=1e-4, default_side=12))
    yield entry
    unregister_model(entry.name)


def test_the_picker_offers_the_models_that_fit_the_setting_and_the_image_size_and_says_why_not(tiny_model, app):  # registered before the page runs
    no_exception(app)
    assert f"Device: {describe_device()}" in [c.value for c in app.sidebar.caption]  # e.g. "CPU (2 threads)"
    digits = picker(app)
    assert digits.options == ["Small CNN (4 convolutions, 128-d features)",
                              "ResNet-18, CIFAR-style (3×3 stem, no max-pool; 11 M parameters)"]
    assert "**LeNet-5 (28×28 only, 62 k parameters)**: it takes 28 px images only, not 16 px ones." in digits.help
    assert "**Tiny page-test network**: it takes 12 px images only, not 16 px ones." in digits.help
    assert any(c.value == "Not offered at 16 px: LeNet-5 (28 px only); tiny (12 px only)." for c in app.caption)
    app.selectbox(key="image-size-digits").set_value(12).run()
    no_exception(app)
    assert picker(app).options[-1] == "Tiny page-test network"  # the model registered in this file, at its size
    app.selectbox(key="image-size-digits").set_value(28).run()
    names = [m for m in settings.models_for("ood") if m != tiny_model.name]
    assert picker(app).options == [MODELS[m].title for m in names]  # every classifier but the 12 px one
    app.radio(key="setting-picker").set_value("nd").run()
    no_exception(app)
    assert picker(app, "One-class model").options == [MODELS[m].title for m in settings.ONE_CLASS_MODELS]


def test_lenet5_offered_for_the_mnist_sample_trains_from_the_page(app, land, tmp_path, monkeypatch):
    monkeypatch.setattr("ood_core.models.checkpoint.DEFAULT_CACHE_DIR", tmp_path)  # cold
    app.selectbox(key="dataset-picker").set_value("mnist-sample").run()
    no_exception(app)
    assert app.selectbox(key="image-size-mnist-sample").value == 28  # the dataset's own size: LeNet-5 fits
    picker(app).set_value("lenet5")
    next(n for n in app.number_input if n.label == "Epochs").set_value(1)
    next(n for n in app.number_input if n.label.startswith("Training images per class")).set_value(20)
    next(b for b in app.button if b.label == "Train / load model").click().run()
    land(app)  # the training, when it runs as a background job
    no_exception(app)
    spec = app.session_state[ui.SPEC_KEY]
    assert (spec.dataset, spec.image_size, spec.model) == ("mnist-sample", 28, "lenet5")
    assert checkpoint_path(spec, tmp_path).exists()
    assert any(m.label == "ID test accuracy" for m in app.metric)
