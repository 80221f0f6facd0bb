"""One forward pass per split into an Outputs bundle, and the model adapter detectors use."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .data.images import Images
from .device import resolve_device


@dataclass
class Outputs:
    """What one forward pass gives for a split: logits (n, K), penultimate features (n, D), labels (n,).

    `inputs` keeps the normalised images for the few detectors that must run the network again: an array, or the
    split's compact data.images.Images (read like an array: `inputs[idx]`, `inputs[a:b]` give float32 arrays).
    """

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    inputs: Optional[Any] = None
    # per-sample arrays a model gives besides logits and features, e.g. "model_score" of a one-class model
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "Outputs":
        inputs = (None if self.inputs is None else self.inputs.take(idx) if isinstance(self.inputs, Images)
                  else self.inputs[idx])  # compact inputs stay compact
        return Outputs(self.logits[idx], self.features[idx], self.labels[idx], inputs,
                       {k: v[idx] for k, v in self.extras.items()})


class ModelAdapter:
    """The one way detectors reach the network: features, head weights, logits and input gradients.

    Wraps a model with `features(x)`, `head` (a Linear layer) and optionally `feature_maps(x)`; or a model brought
    by the user (models.foreign.ForeignClassifier), whose `logits_and_features(x)` gives both from one pass and
    features of width 0 when it has no linear head, and whose `activation_maps(x)` gives its ReLU outputs.
    """

    def __init__(self, model: nn.Module, device: Optional[str] = None, batch_size: int = 256, input_std=1.0):
        device = resolve_device(device)  # the model moves there (default: device.default_device())
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        # per channel: one pixel unit in normalised input units is 1 / input_std
        self.input_std = np.asarray(input_std, dtype=np.float64).reshape(-1)

    def pixel_step(self, eps: float):
        """`eps` pixel units ([0, 1] scale) in normalised input units: a number, or a (1, C, 1, 1) tensor when the
        channels were normalised each with its own std."""
        if self.input_std.size == 1:
            return eps / float(self.input_std[0])
        return torch.as_tensor(eps / self.input_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    @property
    def head_weight(self) -> np.ndarray:
        """W of logits = W h + b, shape (K, D)."""
        return self.model.head.weight.detach().cpu().numpy().astype(np.float64)

    @property
    def head_bias(self) -> np.ndarray:
        return self.model.head.bias.detach().cpu().numpy().astype(np.float64)

    def batches(self, x: np.ndarray):
        for i in range(0, len(x), self.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size])).to(self.device)

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) in eval mode, batched."""
        self.model.eval()
        both = getattr(self.model, "logits_and_features", None)
        logits, feats = [], []
        for xb in self.batches(x):
            if both is not None:
                z, h = both(xb)
            else:
                h = self.model.features(xb)
                z = self.model.head(h)
            logits.append(z.cpu().numpy())
            feats.append(h.cpu().numpy())
        if not logits:
            if both is not None:
                k, d = self.model.num_classes, self.model.found.feature_dim
            else:
                k, d = self.model.head.weight.shape
            return np.zeros((0, k), np.float32), np.zeros((0, d), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    @torch.no_grad()
    def feature_maps(self, x: np.ndarray) -> np.ndarray:
        """Output of the last convolutional block, (n, C, h, w), batched, eval mode."""
        self.model.eval()
        maps = [self.model.feature_maps(xb).cpu().numpy() for xb in self.batches(x)]
        return np.concatenate(maps) if maps else np.zeros((0,))

    @torch.no_grad()
    def layer_feature_maps(self, x: np.ndarray) -> list[np.ndarray]:
        """The output of every nn.ReLU module of the network (the convolutional ones: 4-d outputs), per layer
        (n, C_l, h_l, w_l), in the order the modules are declared, caught by forward hooks during one ordinary forward
        pass, for Gram-style methods (any architecture whose activations are nn.ReLU modules)."""
        self.model.eval()
        if hasattr(self.model, "activation_maps"):  # a brought model catches its own (in call order)
            per_call = [[a.cpu().numpy() for a in self.model.activation_maps(xb)] for xb in self.batches(x)]
            return [np.concatenate(layer) for layer in zip(*per_call)]
        relus = [m for m in self.model.modules() if isinstance(m, nn.ReLU)]
        caught: dict[int, list[np.ndarray]] = {id(m): [] for m in relus}

        def hook(module, inputs, output):
            if output.dim() == 4:  # copied now: an in-place ReLU's output is overwritten by nothing later, but be safe
                caught[id(module)].append(output.detach().cpu().numpy().copy())

        handles = [m.register_forward_hook(hook) for m in relus]
        try:
            for xb in self.batches(x):
                self.model(xb)
        finally:
            for h in handles:
                h.remove()
        per_layer = [caught[id(m)] for m in relus if caught[id(m)]]
        return [np.concatenate(p) for p in per_layer]

    def logits_tensor(self, xb: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "logits_and_features"):  # a brought model: its own forward gives the logits
            return self.model(xb)
        return self.model.head(self.model.features(xb))


def is_one_class(model: nn.Module) -> bool:
    """One-class models (Deep SVDD, autoencoder, ...) have no classifier head; they give features and a score."""
    return getattr(model, "kind", "classifier") == "one_class"


@torch.no_grad()
def _one_class_forward(model: nn.Module, x: np.ndarray, device: str, batch_size: int):
    model.eval().to(device)
    feats, scores = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
        feats.append(model.features(xb).flatten(1).cpu().numpy())
        s = model.anomaly_score(xb)
        if s is not None:
            scores.append(s.cpu().numpy())
    f = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    extras = {"model_score": np.concatenate(scores).astype(np.float64)} if scores else {}
    return f, extras


def run_inference(model: nn.Module, x: np.ndarray, labels: np.ndarray, device: Optional[str] = None,
                  batch_size: int = 256, keep_inputs: bool = True) -> Outputs:
    """The single forward pass of a split (classifiers: logits and features; one-class models: features and score),
    on `device` (default: device.default_device()), where the model is moved."""
    device = resolve_device(device)
    if is_one_class(model):
        feats, extras = _one_class_forward(model, x, device, batch_size)
        return Outputs(np.zeros((len(x), 0), np.float32), feats.astype(np.float32), labels.copy(),
                       x if keep_inputs else None, extras)
    logits, feats = ModelAdapter(model, device, batch_size).forward(x)
    return Outputs(logits.astype(np.float32), feats.astype(np.float32), labels.copy(), x if keep_inputs else None)
