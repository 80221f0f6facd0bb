"""CSI, U-std and multiresolution KD (models/oneclass_ssl.py): CSI's score against its formula, the KD loss's known
values, U-std's error and variance, the teacher never downloaded, an easy separable case, normal data only at fitting,
and a cancelled training that leaves no checkpoint."""
from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np
import pytest
import torch

from ood_core import Spec, metrics
from ood_core.data import build_benchmark
from ood_core.inference import run_inference
from ood_core.jobs import Cancelled
from ood_core.models import build_model, checkpoint_path, get_model
from ood_core.models import oneclass_ssl as ssl
from ood_core.models.checkpoint import ModelLoadError
from ood_core.models.efficientnet_lite import weights_path
from ood_core.models.registry import MODELS
from ood_core.settings import ONE_CLASS_MODELS, detectors_for

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch and BLAS on one thread

NEW = {"csi": ssl.CSINet, "ustd": ssl.UninformedStudents, "mkd": ssl.MultiresolutionKD,
       "ustd_imagenet": ssl.UninformedStudents, "mkd_imagenet": ssl.MultiresolutionKD,
       "ustd_lite0": ssl.UninformedStudentsLite0, "mkd_lite0": ssl.MultiresolutionKDLite0}
TRAINERS = {"csi": ssl.train_csi, "ustd": ssl.train_ustd, "mkd": ssl.train_mkd,
            "ustd_lite0": functools.partial(ssl.train_ustd, teacher="lite0"),
            "mkd_lite0": functools.partial(ssl.train_mkd, teacher="lite0")}
EASY = {"csi": dict(epochs=4), "ustd": dict(epochs=4), "mkd": dict(epochs=4), "ustd_lite0": dict(epochs=4),
        "mkd_lite0": dict(epochs=4)}
needs_lite0 = pytest.mark.skipif(weights_path() is None, reason="the package with EfficientNet-Lite0's ImageNet "
                                 "weights is not installed (requirements.txt installs it)")


def _spec(model: str, size: int = 16, normal: int = 0) -> Spec:
    return Spec(setting="nd", model=model, normal_class=normal, image_size=size)


@pytest.fixture(scope="module")
def bench16():
    return build_benchmark(_spec("csi"), ood_sets=())


# --- registry ----------------------------------------------------------------------------------------------------

def test_the_new_models_are_one_class_models_with_their_own_score():
    for name, cls in NEW.items():
        assert name in ONE_CLASS_MODELS and MODELS[name].settings == ("nd", "ad") and MODELS[name].own_score
        m = build_model(name, 1, 1, 16)
        assert isinstance(m, cls) and m.kind == "one_class"
        assert "model_score" in detectors_for("nd", name, 1)
        assert MODELS[name].train_seconds > 0


# --- CSI -------------------------------------------------------------------------------------------------------

def test_csi_score_on_hand_made_features_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    k_, n, m, d = 4, 3, 5, 6
    z = torch.randn(k_, n, d, generator=g)
    logits = torch.randn(k_, n, k_, generator=g)
    train_z = torch.randn(k_, m, d, generator=g)
    bank = train_z / train_z.norm(dim=2, keepdim=True)
    w_con, w_cls = torch.rand(k_, generator=g) + 0.5, torch.rand(k_, generator=g) + 0.5
    got = ssl.csi_score(z, logits, bank, w_con, w_cls)
    zn, ln, tn = z.numpy().astype(float), logits.numpy().astype(float), train_z.numpy().astype(float)
    for i in range(n):
        total = 0.0
        for k in range(k_):
            cos = max(zn[k, i] @ tn[k, j] / (np.linalg.norm(zn[k, i]) * np.linalg.norm(tn[k, j])) for j in range(m))
            total += float(w_con[k]) * cos * np.linalg.norm(zn[k, i]) + float(w_cls[k]) * ln[k, i, k]
        assert float(got[i]) == pytest.approx(total / k_, rel=1e-5)


def test_csi_balancing_weights_are_the_inverse_training_means():
    model = ssl.CSINet(1, 8).eval()
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ssl.csi_fit_bank(model, x, "cpu")
    with torch.no_grad():
        z, logits = model.shifted_outputs(x)
    k = torch.arange(4)
    assert model.bank.shape == (4, 7, ssl.CSI_PROJ)
    assert torch.allclose(model.bank.norm(dim=2), torch.ones(4, 7), atol=1e-5)
    assert torch.allclose(model.w_con, 1 / z.norm(dim=2).mean(dim=1), rtol=1e-5)
    assert torch.allclose(model.w_cls, 1 / logits[k, :, k].mean(dim=1), rtol=1e-5)
    # a training image is its own nearest bank entry: the contrastive term is its norm times w_con
    with torch.no_grad():
        con = torch.einsum("knd,kmd->knm", z, model.bank).amax(dim=2)
    assert torch.allclose(con, z.norm(dim=2), rtol=1e-5)


def test_csi_bank_survives_a_checkpoint_round_trip():
    model = ssl.CSINet(1, 8).eval()
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    ssl.csi_fit_bank(model, x, "cpu")
    fresh = build_model("csi", 1, 1, 8).eval()  # its bank is a placeholder of one entry
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert fresh.bank.shape == (4, 7, ssl.CSI_PROJ) and torch.equal(fresh.anomaly_score(x), model.anomaly_score(x))


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    z = torch.eye(4).repeat(2, 1)  # rows i and i + 4 identical, the pairs orthogonal to each other
    agree = float(ssl.nt_xent(z, 0.5))
    expected = -np.log(np.exp(2) / (np.exp(2) + 6 * np.exp(0)))  # 1 positive at cos 1, 6 negatives at cos 0
    assert agree == pytest.approx(expected, rel=1e-5)
    swapped = torch.cat([torch.eye(4), torch.eye(4).roll(1, dims=0)])
    assert float(ssl.nt_xent(swapped, 0.5)) > agree


def test_simclr_augment_is_seeded_and_keeps_the_shape():
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    a = ssl.simclr_augment(x, torch.Generator().manual_seed(3), 0.5, 0.4)
    b = ssl.simclr_augment(x, torch.Generator().manual_seed(3), 0.5, 0.4)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


# --- multiresolution KD ------------------------------------------------------------------------------------------

def test_kd_loss_is_zero_when_the_student_is_the_teacher():
    g = torch.Generator().manual_seed(4)
    acts = [torch.randn(3, c, s, s, generator=g) for c, s in ((4, 8), (8, 4), (16, 2))]
    assert torch.allclose(ssl.mkd_losses(acts, [a.clone() for a in acts], 0.01), torch.zeros(3), atol=1e-6)


def test_kd_loss_on_a_hand_made_case():
    s, t = [torch.tensor([[1.0, 0.0]])], [torch.tensor([[0.0, 1.0]])]
    # value: mean((1-0)^2, (0-1)^2) = 1; direction: 1 - cos = 1 (orthogonal)
    assert float(ssl.mkd_losses(s, t, 0.25)[0]) == pytest.approx(1.25)
    s2 = [torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    t2 = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    assert float(ssl.mkd_losses(s2, t2, 0.25)[0]) == pytest.approx(0.5)  # (2-1)^2 / 2, same directions


def test_mkd_student_matches_the_teachers_activation_shapes():
    model = ssl.MultiresolutionKD(1, 16).eval()
    x = torch.randn(2, 1, 16, 16)
    shapes_s = [a.shape for a in model.student_activations(x)]
    shapes_t = [a.shape for a in model.teacher_activations(x)]
    assert shapes_s == shapes_t == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]


# --- U-std -------------------------------------------------------------------------------------------------------

def test_ustd_error_and_variance_follow_the_formula():
    model = ssl.UninformedStudents(1, 8, students=2).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        s = model.predictions(x)
        t = model.target(x)
        e, v = model.error_and_variance(x)
        mu = (s[0] + s[1]) / 2
        assert torch.allclose(e, ((mu - t) ** 2).sum(dim=1), rtol=1e-5, atol=1e-5)
        assert torch.allclose(v, ((s[0] - mu) ** 2 + (s[1] - mu) ** 2).sum(dim=1) / 2, rtol=1e-4, atol=1e-4)
        model.students[1].load_state_dict(model.students[0].state_dict())  # identical students: no variance
        _, v0 = model.error_and_variance(x)
    assert torch.allclose(v0, torch.zeros_like(v0), atol=1e-4)


# --- the teacher is never downloaded -----------------------------------------------------------------------------

def test_a_pretrained_teacher_is_never_downloaded_by_training(bench16, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torchvision cache

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    for trainer in (ssl.train_ustd, ssl.train_mkd):
        with pytest.raises(ModelLoadError) as e:
            trainer(_spec("ustd"), bench16, None, "cpu", hp=dict(epochs=1), teacher="pretrained")
        text = str(e.value)
        assert "not in torchvision's cache" in text and "fetch_teacher" in text and "\n" not in text
    with pytest.raises(ValueError, match="teacher must be one of random, pretrained"):
        ssl.train_ustd(_spec("ustd"), bench16, None, "cpu", hp=dict(epochs=1), teacher="imagenet")


# --- the packaged ImageNet teacher (EfficientNet-Lite0) -----------------------------------------------------------

@needs_lite0
def test_lite0_models_match_their_teachers_shapes():
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    mkd = ssl.MultiresolutionKDLite0(1, 16)
    shapes = [tuple(a.shape) for a in mkd.teacher_activations(x)]
    assert shapes == [(3, 16, 16, 16), (3, 24, 8, 8), (3, 40, 4, 4), (3, 112, 2, 2)]  # 32 px: strides 2, 4, 8, 16
    assert [tuple(a.shape) for a in mkd.student_activations(x)] == shapes
    ustd = ssl.UninformedStudentsLite0(1, 16)
    assert tuple(ustd.target(x).shape) == (3, 40, 4, 4) and tuple(ustd.predictions(x).shape) == (3, 3, 40, 4, 4)
    assert tuple(ustd.anomaly_score(x).shape) == (3,) and tuple(mkd.anomaly_score(x).shape) == (3,)


@needs_lite0
@pytest.mark.parametrize("name", ["ustd_lite0", "mkd_lite0"])
def test_training_never_changes_the_lite0_teacher(name, bench16):
    # its BatchNorm statistics are part of the ImageNet weights: a training (the model in train mode) keeps them
    model = TRAINERS[name](_spec(name), bench16, None, "cpu", hp=dict(epochs=1)).model
    fresh = ssl.Lite0Teacher(model.teacher.tap_blocks).load_imagenet_()
    got = model.teacher.state_dict()
    assert got.keys() == fresh.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in fresh.state_dict().items())
    model.train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())


@needs_lite0
def test_mkd_lite0_standardises_each_tap_with_the_training_images_statistics(bench16):
    model = ssl.train_mkd(_spec("mkd_lite0"), bench16, None, "cpu", hp=dict(epochs=1), teacher="lite0").model
    x = torch.from_numpy(bench16.train.x)
    with torch.no_grad():
        raw = model.teacher(model.prep(x))
        for j, a in enumerate(raw):
            a = a.double()
            mean, std = a.mean(dim=(0, 2, 3)), a.std(dim=(0, 2, 3))
            assert torch.allclose(getattr(model, f"a_mean{j}").flatten().double(), mean, rtol=1e-4, atol=1e-5)
            assert torch.allclose(getattr(model, f"a_std{j}").flatten().double(), std, rtol=1e-4, atol=1e-5)
        z = model.teacher_activations(x)
    for a in z:  # so over the training images every channel has mean 0 and std 1
        assert torch.allclose(a.double().mean(dim=(0, 2, 3)), torch.zeros(a.shape[1], dtype=torch.float64), atol=1e-4)
        assert torch.allclose(a.double().std(dim=(0, 2, 3)), torch.ones(a.shape[1], dtype=torch.float64), atol=1e-3)


def test_a_teacher_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ValueError, match="'lite0' teacher does not fit a Sequential"):
        ssl.init_teacher_(ssl.vgg16_layers(9), "lite0", torch.Generator())
    with pytest.raises(ValueError, match="'random' teacher does not fit a Lite0Teacher"):
        ssl.init_teacher_(ssl.Lite0Teacher((0,)), "random", torch.Generator())


# --- the random teacher's weights, on any device --------------------------------------------------------------

def test_random_teacher_weights_are_he_normal_draws_from_the_generator_in_order():
    # drawn on the CPU and copied to the teacher's device: on the CPU the very numbers of an in-place
    # kaiming_normal_ with the same generator, layer after layer (so CPU trainings did not change with the copy)
    teacher = ssl.vgg16_layers(9)
    ssl.init_teacher_(teacher, "random", torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for m in convs:
        expected = torch.nn.init.kaiming_normal_(torch.empty(m.weight.shape), mode="fan_out", nonlinearity="relu",
                                                 generator=gen)
        assert torch.equal(m.weight, expected) and not m.bias.any() and not m.weight.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the teacher's "
                    "initialisation on a GPU is checked where one is (scripts/bench_gpu_methods.py trained U-std "
                    "and MKD on an H200)")
@pytest.mark.parametrize("name", ["ustd", "mkd"])
def test_a_random_teacher_trains_on_cuda_with_the_seeded_cpu_generator(name, bench16):
    # the generator is a CPU one; torch refuses it for drawing into a CUDA tensor, which once failed both trainers
    res = TRAINERS[name](_spec(name), bench16, None, "cuda", hp=dict(epochs=1))
    cpu = TRAINERS[name](_spec(name), bench16, None, "cpu", hp=dict(epochs=1))
    t_gpu = res.model.teacher[0].weight.detach().cpu()
    assert torch.equal(t_gpu, cpu.model.teacher[0].weight.detach())  # the same seeded teacher on either device


# --- an easy separable case, normal data only ----------------------------------------------------------------------

# (normal digit, anomalous digit): CSI learns which rotation was applied, so its normal class must look different
# when turned (a 0 hardly does); the students of U-std and MKD need no such thing
EASY_PAIRS = {"csi": (7, 0), "ustd": (0, 1), "mkd": (0, 1), "ustd_lite0": (0, 1), "mkd_lite0": (0, 1)}
LITE0 = [pytest.param(n, marks=needs_lite0) if n.endswith("_lite0") else n for n in TRAINERS]


@pytest.mark.parametrize("name", LITE0)
def test_easy_case_separates_two_digits_training_on_normal_data_only(name):
    normal, anomalous = EASY_PAIRS[name]
    spec = _spec(name, normal=normal)
    bench = build_benchmark(spec, ood_sets=())
    # the trainer gets a benchmark without test or OOD images: fitting can only see normal data
    assert set(np.unique(bench.train.y)) == {0} and set(np.unique(bench.val.y)) == {0}
    blind = dataclasses.replace(bench, test=None, ood={}, val_ood={})
    res = TRAINERS[name](spec, blind, None, "cpu", hp=EASY[name])
    other = np.asarray(bench.meta["novel_original_labels"]) == anomalous
    s_id = run_inference(res.model, bench.test.x, bench.test.y).extras["model_score"]
    s_ood = run_inference(res.model, bench.ood["novel"].x[other], bench.ood["novel"].y[other]).extras["model_score"]
    assert metrics.auroc(s_id, s_ood) > 0.9  # higher score = more anomalous


# --- cancel ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LITE0)
def test_a_cancelled_training_leaves_no_checkpoint(name, tmp_path):
    spec = _spec(name, size=8)
    bench = build_benchmark(spec, ood_sets=())
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        get_model(spec, bench, progress=lambda p: cancel.set(), cache_dir=tmp_path, device="cpu", cancel=cancel)
    assert not checkpoint_path(spec, tmp_path).exists()
    assert not any(tmp_path.rglob("*.pt"))
