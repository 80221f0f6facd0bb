"""Generative one-class models (LSA, OC-GAN, AnoGAN): known answers, the easy separable case, normal data only in
fitting, AnoGAN's batched latent search, LSA's causal estimator, checkpoints and cancel. Trainings are tiny (8-16 px
digits, a few epochs)."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, TrainConfig, metrics
from ood_core.data import build_benchmark
from ood_core.data.benchmark import Split
from ood_core.detectors import REGISTRY
from ood_core.inference import run_inference
from ood_core.jobs import Cancelled
from ood_core.models import build_model, checkpoint_path, get_model
from ood_core.models import oneclass_gen as gen
from ood_core.models.registry import MODELS
from ood_core.settings import detectors_for

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

TRAINERS = {"lsa": gen.train_lsa, "ocgan": gen.train_ocgan, "anogan": gen.train_anogan}
TINY = {"lsa": dict(epochs=2), "ocgan": dict(epochs=1), "anogan": dict(epochs=1)}
CLASSES = {"lsa": gen.LSA, "ocgan": gen.OCGAN, "anogan": gen.AnoGAN}


def _spec(model: str, size: int = 8, **kw) -> Spec:
    return Spec(setting="nd", model=model, normal_class=0, image_size=size, **kw)


@pytest.fixture(scope="module")
def bench8():
    return build_benchmark(_spec("lsa"), ood_sets=())


@pytest.fixture(scope="module")
def trained8(bench8):
    return {m: TRAINERS[m](_spec(m), bench8, None, "cpu", hp=TINY[m]) for m in TRAINERS}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- registry and the model_score card -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLASSES))
def test_each_model_is_registered_as_a_one_class_model_with_its_own_score(name):
    entry = MODELS[name]
    assert entry.kind == "one_class" and entry.settings == ("nd", "ad") and entry.own_score
    assert entry.train_seconds > 0 and "model_score" in detectors_for("nd", name, 1)
    for side in (8, 16, 28):
        m = build_model(name, 1, 1, side)
        assert isinstance(m, CLASSES[name]) and m.kind == "one_class"
        assert m.eval().anomaly_score(torch.zeros(2, 1, side, side)).shape == (2,)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model(name, 1, 1, 10)


def test_the_model_score_card_names_every_generative_model():
    card = REGISTRY["model_score"]
    for short in ("LSA", "OC-GAN", "AnoGAN"):
        assert short in card.formula and short in card.latex
    years = {r.year for r in card.reference}
    assert {2017, 2019} <= years


# --- LSA -------------------------------------------------------------------------------------------------------

def test_lsa_estimator_is_causal_output_i_depends_on_dims_before_i_only():
    torch.manual_seed(0)
    est = gen.AutoregressiveEstimator(6, hidden=4, bins=5)
    z = torch.rand(3, 6, requires_grad=True)
    out = est(z)
    for i in range(6):
        (g,) = torch.autograd.grad(out[:, i, :].sum(), z, retain_graph=True)
        assert torch.all(g[:, i:] == 0), f"output {i} depends on dims >= {i}"
        if i > 0:
            assert g[:, :i].abs().sum() > 0  # and it does see the earlier ones
    first = est(torch.rand(3, 6))[:, 0, :]
    assert torch.allclose(first, first[0].expand_as(first))  # p(z_0) is unconditional: the same for every input


def test_lsa_nll_is_the_sum_of_minus_log_probabilities_of_each_dims_bin():
    torch.manual_seed(1)
    est = gen.AutoregressiveEstimator(3, hidden=2, bins=4)
    z = torch.tensor([[0.0, 0.49, 0.999], [0.26, 0.75, 0.5]])
    logp = est(z).log_softmax(dim=2)
    bins = [[0, 1, 3], [1, 3, 2]]  # floor(z * 4), clipped to 0..3
    want = torch.stack([-sum(logp[n, i, bins[n][i]] for i in range(3)) for n in range(2)])
    torch.testing.assert_close(est.nll(z), want)


def test_lsa_score_is_normalised_by_the_normal_training_extremes(bench8, trained8):
    model = trained8["lsa"].model
    x = torch.from_numpy(bench8.train.x)
    with torch.no_grad():
        rec, nll = model.parts(x)
        s = model.anomaly_score(x)
    torch.testing.assert_close(model.rec_range, torch.stack([rec.min(), rec.max()]))
    torch.testing.assert_close(model.nll_range, torch.stack([nll.min(), nll.max()]))
    want = (rec - rec.min()) / (rec.max() - rec.min()) + (nll - nll.min()) / (nll.max() - nll.min())
    torch.testing.assert_close(s, want)
    assert float(s.min()) >= -1e-6 and float(s.max()) <= 2 + 1e-6


# --- OC-GAN ----------------------------------------------------------------------------------------------------

def test_ocgan_latent_is_bounded_and_its_score_is_the_per_pixel_squared_error(bench8, trained8):
    model = trained8["ocgan"].model
    x = torch.from_numpy(bench8.test.x[:16]) * 5  # far outside the data: the code must still be in [-1, 1]
    with torch.no_grad():
        z = model.features(x)
        want = ((model.decoder(z) - x) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(model.anomaly_score(x), want)
    assert float(z.abs().max()) <= 1.0


def test_ocgan_mining_moves_codes_towards_what_the_classifier_takes_for_real(trained8):
    model = trained8["ocgan"].model
    l2 = torch.rand(32, model.latent, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mined = gen.mine_negatives(model, l2, steps=5, lr=0.1)
    with torch.no_grad():
        before = model.classifier(model.decoder(l2)).mean()
        after = model.classifier(model.decoder(mined)).mean()
    assert after > before and float(mined.abs().max()) <= 1.0 and not torch.equal(mined, l2)


# --- AnoGAN ----------------------------------------------------------------------------------------------------

def test_anogan_batched_search_finds_the_same_codes_as_one_image_at_a_time(bench8, trained8):
    model = trained8["anogan"].model.eval()
    x = torch.cat([torch.from_numpy(bench8.test.x[:3]), torch.from_numpy(bench8.ood["novel"].x[:3])])
    z_all, loss_all = model.search(x, steps=20)
    for i in range(len(x)):
        z_i, loss_i = model.search(x[i:i + 1], steps=20)
        torch.testing.assert_close(z_i[0], z_all[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss_i[0], loss_all[i], atol=1e-5, rtol=1e-5)
    # the score is the loss at the code found, independent of the images' order
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    with torch.no_grad():
        torch.testing.assert_close(model.anomaly_score(x[perm]), model.anomaly_score(x)[perm], atol=1e-5, rtol=1e-5)


def test_anogan_loss_is_the_papers_weighted_residual_and_discrimination(trained8):
    model = trained8["anogan"].model.eval()
    x = torch.randn(4, 1, 8, 8)
    z = torch.randn(4, model.latent)
    with torch.no_grad():
        g = model.generator(z)
        residual = (x - g).abs().sum(dim=(1, 2, 3))
        disc = (model.features(x) - model.features(g)).abs().sum(dim=1)
        torch.testing.assert_close(model.search_loss(x, z), 0.9 * residual + 0.1 * disc)
        z0, loss0 = model.search(x, steps=0)  # no step: the seeded start and its loss
        torch.testing.assert_close(loss0, model.search_loss(x, model.initial_codes(x)))
    _, loss = model.search(x, steps=30)
    assert torch.all(loss < loss0)  # the search lowers every image's loss
    with pytest.raises(ValueError, match="0 or more steps"):
        gen.AnoGAN(1, 8, search_steps=-1)


def test_anogan_search_is_torchs_adam_on_the_summed_loss(trained8):
    """With no tolerance the search is the reference: torch.optim.Adam on z, the loss summed over the images."""
    model = trained8["anogan"].model.eval()
    x = torch.randn(5, 1, 8, 8)
    fx = model.features(x).detach()
    z = model.initial_codes(x).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=model.search_lr)
    for _ in range(15):
        opt.zero_grad()
        model.search_loss(x, z, fx).sum().backward()
        opt.step()
    z_ref = z.detach()
    z_got, loss_got = model.search(x, steps=15, tol=0.0)
    torch.testing.assert_close(z_got, z_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(loss_got, model.search_loss(x, z_ref, fx), atol=1e-4, rtol=1e-5)


def test_anogan_stop_rule_stops_a_search_whose_loss_fell_by_less_than_tol():
    previous = torch.tensor([10.0, 10.0, 10.0, 10.0])
    current = torch.tensor([9.5, 9.95, 9.9, 11.0])  # fell by 5%, 0.5%, exactly 1%, rose
    assert gen.search_stop_rule(previous, current, 0.01).tolist() == [False, True, False, True]


def test_anogan_search_with_a_tolerance_stops_each_image_at_its_own_check(trained8):
    model = trained8["anogan"].model.eval()
    x = torch.randn(6, 1, 8, 8)
    every = gen.ANOGAN_CHECK_EVERY
    # a tolerance of 0.99 stops every search at the first check: the same as a search of that many steps
    z_stop, loss_stop = model.search(x, steps=5 * every, tol=0.99)
    z_ref, loss_ref = model.search(x, steps=every, tol=0.0)
    torch.testing.assert_close(z_stop, z_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loss_stop, loss_ref, atol=1e-5, rtol=1e-5)
    # with a stopping rule each image still gets what it would get alone
    _, loss_all = model.search(x, steps=4 * every, tol=0.02)
    for i in range(len(x)):
        torch.testing.assert_close(model.search(x[i:i + 1], steps=4 * every, tol=0.02)[1][0], loss_all[i],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="tolerance must be in"):
        gen.AnoGAN(1, 8, search_tol=1.0)


def test_anogan_search_setting_joins_the_state_so_cached_outputs_follow_it(trained8):
    from ood_core.models.checkpoint import state_dict_sha256

    model = trained8["anogan"].model
    state = model.state_dict()
    other = gen.AnoGAN(1, 8, search_steps=model.search_steps + 1)
    other.load_state_dict(state)  # the weights load; the search stays the new model's own
    assert other.search_setting[0] == model.search_steps + 1
    assert state_dict_sha256(other.state_dict()) != state_dict_sha256(state)
    older = {k: v for k, v in state.items() if k != "search_setting"}  # a checkpoint from before the buffer
    same = gen.AnoGAN(1, 8)
    same.load_state_dict(older)
    assert _same_weights(same, model)


# --- all three: normal data only, easy case, determinism, progress, cache and cancel ----------------------------

@pytest.mark.parametrize("name", list(TRAINERS))
def test_fitting_sees_the_normal_data_only(name, bench8, trained8):
    """Test and novel images replaced by NaN: the training gives the same weights (it never read them)."""
    poisoned = dataclasses.replace(
        bench8, test=Split(np.full_like(bench8.test.x, np.nan), bench8.test.y),
        ood={k: Split(np.full_like(v.x, np.nan), v.y) for k, v in bench8.ood.items()})
    assert set(np.unique(bench8.train.y)) == {0}
    again = TRAINERS[name](_spec(name), poisoned, None, "cpu", hp=TINY[name])
    assert _same_weights(again.model, trained8[name].model)
    other_member = TRAINERS[name](_spec(name, training=TrainConfig(member=1)), bench8, None, "cpu", hp=TINY[name])
    assert not _same_weights(other_member.model, trained8[name].model)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_training_reports_progress_per_epoch_and_ends_in_eval_mode(name, bench8):
    seen = []
    res = TRAINERS[name](_spec(name), bench8, seen.append, "cpu", hp={**TINY[name], "epochs": 2})
    assert [p.epoch for p in seen] == [1, 2] and len(res.history) == 2
    assert all(np.isfinite(p.loss) for p in seen) and not any(m.training for m in res.model.modules())


@pytest.fixture(scope="module")
def bench16():
    return build_benchmark(_spec("lsa", size=16), ood_sets=())


@pytest.mark.parametrize("name,hp", [("lsa", dict(epochs=10)), ("ocgan", dict(epochs=10)),
                                     ("anogan", dict(epochs=40))])
def test_easy_case_separates_digit_0_from_digit_1(name, hp, bench16):
    res = TRAINERS[name](_spec(name, size=16), bench16, None, "cpu", hp=hp)
    ones = np.asarray(bench16.meta["novel_original_labels"]) == 1
    s_id = run_inference(res.model, bench16.test.x, bench16.test.y).extras["model_score"]
    s_ood = run_inference(res.model, bench16.ood["novel"].x[ones], bench16.ood["novel"].y[ones]).extras["model_score"]
    assert metrics.auroc(s_id, s_ood) > 0.95  # higher score = more anomalous


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_cancel_saves_nothing_and_the_cache_restores_the_score(name, bench8, tmp_path):
    spec = _spec(name)
    ev, epochs = threading.Event(), []
    with pytest.raises(Cancelled):
        get_model(spec, bench8, lambda p: (epochs.append(p.epoch), ev.set()), cache_dir=tmp_path, cancel=ev)
    path = checkpoint_path(spec, tmp_path)
    assert epochs == [1] and not path.exists() and not list(path.parent.glob("*.tmp"))
    trained = get_model(spec, bench8, cache_dir=tmp_path, device="cpu")  # the default recipe, whole
    again = get_model(spec, bench8, cache_dir=tmp_path, device="cpu")
    assert path.exists() and not trained.from_cache and again.from_cache
    assert _same_weights(again.model, trained.model)  # buffers too: score ranges, decoder bounds
    x = bench8.test.x[:8]
    np.testing.assert_allclose(run_inference(again.model, x, bench8.test.y[:8]).extras["model_score"],
                               run_inference(trained.model, x, bench8.test.y[:8]).extras["model_score"], rtol=1e-5)
