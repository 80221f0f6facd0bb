"""Known answers for the distance detectors that run the network again: knn_conv (features.py), Deep KNN on the
pooled maps of the last convolutional block."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import metrics
from ood_core.detectors import FitContext, create
from ood_core.detectors.features import pooled_feature_maps
from ood_core.inference import ModelAdapter, Outputs, run_inference

pytestmark = pytest.mark.unit


class MapsNet(nn.Module):
    """feature_maps(x) = relu(x) (a 1x1 identity convolution), features = their spatial mean, a fixed head: the pooled
    maps of hand-made inputs are known."""

    def __init__(self, channels: int = 2, classes: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU())
        self.head = nn.Linear(channels, classes)
        with torch.no_grad():
            self.body[0].weight.copy_(torch.eye(channels)[:, :, None, None])
            self.head.weight.copy_(torch.eye(classes, channels))
            self.head.bias.zero_()

    def feature_maps(self, x):
        return self.body(x)

    def features(self, x):
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def _images(g: np.ndarray) -> np.ndarray:
    """(n, C) non-negative pooled values -> (n, C, 2, 2) images whose spatial mean is g (a zero-mean pattern added)."""
    pattern = np.array([[0.1, -0.1], [-0.1, 0.1]], dtype=np.float32)
    return (np.asarray(g, dtype=np.float32)[:, :, None, None] + 0.5 * pattern * (np.asarray(g)[:, :, None, None] > 0))


def _setup(train_g, batch_size: int = 2):
    model = MapsNet().eval()
    adapter = ModelAdapter(model, "cpu", batch_size=batch_size)
    x = _images(np.asarray(train_g, dtype=np.float32))
    train = run_inference(model, x, np.zeros(len(x), dtype=np.int64), "cpu")
    return model, FitContext(train=train, model=adapter, num_classes=2)


def _query(model, g) -> Outputs:
    x = _images(np.asarray(g, dtype=np.float32))
    return run_inference(model, x, np.full(len(x), -1), "cpu")


def test_knn_conv_hand_case():
    # normalised bank: (1, 0), (0, 1), (1, 1)/sqrt2; the query (2, 0) normalises to (1, 0)
    model, ctx = _setup([[3.0, 0.0], [0.0, 0.5], [2.0, 2.0]])
    q = _query(model, [[2.0, 0.0], [1.0, 3.0]])
    s1 = create("knn_conv", k=1).fit(ctx).score(q)
    s2 = create("knn_conv", k=2).fit(ctx).score(q)
    r = np.sqrt(0.5)
    z = np.array([1.0, 3.0]) / np.sqrt(10.0)  # the second query, normalised: nearest (0, 1), then (1, 1)/sqrt2
    np.testing.assert_allclose(s1, [0.0, np.sqrt(2 - 2 * 3 / np.sqrt(10.0))], atol=1e-6)
    np.testing.assert_allclose(s2, [np.sqrt(2 - 2 * r), np.linalg.norm(z - [r, r])], atol=1e-6)


def test_pooled_feature_maps_are_spatial_means_whatever_the_batch_size():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.2, 2.0, size=(7, 2))
    x = _images(g)
    one = pooled_feature_maps(ModelAdapter(MapsNet(), "cpu", batch_size=1), x)
    many = pooled_feature_maps(ModelAdapter(MapsNet(), "cpu", batch_size=64), x)
    np.testing.assert_allclose(one, g, rtol=1e-6)
    np.testing.assert_allclose(many, one, rtol=1e-6)


def test_knn_conv_separates_an_easy_case_and_ignores_the_penultimate_features():
    rng = np.random.default_rng(1)
    id_g = np.abs(rng.normal(0, 0.2, size=(60, 2))) + [3.0, 0.0]  # ID maps point along channel 0
    model, ctx = _setup(id_g, batch_size=16)
    ood = _query(model, np.abs(rng.normal(0, 0.2, size=(30, 2))) + [0.0, 3.0])
    test = _query(model, np.abs(rng.normal(0, 0.2, size=(30, 2))) + [3.0, 0.0])
    det = create("knn_conv").fit(ctx)
    assert metrics.auroc(det.score(test), det.score(ood)) > 0.99
    # the score comes from the network's maps, not the cached penultimate features
    scrambled = Outputs(test.logits, np.zeros_like(test.features), test.labels, test.inputs)
    np.testing.assert_allclose(det.score(scrambled), det.score(test))


def test_knn_conv_says_when_images_are_missing():
    model, ctx = _setup([[1.0, 0.0], [0.0, 1.0]])
    no_images = Outputs(ctx.train.logits, ctx.train.features, ctx.train.labels, None)
    with pytest.raises(ValueError, match="knn_conv needs the ID train images"):
        create("knn_conv").fit(FitContext(train=no_images, model=ctx.model, num_classes=2))
    det = create("knn_conv").fit(ctx)
    q = _query(model, [[1.0, 1.0]])
    with pytest.raises(ValueError, match="knn_conv needs the input images"):
        det.score(Outputs(q.logits, q.features, q.labels, None))
