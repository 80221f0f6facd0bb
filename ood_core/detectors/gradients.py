"""Detectors that run the network again for an input gradient (batched)."""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, Param, Reference, register, softmax
from .features import class_means_and_precision


def pixel_step(adapter, eps: float):
    """eps pixel units in the adapter's normalised input units (1 / std per channel; 1 when it has no std)."""
    if hasattr(adapter, "pixel_step"):
        return adapter.pixel_step(eps)
    return eps / float(getattr(adapter, "input_std", 1.0))


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
    reference = Reference("Shiyu Liang, Yixuan Li, R. Srikant",
                          "Enhancing The Reliability of Out-of-distribution Image Detection in Neural Networks", "ICLR",
                          2018, "https://arxiv.org/abs/1706.02690")
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
        step = pixel_step(adapter, self.epsilon)
        scores = []
        for xb in adapter.batches(out.inputs):
            xb = xb.clone().requires_grad_(True)
            logits = adapter.logits_tensor(xb) / self.temperature
            # the loss is the NLL of the predicted class; its gradient sign is -grad log max softmax
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            # epsilon is in pixel units; inputs are normalised, so one pixel unit is 1/std
            x_tilde = xb.detach() - step * grad.sign()
            with torch.no_grad():
                p = torch.softmax(adapter.logits_tensor(x_tilde).double() / self.temperature, dim=1)
            scores.append(-p.max(1).values.cpu().numpy())
        return np.concatenate(scores)


@register
class GradNorm(Detector):
    """GradNorm: the L1 norm of the gradient of KL(uniform || softmax(f/T)) w.r.t. the head's weight W.

    Closed form, no backward pass: with u = 1/K and p = softmax((W h + b) / T), dKL/dz = (1/T)(p - u), so
    dKL/dW = (1/T)(p - u) h^T, a rank-one matrix whose entrywise L1 norm is (1/T) ||p - u||_1 ||h||_1.
    Only the weight, not the bias, as in the paper's code. The paper's code writes the loss with all-ones
    targets, -sum_c log p_c, which is K times the KL's gradient: a constant factor that does not change the
    ranking; here the paper's KL definition is kept. ID inputs have larger norms, so the score is its negative.
    """

    name = "gradnorm"
    title = "GradNorm"
    family = "gradient"
    formula = "S(x) = -|| dKL(u || softmax(f(x)/T)) / dW ||_1 = -(1/T) ||softmax(f(x)/T) - u||_1 ||h(x)||_1"
    latex = (r"S(x) = -\Big\lVert \frac{\partial D_{\mathrm{KL}}\big(u \,\Vert\, \operatorname{softmax}(f(x)/T)\big)}"
             r"{\partial W} \Big\rVert_1 = -\frac{1}{T}\,\lVert p - u\rVert_1\,\lVert h(x)\rVert_1")
    intuition = ("How hard would the network have to change its last layer to make its prediction uniform? "
                 "For familiar inputs, which it predicts confidently from strong features, that gradient is large.")
    reference = Reference("Rui Huang, Andrew Geng, Yixuan Li",
                          "On the Importance of Gradients for Detecting Distributional Shifts in the Wild", "NeurIPS",
                          2021, "https://arxiv.org/abs/2110.00218")
    # logits = W h + b (the adapter's contract), so the gradient needs only the cached logits and features
    needs = ("features", "logits")
    min_classes = 2
    params = {"temperature": Param(1.0, 0.1, 100.0, "log", sweep=(0.5, 1.0, 2.0, 5.0, 10.0, 100.0),
                                   help="softmax temperature T (paper: 1)")}

    def _score(self, out):
        t = self.temperature
        p = softmax(np.asarray(out.logits, dtype=np.float64) / t)
        h1 = np.abs(np.asarray(out.features, dtype=np.float64)).sum(axis=1)
        return -(np.abs(p - 1.0 / p.shape[1]).sum(axis=1) * h1) / t


@register
class MahalanobisPreprocessed(Detector):
    """Mahalanobis distance after the input pre-processing step of Lee et al. (single layer, no feature ensemble).

    M_c(h) = (h - mu_c)' Sigma^-1 (h - mu_c) on the penultimate features, class means and tied covariance from ID
    train (as the `mahalanobis` detector). The input moves one step against the gradient of the closest class's
    distance, x~ = x - eps * sign(grad_x M_c*(h(x))), c* = argmin_c M_c(h(x)); this lowers the distance of ID inputs
    more than of OOD ones. The paper's confidence max_c -M_c/2 is negated (factor 1/2 dropped: same ranking).
    Epsilon is in pixel units, divided by the input normalisation std like ODIN's.
    """

    name = "mahalanobis_pre"
    title = "Mahalanobis + input pre-processing"
    family = "gradient"
    formula = ("S(x) = min_c M_c(h(x~)),  x~ = x - eps * sign(grad_x M_c*(h(x))),  "
               "M_c(h) = (h - mu_c)' Sigma^-1 (h - mu_c),  c* = argmin_c M_c(h(x))")
    latex = (r"S(x) = \min_c M_c\big(h(\tilde x)\big),\quad \tilde x = x - \varepsilon\,"
             r"\operatorname{sign}\big(\nabla_x M_{\hat c}(h(x))\big),\quad "
             r"M_c(h) = (h-\mu_c)^\top \Sigma^{-1}(h-\mu_c)")
    intuition = ("First nudge the input a tiny step towards its closest class centre, then measure the Mahalanobis "
                 "distance. Familiar inputs move much closer than unfamiliar ones, so the gap between them widens.")
    reference = Reference("Kimin Lee, Kibok Lee, Honglak Lee, Jinwoo Shin",
                          "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial "
                          "Attacks", "NeurIPS", 2018, "https://arxiv.org/abs/1807.03888")
    needs = ("features", "model")
    runs_network = True
    params = {"epsilon": Param(0.0014, 0.0, 0.1, "linear", sweep=(0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01),
                               help="step size in pixel units [0, 1] (paper: tuned in this list; 0 = no step)")}

    def _fit(self, ctx):
        self.means_, self.precision_ = class_means_and_precision(ctx.train.features, ctx.train.labels)
        self.model_ = ctx.model

    def _score(self, out):
        if out.inputs is None:
            raise ValueError("mahalanobis_pre needs the input images of this split; they were not kept")
        adapter = self.model_
        step = pixel_step(adapter, self.epsilon)
        prec = torch.as_tensor(self.precision_, dtype=torch.float64, device=adapter.device)
        mp = torch.as_tensor(self.means_ @ self.precision_, dtype=torch.float64, device=adapter.device)
        mpm = (mp * torch.as_tensor(self.means_, dtype=torch.float64, device=adapter.device)).sum(1)

        def dist(h):  # squared Mahalanobis distances (n, K) as h'Ph - 2 h'P mu_c + mu_c'P mu_c, row by row
            h = h.double()
            return ((h @ prec) * h).sum(1, keepdim=True) - 2.0 * h @ mp.T + mpm[None, :]

        scores = []
        for xb in adapter.batches(out.inputs):
            xb = xb.clone().requires_grad_(True)
            m = dist(adapter.model.features(xb))
            # sum over the batch: each sample's distance depends on its own input only, so the gradient sign
            # per sample is that of its own closest-class distance (the paper uses the mean: same sign)
            loss = m.gather(1, m.argmin(1, keepdim=True).detach()).sum()
            (grad,) = torch.autograd.grad(loss, xb)
            x_tilde = xb.detach() - step * grad.sign()
            with torch.no_grad():
                scores.append(dist(adapter.model.features(x_tilde)).min(1).values.clamp_min(0.0).cpu().numpy())
        return np.concatenate(scores)
