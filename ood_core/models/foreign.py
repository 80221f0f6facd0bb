"""Any image classifier behind the project's classifier contract: the generic adapter.

The detectors and pages reach a classifier through `features(x)` (penultimate activations h, (n, D)), `head` (an
nn.Linear: logits = W h + b), `feature_maps(x)` and `last_conv` (Grad-CAM's layer) and, for Gram matrices, the
ReLU activations of the convolutional layers. A model brought by the user has none of these names, so the adapter
finds them in a dry run on one batch:

- the head is the last nn.Linear to run; its input is h. The dry run checks that head(h) equals the model's logits
  (max abs difference <= 1e-5 relative to the logits' scale); if not, the feature and head detectors are off, with
  the reason, because they would score other numbers than the ones the model classifies with;
- the Grad-CAM layer is the last module to finish that is, or contains, a convolution and gives a 4-d output
  (torchvision's ResNet: `layer4`; DenseNet: `features`);
- Gram's activations are the 4-d outputs of every nn.ReLU call, in call order (a module called twice counts twice).

The user may name the layers instead (`head="fc"`, `conv="layer4"`). What a wrapped model can do is in
`capabilities` (a subset of CAPABILITIES) and, for what it cannot, the reason in `reasons`; `detector_unavailable()`
turns that into the reason a detector does not apply, which `settings.detectors_for(..., net=model)` and the
pipeline read. A model with no linear head still classifies, so every logit-only detector scores it.

Three ways in: `HookedClassifier` here (any nn.Module, by forward hooks), and in `graphs.py` `ExportedClassifier` (a
`torch.export` program: the graph is rewritten so the last linear op becomes an nn.Linear module, the Grad-CAM
layer's output passes an nn.Identity tap and each ReLU op becomes an nn.ReLU module, then hooks work as on any
module) and `ScriptClassifier` (TorchScript, where hooks are not supported: the frozen graph is given extra outputs,
the input of its last linear op, the Grad-CAM layer's output and the ReLU outputs).

Inputs arrive normalised like the benchmark's images; `InputTransform` turns them into what the model expects
(`InputContract`: channels, side in px, normalisation), inside the forward pass, so input gradients (ODIN, Grad-CAM)
pass through it and every caller keeps giving the benchmark's tensors.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# what a wrapped classifier can give besides its logits
CAPABILITIES = ("features", "head", "feature_maps", "activation_maps", "dropout", "members")

# per-channel (mean, std) of the input normalisations a model may expect; "dataset" (the benchmark's own) is the
# identity and is not listed
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "pixels": ((0.0,), (1.0,)),  # [0, 1] pixels, no normalisation
    "half": ((0.5,), (0.5,)),  # [-1, 1]: Normalize((0.5,) * C, (0.5,) * C), as the PyTorch CIFAR-10 tutorial
}

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
HEAD_TOLERANCE = 1e-5


class AdapterError(ValueError):
    """A layer the user named that the model does not have or that cannot serve; the message is complete."""


# --- the input contract -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputContract:
    """What a model expects as input: `channels` and square `size` in px (None: the data's own) and its
    normalisation: "dataset" (the benchmark's own mean/std), a name in NORMALISATIONS, or "custom" with `mean`
    and `std` per channel (one value applies to every channel)."""

    channels: Optional[int] = None
    size: Optional[int] = None
    normalisation: str = "dataset"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.normalisation in NORMALISATIONS:
            mean, std = NORMALISATIONS[self.normalisation]
            object.__setattr__(self, "mean", tuple(mean))
            object.__setattr__(self, "std", tuple(std))
        elif self.normalisation == "custom":
            if not self.mean or len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
                raise ValueError("a custom input normalisation needs as many means as stds, every std positive, "
                                 f"got mean={self.mean} and std={self.std}")
        elif self.normalisation != "dataset":
            raise ValueError(f"unknown input normalisation {self.normalisation!r}; choose dataset, custom or one of "
                             f"{', '.join(NORMALISATIONS)}")
        if self.size is not None and not 4 <= int(self.size) <= 1024:
            raise ValueError(f"the model's input size must be 4..1024 px, got {self.size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"a model's input must have 1 or 3 channels, got {self.channels}")

    def describe(self) -> str:
        """E.g. "3 channels, 224 px, ImageNet normalisation (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225)"."""
        parts = [f"{self.channels} channel{'s' if self.channels != 1 else ''}" if self.channels else "the data's channels",
                 f"{self.size} px" if self.size else "the data's size"]
        if self.normalisation == "dataset":
            parts.append("the dataset's own normalisation")
        else:
            nums = lambda v: ", ".join(f"{x:g}" for x in v)  # noqa: E731
            parts.append(f"{self.normalisation} normalisation (mean {nums(self.mean)}; std {nums(self.std)})")
        return ", ".join(parts)


class InputTransform(nn.Module):
    """From the benchmark's normalised images to the model's input: back to pixels, grey repeated to 3 channels,
    resized (bilinear; antialiased when shrinking), normalised the model's way. The identity when nothing differs."""

    def __init__(self, contract: InputContract, data_mean, data_std, data_channels: int, data_size: int):
        super().__init__()
        want = contract.channels or data_channels
        if want != data_channels and not (data_channels == 1 and want == 3):
            raise AdapterError(f"The model takes {want}-channel images but the data has {data_channels} channel(s); "
                               "only grey images can be repeated to 3 channels.")
        self.contract = contract
        self.repeat = want if want != data_channels else None
        self.size = contract.size if contract.size and contract.size != data_size else None
        self.renormalise = contract.normalisation != "dataset"
        as4 = lambda v, c: torch.as_tensor(np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (c,)).copy()  # noqa: E731
                                           ).view(1, c, 1, 1)
        self.register_buffer("data_mean", as4(data_mean, data_channels), persistent=False)
        self.register_buffer("data_std", as4(data_std, data_channels), persistent=False)
        if self.renormalise:
            if len(contract.mean) not in (1, want):
                raise AdapterError(f"The input normalisation has {len(contract.mean)} means for a {want}-channel model.")
            self.register_buffer("model_mean", as4(contract.mean, want), persistent=False)
            self.register_buffer("model_std", as4(contract.std, want), persistent=False)

    @property
    def is_identity(self) -> bool:
        return self.repeat is None and self.size is None and not self.renormalise

    def describe(self) -> str:
        """What the transform does, in words ("" when it is the identity)."""
        steps = []
        if self.repeat:
            steps.append(f"grey repeated to {self.repeat} channels")
        if self.size:
            steps.append(f"resized to {self.size}×{self.size} px")
        if self.renormalise:
            steps.append(f"{self.contract.normalisation} normalisation")
        return ", ".join(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        if self.renormalise:
            x = x * self.data_std + self.data_mean
        if self.repeat:
            x = x.expand(-1, self.repeat, -1, -1)
        if self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < x.shape[-1])
        if self.renormalise:
            x = (x - self.model_mean) / self.model_std
        return x


# --- what the adapter catches during a forward pass --------------------------------------------------------------

class _Recorder:
    """Per-thread record of the tensors a forward pass should catch (a page and a job may run one model at once).

    A deep copy gets a fresh recorder: the copy's hooks then write to the copy's record, never to the original's."""

    def __init__(self):
        self.local = threading.local()

    def __deepcopy__(self, memo) -> "_Recorder":
        return _Recorder()

    @contextlib.contextmanager
    def catching(self, keys: Sequence[str]) -> Iterator[dict]:
        """Within the block, hooks for `keys` store into the yielded dict (a list per key, one entry per call)."""
        before = getattr(self.local, "record", None)
        record: dict[str, list] = {k: [] for k in keys}
        self.local.record = record
        try:
            yield record
        finally:
            self.local.record = before

    def wants(self, key: str) -> bool:
        record = getattr(self.local, "record", None)
        return record is not None and key in record

    def put(self, key: str, value) -> None:
        record = getattr(self.local, "record", None)
        if record is not None and key in record and isinstance(value, torch.Tensor):
            record[key].append(value)


class _Catch:
    """A forward hook storing a module's first input or a copy of its output under `key` (a copy, since a later
    in-place op may change the output, as DenseNet's F.relu(features, inplace=True) does). A callable object, so
    that a deep copy of the model copies it along with its recorder."""

    def __init__(self, recorder: _Recorder, key: str, what: str):
        self.recorder, self.key, self.what = recorder, key, what

    def __call__(self, module, inputs, output):
        if self.what == "input":
            self.recorder.put(self.key, inputs[0] if inputs else None)
        elif self.recorder.wants(self.key) and isinstance(output, torch.Tensor):
            self.recorder.put(self.key, output.detach().clone())


@dataclass
class _Call:
    """One module call seen in the dry run."""

    name: str
    module: nn.Module
    out_dim: int
    inp: Optional[torch.Tensor] = None
    out: Optional[torch.Tensor] = None


@dataclass
class Found:
    """What the dry run found: the layers' names, the feature size, and notes for the user."""

    head: str = ""
    conv: str = ""
    feature_dim: int = 0
    relu_layers: int = 0
    notes: list[str] = field(default_factory=list)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def same_logits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within HEAD_TOLERANCE relative to the logits' scale (at least 1)."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    return _max_diff(a, b) <= HEAD_TOLERANCE * scale


def describe_failure(e: Exception) -> str:
    """An exception in a few words: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0].strip().rstrip(".")
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of x, repeating rows when x has fewer."""
    return torch.cat([x] * (n // len(x) + 1))[:n] if len(x) < n else x[:n]


# --- the wrapper ---------------------------------------------------------------------------------------------------

class ForeignClassifier(nn.Module):
    """The project's classifier contract over a model brought by the user; see the module's docstring.

    Subclasses implement `_pass(x, keys) -> (logits, {key: [tensors]})` on inputs already in the model's format.
    `max_batch`: a model that only runs batches of exactly that size (an exported program specialised on its
    example's batch) gets its inputs in padded chunks of that size.
    """

    kind = "classifier"

    def __init__(self, prep: InputTransform, max_batch: Optional[int] = None):
        super().__init__()
        self.prep = prep
        self.max_batch = max_batch
        self.num_classes = 0
        self.in_channels = int(prep.data_mean.shape[1])
        self.capabilities: frozenset[str] = frozenset()
        self.reasons: dict[str, str] = {}
        self.found = Found()

    # subclasses
    def _pass(self, x: torch.Tensor, keys: Sequence[str]) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        raise NotImplementedError

    def _head_module(self) -> Optional[nn.Linear]:
        raise NotImplementedError

    def _conv_module(self) -> Optional[nn.Module]:
        raise NotImplementedError

    # the contract
    def _run(self, x: torch.Tensor, keys: Sequence[str] = ()) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Logits and the caught tensors of one batch of benchmark-normalised inputs (chunked for `max_batch`)."""
        x = self.prep(x)
        b = self.max_batch
        if b is None or len(x) == b:
            return self._pass(x, keys)
        logits, caught = [], {k: [] for k in keys}
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:  # pad with copies of the last image; their outputs are dropped
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            z, got = self._pass(chunk, keys)
            logits.append(z[:n])
            for k in keys:
                caught[k].append([t[:n] for t in got[k]])
        # per key: the j-th caught tensor of every chunk, concatenated along the batch
        merged = {k: [torch.cat(parts) for parts in zip(*caught[k])] if caught[k] else [] for k in keys}
        return torch.cat(logits), merged

    def require(self, capability: str) -> None:
        """A ValueError with the reason when the model lacks `capability`."""
        if capability not in self.capabilities:
            raise ValueError(self.reasons.get(capability, f"the model has no {capability}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits and the penultimate features of one pass; features are (n, 0) when the model has
        none (no verified linear head)."""
        if "features" not in self.capabilities:
            z = self._run(x)[0]
            return z, z.new_zeros((len(z), 0))
        z, got = self._run(x, ("features",))
        return z, got["features"][-1].flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations h (n, D): the input of the final linear layer."""
        self.require("features")
        return self._run(x, ("features",))[1]["features"][-1].flatten(1)

    @property
    def head(self) -> nn.Linear:
        """The final linear layer: logits = head(features(x))."""
        if "head" not in self.capabilities:
            raise AttributeError(self.reasons.get("head", "the model has no linear head"))
        return self._head_module()

    @property
    def last_conv(self) -> nn.Module:
        """The Grad-CAM layer: the module whose output is the last convolutional feature map."""
        if "feature_maps" not in self.capabilities:
            raise AttributeError(self.reasons.get("feature_maps", "the model has no convolutional layer"))
        return self._conv_module()

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (n, C, h, w): the output of `last_conv`."""
        self.require("feature_maps")
        return self._run(x, ("maps",))[1]["maps"][-1]

    def activation_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4-d ReLU outputs of one pass, in call order (Gram matrices' layers), each (n, C_l, h_l, w_l)."""
        self.require("activation_maps")
        return [t.detach() for t in self._run(x, ("relu",))[1]["relu"] if t.dim() == 4]

    def describe(self) -> dict:
        """What was found, what the model can do and why not, in plain values (the info dict's model part)."""
        head = self._head_module() if "head" in self.capabilities else None
        return {"num_classes": self.num_classes,
                "head": (f"{self.found.head} ({head.in_features} -> {head.out_features})" if head is not None
                         else None),
                "feature_dim": self.found.feature_dim if "features" in self.capabilities else 0,
                "conv_layer": self.found.conv if "feature_maps" in self.capabilities else None,
                "relu_layers": self.found.relu_layers,
                "capabilities": [c for c in CAPABILITIES if c in self.capabilities],
                "reasons": {c: self.reasons[c] for c in CAPABILITIES if c in self.reasons},
                "input_transform": self.prep.describe() or "none (the model takes the data as it is)",
                "fixed_batch": self.max_batch, "notes": list(self.found.notes)}

    def _finish(self, logits: torch.Tensor, found_head: bool, head_reason: str, found_conv: bool,
                conv_reason: str, relu_layers: int, dropout_reason: str) -> None:
        """Set num_classes, capabilities and reasons from the dry run's findings."""
        self.num_classes = int(logits.shape[1])
        caps, reasons = set(), {}
        if found_head:
            caps |= {"features", "head"}
        else:
            reasons["features"] = reasons["head"] = head_reason
        if found_conv:
            caps.add("feature_maps")
        else:
            reasons["feature_maps"] = conv_reason
        self.found.relu_layers = relu_layers
        if relu_layers:
            caps.add("activation_maps")
        else:
            reasons["activation_maps"] = ("no ReLU of the model gives a 4-d feature map that the adapter can catch "
                                          "(Gram matrices are read from ReLU modules' outputs, and a model that calls "
                                          "F.relu gives none)")
        if dropout_reason:
            reasons["dropout"] = dropout_reason
        else:
            caps.add("dropout")
        reasons["members"] = ("a brought model comes alone: a deep ensemble needs members trained from other "
                              "initialisations, which only the project's own training makes")
        self.capabilities = frozenset(caps)
        self.reasons = reasons


def check_logits(z, what: str = "The model") -> torch.Tensor:
    """z when it is logits (n, K) in floating point; AdapterError saying what the model returns otherwise."""
    if not isinstance(z, torch.Tensor):
        raise AdapterError(f"{what} returns {type(z).__name__}, not one tensor of logits (n, K); wrap it so that "
                           "forward returns the logits alone.")
    if z.dim() != 2 or not z.is_floating_point():
        raise AdapterError(f"{what} returns a tensor of shape {tuple(z.shape)} ({z.dtype}), not logits of shape "
                           "(n, K) in floating point.")
    return z


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


class HookedClassifier(ForeignClassifier):
    """Any nn.Module classifier, read by forward hooks: the input of its final nn.Linear (features), that layer
    (head), the output of its last convolutional block (Grad-CAM, feature maps) and its ReLUs' outputs (Gram).

    `probe`: one batch of benchmark-normalised images for the dry run; `head`/`conv`: names of the layers
    (as in `net.named_modules()`) when the user chooses them.
    """

    def __init__(self, net: nn.Module, prep: InputTransform, probe: torch.Tensor, head: Optional[str] = None,
                 conv: Optional[str] = None, max_batch: Optional[int] = None):
        super().__init__(prep, max_batch)
        self.net = net
        self.train(False)
        self._recorder = _Recorder()
        self._head_name, self._conv_name = "", ""
        self._analyse(probe, head, conv)

    def _head_module(self) -> Optional[nn.Linear]:
        return self.net.get_submodule(self._head_name) if self._head_name else None

    def _conv_module(self) -> Optional[nn.Module]:
        return self.net.get_submodule(self._conv_name) if self._conv_name else None

    def _named(self, name: str, flag: str) -> nn.Module:
        try:
            return self.net.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in self.net.named_modules() if n]
            shown = ", ".join(names[-8:])
            raise AdapterError(f"The model has no layer named {name!r} for {flag}; its last layers are: {shown}.") \
                from None

    def _dry_run(self, probe: torch.Tensor) -> tuple[torch.Tensor, list[_Call]]:
        """The model's output on the probe, and every module call in the order the calls finished."""
        names = {id(m): n for n, m in self.net.named_modules()}
        calls: list[_Call] = []

        def hook(module, inputs, output):
            keep = isinstance(module, nn.Linear)
            inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            out_dim = output.dim() if isinstance(output, torch.Tensor) else -1
            calls.append(_Call(names.get(id(module), ""), module, out_dim, inp if keep else None,
                               output if keep and isinstance(output, torch.Tensor) else None))

        handles = [m.register_forward_hook(hook) for m in dict.fromkeys(self.net.modules()) if m is not self.net]
        try:
            with torch.no_grad():
                z = self.net(self.prep(probe))
        finally:
            for h in handles:
                h.remove()
        return check_logits(z), calls

    def _analyse(self, probe: torch.Tensor, head: Optional[str], conv: Optional[str]) -> None:
        logits, calls = self._dry_run(probe if self.max_batch is None else pad_to(probe, self.max_batch))
        # the head: the named layer or the last nn.Linear to run; its input must give the logits
        head_reason, head_ok = "", False
        if head:
            module = self._named(head, "the head")
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"Layer {head!r} is a {type(module).__name__}, not a linear layer, so it cannot "
                                   "be the head.")
            linear_calls = [c for c in calls if c.module is module]
            if not linear_calls:
                raise AdapterError(f"Layer {head!r} does not run in the model's forward pass.")
        else:
            linear_calls = [c for c in calls if isinstance(c.module, nn.Linear)]
        if not linear_calls:
            head_reason = ("the model has no linear layer (nn.Linear) whose input would be the penultimate "
                           "features, so feature- and head-based detectors do not apply")
        else:
            last = linear_calls[-1]
            with torch.no_grad():
                again = last.module(last.inp) if last.inp is not None else None
            if last.inp is None or last.inp.dim() != 2 or again is None or not same_logits(again, logits):
                diff = (f" (max difference {_max_diff(again, logits):.3g})"
                        if again is not None and again.shape == logits.shape else "")
                head_reason = (f"the model's logits are not the output of its last linear layer {last.name!r} "
                               f"applied to a (n, D) input{diff}, so its input is not the penultimate features and "
                               "feature- and head-based detectors do not apply")
            else:
                head_ok = True
                self._head_name = last.name
                self.found.head = last.name
                self.found.feature_dim = int(last.inp.shape[1])
        # the Grad-CAM layer: the named one, or the last module to finish that is or contains a convolution and
        # gives a 4-d output
        conv_reason, conv_ok = "", False
        if conv:
            module = self._named(conv, "the convolutional layer")
            seen = [c for c in calls if c.module is module]
            if not seen or seen[-1].out_dim != 4:
                raise AdapterError(f"Layer {conv!r} gives no 4-d feature map (n, C, h, w) in the forward pass, so it "
                                   "cannot be the Grad-CAM layer.")
            conv_ok, self._conv_name = True, conv
        else:
            has_conv: dict[int, bool] = {}
            for c in calls:
                if c.out_dim == 4 and has_conv.setdefault(id(c.module), _contains_conv(c.module)):
                    conv_ok, self._conv_name = True, c.name
            if not conv_ok:
                conv_reason = ("the model has no convolutional layer giving a 4-d feature map, so Grad-CAM and the "
                               "feature-map views do not apply")
        self.found.conv = self._conv_name
        relu_layers = sum(1 for c in calls if isinstance(c.module, nn.ReLU) and c.out_dim == 4)
        drops = [c.module for c in calls if isinstance(c.module, _DROPOUT)]
        dropout_reason = ("the model has no dropout layer (nn.Dropout) in its forward pass, so MC dropout cannot "
                          "sample networks" if not drops else
                          "every dropout layer of the model has p = 0, so MC dropout would sample one network"
                          if all(m.p == 0 for m in drops) else "")
        self._finish(logits, head_ok, head_reason, conv_ok, conv_reason, relu_layers, dropout_reason)
        self._install_taps()

    def _install_taps(self) -> None:
        """Permanent hooks that store only while a call asks for it (cheap otherwise)."""
        if self._head_name:
            self._head_module().register_forward_hook(_Catch(self._recorder, "features", "input"))
        if self._conv_name:
            self._conv_module().register_forward_hook(_Catch(self._recorder, "maps", "output"))
        for m in dict.fromkeys(self.net.modules()):
            if isinstance(m, nn.ReLU):
                m.register_forward_hook(_Catch(self._recorder, "relu", "output"))

    def _pass(self, x, keys):
        if not keys:
            return self.net(x), {}
        with self._recorder.catching(keys) as record:
            z = self.net(x)
        return z, record


# --- which detectors a model serves -------------------------------------------------------------------------------

def capabilities(model: nn.Module) -> Optional[frozenset]:
    """What a wrapped model can give (a subset of CAPABILITIES); None for the project's own models, which give
    everything their contract promises."""
    caps = getattr(model, "capabilities", None)
    return caps if isinstance(caps, frozenset) else None


def detector_unavailable(name: str, model: Optional[nn.Module]) -> Optional[str]:
    """Why detector `name` cannot score `model` (a sentence), or None when it can."""
    from ..detectors import REGISTRY

    caps = capabilities(model) if model is not None else None
    if caps is None:
        return None
    reasons = getattr(model, "reasons", {})
    needs = set(REGISTRY[name].needs)
    wanted = []
    if "features" in needs:
        wanted.append("features")
    if {"features", "model"} <= needs:
        wanted.append("head")
    if "feature_maps" in needs:
        wanted.append("activation_maps")
    wanted += {"mc_dropout": ["dropout"], "ensemble": ["members"]}.get(name, [])
    for cap in wanted:
        if cap not in caps:
            return reasons.get(cap, f"the model has no {cap}")
    return None


def unavailable_detectors(names: Sequence[str], model: Optional[nn.Module]) -> dict[str, str]:
    """{detector: reason} for the detectors among `names` that `model` cannot serve."""
    out = {}
    for n in names:
        reason = detector_unavailable(n, model)
        if reason:
            out[n] = reason
    return out


__all__ = ["CAPABILITIES", "HEAD_TOLERANCE", "NORMALISATIONS", "AdapterError", "ForeignClassifier", "Found",
           "HookedClassifier", "InputContract", "InputTransform", "capabilities", "check_logits", "describe_failure",
           "detector_unavailable", "pad_to", "same_logits", "unavailable_detectors"]
