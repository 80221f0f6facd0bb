"""Bringing a model: one call from what the user has to a wrapped classifier and a plain account of it.

    model, info = load_model("net.pt2", bench=bench)                        # torch.export.save
    model, info = load_model("net.ts", bench=bench)                         # torch.jit.save
    model, info = load_model("r18.pt", arch="resnet18", bench=bench)        # a state_dict + its architecture
    model, info = load_model("ResNet50_Weights.IMAGENET1K_V2", bench=bench, fetch=True)   # torchvision's weights
    model, info = load_model(my_module, bench=bench)                        # any nn.Module
    model, info = load_model("package.module:function", bench=bench, allow_code=True)    # the CLI's factory

Every mismatch is a ModelLoadError with a complete sentence, raised before any scoring: a file that holds code or
is not a model, missing/unexpected keys and the first shape mismatches, a class count unlike the dataset's, input
channels or sizes the model does not take (a dry run on a few of the benchmark's images). State dicts load with
torch.load(weights_only=True) only. TorchScript and exported programs are graphs, not pickled Python objects.
Torchvision's weights come from its own cache (torch.hub's checkpoints folder) and are downloaded only with
`fetch=True`; their size is said first. `info` tells what was found (head, Grad-CAM layer, input transform) and,
given a benchmark, which detectors apply and why the others do not.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelLoadError, copy_state_dict, read_state_dict, state_dict_mismatches
from .foreign import (NORMALISATIONS, AdapterError, ForeignClassifier, HookedClassifier, InputContract, InputTransform,
                      describe_failure, unavailable_detectors)
from .graphs import ExportedClassifier, ScriptClassifier

FORMATS = {"exported": "exported program (torch.export)", "torchscript": "TorchScript (torch.jit)",
           "state_dict": "state_dict", "pretrained": "torchvision weights", "factory": "model factory",
           "module": "nn.Module"}
SPEC_MODEL = "foreign"  # Spec.model of an experiment on a brought model
PROBE_IMAGES = 4
_WEIGHTS = re.compile(r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_Weights\.[A-Z0-9_]+$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PATCH_LOCK = threading.Lock()


# --- what a file is --------------------------------------------------------------------------------------------------

def detect_format(path_or_file) -> str:
    """"exported", "torchscript" or "state_dict", from the archive's entries (a legacy non-zip torch.save file is
    a state_dict)."""
    start = path_or_file.tell() if hasattr(path_or_file, "seek") else None
    try:
        if not zipfile.is_zipfile(path_or_file):
            return "state_dict"
        if start is not None:
            path_or_file.seek(start)
        with zipfile.ZipFile(path_or_file) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "state_dict"  # torch.load says what is wrong with it
    finally:
        if start is not None:
            path_or_file.seek(start)
    if any(n.endswith("/archive_format") or "/models/" in n and n.endswith(".json") for n in names):
        return "exported"
    if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "state_dict"


# --- architectures by name -------------------------------------------------------------------------------------------

def torchvision_architectures() -> list[str]:
    """Torchvision's image classification architectures (resnet18, densenet121, vit_b_16, ...)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def architectures() -> list[str]:
    """Every architecture a state_dict can be loaded into: the project's own classifiers, then torchvision's."""
    return [*_own_classifiers(), *torchvision_architectures()]


def _own_classifiers() -> list[str]:
    from .registry import MODELS

    return [name for name, entry in MODELS.items() if entry.kind == "classifier"]


def build_architecture(arch: str, num_classes: int, in_channels: int, image_size: Optional[int] = None) -> nn.Module:
    """A fresh, randomly initialised `arch` with `num_classes` outputs: one of the project's classifiers (built for
    `in_channels`) or a torchvision classifier (3 channels; ViTs at `image_size`, default 224)."""
    from .registry import build_model

    if arch in _own_classifiers():
        return build_model(arch, in_channels, num_classes, image_size)
    names = torchvision_architectures()
    if arch not in names:
        close = [n for n in names if n.startswith(re.sub(r"\d.*$", "", arch))][:8] or names[:8]
        raise ModelLoadError(f"Unknown architecture {arch!r}: give one of the project's ({', '.join(_own_classifiers())}) or a "
                             f"torchvision classifier, e.g. {', '.join(close)}.")
    import torchvision

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = image_size or 224
    if arch in ("inception_v3", "googlenet"):
        kwargs["init_weights"] = False  # the weights come from the file; scipy's init is slow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(arch, **kwargs)


def _final_linear(model: nn.Module) -> Optional[tuple[str, nn.Linear]]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _class_count_hint(state: dict, model: nn.Module, num_classes: int) -> str:
    """A sentence on the class count when the model's last linear layer differs from the file's in rows only."""
    last = _final_linear(model)
    if last is None:
        return ""
    key = f"{last[0]}.weight"
    w = state.get(key)
    if w is None or w.dim() != 2 or w.shape[1] != last[1].in_features or w.shape[0] == num_classes:
        return ""
    return (f" The file's classifier {key} has {w.shape[0]} classes but {num_classes} were asked for (the dataset's "
            f"count unless num_classes is given).")


def _strip_prefix(state: dict, model: nn.Module) -> tuple[dict, str]:
    """A state_dict saved from nn.DataParallel ('module.' before every key) fitted to a plain model."""
    own = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        return {k[len("module."):]: v for k, v in state.items()}, "keys' 'module.' prefix (nn.DataParallel) removed"
    return state, ""


def _densenet_keys(state: dict) -> dict:
    """Old torchvision DenseNet keys ('denselayer1.norm.1.weight') renamed as today's ('denselayer1.norm1.weight')."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                         r"running_var))$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_state_dict_model(path_or_file, arch: str, num_classes: int, in_channels: int,
                          image_size: Optional[int] = None) -> tuple[nn.Module, list[str]]:
    """`arch` with the file's weights (torch.load weights_only=True); ModelLoadError on any mismatch, with the
    missing and unexpected keys, the first shape mismatches and the class count. Returns (model, notes)."""
    model = build_architecture(arch, num_classes, in_channels, image_size)
    state = read_state_dict(path_or_file, model, arch)
    notes = []
    state, note = _strip_prefix(state, model)
    if note:
        notes.append(note)
    if arch.startswith("densenet"):
        state = _densenet_keys(state)
    problems = state_dict_mismatches(state, model)
    if problems:
        channels = f"{in_channels} input channel(s) and " if arch not in torchvision_architectures() else ""
        raise ModelLoadError(f"The state_dict does not match architecture {arch!r} with {channels}{num_classes} "
                             "classes. " + ". ".join(problems) + "." + _class_count_hint(state, model, num_classes))
    return copy_state_dict(state, model, f"architecture {arch!r}"), notes


# --- torchvision's pretrained weights ---------------------------------------------------------------------------------

def pretrained_weights(name: str):
    """The torchvision weights enum value named like "ResNet50_Weights.IMAGENET1K_V2"."""
    import torchvision

    if not _WEIGHTS.match(name or ""):
        raise ModelLoadError(f"{name!r} is not a torchvision weights name; write it as the enum is written, "
                             "e.g. ResNet50_Weights.IMAGENET1K_V2 or ResNet18_Weights.DEFAULT.")
    try:
        return torchvision.models.get_weight(name)
    except (KeyError, ValueError, AttributeError):
        raise ModelLoadError(f"Torchvision has no weights named {name!r}; its enums are listed by "
                             "torchvision.models.get_model_weights(architecture).") from None


def _arch_of(weights) -> str:
    import torchvision

    for arch in torchvision_architectures():
        if torchvision.models.get_model_weights(arch) is type(weights):
            return arch
    raise ModelLoadError(f"No torchvision classification architecture uses {type(weights).__name__}.")


def weights_cache_path(weights) -> Path:
    """Where torchvision's cache (torch.hub's checkpoints folder) keeps the weights' file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def weights_info(name: str) -> dict:
    """What torchvision's weights `name` are before any download: architecture, size, parameters, classes, the
    input they expect, and whether they are in the cache."""
    w = pretrained_weights(name)
    path = weights_cache_path(w)
    contract = _weights_contract(w)
    return {"name": name, "architecture": _arch_of(w), "size_mb": float(w.meta.get("_file_size", 0.0)),
            "parameters": int(w.meta.get("num_params", 0)), "classes": len(w.meta.get("categories") or ()),
            "input": contract.describe(), "cached": path.is_file(), "cache_path": str(path), "url": w.url}


def _weights_contract(weights) -> InputContract:
    """The input the weights were trained with, from their transforms: crop size, mean and std (3 channels)."""
    t = weights.transforms()
    size = getattr(t, "crop_size", [224])
    mean = tuple(float(v) for v in getattr(t, "mean", NORMALISATIONS["imagenet"][0]))
    std = tuple(float(v) for v in getattr(t, "std", NORMALISATIONS["imagenet"][1]))
    label = "imagenet" if (mean, std) == NORMALISATIONS["imagenet"] else "custom"
    return InputContract(channels=3, size=int(size[0]), normalisation=label, mean=() if label == "imagenet" else mean,
                         std=() if label == "imagenet" else std)


def load_pretrained(name: str, fetch: bool = False) -> tuple[nn.Module, InputContract, dict]:
    """Torchvision's `name` weights in their architecture, read with torch.load(weights_only=True) from
    torchvision's cache; downloaded into that cache (its checksum checked) only when `fetch`. Returns the model,
    the input contract its transforms give (size, normalisation) and weights_info()."""
    import torchvision

    w = pretrained_weights(name)
    info = weights_info(name)
    if not info["cached"] and not fetch:
        raise ModelLoadError(f"The weights {name} ({info['size_mb']:.1f} MB, {info['parameters']:,} parameters) are "
                             f"not in torchvision's cache ({info['cache_path']}); ask for them explicitly to download "
                             "them (CLI: --fetch-weights).")
    if info["cached"]:
        try:
            state = torch.load(info["cache_path"], map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"The cached weights file {info['cache_path']} does not load as plain tensors "
                                 f"({describe_failure(e)}); delete it and fetch the weights again.") from None
    else:
        state = torch.hub.load_state_dict_from_url(w.url, map_location="cpu", progress=True, check_hash=True,
                                                   weights_only=True)
    # the builder sets what the weights need (ViT's image size, Inception's input transform, DenseNet's old keys);
    # it is handed the state_dict read above instead of reading the file itself
    with _PATCH_LOCK:
        enum_cls = type(w)
        original = enum_cls.__dict__.get("get_state_dict")
        enum_cls.get_state_dict = lambda self, *a, **k: state
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = torchvision.models.get_model(info["architecture"], weights=w)
        except RuntimeError as e:
            raise ModelLoadError(f"The weights {name} do not fit architecture {info['architecture']!r} "
                                 f"({describe_failure(e)}).") from None
        finally:
            if original is None:
                del enum_cls.get_state_dict
            else:
                enum_cls.get_state_dict = original
    return model.eval(), _weights_contract(w), info


# --- a user's own code (CLI) -------------------------------------------------------------------------------------------

def load_factory(target: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None) -> nn.Module:
    """The nn.Module that `package.module:function` returns; the function gets num_classes / in_channels when it
    takes parameters of those names. Runs the user's code: the CLI's --model-factory only."""
    if not _FACTORY.match(target or ""):
        raise ModelLoadError(f"--model-factory {target!r}: write it as package.module:function.")
    module_name, fn_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ModelLoadError(f"--model-factory: module {module_name!r} does not import ({describe_failure(e)}).") \
            from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelLoadError(f"--model-factory: module {module_name!r} has no function {fn_name!r}.")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if v is not None and k in params}
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise ModelLoadError(f"--model-factory: {target}() failed ({describe_failure(e)}).") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model-factory: {target}() returned {type(model).__name__}, not an nn.Module.")
    return model


# --- the one call -----------------------------------------------------------------------------------------------------

def _contract(normalisation, input_size: Optional[int], channels: Optional[int],
              default: Optional[InputContract] = None) -> InputContract:
    """The input contract from the user's choices, falling back on what the model says (`default`)."""
    base = default or InputContract()
    if normalisation is None:
        norm, mean, std = base.normalisation, base.mean, base.std
    elif isinstance(normalisation, str):
        norm, mean, std = normalisation, (), ()
    else:
        mean, std = (tuple(float(v) for v in np.ravel(a)) for a in normalisation)
        norm = "custom"
    if norm in NORMALISATIONS:
        mean, std = (), ()
    return InputContract(channels=channels or base.channels, size=input_size or base.size, normalisation=norm,
                         mean=mean, std=std)


def _first_conv_channels(model: nn.Module) -> Optional[int]:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _script_channels(module) -> Optional[int]:
    """Input channels of a TorchScript model: the first convolution's weight (in_channels × groups)."""
    for name, p in module.named_parameters():
        if p.dim() == 4:
            return int(p.shape[1])
    return None


def _exported_shape(gm) -> tuple[Optional[int], Optional[int]]:
    """(channels, side) of an exported program's image input, when static and square."""
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            shape = tuple(getattr(val, "shape", ()))
            if len(shape) == 4:
                c, h, w = shape[1:]
                c = int(c) if isinstance(c, int) else None
                side = int(h) if isinstance(h, int) and h == w else None
                return c, side
            break
    return None, None


def _probe(bench, input_shape) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A few benchmark-normalised images for the dry run, and the data's per-channel mean and std."""
    if bench is not None:
        x = torch.from_numpy(np.ascontiguousarray(bench.train.images[:PROBE_IMAGES], dtype=np.float32))
        return x, np.asarray(bench.mean).reshape(-1), np.asarray(bench.std).reshape(-1)
    if input_shape is None:
        raise ValueError("load_model needs the benchmark (bench=) or the data's input_shape=(C, H, W)")
    c, h, w = input_shape
    gen = torch.Generator().manual_seed(0)
    return torch.randn((PROBE_IMAGES, c, h, w), generator=gen), np.zeros(c), np.ones(c)


def load_model(source, *, bench=None, input_shape: Optional[tuple[int, int, int]] = None,
               arch: Optional[str] = None, num_classes: Optional[int] = None, head: Optional[str] = None,
               conv: Optional[str] = None, normalisation=None, input_size: Optional[int] = None,
               fetch: bool = False, allow_code: bool = False) -> tuple[ForeignClassifier, dict]:
    """A user's classifier, wrapped for every detector and page, and what was found: `(model, info)`.

    source: an nn.Module; a path or file object of an exported program (.pt2), a TorchScript file or a state_dict
    (with `arch`, and `num_classes`, default the dataset's); torchvision weights by enum name (`fetch=True` to
    download them); "package.module:function" with `allow_code=True` (the CLI's factory).
    bench: the benchmark the model will score (its images drive the dry run; its class count must match);
    without one, `input_shape` (C, H, W) of the data. head/conv: names of the head and Grad-CAM layers
    (nn.Module sources). normalisation: "dataset" (the benchmark's own, the default), "imagenet", "pixels",
    "half" or (mean, std); input_size: the model's square input side (default: the model's own when it says,
    else the data's). ModelLoadError (one sentence or a few) on anything that does not fit.
    """
    probe, data_mean, data_std = _probe(bench, input_shape)
    data_channels, data_size = int(probe.shape[1]), int(probe.shape[-1])
    k = num_classes or (bench.num_classes if bench is not None else None)
    named = bool(head or conv)
    default, notes, details = None, [], {}
    if isinstance(source, nn.Module):
        kind, net, label = "module", source, type(source).__name__
    elif isinstance(source, str) and _WEIGHTS.match(source) and not Path(source).exists():
        net, default, details = load_pretrained(source, fetch)
        kind, label = "pretrained", source
    elif isinstance(source, str) and _FACTORY.match(source) and not Path(source).exists():
        if not allow_code:
            raise ModelLoadError("A model factory runs your own Python code, which only the command line's "
                                 "--model-factory does.")
        kind, label = "factory", source
        net = load_factory(source, k, data_channels)
    else:
        if not hasattr(source, "read") and not Path(source).is_file():
            raise ModelLoadError(f"No model file at {source} (nor is it torchvision weights' name such as "
                                 "ResNet50_Weights.IMAGENET1K_V2).")
        label = getattr(source, "name", None) or str(source)
        kind = detect_format(source)
        if kind == "state_dict":
            if not arch:
                raise ModelLoadError("The file is a state_dict (weights without the network): name its architecture "
                                     f"(arch=, CLI --arch), e.g. {', '.join(architectures()[:4])}, resnet50, vit_b_16.")
            if k is None:
                raise ModelLoadError("Give the number of classes (num_classes=, CLI --num-classes).")
            net, notes = load_state_dict_model(source, arch, k, data_channels, input_size)
            if arch.startswith("vit_"):
                default = InputContract(size=input_size or 224)
        else:
            if named:
                raise ModelLoadError("Layer names (head=, conv=) apply to a model given as code or as a state_dict; "
                                     f"the {FORMATS[kind]}'s layers are found in its graph.")
            net = _read_graph_file(source, kind)
    if arch and kind != "state_dict":
        raise ModelLoadError(f"arch= (--arch) applies to a state_dict file only; this is a {FORMATS[kind]}.")
    # what the model takes: the channels and size it says, else the data's
    if kind == "exported":
        channels, side = _exported_shape(net)
    elif kind == "torchscript":
        channels, side = _script_channels(net), None
    else:
        channels, side = _first_conv_channels(net), None
    contract = _contract(normalisation, input_size, channels,
                         default or InputContract(channels=channels, size=side))
    try:
        prep = InputTransform(contract, data_mean, data_std, data_channels, data_size)
    except AdapterError as e:
        raise ModelLoadError(str(e)) from None
    wrapped = _wrap(kind, net, prep, probe, head, conv, contract)
    expected = bench.num_classes if bench is not None else num_classes
    if expected is not None and wrapped.num_classes != expected:
        what = f"dataset {bench.spec.dataset!r}" if bench is not None else "num_classes"
        raise ModelLoadError(f"The model gives {wrapped.num_classes} logits per image but {what} has {expected} "
                             "classes; bring a model trained on these classes.")
    wrapped.found.notes[:0] = notes
    info = {"source": label, "format": FORMATS[kind], "architecture": arch or details.get("architecture") or
            ("graph" if kind == "exported" else getattr(net, "original_name", None) or type(net).__name__),
            "parameters": sum(p.numel() for p in wrapped.net.parameters()), "input": contract.describe(),
            "data": f"{data_channels}×{data_size}×{data_size}", **wrapped.describe()}
    if details:
        info["weights"] = details
    if bench is not None:
        info["detectors"] = detector_report(wrapped, bench)
    return wrapped, info


def _read_graph_file(source, kind: str):
    """An exported program's module or a TorchScript module from a file; ModelLoadError when it does not load."""
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still loads
            if kind == "exported":
                return torch.export.load(source).module()
            return torch.jit.load(source, map_location="cpu")
    except Exception as e:
        raise ModelLoadError(f"The {FORMATS[kind]} file does not load ({describe_failure(e)}).") from None


def _wrap(kind: str, net, prep: InputTransform, probe: torch.Tensor, head, conv,
          contract: InputContract) -> ForeignClassifier:
    """The adapter for the source's kind, its dry run's failures said in one sentence."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "exported":
                return ExportedClassifier(net, prep, probe)
            if kind == "torchscript":
                return ScriptClassifier(net, prep, probe)
            return HookedClassifier(net, prep, probe, head, conv)
    except AdapterError as e:
        raise ModelLoadError(str(e)) from None
    except Exception as e:
        c, s = int(probe.shape[1]), int(probe.shape[-1])
        seen = prep.describe()
        raise ModelLoadError(f"The model fails on a batch of {len(probe)} images of {c}×{s}×{s} px"
                             + (f" ({seen})" if seen else "") + f": {describe_failure(e)}. It may expect another "
                             "input size, channel count or normalisation (input_size=, normalisation=; CLI "
                             "--input-size, --input-norm).") from None


def detector_report(model: nn.Module, bench) -> dict:
    """Which detectors apply to `model` on `bench`'s setting and which do not, with the reason for each."""
    from ..settings import detectors_for, is_applicable
    from ..detectors import REGISTRY

    spec = bench.spec
    by_setting = [n for n in REGISTRY if is_applicable(n, spec.setting, SPEC_MODEL, bench.num_classes)]
    return {"applicable": detectors_for(spec.setting, SPEC_MODEL, bench.num_classes, net=model),
            "unavailable": unavailable_detectors(by_setting, model)}


def summary_lines(info: dict) -> list[str]:
    """The info dict in a few lines for a terminal or a caption."""
    lines = [f"model: {info['source']} ({info['format']}, {info['architecture']}, {info['parameters']:,} parameters, "
             f"{info['num_classes']} classes)",
             f"input: data {info['data']} -> model {info['input']}; transform: {info['input_transform']}",
             f"head: {info['head'] or 'none'}; features: {info['feature_dim'] or 'none'}; "
             f"Grad-CAM layer: {info['conv_layer'] or 'none'}"]
    lines += [f"note: {n}" for n in info.get("notes", [])]
    for name, reason in info.get("detectors", {}).get("unavailable", {}).items():
        lines.append(f"skipped {name}: {reason}")
    return lines


__all__ = ["FORMATS", "SPEC_MODEL", "architectures", "build_architecture", "detect_format", "detector_report",
           "load_factory", "load_model", "load_pretrained", "load_state_dict_model", "pretrained_weights",
           "summary_lines", "torchvision_architectures", "weights_cache_path", "weights_info"]
