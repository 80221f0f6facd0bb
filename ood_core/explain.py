"""Explanations of single samples: Grad-CAM, Integrated Gradients and Guided Grad-CAM (captum), heat-map
overlays, gallery pickers from scores, "where does this sample fall?", and the decoding of uploads.

Heat maps are (n, H, W) float arrays in [0, 1] at the input size, normalised per image by its maximum.
An all-zero map (no positive evidence for the target class at that layer, common with Grad-CAM's ReLU)
stays all zero rather than being divided by zero; `zero_maps(heat)` lists such images for a caption.
Models are put in eval mode and left there; inputs are copied, never modified; no gradient is left in
the model's parameters (captum uses torch.autograd.grad).
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn

from .detectors.base import max_softmax
from .device import resolve_device

EPS = 1e-12
_ATTRIBUTION_LOCK = threading.RLock()


# --- common plumbing -------------------------------------------------------------------------------

def _device_of(model: nn.Module, device: Optional[str]) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device(resolve_device(None))


def _as_batch(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (n, C, H, W) or (C, H, W), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the images contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


@contextlib.contextmanager
def _no_inplace_relu(model: nn.Module):
    """captum's hooks (and guided backprop's ReLU overrides) break on in-place ReLUs: switch them off meanwhile."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def _targets(model: nn.Module, xb: torch.Tensor, target, start: int, n_total: int) -> torch.Tensor:
    """Target class per sample: predicted when None, one int for all, or a per-sample array."""
    if target is None:
        with torch.no_grad():
            return model(xb).argmax(dim=1)
    if np.isscalar(target) or (isinstance(target, (np.ndarray, torch.Tensor)) and np.ndim(target) == 0):
        return torch.full((len(xb),), int(target), dtype=torch.long, device=xb.device)
    t = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).reshape(-1)
    if len(t) != n_total:
        raise ValueError(f"target has {len(t)} entries for {n_total} images")
    return torch.as_tensor(t[start:start + len(xb)].astype(np.int64), device=xb.device)


def _check_target_range(model: nn.Module, xb: torch.Tensor, t: torch.Tensor) -> None:
    k = getattr(model, "num_classes", None)
    if k is None and hasattr(model, "head"):
        k = model.head.out_features
    if k is not None and len(t) and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(f"target class must be in 0..{k - 1}")


def normalise_maps(heat: np.ndarray) -> np.ndarray:
    """Divide each map by its maximum (maps assumed non-negative) -> [0, 1]; an all-zero map stays zero."""
    heat = np.asarray(heat, dtype=np.float64)
    m = heat.reshape(len(heat), -1).max(axis=1) if heat.size else np.zeros(len(heat))
    scale = np.where(m > EPS, m, 1.0)
    out = heat / scale[:, None, None]
    out[m <= EPS] = 0.0
    return np.clip(out, 0.0, 1.0)


def zero_maps(heat: np.ndarray) -> np.ndarray:
    """Indices of all-zero heat maps (no positive evidence found)."""
    h = np.asarray(heat)
    return np.flatnonzero(h.reshape(len(h), -1).max(axis=1) <= 0) if h.size else np.zeros(0, int)


def _run(model: nn.Module, x, target, device, batch_size: int, fn) -> np.ndarray:
    """Batch x through fn(xb, tb) -> tensor (b, ...) with the model in eval mode and in-place ReLUs off."""
    xs = _as_batch(x)
    dev = _device_of(model, device)
    # a program exported for a fixed batch runs in chunks, and captum's layer hooks need one call per batch
    batch_size = min(batch_size, getattr(model, "max_batch", None) or batch_size)
    model.eval()
    outs = []
    # captum hooks the shared (cached) model's modules: one attribution at a time per process
    with _ATTRIBUTION_LOCK, _no_inplace_relu(model):
        for i in range(0, len(xs), batch_size):
            xb = torch.from_numpy(xs[i:i + batch_size].copy()).to(dev)
            tb = _targets(model, xb, target, i, len(xs))
            _check_target_range(model, xb, tb)
            outs.append(fn(xb, tb).detach().cpu().numpy())
    model.eval()
    return np.concatenate(outs) if outs else np.zeros((0, *xs.shape[1:]))


def default_layer(model: nn.Module, layer: Optional[nn.Module]) -> nn.Module:
    if layer is not None:
        return layer
    if not hasattr(model, "last_conv"):
        reason = getattr(model, "reasons", {}).get("feature_maps")  # a brought model says why it has none
        raise ValueError(reason or "the model has no `last_conv` layer: pass layer= (a convolutional block's module)")
    return model.last_conv


# --- attributions ----------------------------------------------------------------------------------

def gradcam(model: nn.Module, x, target=None, layer: Optional[nn.Module] = None, device: Optional[str] = None,
            batch_size: int = 64) -> np.ndarray:
    """Grad-CAM heat maps (n, H, W) in [0, 1]: ReLU(Σ_k α_k A^k), α_k = mean gradient of the target logit
    over A^k's positions, at `layer` (default `model.last_conv`), bilinearly upsampled to the input size.

    target: None (predicted class), an int, or one class per image. x: normalised (n, C, H, W) images.
    device: where to run (default: where the model's parameters are; the model must already be there).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    lay = default_layer(model, layer)
    cam = LayerGradCam(model, lay)

    def fn(xb, tb):
        a = cam.attribute(xb, target=tb, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(xb.shape[2:]), interpolate_mode="bilinear")[:, 0]

    return normalise_maps(np.maximum(_run(model, x, target, device, batch_size, fn), 0.0))


def _baseline_tensor(baseline, bench, xb: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        if bench is None:
            raise ValueError("integrated_gradients needs a baseline: pass bench= (the black background, "
                             "normalised) or baseline= (a number or an image)")
        black = np.asarray((0.0 - bench.mean) / bench.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return torch.as_tensor(black, device=xb.device).expand_as(xb).clone()
    if np.isscalar(baseline):
        return torch.full_like(xb, float(baseline))
    b = torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=xb.device)
    return b.expand_as(xb) if b.dim() == 3 or b.shape[0] == 1 else b


def integrated_gradients(model: nn.Module, x, target=None, baseline=None, steps: int = 32, bench=None,
                         device: Optional[str] = None, batch_size: int = 32, raw: bool = False) -> np.ndarray:
    """Integrated Gradients: (x - x') ⊙ ∫ ∂f_t(x' + a(x - x'))/∂x da, a Riemann/Gauss-Legendre sum of `steps`.

    baseline x': the normalised black (zero-pixel) image, i.e. the background, taken from `bench`
    (its mean/std) when baseline is None; or a number / an image / one image per sample.
    Returns |attribution| summed over channels, normalised per image, (n, H, W) in [0, 1];
    with raw=True the signed attributions (n, C, H, W), whose sum ≈ f_t(x) - f_t(x') (completeness).
    """
    from captum.attr import IntegratedGradients

    if int(steps) < 2:
        raise ValueError("steps must be at least 2")
    ig = IntegratedGradients(model)
    n_images = len(_as_batch(x))
    per_sample = (baseline is not None and not np.isscalar(baseline) and np.ndim(baseline) == 4
                  and np.shape(baseline)[0] == n_images and n_images > 1)
    done = [0]  # a per-sample baseline is sliced along with the batches

    def fn(xb, tb):
        if per_sample:
            base = torch.as_tensor(np.asarray(baseline, np.float32)[done[0]:done[0] + len(xb)], device=xb.device)
        else:
            base = _baseline_tensor(baseline, bench, xb)
        done[0] += len(xb)
        return ig.attribute(xb, baselines=base, target=tb, n_steps=int(steps), internal_batch_size=256)

    attr = _run(model, x, target, device, batch_size, fn)
    if raw:
        return attr
    return normalise_maps(np.abs(attr).sum(axis=1))


def guided_gradcam(model: nn.Module, x, target=None, layer: Optional[nn.Module] = None,
                   device: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """Guided Grad-CAM: guided backpropagation ⊙ upsampled Grad-CAM (bilinear), |.| summed over channels,
    normalised per image: (n, H, W) in [0, 1]. Finer than Grad-CAM, still class-discriminative."""
    from captum.attr import GuidedGradCam

    ggc = GuidedGradCam(model, default_layer(model, layer))

    def fn(xb, tb):
        with warnings.catch_warnings():  # captum's notes on setting requires_grad and ReLU hooks: expected
            warnings.simplefilter("ignore", UserWarning)
            return ggc.attribute(xb, target=tb, interpolate_mode="bilinear")

    return normalise_maps(np.abs(_run(model, x, target, device, batch_size, fn)).sum(axis=1))


# --- overlays --------------------------------------------------------------------------------------

# matplotlib's "inferno" at 17 evenly spaced points (perceptually uniform), interpolated linearly
_INFERNO = np.array([[0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110],
                     [138, 34, 106], [163, 44, 97], [188, 55, 84], [210, 70, 68], [228, 90, 49], [241, 115, 29],
                     [249, 142, 9], [252, 172, 17], [249, 203, 53], [242, 234, 105], [252, 255, 164]],
                    dtype=np.float64) / 255.0
COLORMAPS = ("inferno", "jet")


def colormap(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """Map values in [0, 1] to RGB floats in [0, 1], shape (..., 3)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    if name == "inferno":
        pos = v * (len(_INFERNO) - 1)
        lo = np.floor(pos).astype(int).clip(0, len(_INFERNO) - 2)
        f = (pos - lo)[..., None]
        return _INFERNO[lo] * (1 - f) + _INFERNO[lo + 1] * f
    if name == "jet":
        r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
        return np.stack([r, g, b], axis=-1)
    raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}, got {name!r}")


def overlay(image, heat, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """Blend an image (H, W) or (C, H, W) in [0, 1] with a heat map (H, W) in [0, 1]: RGB uint8 (H, W, 3).

    out = (1 - alpha) * image (grey repeated to RGB) + alpha * colormap(heat).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be (H, W), (1, H, W) or (3, H, W), got {np.shape(image)}")
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    rgb = np.clip(rgb, 0.0, 1.0).transpose(1, 2, 0)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map shape {heat.shape} does not match the image's {rgb.shape[:2]}")
    out = (1 - alpha) * rgb + alpha * colormap(heat, cmap)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


# --- galleries -------------------------------------------------------------------------------------

ATTRIBUTION_METHODS = ("gradcam", "integrated_gradients", "guided_gradcam")


def attribute(model: nn.Module, method: str, x, target=None, bench=None) -> np.ndarray:
    """Heat maps (n, H, W) of `x` by one of ATTRIBUTION_METHODS (integrated gradients takes its baseline from `bench`)."""
    if method == "gradcam":
        return gradcam(model, x, target)
    if method == "integrated_gradients":
        return integrated_gradients(model, x, target, bench=bench)
    if method == "guided_gradcam":
        return guided_gradcam(model, x, target)
    raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}")


def _k(k: int) -> int:
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    return k


def most_id_like_ood(scores_ood, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k OOD samples the detector finds most familiar: lowest scores first, ties by index. (indices, scores)."""
    s = np.asarray(scores_ood, dtype=np.float64).reshape(-1)
    idx = np.argsort(s, kind="stable")[:_k(k)]
    return idx, s[idx]


def most_ood_like_id(scores_id, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k ID samples the detector finds most unfamiliar: highest scores first, ties by index. (indices, scores)."""
    s = np.asarray(scores_id, dtype=np.float64).reshape(-1)
    idx = np.argsort(-s, kind="stable")[:_k(k)]
    return idx, s[idx]


def confident_mistakes(logits, labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k misclassified samples with the highest max-softmax confidence, most confident first.

    Samples with label < 0 (OOD) are ignored. (indices, confidences); predicted class = logits[idx].argmax(1).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if len(z) != len(y):
        raise ValueError(f"{len(z)} logits rows for {len(y)} labels")
    if len(z) == 0:
        return np.zeros(0, int), np.zeros(0)
    conf = max_softmax(z)
    wrong = np.flatnonzero((y >= 0) & (z.argmax(axis=1) != y))
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:_k(k)]
    return order, conf[order]


# --- where does this sample fall? -----------------------------------------------------------------

def percentile_of(value: float, reference) -> float:
    """Percentile rank (0-100) of value in reference: % below, plus half of the % equal (ties split)."""
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    if len(r) == 0:
        raise ValueError("the reference distribution is empty")
    return float(100.0 * ((r < value).mean() + 0.5 * (r == value).mean()))


def place_sample(sample_scores: Mapping[str, float], id_scores: Mapping, ood_scores: Mapping) -> dict[str, dict]:
    """Per detector: the sample's percentile among ID test scores and among OOD scores, and whether it is
    flagged at the threshold that keeps 95% of ID (score > that threshold).

    ood_scores[detector] is an array or {OOD set: array} (pooled). Higher scores = more unfamiliar, so
    a high ID percentile means "less familiar than most ID samples".
    """
    from .metrics import threshold_at_tpr

    out = {}
    for det, v in sample_scores.items():
        if det not in id_scores or det not in ood_scores:
            raise ValueError(f"no ID or OOD reference scores for detector {det!r}")
        v = float(np.asarray(v).reshape(-1)[0])
        o = ood_scores[det]
        o = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in o.values()]) if isinstance(o, Mapping) else o
        thr = threshold_at_tpr(id_scores[det], 0.95)
        out[det] = {"score": v, "id_percentile": percentile_of(v, id_scores[det]),
                    "ood_percentile": percentile_of(v, o), "threshold_95tpr": thr, "flagged": bool(v > thr)}
    return out
