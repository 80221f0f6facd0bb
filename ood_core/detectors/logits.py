"""Output-based detectors: post-hoc functions of the logits."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from .base import Detector, FitContext, Param, logsumexp, register, softmax


@register
class MSP(Detector):
    name = "msp"
    title = "Maximum softmax probability (MSP)"
    family = "output"
    formula = "S(x) = -max_c softmax(f(x))_c"
    latex = r"S(x) = -\max_c \frac{e^{f_c(x)}}{\sum_j e^{f_j(x)}}"
    intuition = ("A classifier tends to be less confident on inputs unlike its training data. "
                 "The baseline every later method is compared with.")
    reference = "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and OOD Examples, ICLR 2017"
    needs = ("logits",)

    def _score(self, out):
        return -softmax(out.logits).max(axis=1)


@register
class MaxLogit(Detector):
    name = "max_logit"
    title = "Maximum logit (MLS)"
    family = "output"
    formula = "S(x) = -max_c f_c(x)"
    latex = r"S(x) = -\max_c f_c(x)"
    intuition = ("The softmax normalises away how strongly the network responds; the raw largest logit keeps it. "
                 "Strong in large-scale and open-set benchmarks (Vaze et al. 2022).")
    reference = "Hendrycks et al., Scaling OOD Detection to Real-World Settings, ICML 2022"
    needs = ("logits",)

    def _score(self, out):
        return -np.asarray(out.logits, dtype=np.float64).max(axis=1)


@register
class Energy(Detector):
    name = "energy"
    title = "Energy score"
    family = "output"
    formula = "S(x) = E(x) = -T log sum_c exp(f_c(x) / T)"
    latex = r"S(x) = E(x;T) = -T \log \sum_{c} e^{f_c(x)/T}"
    intuition = ("The free energy of the logits is a log-likelihood up to a constant, so it is aligned with "
                 "the density of the input; unlike MSP it is not squashed by the softmax.")
    reference = "Liu et al., Energy-based Out-of-distribution Detection, NeurIPS 2020"
    needs = ("logits",)
    params = {"temperature": Param(1.0, 0.1, 100.0, "log", sweep=(0.5, 1.0, 2.0, 5.0, 10.0, 100.0),
                                   help="T in the free energy; the paper uses T = 1")}

    def _score(self, out):
        t = self.temperature
        return -t * logsumexp(np.asarray(out.logits, dtype=np.float64) / t)


@register
class Entropy(Detector):
    name = "entropy"
    title = "Predictive entropy"
    family = "output"
    formula = "S(x) = -sum_c p_c log p_c,  p = softmax(f(x))"
    latex = r"S(x) = -\sum_c p_c(x) \log p_c(x)"
    intuition = ("Spread-out predictions mean the network does not know which class this is. "
                 "Uses the whole softmax, not only its maximum.")
    reference = "Shannon entropy of the predictive distribution; e.g. Lakshminarayanan et al., NeurIPS 2017"
    needs = ("logits",)

    def _score(self, out):
        z = np.asarray(out.logits, dtype=np.float64)
        logp = z - logsumexp(z)[:, None]
        return -(np.exp(logp) * logp).sum(axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on held-out ID data."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)

    def nll(log_t: float) -> float:
        zt = z / np.exp(log_t)
        return float((logsumexp(zt) - zt[np.arange(len(y)), y]).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


@register
class TemperatureScaledMSP(Detector):
    name = "temp_scaling"
    title = "Temperature-scaled MSP"
    family = "output"
    formula = "S(x) = -log max_c softmax(f(x) / T*)_c,  T* = argmin_T NLL on ID validation"
    latex = r"S(x) = -\log\max_c \operatorname{softmax}(f(x)/T^*)_c,\quad T^*=\arg\min_T \mathrm{NLL}_{\mathrm{val}}(T)"
    intuition = ("Calibrating the softmax with one temperature fitted on held-out ID data makes confidences honest, "
                 "which changes how MSP ranks borderline inputs.")
    reference = "Guo et al., On Calibration of Modern Neural Networks, ICML 2017"
    needs = ("logits",)

    def _fit(self, ctx: FitContext) -> None:
        data = ctx.val if ctx.val is not None and len(ctx.val) else ctx.train
        self.temperature_ = fit_temperature(data.logits, data.labels)

    def _score(self, out):
        # -log max softmax = log(1 + sum_{j != max} e^{(z_j - z_max)/T}): rank-equivalent to -MSP, but kept in
        # log space with log1p, because a small fitted T saturates the softmax at exactly 1.0 in float64
        z = np.asarray(out.logits, dtype=np.float64) / self.temperature_
        gaps = np.exp(z - z.max(axis=1, keepdims=True))
        gaps[np.arange(len(z)), z.argmax(axis=1)] = 0.0
        return np.log1p(gaps.sum(axis=1))
