"""Activation shaping: rectify or prune the penultimate activations, then score with the energy."""
from __future__ import annotations

import numpy as np

from .base import Detector, Param, logsumexp, register


@register
class ReAct(Detector):
    name = "react"
    title = "ReAct (rectified activations)"
    family = "activation"
    formula = "S(x) = -log sum_c exp(W min(h(x), c) + b)_c,  c = p-th percentile of ID train activations"
    latex = (r"S(x) = -\log \sum_{k} \exp\big(W\,\bar h(x) + b\big)_k,\quad \bar h = \min(h, c),\ "
             r"c = \mathrm{perc}_p(h_{\mathrm{ID}})")
    intuition = ("OOD inputs trigger a few abnormally large penultimate activations that inflate the logits. "
                 "Clipping every unit at an ID percentile removes those spikes while barely touching ID inputs.")
    reference = "Sun, Guo & Li, ReAct: Out-of-distribution Detection With Rectified Activations, NeurIPS 2021"
    needs = ("features", "model")
    params = {"percentile": Param(90.0, 50.0, 99.9, "linear", sweep=(70.0, 80.0, 85.0, 90.0, 95.0, 99.0),
                                  help="p: clip threshold = p-th percentile of all ID train activations")}

    def _fit(self, ctx):
        # global over units and samples, as in the paper's code
        self.threshold_ = float(np.percentile(np.asarray(ctx.train.features, dtype=np.float64), self.percentile))
        self.weight_ = ctx.model.head_weight
        self.bias_ = ctx.model.head_bias

    def _score(self, out):
        h = np.minimum(np.asarray(out.features, dtype=np.float64), self.threshold_)
        return -logsumexp(h @ self.weight_.T + self.bias_)
