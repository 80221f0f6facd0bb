"""The closed-set training recipe (schedule, augmentation), Ruff et al.'s preprocessing and the recipe versions in the
model keys: hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_core import Spec, TrainConfig
from ood_core.models.preprocess import ContrastMinMax, global_contrast_normalise
from ood_core.models.recipes import cosine_warmup_factor, cosine_warmup_schedule, random_affine
from ood_core.spec import RECIPE_VERSIONS, _short_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread

# two 1x2x2 images: [1, 2, 3, 6] and [0, 0, 1, 1]
TWO = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]]).view(2, 1, 2, 2)


# --- Ruff et al.'s preprocessing ---------------------------------------------------------------------------

def test_gcn_by_hand():
    # [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], mean |deviation| 1.5; [0, 0, 1, 1]: mean 0.5, L1 scale 0.5
    want = torch.tensor([[-4 / 3, -2 / 3, 0.0, 2.0], [-1.0, -1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    assert torch.allclose(global_contrast_normalise(TWO), want)


def test_gcn_ignores_a_per_image_affine_change_and_a_constant_image_gives_zeros():
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(global_contrast_normalise(3.0 * x - 7.0), global_contrast_normalise(x), atol=1e-5)
    assert torch.equal(global_contrast_normalise(torch.full((1, 1, 2, 2), 0.3)), torch.zeros(1, 1, 2, 2))


def test_min_max_bounds_come_from_the_fitted_samples_only():
    scaling = ContrastMinMax().fit(TWO)
    # GCN values over both images: min -4/3, max 2, so (g + 4/3) / (10/3)
    assert float(scaling.lo) == pytest.approx(-4 / 3) and float(scaling.hi) == pytest.approx(2.0)
    want = torch.tensor([[0.0, 0.2, 0.4, 1.0], [0.1, 0.1, 0.7, 0.7]]).view(2, 1, 2, 2)
    assert torch.allclose(scaling(TWO), want, atol=1e-6)
    # a new image is scaled with the fitted bounds, not its own: it may leave [0, 1]
    new = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)  # GCN: [-2/3, -2/3, -2/3, 2]
    assert torch.allclose(scaling(new).flatten(), torch.tensor([0.2, 0.2, 0.2, 1.0]), atol=1e-6)
    assert "lo" in scaling.state_dict() and "hi" in scaling.state_dict()  # checkpoints keep the bounds


def test_min_max_refuses_empty_or_constant_training_data():
    with pytest.raises(ValueError, match="at least one"):
        ContrastMinMax().fit(torch.zeros(0, 1, 2, 2))
    with pytest.raises(ValueError, match="not all constant"):
        ContrastMinMax().fit(torch.ones(3, 1, 2, 2))


# --- the closed-set recipe: schedule and augmentation ------------------------------------------------------

def test_cosine_warmup_values_at_given_steps():
    total, warmup = 105, 5
    assert cosine_warmup_factor(0, total, warmup) == pytest.approx(0.2)  # (0 + 1) / 5
    assert cosine_warmup_factor(4, total, warmup) == pytest.approx(1.0)  # end of the warm-up
    assert cosine_warmup_factor(5, total, warmup) == pytest.approx(1.0)  # cos(0)
    assert cosine_warmup_factor(55, total, warmup) == pytest.approx(0.5)  # half-way through the decay: cos(pi / 2)
    assert cosine_warmup_factor(104, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_the_scheduler_sets_the_optimisers_learning_rate():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = cosine_warmup_schedule(opt, total=105, warmup_fraction=5 / 105)
    seen = []
    for _ in range(56):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.4 * 0.2) and seen[4] == pytest.approx(0.4)
    assert seen[55] == pytest.approx(0.2)


def test_affine_augmentation_keeps_shapes_is_seeded_and_moves_a_dot_by_at_most_the_shift():
    x = torch.zeros(64, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0  # a bright dot in the centre of each image
    out = random_affine(x, torch.Generator().manual_seed(0), max_shift=3, max_rotation=0, max_scale=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    again = random_affine(x, torch.Generator().manual_seed(0), max_shift=3, max_rotation=0, max_scale=0)
    assert torch.equal(out, again)  # the training call's generator fixes it
    other = random_affine(x, torch.Generator().manual_seed(1), max_shift=3, max_rotation=0, max_scale=0)
    assert not torch.equal(out, other)
    # bilinear shifts keep the dot's mass and move its centre by at most 3 px per axis; images differ
    mass = out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass, torch.ones(64), atol=1e-5)
    grid = torch.arange(15.0)
    cy = (out[:, 0].sum(2) * grid).sum(1) / mass
    cx = (out[:, 0].sum(1) * grid).sum(1) / mass
    assert float((cy - 7).abs().max()) <= 3 + 1e-4 and float((cx - 7).abs().max()) <= 3 + 1e-4
    assert len({(round(float(a), 3), round(float(b), 3)) for a, b in zip(cy, cx)}) == 64


def test_affine_augmentation_without_movement_is_the_identity_and_fills_with_the_background():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) - 0.5
    same = random_affine(x, torch.Generator().manual_seed(0), max_shift=0, max_rotation=0, max_scale=0)
    assert torch.allclose(same, x, atol=1e-6)
    # a shifted white image: what comes in at the border is the background (the batch's minimum, here -1)
    white = torch.ones(4, 1, 8, 8)
    white[:, :, 4, 4] = -1.0
    moved = random_affine(white, torch.Generator().manual_seed(3), max_shift=3, max_rotation=0, max_scale=0)
    assert float(moved.min()) >= -1 - 1e-6 and float(moved.max()) <= 1 + 1e-6  # mixtures of the two values
    border = torch.cat([moved[:, 0, 0], moved[:, 0, -1], moved[:, 0, :, 0], moved[:, 0, :, -1]], dim=1)
    assert bool((border.min(dim=1).values < 0).all())  # every image took in background at some edge


# --- cache keys of changed recipes -------------------------------------------------------------------------

def test_changed_recipes_get_new_model_keys_and_the_others_keep_theirs():
    def old_key(spec: Spec) -> str:  # the formula before recipe versions existed
        d = spec.relevant_dict()
        return _short_hash(d)

    closedset = Spec(setting="osr", training=TrainConfig(regime="closedset"))
    assert closedset.recipe_versions() == {"regime:closedset": RECIPE_VERSIONS["regime:closedset"]}
    assert closedset.model_key() != old_key(closedset)
    svdd = Spec(setting="nd", model="deep_svdd")
    assert svdd.recipe_versions() == {"model:deep_svdd": RECIPE_VERSIONS["model:deep_svdd"]}
    assert svdd.model_key() != old_key(svdd)
    pretrained = Spec(setting="nd", model="deep_svdd_pretrained")
    assert pretrained.recipe_versions() == {"model:deep_svdd_pretrained": RECIPE_VERSIONS["model:deep_svdd_pretrained"]}
    for spec in (Spec(), Spec(setting="osr"), Spec(setting="nd", model="autoencoder"),
                 Spec(setting="ood", training=TrainConfig(regime="oe"))):
        assert spec.recipe_versions() == {} and spec.model_key() == old_key(spec)
    # a one-class setting never trains a classifier regime: its key ignores the regime's version
    assert Spec(setting="nd", model="autoencoder", training=TrainConfig(regime="closedset")).recipe_versions() == {}
    assert np.unique([s.model_key() for s in (closedset, svdd, Spec())]).size == 3


def test_the_closed_set_regime_starts_from_its_own_epochs_and_the_others_from_the_datasets():
    from ood_core.spec import REGIME_EPOCHS, default_epochs

    assert default_epochs(15, "closedset") == REGIME_EPOCHS["closedset"] > 15
    assert default_epochs(15, "ce") == 15 and default_epochs(30, "oe") == 30


# --- the reciprocal-point regimes trained with the closed-set recipe ---------------------------------------------

def test_the_reciprocal_closed_set_regimes_start_from_the_recipes_epochs_and_keep_the_other_keys():
    from ood_core.spec import CLOSEDSET_RECIPE_REGIMES, REGIME_EPOCHS, default_epochs

    for regime in ("rpl_closedset", "arpl_closedset"):
        assert regime in CLOSEDSET_RECIPE_REGIMES and default_epochs(15, regime) == REGIME_EPOCHS["closedset"]
        spec = Spec(setting="osr", training=TrainConfig(regime=regime))
        assert spec.recipe_versions() == {}  # a new regime: no older cached models to keep apart
    keys = {r: Spec(setting="osr", training=TrainConfig(regime=r)).model_key()
            for r in ("rpl", "arpl", "rpl_closedset", "arpl_closedset", "closedset")}
    assert len(set(keys.values())) == 5


@pytest.mark.parametrize("regime, adversarial", [("rpl_closedset", False), ("arpl_closedset", True)])
def test_a_reciprocal_closed_set_training_uses_the_recipes_augmentation_and_the_reciprocal_loss(
        monkeypatch, tmp_path, regime, adversarial):
    from ood_core import pipeline
    from ood_core.models import openset, train

    calls = {"affine": 0, "shift": 0}
    affine, shift = train.random_affine, train._augment

    def counted_affine(x, gen, *a, **k):
        calls["affine"] += 1
        return affine(x, gen, *a, **k)

    def counted_shift(x, gen, *a, **k):
        calls["shift"] += 1
        return shift(x, gen, *a, **k)

    monkeypatch.setattr(train, "random_affine", counted_affine)
    monkeypatch.setattr(train, "_augment", counted_shift)
    spec = Spec(setting="osr", image_size=8, known_classes=3,
                training=TrainConfig(epochs=2, batch_size=64, lr=5e-3, regime=regime))
    exp = pipeline.prepare(spec, cache_dir=tmp_path, device="cpu", ood_sets=())
    assert calls["affine"] > 0 and calls["shift"] == 0  # each image's own affine move, never the plain 1-px shift
    assert (regime in openset.RECIPROCAL_REGIMES, regime in openset.ADVERSARIAL_REGIMES) == (True, adversarial)
    # the head is the reciprocal points' linear form: b_k = ||P_k||^2 / D with P = -W / (2 / D [+ 1 for ARPL])
    w = exp.model.head.weight.detach().double()
    d = w.shape[1]
    points = -w / (2.0 / d + (1.0 if adversarial else 0.0))
    np.testing.assert_allclose(exp.model.head.bias.detach().double().numpy(), (points ** 2).sum(1).numpy() / d,
                               rtol=1e-5, atol=1e-6)
    assert "rpl" in pipeline.resolve_detectors("all", exp)
