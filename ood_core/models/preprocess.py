"""Ruff et al.'s (ICML 2018) input preprocessing for one-class methods: global contrast normalisation (L1), then
min-max scaling with the extremes of the normal training data.

Deep SVDD applies it inside the model (its bounds are buffers, so a checkpoint restores them); the classic detectors
(OC-SVM and others in detectors/classic.py) apply it to their features when asked (`scaling="gcn_minmax"`). In both,
the bounds are fitted on the data the method trains on (the normal class; in anomaly detection, the contaminated
training split as given), never on test data.
"""
from __future__ import annotations

import torch
from torch import nn

GCN_EPS = 1e-12  # guards the division for a constant image (all its deviations are 0)


def global_contrast_normalise(x: torch.Tensor, eps: float = GCN_EPS) -> torch.Tensor:
    """Per sample, over all its features: GCN(x) = (x - mean(x)) / mean|x - mean(x)| (the L1 scale, as Ruff et al.).

    Invariant to a per-sample affine change x -> a x + b (a > 0), so the benchmark's per-channel normalisation of a
    one-channel image does not change it."""
    flat = x.reshape(len(x), -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    scale = centred.abs().mean(dim=1, keepdim=True).clamp_min(eps)
    return (centred / scale).reshape(x.shape)


class ContrastMinMax(nn.Module):
    """GCN, then min-max scaling: (GCN(x) - lo) / (hi - lo), lo and hi the minimum and maximum of GCN over the
    normal training data (one pair for all features, as Ruff et al.'s per-class constants). Unfitted: lo = 0, hi = 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(1.0))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, batch_size: int = 1024) -> "ContrastMinMax":
        """Set lo and hi from the training samples `x` (n, ...); refuses an empty or constant set."""
        if len(x) == 0:
            raise ValueError("min-max scaling needs at least one training sample")
        lo, hi = float("inf"), float("-inf")
        for i in range(0, len(x), batch_size):
            g = global_contrast_normalise(x[i:i + batch_size].double())
            lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        if not hi > lo:
            raise ValueError("min-max scaling needs training samples that are not all constant")
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (global_contrast_normalise(x) - self.lo) / (self.hi - self.lo)
