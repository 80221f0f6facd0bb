"""One-class models (Deep SVDD, autoencoder, GeoTrans, raw pixels): known answers, checkpoints, determinism,
an easy separable case and the `model_score` detector through the pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, TrainConfig, metrics, pipeline
from ood_core.data import build_benchmark
from ood_core.inference import run_inference
from ood_core.models import build_model, checkpoint_path, get_model, load_checkpoint, save_checkpoint
from ood_core.models import oneclass as oc
from ood_core.models.registry import MODELS
from ood_core.settings import ONE_CLASS_MODELS, detectors_for

# tiny and fast: 8 px digits, normal class 0, a few epochs
SMALL = {"deep_svdd": dict(epochs=3, pretrain_epochs=0), "autoencoder": dict(epochs=3), "geotrans": dict(epochs=1)}
TRAINERS = {"deep_svdd": oc.train_deep_svdd, "autoencoder": oc.train_autoencoder, "geotrans": oc.train_geotrans}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread


def _spec(model: str, size: int = 8, **kw) -> Spec:
    return Spec(setting="nd", model=model, normal_class=0, image_size=size, **kw)


@pytest.fixture(scope="module")
def bench8():
    return build_benchmark(_spec("deep_svdd"), ood_sets=())


@pytest.fixture(scope="module")
def trained8(bench8):
    """Each deep model trained briefly on 8 px digits of class 0."""
    return {m: TRAINERS[m](_spec(m), bench8, None, "cpu", hp=SMALL[m]) for m in TRAINERS}


def _x(bench, n=16) -> torch.Tensor:
    return torch.from_numpy(bench.test.x[:n])


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- registry ------------------------------------------------------------------------------------------

def test_every_one_class_model_is_registered_and_built_by_name():
    kinds = {"deep_svdd": oc.DeepSVDD, "autoencoder": oc.ConvAutoencoder, "geotrans": oc.GeoTrans,
             "pixels": oc.PixelIdentity, "pixels_smooth": oc.SmoothedPixels}
    assert set(kinds) <= set(ONE_CLASS_MODELS)  # oneclass_gen.py's and oneclass_ssl.py's have their own tests
    for name, cls in kinds.items():
        m = build_model(name, 1, 1, 16)
        assert isinstance(m, cls) and m.kind == "one_class"
        assert MODELS[name].settings == ("nd", "ad") and MODELS[name].own_score == (not name.startswith("pixels"))


# --- Deep SVDD -----------------------------------------------------------------------------------------

def test_deep_svdd_has_no_bias_and_no_affine_batchnorm():
    net = oc.DeepSVDD(1, 16)
    assert not any("bias" in name for name, _ in net.named_parameters())
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]
    assert layers and all(m.bias is None for m in layers)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.affine and m.eps == 1e-4 for m in bns)
    assert net.features(torch.zeros(3, 1, 16, 16)).shape == (3, 32)
    assert "c" in net.state_dict() and "c" not in dict(net.named_parameters())


def test_init_center_is_the_mean_with_small_entries_pushed_to_eps():
    class Fixed(nn.Module):
        def features(self, x):
            return x.flatten(1)

    x = torch.tensor([[0.05, -0.30, -0.02, 0.00], [0.05, 0.50, -0.04, 0.00]]).view(2, 1, 2, 2)
    c = oc.init_center(Fixed(), x, eps=0.1)
    # means: 0.05 -> +0.1, 0.10 stays (|c| not < eps), -0.03 -> -0.1, 0 -> +0.1
    assert torch.allclose(c, torch.tensor([0.1, 0.1, -0.1, 0.1]))


@pytest.mark.parametrize("pretrain", [0, 2])
def test_deep_svdd_centre_is_the_mean_of_the_initial_outputs(pretrain, bench8, trained8):
    hp = dict(SMALL["deep_svdd"], pretrain_epochs=pretrain)
    res = trained8["deep_svdd"] if not pretrain else oc.train_deep_svdd(_spec("deep_svdd"), bench8, None, "cpu", hp=hp)
    # same seed -> the same initial network (after the autoencoder pretraining, when there is one)
    init, _ = oc.deep_svdd_initial(_spec("deep_svdd"), bench8, hp=hp)
    with torch.no_grad():
        out = init.features(torch.from_numpy(bench8.train.x)).double().mean(0).float()
    want = torch.where(out.abs() < 0.1, torch.where(out < 0, -0.1, 0.1), out)
    assert torch.allclose(res.model.c, want, atol=1e-6)
    assert len(res.history) == pretrain + hp["epochs"]
    assert [h.get("phase") for h in res.history] == ["pretrain"] * pretrain + ["svdd"] * hp["epochs"]


def test_deep_svdd_score_is_squared_distance_to_centre(bench8, trained8):
    net = trained8["deep_svdd"].model
    x = _x(bench8)
    with torch.no_grad():
        # phi(x) = the encoder of Ruff et al.'s preprocessing: GCN, then min-max with the training data's bounds
        g = x.flatten(1).double() - x.flatten(1).double().mean(1, keepdim=True)
        g = g / g.abs().mean(1, keepdim=True)
        scaled = ((g - float(net.scaling.lo)) / (float(net.scaling.hi) - float(net.scaling.lo))).float().view_as(x)
        phi = net.encoder(scaled).numpy().astype(np.float64)
        got = net.anomaly_score(x).numpy()
    want = ((phi - net.c.numpy().astype(np.float64)) ** 2).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    out = run_inference(net, bench8.test.x, bench8.test.y)
    assert out.logits.shape == (len(bench8.test), 0) and out.features.shape == (len(bench8.test), 32)
    np.testing.assert_allclose(out.extras["model_score"][:16], want, rtol=1e-5, atol=1e-6)


def test_deep_svdd_preprocessing_is_fitted_on_the_normal_training_data_only(bench8, trained8):
    from ood_core.models.preprocess import ContrastMinMax

    net = trained8["deep_svdd"].model
    own = ContrastMinMax().fit(torch.from_numpy(bench8.train.x))
    assert float(net.scaling.lo) == pytest.approx(float(own.lo)) and float(net.scaling.hi) == pytest.approx(float(own.hi))
    # the novel test images would have moved the bounds: they were not seen
    seen_all = ContrastMinMax().fit(torch.from_numpy(np.concatenate([bench8.train.x, bench8.ood["novel"].x])))
    assert (float(seen_all.lo), float(seen_all.hi)) != (float(net.scaling.lo), float(net.scaling.hi))


def test_deep_svdd_centre_survives_a_checkpoint_round_trip(bench8, trained8, tmp_path):
    spec = _spec("deep_svdd")
    res = trained8["deep_svdd"]
    path = checkpoint_path(spec, tmp_path)
    save_checkpoint(path, res.model, spec, res.history, res.seconds)
    loaded = load_checkpoint(path, spec, bench8)
    assert loaded is not None and loaded.from_cache and not loaded.model.training
    assert torch.equal(loaded.model.c, res.model.c)
    assert torch.equal(loaded.model.scaling.hi, res.model.scaling.hi) and float(res.model.scaling.hi) != 1.0
    assert _same_weights(loaded.model, res.model)
    with torch.no_grad():
        assert torch.equal(loaded.model.anomaly_score(_x(bench8)), res.model.anomaly_score(_x(bench8)))


# --- autoencoder ---------------------------------------------------------------------------------------

def test_autoencoder_score_is_per_sample_mse(bench8, trained8):
    ae = trained8["autoencoder"].model
    x = _x(bench8)
    with torch.no_grad():
        rec = ae.decode(ae.encoder(x)).numpy().astype(np.float64)
        got = ae.anomaly_score(x).numpy()
        z = ae.features(x)
    want = ((rec - x.numpy()) ** 2).reshape(len(x), -1).mean(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert rec.shape == tuple(x.shape) and z.shape == (len(x), oc.AE_LATENT)


# --- GeoTrans ------------------------------------------------------------------------------------------

def _by_hand(x: np.ndarray, t) -> np.ndarray:
    """T_t in numpy: flip, reflect-padded translation by a quarter side, then quarter turns (counter-clockwise)."""
    flip, tx, ty, k = t
    if flip:
        x = x[..., ::-1]
    s = x.shape[-1] // 4
    if tx or ty:
        p = s * (abs(tx) + abs(ty))
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
        h, w = x.shape[-2:]
        x = xp[:, :, p - ty * s:p - ty * s + h, p - tx * s:p - tx * s + w]
    return np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)))


def test_transforms_match_a_numpy_reference():
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    ts = [*oc.GEO_TRANSFORMS, (1, 0, 0, 1), (1, -1, 1, 3)]
    for t in ts:
        np.testing.assert_array_equal(oc.apply_transform(torch.from_numpy(x), t).numpy(), _by_hand(x, t))
    # a translation one quarter to the right: column j of the output is column j - 2 of the input
    right = oc.apply_transform(torch.from_numpy(x), (0, 1, 0, 0)).numpy()
    np.testing.assert_array_equal(right[..., 2:], x[..., :-2])
    assert len(set(oc.GEO_TRANSFORMS)) == len(oc.GEO_TRANSFORMS) == 12


def test_geotrans_score_matches_the_formula(bench8, trained8):
    model = trained8["geotrans"].model
    x = bench8.test.x[:8]
    nt = model.num_transforms
    with torch.no_grad():
        got = model.anomaly_score(torch.from_numpy(x)).numpy()
        logp = [torch.log_softmax(model(torch.from_numpy(_by_hand(x, t))), 1).numpy().astype(np.float64)
                for t in model.transforms]
        feats = model.features(torch.from_numpy(x))
        want_feats = model.net.features(torch.from_numpy(x))
    want = -np.mean([logp[t][:, t] for t in range(nt)], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(feats, want_feats) and feats.shape == (8, model.net.feature_dim)


def test_training_reports_progress_per_epoch_and_ends_in_eval_mode(bench8):
    for name in TRAINERS:
        seen = []
        res = TRAINERS[name](_spec(name), bench8, seen.append, "cpu", hp=SMALL[name])
        assert [p.epoch for p in seen] == list(range(1, SMALL[name]["epochs"] + 1))
        assert len(res.history) == len(seen) and all(np.isfinite(p.loss) for p in seen)
        assert not any(m.training for m in res.model.modules())
        if name == "geotrans":  # transformation-prediction accuracy on train and validation images
            assert all(0 <= p.train_accuracy <= 1 and 0 <= p.val_accuracy <= 1 for p in seen)
        else:  # no accuracy; the validation objective is in the history
            assert all(np.isnan(p.train_accuracy) and np.isnan(p.val_accuracy) for p in seen)
            assert all(np.isfinite(h["val_loss"]) for h in res.history)


# --- pixels --------------------------------------------------------------------------------------------

def test_pixels_is_the_identity_without_a_score(bench8, cache_dir):
    res = get_model(_spec("pixels"), bench8, cache_dir=cache_dir, device="cpu", retrain=True)
    assert res.history == [] and not list(res.model.parameters())
    x = _x(bench8)
    assert torch.equal(res.model.features(x), x.reshape(len(x), -1))
    assert res.model.anomaly_score(x) is None
    out = run_inference(res.model, bench8.test.x, bench8.test.y)
    np.testing.assert_array_equal(out.features, bench8.test.x.reshape(len(bench8.test), -1))
    assert "model_score" not in out.extras
    assert "model_score" not in detectors_for("nd", "pixels", 1)


@pytest.mark.parametrize("side", [16, 28])
def test_smoothed_pixels_equal_scipy_gaussian_filter_of_the_raw_pixels(side, tmp_path):
    from scipy.ndimage import gaussian_filter

    bench = build_benchmark(_spec("pixels_smooth", size=side), ood_sets=())
    res = get_model(_spec("pixels_smooth", size=side), bench, cache_dir=tmp_path, device="cpu")
    assert res.history == [] and not list(res.model.parameters()) and res.model.anomaly_score(_x(bench)) is None
    raw = bench.test.x[:8] * bench.std + bench.mean  # the pixels in [0, 1] again
    assert raw.min() > -1e-6 and raw.max() < 1 + 1e-6
    sigma = side / 28  # 1 px at 28 px
    want = gaussian_filter(raw.astype(np.float64), (0, 0, sigma, sigma), mode="constant", truncate=4.0)
    got = res.model.features(torch.from_numpy(bench.test.x[:8])).numpy()
    np.testing.assert_allclose(got, want.reshape(8, -1), atol=1e-6)
    # the normalisation travels with the checkpoint: a model read back from the cache gives the same features
    again = get_model(_spec("pixels_smooth", size=side), bench, cache_dir=tmp_path, device="cpu")
    assert again.from_cache
    np.testing.assert_array_equal(again.model.features(torch.from_numpy(bench.test.x[:8])).numpy(), got)


# --- determinism and an easy case ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TRAINERS))
def test_seeded_training_is_deterministic(name, bench8, trained8):
    again = TRAINERS[name](_spec(name), bench8, None, "cpu", hp=SMALL[name])
    assert _same_weights(again.model, trained8[name].model)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in trained8[name].history]
    member = _spec(name).replace(training=TrainConfig(member=1))
    other = TRAINERS[name](member, bench8, None, "cpu", hp=SMALL[name])
    assert not _same_weights(other.model, trained8[name].model)


@pytest.fixture(scope="module")
def bench16():
    return build_benchmark(_spec("deep_svdd", size=16), ood_sets=())


@pytest.mark.parametrize("name,hp", [("deep_svdd", dict(epochs=10)), ("autoencoder", dict(epochs=10)),
                                     ("geotrans", dict(epochs=3))])
def test_easy_case_separates_digit_0_from_digit_1(name, hp, bench16):
    res = TRAINERS[name](_spec(name, size=16), bench16, None, "cpu", hp=hp)
    ones = np.asarray(bench16.meta["novel_original_labels"]) == 1
    s_id = run_inference(res.model, bench16.test.x, bench16.test.y).extras["model_score"]
    s_ood = run_inference(res.model, bench16.ood["novel"].x[ones], bench16.ood["novel"].y[ones]).extras["model_score"]
    assert metrics.auroc(s_id, s_ood) > 0.9  # higher score = more anomalous


def test_smoothed_pixel_nearest_neighbour_separates_digit_0_from_digit_1(cache_dir):
    spec = _spec("pixels_smooth", size=16)
    exp = pipeline.prepare(spec, cache_dir=cache_dir, device="cpu")
    rows, scores = pipeline.evaluate(exp, ["knn"], {"knn": {"k": 1}})
    ones = np.asarray(exp.bench.meta["novel_original_labels"]) == 1
    s_id, s_ood = scores["knn"]["test"], scores["knn"]["novel"][ones]
    assert metrics.auroc(s_id, s_ood) > 0.95


# --- through the pipeline -------------------------------------------------------------------------------

def test_model_score_detector_through_the_pipeline(cache_dir):
    spec = Spec(setting="ad", model="deep_svdd", normal_class=3, image_size=8, contamination=0.1)
    exp = pipeline.prepare(spec, cache_dir=cache_dir, device="cpu")
    assert exp.bench.meta["n_contaminants"] > 0 and not exp.training.from_cache
    names = detectors_for(spec.setting, spec.model, exp.bench.num_classes)
    assert "model_score" in names and "knn" in names
    rows, scores = pipeline.evaluate(exp, ["model_score", "knn"])
    assert all(r["error"] is None for r in rows)
    row = next(r for r in rows if r["detector"] == "model_score" and r["ood_set"] == "anomalous")
    want = metrics.auroc(exp.outputs["test"].extras["model_score"], exp.outputs["anomalous"].extras["model_score"])
    assert row["auroc"] == pytest.approx(want) and row["auroc"] > 0.8
    # the checkpoint cache gives the same model (and centre) back
    again = pipeline.prepare(spec, cache_dir=cache_dir, device="cpu")
    assert again.training.from_cache and torch.equal(again.model.c, exp.model.c)
    np.testing.assert_allclose(again.outputs["test"].extras["model_score"], exp.outputs["test"].extras["model_score"])


def test_anomaly_detection_without_contamination_reuses_the_novelty_model(tmp_path):
    nd = Spec(setting="nd", model="deep_svdd", normal_class=2)
    ad0 = nd.replace(setting="ad", contamination=0.0)
    ad5 = nd.replace(setting="ad", contamination=0.05)
    # the same training data (the normal class alone) -> the same checkpoint; the experiments stay distinct
    np.testing.assert_array_equal(build_benchmark(nd, ()).train.x, build_benchmark(ad0, ()).train.x)
    assert ad0.model_key() == nd.model_key() and ad0.key() != nd.key()
    assert checkpoint_path(ad0, tmp_path) == checkpoint_path(nd, tmp_path) != checkpoint_path(ad5, tmp_path)
    trained = get_model(nd, build_benchmark(nd, ()), cache_dir=tmp_path)
    again = get_model(ad0, build_benchmark(ad0, ()), cache_dir=tmp_path)
    assert not trained.from_cache and again.from_cache and _same_weights(again.model, trained.model)


# --- the trainers' shared loop ------------------------------------------------------------------------------------

def test_epoch_loop_batches_progress_and_modes_are_known():
    """epoch_loop: the batches are a seeded randperm per epoch cut into batch_size pieces (a last piece of one sample
    skipped), steps run in train mode and epoch_end in eval mode, and each epoch's loss is the size-weighted mean."""
    model = nn.BatchNorm1d(2)
    seen, modes, progress = [], [], []

    def step(idx):
        seen.append(idx.clone())
        modes.append(model.training)
        return float(len(idx))  # loss = batch size: the epoch's weighted mean is sum(b^2) / sum(b)

    def epoch_end(epoch):
        modes.append(model.training)
        return 0.5, float(epoch), {"extra": epoch * 10}

    hp = dict(epochs=2, batch_size=4)
    history = oc.epoch_loop(model, 9, hp, torch.Generator().manual_seed(3), step, epoch_end, progress.append, 0.0)
    expected_gen = torch.Generator().manual_seed(3)
    for e in range(2):
        perm = torch.randperm(9, generator=expected_gen)
        assert [t.tolist() for t in seen[2 * e:2 * e + 2]] == [perm[:4].tolist(), perm[4:8].tolist()]  # 9th skipped
    assert len(seen) == 4 and modes == [True, True, False, True, True, False] and not model.training
    assert [h["loss"] for h in history] == [4.0, 4.0]  # (16 + 16) / 8
    assert [(h["epoch"], h["epochs"], h["train_accuracy"], h["val_accuracy"], h["extra"]) for h in history] == \
        [(1, 2, 0.5, 1.0, 10), (2, 2, 0.5, 2.0, 20)]
    assert [p.epoch for p in progress] == [1, 2]


def test_fit_divides_the_learning_rate_by_ten_after_each_milestone_epoch(monkeypatch):
    """_fit's schedule (Ruff et al.'s milestones): epoch e steps at lr * 0.1^(number of milestones before e)."""
    model = nn.Linear(2, 1)
    rates = []

    class Spy(torch.optim.Adam):
        def step(self, *a, **k):
            rates.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    hp = dict(epochs=4, batch_size=8, lr=1.0, weight_decay=0.0, milestones=(1, 3))
    oc._fit(model, lambda xb, _: model(xb.flatten(1)).pow(2).mean(), torch.randn(8, 1, 2, 1), None, hp,
            torch.Generator().manual_seed(0), "cpu", None, lambda: (float("nan"), float("nan"), {}))
    assert rates == pytest.approx([1.0, 0.1, 0.1, 0.01])  # one step per epoch (8 samples, batch 8)
