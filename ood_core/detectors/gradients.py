"""Detectors that run the network again for an input gradient (batched)."""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, Param, register


@register
class ODIN(Detector):
    name = "odin"
    title = "ODIN"
    family = "gradient"
    formula = "S(x) = -max_c softmax(f(x~) / T)_c,  x~ = x - eps * sign(-grad_x log max_c softmax(f(x)/T)_c)"
    latex = (r"S(x) = -\max_c \operatorname{softmax}\!\big(f(\tilde x)/T\big)_c,\quad "
             r"\tilde x = x - \varepsilon\,\operatorname{sign}\!\big(-\nabla_x \log \max_c "
             r"\operatorname{softmax}(f(x)/T)_c\big)")
    intuition = ("A large temperature separates the softmax scores, and a small input step that raises the "
                 "confidence helps ID inputs more than OOD ones.")
    reference = "Liang et al., Enhancing the Reliability of OOD Image Detection in Neural Networks, ICLR 2018"
    needs = ("logits", "model")
    runs_network = True
    params = {
        "temperature": Param(1000.0, 1.0, 10000.0, "log", sweep=(1.0, 10.0, 100.0, 1000.0, 5000.0),
                             help="softmax temperature T (paper: 1000)"),
        "epsilon": Param(0.0014, 0.0, 0.1, "linear", sweep=(0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01),
                         help="step size in pixel units [0, 1] (paper: 0.0014)"),
    }

    def _fit(self, ctx):
        self.model_ = ctx.model

    def _score(self, out):
        if out.inputs is None:
            raise ValueError("ODIN needs the input images of this split; they were not kept")
        adapter = self.model_
        std = float(getattr(adapter, "input_std", 1.0))
        scores = []
        for xb in adapter.batches(out.inputs):
            xb = xb.clone().requires_grad_(True)
            logits = adapter.logits_tensor(xb) / self.temperature
            # the loss is the NLL of the predicted class; its gradient sign is -grad log max softmax
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            # epsilon is in pixel units; inputs are normalised, so one pixel unit is 1/std
            x_tilde = xb.detach() - (self.epsilon / std) * grad.sign()
            with torch.no_grad():
                p = torch.softmax(adapter.logits_tensor(x_tilde).double() / self.temperature, dim=1)
            scores.append(-p.max(1).values.cpu().numpy())
        return np.concatenate(scores)
