"""Bringing any model: the generic adapter (models/foreign.py) and the loaders (models/loading.py), no downloads.

Known answers: the adapter's logits, features and feature maps equal a hand-written forward of the same network;
exported programs and TorchScript files give the numbers of the module they were saved from, and so do the
detectors that score them; each refusal is one complete sentence naming the cause.
"""
from __future__ import annotations

import copy
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ood_core import Spec, cli, explain, pipeline
from ood_core.data import build_benchmark
from ood_core.models import ModelLoadError, SmallCNN
from ood_core.models.foreign import InputContract, InputTransform, detector_unavailable
from ood_core.models.loading import (build_architecture, detect_format, load_model, load_pretrained,
                                     weights_cache_path)
from ood_core.settings import detectors_for

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5


class TutorialNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's network: conv-pool-conv-pool-fc-fc-fc on 3×32×32 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class NoLinearHead(nn.Module):
    """A classifier whose logits come from a 1×1 convolution and global pooling: no nn.Linear anywhere."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1))

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


class Tempered(nn.Module):
    """Logits divided by 2 after the last linear layer: its input is not what the logits are made of."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3))) / 2


@pytest.fixture(scope="module")
def bench():
    """Digits at 32 px, grey (the torchvision nets get them repeated to 3 channels), two OOD sets."""
    return build_benchmark(Spec(dataset="digits", image_size=32, model="foreign"), ("gaussian", "rotated"))


@pytest.fixture(scope="module")
def x(bench):
    return torch.from_numpy(bench.test.x[:6].copy())


def rgb(x):
    return x.expand(-1, 3, -1, -1)


def maxdiff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter redrawn from a generator of the test's own (batch-norm statistics made non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return module.eval()


# --- the adapter on torchvision architectures: hooks equal a hand-written forward ------------------------------------

def test_resnet18_hooks_equal_a_hand_written_forward_and_gradcam_uses_layer4(bench, x):
    net = seeded(torchvision.models.resnet18(num_classes=10))
    model, info = load_model(net, bench=bench)
    with torch.no_grad():
        h_in = rgb(x)
        maps = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(h_in))))))))
        h = torch.flatten(net.avgpool(maps), 1)
        logits = net.fc(h)
        z, f = model.logits_and_features(x)
        assert maxdiff(z, logits) <= TOL and maxdiff(f, h) <= TOL
        assert maxdiff(model.features(x), h) <= TOL and maxdiff(model(x), logits) <= TOL
        assert maxdiff(model.feature_maps(x), maps) <= TOL
    assert model.head is net.fc and model.last_conv is net.layer4
    assert info["head"] == "fc (512 -> 10)" and info["conv_layer"] == "layer4" and info["feature_dim"] == 512
    assert info["input_transform"] == "grey repeated to 3 channels"
    # 17 ReLU calls with 4-d outputs (the blocks' ReLU module runs twice per block): Gram's layers, in call order
    assert info["relu_layers"] == 17 and len(model.activation_maps(x)) == 17


def test_gradcam_on_a_wrapped_resnet_is_captums_on_layer4(bench):
    from captum.attr import LayerAttribution, LayerGradCam

    net = seeded(torchvision.models.resnet18(num_classes=10), seed=1)
    model, _ = load_model(net, bench=bench, input_size=64)  # 64 px: layer4's map is 2×2
    xs = torch.from_numpy(bench.test.x[:3].copy())
    heat = explain.gradcam(model, xs, target=2)
    big = F.interpolate(rgb(xs), size=(64, 64), mode="bilinear", align_corners=False)
    ref = LayerGradCam(net, net.layer4).attribute(big, target=2, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (32, 32), interpolate_mode="bilinear")[:, 0].detach().numpy()
    assert explain.default_layer(model, None) is net.layer4
    assert heat.shape == (3, 32, 32) and heat.max() == 1.0
    assert np.abs(heat - explain.normalise_maps(np.maximum(ref, 0.0))).max() <= 1e-5


def test_densenet121_features_are_the_pooled_relu_of_its_features_block(bench, x):
    net = seeded(torchvision.models.densenet121(num_classes=10))
    model, info = load_model(net, bench=bench)
    with torch.no_grad():
        maps = net.features(rgb(x))
        h = torch.flatten(F.adaptive_avg_pool2d(F.relu(maps), 1), 1)
        z, f = model.logits_and_features(x)
        assert maxdiff(z, net.classifier(h)) <= TOL and maxdiff(f, h) <= TOL
        # the block's own output, before DenseNet's in-place ReLU changes it
        assert maxdiff(model.feature_maps(x), maps) <= TOL
    assert info["head"] == "classifier (1024 -> 10)" and info["conv_layer"] == "features"


def test_vit_b_16_features_are_the_class_token(bench, x):
    net = seeded(build_architecture("vit_b_16", 10, 3, image_size=32))  # ViT-B/16's layers, 2×2 patches at 32 px
    model, info = load_model(net, bench=bench)
    with torch.no_grad():
        tokens = net._process_input(rgb(x))
        tokens = torch.cat([net.class_token.expand(len(x), -1, -1), tokens], dim=1)
        h = net.encoder(tokens)[:, 0]
        z, f = model.logits_and_features(x)
        assert maxdiff(z, net.heads(h)) <= TOL and maxdiff(f, h) <= TOL
    assert info["head"] == "heads.head (768 -> 10)" and info["conv_layer"] == "conv_proj"
    assert "mc_dropout" in info["detectors"]["unavailable"]  # its dropout layers have p = 0
    assert "p = 0" in info["detectors"]["unavailable"]["mc_dropout"]


def test_a_model_without_a_linear_head_gets_every_logit_detector_and_the_reason_for_the_rest(bench, x):
    net = seeded(NoLinearHead())
    model, info = load_model(net, bench=bench)
    assert {"features", "head"}.isdisjoint(model.capabilities) and "feature_maps" in model.capabilities
    why = "no linear layer (nn.Linear)"
    assert why in info["reasons"]["features"] and why in info["detectors"]["unavailable"]["knn"]
    assert set(info["detectors"]["unavailable"]) >= {"knn", "mahalanobis", "react", "vim", "gradnorm", "ensemble"}
    applicable = info["detectors"]["applicable"]
    assert {"msp", "energy", "odin", "gram", "klm", "openmax"} <= set(applicable) and "knn" not in applicable
    spec = bench.spec
    exp = pipeline.prepare(spec, model=model, bench=bench, device="cpu")
    assert exp.outputs["test"].features.shape == (len(bench.test), 0)
    rows, scores = pipeline.evaluate(exp, ["msp", "energy", "max_logit"])
    with torch.no_grad():
        z = net(rgb(torch.from_numpy(bench.test.x))).double()
    assert np.allclose(scores["energy"]["test"], -torch.logsumexp(z, 1).numpy(), atol=1e-5)
    assert np.allclose(scores["msp"]["test"], -torch.softmax(z, 1).max(1).values.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="knn does not apply to this model: the model has no linear layer"):
        pipeline.resolve_detectors("knn", exp)
    assert pipeline.resolve_detectors("all", exp) == applicable


def test_logits_that_are_not_the_last_linear_layers_output_switch_the_feature_detectors_off(bench):
    model, info = load_model(seeded(Tempered()), bench=bench)
    assert "features" not in model.capabilities
    assert "not the output of its last linear layer 'fc'" in info["reasons"]["head"]
    with pytest.raises(ValueError, match="not the output of its last linear layer"):
        model.features(torch.zeros(1, 1, 32, 32))


def test_named_layers_are_used_and_wrong_names_are_refused(bench):
    net = seeded(torchvision.models.resnet18(num_classes=10))
    model, info = load_model(net, bench=bench, head="fc", conv="layer3")
    assert model.last_conv is net.layer3 and info["conv_layer"] == "layer3"
    with pytest.raises(ModelLoadError, match=r"The model has no layer named 'layer9' for the convolutional layer; "
                                             r"its last layers are: .*fc\."):
        load_model(seeded(torchvision.models.resnet18(num_classes=10)), bench=bench, conv="layer9")
    with pytest.raises(ModelLoadError, match="Layer 'layer4' is a Sequential, not a linear layer"):
        load_model(seeded(torchvision.models.resnet18(num_classes=10)), bench=bench, head="layer4")


def test_a_deep_copy_catches_its_own_features(bench, x):
    net = seeded(torchvision.models.resnet18(num_classes=10))
    model, _ = load_model(net, bench=bench)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert maxdiff(twin.features(x), model.features(x)) == 0.0
        assert maxdiff(twin.feature_maps(x), model.feature_maps(x)) == 0.0


# --- exported programs and TorchScript: round trips give the module's numbers ------------------------------------------

def _save_exported(net, path, example, dynamic: bool):
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), path)


def _save_script(net, path, example, how: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sm = torch.jit.script(net) if how == "script" else torch.jit.trace(net, example)
        torch.jit.save(sm, path)


# SmallCNN's seeded dropout is Python that TorchScript does not script: that model is traced only
@pytest.mark.parametrize("arch, fmt", [(a, f) for a in ("small_cnn", "resnet18")
                                       for f in ("exported", "exported-fixed-batch", "traced", "scripted")
                                       if (a, f) != ("small_cnn", "scripted")])
def test_round_trips_give_the_original_logits_features_and_feature_maps(bench, x, tmp_path, arch, fmt):
    if arch == "small_cnn":
        net = seeded(SmallCNN(in_channels=1, num_classes=10))
        data = x
    else:
        net = seeded(torchvision.models.resnet18(num_classes=10))
        data = rgb(x)
    example = data[:2].contiguous()
    path = tmp_path / ("m.pt2" if fmt.startswith("exported") else "m.ts")
    if fmt.startswith("exported"):
        _save_exported(net, path, example, dynamic=fmt == "exported")
    else:
        _save_script(net, path, example, "script" if fmt == "scripted" else "trace")
    assert detect_format(path) == ("exported" if fmt.startswith("exported") else "torchscript")
    model, info = load_model(path, bench=bench)
    with torch.no_grad():
        z, f = model.logits_and_features(x)
        assert maxdiff(z, net(data)) <= TOL
        assert maxdiff(f, net.features(data) if arch == "small_cnn" else torch.flatten(
            net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(data)))))))))
            , 1)) <= TOL
        maps = net.feature_maps(data) if arch == "small_cnn" else net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(data))))))))
        assert maxdiff(model.feature_maps(x), maps) <= TOL
    assert {"features", "head", "feature_maps", "activation_maps"} <= model.capabilities
    assert model.head.out_features == 10 and len(model.activation_maps(x)) == info["relu_layers"] > 0
    expected_head = {"small_cnn": "head", "resnet18": "fc"}[arch]
    if fmt.startswith("exported"):
        assert info["head"] == f"{expected_head}, the program's last linear op ({model.head.in_features} -> 10)"


def test_a_program_exported_for_one_image_runs_any_batch_in_chunks(bench, tmp_path):
    """x.view(x.size(0), -1) bakes the example's batch of 1 into the graph: chunks of one image it is."""

    class Baked(TutorialNet):
        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = x.view(x.size(0), -1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    net = seeded(Baked())
    _save_exported(net, tmp_path / "baked.pt2", torch.zeros(1, 3, 32, 32), dynamic=False)
    model, info = load_model(tmp_path / "baked.pt2", bench=bench)
    xs = torch.from_numpy(bench.test.x[:5].copy())
    assert model.max_batch == 1 and "batches of exactly 1 image" in " ".join(info["notes"])
    with torch.no_grad():
        z, f = model.logits_and_features(xs)
        assert z.shape == (5, 10) and maxdiff(z, net(rgb(xs))) <= TOL
        assert maxdiff(model.head(f), z) <= TOL


def test_gradcam_through_a_torchscript_file_equals_the_modules(bench, tmp_path):
    net = seeded(torchvision.models.resnet18(num_classes=10), seed=3)
    _save_script(net, tmp_path / "r.ts", torch.zeros(2, 3, 64, 64), "trace")
    scripted, _ = load_model(tmp_path / "r.ts", bench=bench, input_size=64)
    plain, _ = load_model(net, bench=bench, input_size=64)
    xs = torch.from_numpy(bench.test.x[:3].copy())
    a, b = explain.gradcam(scripted, xs, target=1), explain.gradcam(plain, xs, target=1)
    assert a.shape == (3, 32, 32) and np.abs(a - b).max() <= 1e-4 and a.max() > 0


# --- state_dicts by architecture: every mismatch said before scoring ----------------------------------------------------

def test_a_torchvision_state_dict_loads_by_architecture_name(bench, x, tmp_path):
    net = seeded(torchvision.models.resnet18(num_classes=10))
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model, info = load_model(tmp_path / "r18.pt", arch="resnet18", bench=bench)
    assert info["format"] == "state_dict" and info["architecture"] == "resnet18" and info["num_classes"] == 10
    with torch.no_grad():
        assert maxdiff(model(x), net(rgb(x))) <= TOL
    small = seeded(SmallCNN(in_channels=1, num_classes=10))
    torch.save({"state_dict": small.state_dict()}, tmp_path / "small.pt")
    model, _ = load_model(tmp_path / "small.pt", arch="small_cnn", bench=bench)
    with torch.no_grad():
        assert maxdiff(model(x), small(x)) <= TOL


def test_state_dict_mismatches_are_named(bench, tmp_path):
    state = seeded(torchvision.models.resnet18(num_classes=10)).state_dict()
    renamed = dict(state)
    renamed["head.weight"] = renamed.pop("fc.weight")
    torch.save(renamed, tmp_path / "keys.pt")
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "keys.pt", arch="resnet18", bench=bench)
    assert str(e.value) == ("The state_dict does not match architecture 'resnet18' with 10 classes. Missing keys (1): "
                            "fc.weight. Unexpected keys (1): head.weight.")
    shaped = dict(state)
    shaped["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(shaped, tmp_path / "shapes.pt")
    with pytest.raises(ModelLoadError, match=r"Shape mismatches \(1\): layer1\.0\.conv1\.weight: checkpoint "
                                             r"\(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)\.$"):
        load_model(tmp_path / "shapes.pt", arch="resnet18", bench=bench)
    torch.save(torchvision.models.resnet18(num_classes=100).state_dict(), tmp_path / "k100.pt")
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "k100.pt", arch="resnet18", bench=bench)
    assert "fc.weight: checkpoint (100, 512) vs model (10, 512)" in str(e.value)
    assert str(e.value).endswith("The file's classifier fc.weight has 100 classes but 10 were asked for (the "
                                 "dataset's count unless num_classes is given).")
    with pytest.raises(ModelLoadError, match="^The model gives 100 logits per image but dataset 'digits' has 10 "
                                             "classes; bring a model trained on these classes"):
        load_model(tmp_path / "k100.pt", arch="resnet18", num_classes=100, bench=bench)
    with pytest.raises(ModelLoadError, match="^Unknown architecture 'resnet19': give one of the project's"):
        load_model(tmp_path / "k100.pt", arch="resnet19", bench=bench)
    with pytest.raises(ModelLoadError, match="^The file is a state_dict .* name its architecture"):
        load_model(tmp_path / "k100.pt", bench=bench)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(bench, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _RunsCode(marker)}, path)
    with pytest.raises(ModelLoadError, match="holds Python code or objects, not only tensors"):
        load_model(path, arch="resnet18", bench=bench)
    assert not marker.exists()
    with open(path, "wb") as f:  # a plain pickle, not even torch's archive
        pickle.dump(_RunsCode(marker), f)
    with pytest.raises(ModelLoadError):
        load_model(path, arch="resnet18", bench=bench)
    assert not marker.exists()


# --- inputs: the contract and what the model accepts -----------------------------------------------------------------

def test_input_transform_undoes_the_data_normalisation_resizes_and_normalises_the_models_way():
    mean, std = np.array([0.3]), np.array([0.2])
    t = InputTransform(InputContract(channels=3, size=8, normalisation="imagenet"), mean, std, 1, 4)
    xs = torch.randn(2, 1, 4, 4)
    pixels = F.interpolate((xs * 0.2 + 0.3).expand(-1, 3, -1, -1), size=(8, 8), mode="bilinear", align_corners=False)
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert maxdiff(t(xs), (pixels - m) / s) <= 1e-6
    assert InputTransform(InputContract(), mean, std, 1, 4).is_identity
    with pytest.raises(ValueError, match="The model takes 1-channel images but the data has 3 channel"):
        InputTransform(InputContract(channels=1), [0, 0, 0], [1, 1, 1], 3, 4)


def test_the_dry_run_names_the_input_the_model_does_not_take():
    with pytest.raises(ModelLoadError, match=r"^The model fails on a batch of 4 images of 3×16×16 px: RuntimeError: "
                                             r"mat1 and mat2 shapes cannot be multiplied .* It may expect another input "
                                             r"size"):
        load_model(seeded(TutorialNet()), input_shape=(3, 16, 16))
    model, info = load_model(seeded(TutorialNet()), input_shape=(3, 16, 16), input_size=32)
    assert info["input_transform"] == "resized to 32×32 px" and model.num_classes == 10


# --- torchvision weights: size first, never downloaded here -----------------------------------------------------------

def test_pretrained_weights_are_read_from_torchvisions_cache_only(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"^The weights ResNet18_Weights\.IMAGENET1K_V1 \(44\.7 MB, 11,689,512 "
                                             r"parameters\) are not in torchvision's cache .*--fetch-weights"):
        load_model("ResNet18_Weights.IMAGENET1K_V1", bench=bench)
    with pytest.raises(ModelLoadError, match=r"^No model file at resnet18-imagenet \(nor is it torchvision weights' "):
        load_model("resnet18-imagenet", bench=bench)
    with pytest.raises(ModelLoadError, match="Torchvision has no weights named 'ResNet18_Weights.IMAGENET9K'"):
        load_model("ResNet18_Weights.IMAGENET9K", bench=bench)
    # a file in the cache (here random weights under the expected name) is read with weights_only=True
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = seeded(torchvision.models.resnet18())
    path = weights_cache_path(w)
    path.parent.mkdir(parents=True)
    torch.save(cached.state_dict(), path)
    net, contract, info = load_pretrained("ResNet18_Weights.IMAGENET1K_V1")
    assert info["cached"] and contract.size == 224 and contract.normalisation == "imagenet"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), cached.state_dict().values()))
    with pytest.raises(ModelLoadError, match="The model gives 1000 logits per image but dataset 'digits' has 10"):
        load_model("ResNet18_Weights.IMAGENET1K_V1", bench=bench)
    model, info = load_model("ResNet18_Weights.IMAGENET1K_V1", input_shape=(1, 32, 32))
    assert info["input_transform"] == "grey repeated to 3 channels, resized to 224×224 px, imagenet normalisation"


def test_a_factory_runs_only_when_code_is_allowed(bench, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torchvision\n\ndef make(num_classes):\n    return torchvision.models.resnet18(num_classes=num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="runs your own Python code"):
        load_model("my_models:make", bench=bench)
    model, info = load_model("my_models:make", bench=bench, allow_code=True)
    assert info["format"] == "model factory" and model.num_classes == 10 and info["head"] == "fc (512 -> 10)"
    with pytest.raises(ModelLoadError, match="module 'my_models' has no function 'nothing'"):
        load_model("my_models:nothing", bench=bench, allow_code=True)
    sys.modules.pop("my_models", None)


# --- the "done means" case: the tutorial's network through every format, every detector ------------------------------

@pytest.fixture(scope="module")
def tutorial_net(bench):
    """The tutorial's network trained for 4 epochs on the digits at 32 px (a second): a classifier worth scoring."""
    gen = torch.Generator().manual_seed(0)
    net = seeded(TutorialNet())
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    xs, ys = rgb(torch.from_numpy(bench.train.x)), torch.from_numpy(bench.train.y).long()
    for _ in range(4):
        for idx in torch.randperm(len(xs), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(xs[idx]), ys[idx]).backward()
            opt.step()
    return net.eval()


def test_the_tutorial_network_scores_the_same_as_a_module_an_exported_program_and_a_torchscript_file(
        bench, tutorial_net, tmp_path):
    _save_exported(tutorial_net, tmp_path / "net.pt2", torch.zeros(1, 3, 32, 32), dynamic=False)
    _save_script(tutorial_net, tmp_path / "net.ts", None, "script")
    results = {}
    for source in (tutorial_net, tmp_path / "net.pt2", tmp_path / "net.ts"):
        model, info = load_model(source, bench=bench)
        exp = pipeline.prepare(bench.spec, model=model, bench=bench, device="cpu")
        rows, scores = pipeline.evaluate(exp, "all")
        assert [r for r in rows if r["error"]] == []
        results[info["format"]] = (exp, scores, info)
    module, exported, script = (results[k] for k in ("nn.Module", "exported program (torch.export)",
                                                     "TorchScript (torch.jit)"))
    assert module[0].id_accuracy > 0.5
    # every detector but the two a brought model cannot have; Gram and knn_conv need ReLU modules (the maps they
    # read), which F.relu calls are not
    assert set(module[2]["detectors"]["unavailable"]) == {"mc_dropout", "ensemble", "gram", "knn_conv"}
    assert set(exported[2]["detectors"]["unavailable"]) == set(script[2]["detectors"]["unavailable"]) == {
        "mc_dropout", "ensemble"}
    for other in (exported, script):
        assert np.abs(other[0].outputs["test"].logits - module[0].outputs["test"].logits).max() <= TOL
        for det, per_split in module[1].items():
            for split, s in per_split.items():
                assert np.allclose(other[1][det][split], s, rtol=1e-4, atol=1e-4), (det, split)
        assert np.allclose(exported[1]["gram"]["rotated"], script[1]["gram"]["rotated"], rtol=1e-4, atol=1e-4)


def test_every_detector_that_applies_scores_a_torchvision_resnet18(tmp_path):
    bench = build_benchmark(Spec(dataset="digits", image_size=16, model="foreign"), ("gaussian", "rotated"))
    net = seeded(torchvision.models.resnet18(num_classes=10))
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model, info = load_model(tmp_path / "r18.pt", arch="resnet18", bench=bench)
    exp = pipeline.prepare(bench.spec, model=model, bench=bench, device="cpu")
    names = detectors_for("ood", "foreign", 10, net=model)
    assert set(info["detectors"]["unavailable"]) == {"mc_dropout", "ensemble"} and len(names) >= 32
    rows, scores = pipeline.evaluate(exp, "all")
    failed = {r["detector"]: r["error"] for r in rows if r["error"]}
    # a randomly initialised network classifies few images right: OpenMax needs two right per class
    assert set(failed) <= {"openmax"} and set(scores) == set(names) - set(failed)
    assert all(len(s["test"]) == len(bench.test) and np.isfinite(s["test"]).all() for s in scores.values())
    assert detector_unavailable("knn", model) is None and detector_unavailable("ensemble", model).startswith(
        "a brought model comes alone")


# --- the command line --------------------------------------------------------------------------------------------------

def test_cli_scores_a_brought_state_dict_and_refuses_training_options(tmp_path, capsys):
    small = seeded(SmallCNN(in_channels=1, num_classes=10))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    argv = ["run", "--dataset", "digits", "--model-file", str(tmp_path / "small.pt"), "--arch", "small_cnn",
            "--detectors", "msp,knn", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "| msp |" in out and "| knn |" in out and "model brought" in err and "head: head (128 -> 10)" in err
    assert cli.main(argv + ["--epochs", "3"]) == 2
    assert "--epochs does not apply to a brought model" in capsys.readouterr().err
    assert cli.main(["run", "--dataset", "digits", "--arch", "resnet18"]) == 2
    assert "--arch applies to a brought model" in capsys.readouterr().err
    assert cli.main(["run", "--dataset", "digits", "--model-file", str(tmp_path / "small.pt")]) == 2
    assert "name its architecture" in capsys.readouterr().err
    assert cli.main(["run", "--dataset", "digits", "--setting", "osr", "--pretrained", "ResNet18_Weights.DEFAULT"]) == 2
    assert "--pretrained does not apply to --setting osr" in capsys.readouterr().err
