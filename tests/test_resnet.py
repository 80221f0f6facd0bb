"""The CIFAR-style ResNet-18: the classifier contract (features, head, last conv) and every detector on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core import Spec, TrainConfig, pipeline
from ood_core.models import build_model
from ood_core.models.reproducible import seeded_init_


@pytest.fixture(scope="module")
def net():
    return seeded_init_(build_model("resnet18_cifar", 3, 7), torch.Generator().manual_seed(0)).eval()


def test_the_cifar_resnet_has_resnet18s_shape_and_the_classifier_contract(net):
    # He et al.'s ResNet-18 with a 3x3 stem for 32 px inputs: 11,173,962 parameters at 10 classes (512*7+7 here)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962 - 512 * 10 - 10 + 512 * 7 + 7
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = net.features(x)
        maps = net.feature_maps(x)
        logits = net(x)
    assert h.shape == (4, 512) and maps.shape == (4, 512, 4, 4)  # no max-pool: 32 -> 32, 16, 8, 4
    assert (h >= 0).all()  # pooled post-ReLU activations: what ReAct/ASH/DICE assume
    torch.testing.assert_close(logits, h @ net.head.weight.T + net.head.bias)
    torch.testing.assert_close(h, maps.mean(dim=(2, 3)))
    seen = []
    handle = net.last_conv.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(x)
    handle.remove()
    torch.testing.assert_close(seen[0], maps)  # Grad-CAM's layer is the maps the features pool


def test_every_detector_that_applies_scores_a_resnet_experiment(tmp_path):
    spec = Spec(model="resnet18_cifar", image_size=8, train_per_class=6, training=TrainConfig(epochs=1, batch_size=32))
    exp = pipeline.prepare(spec, cache_dir=tmp_path, device="cpu", ood_sets=("gaussian", "rotated"))
    rows, _ = pipeline.evaluate(exp, "all")
    failed = {r["detector"]: r["error"] for r in rows if r["error"]}
    # a ResNet has no dropout; OpenMax/SHE need every class predicted correctly at least twice (1 epoch, 60 images)
    assert set(failed) <= {"mc_dropout", "openmax", "she"}, failed
    assert "dropout" in failed.get("mc_dropout", "dropout")
    ok = [r for r in rows if not r["error"]]
    assert len({r["detector"] for r in ok}) >= 25 and all(0.0 <= r["auroc"] <= 1.0 for r in ok)
