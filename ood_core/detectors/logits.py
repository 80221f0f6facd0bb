"""Output-based detectors: post-hoc functions of the logits."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from ..linalg import one_blas_thread
from .base import (Detector, FitContext, Param, Reference, _short_rows, logsumexp, max_softmax, register, row_reduce,
                   softmax, softmax_columns)


@register
class MSP(Detector):
    name = "msp"
    title = "Maximum softmax probability (MSP)"
    family = "output"
    formula = "S(x) = -max_c softmax(f(x))_c"
    latex = r"S(x) = -\max_c \frac{e^{f_c(x)}}{\sum_j e^{f_j(x)}}"
    intuition = ("A classifier tends to be less confident on inputs unlike its training data. "
                 "The baseline every later method is compared with.")
    reference = Reference("Dan Hendrycks, Kevin Gimpel",
                          "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks",
                          "ICLR", 2017, "https://arxiv.org/abs/1610.02136")
    needs = ("logits",)

    def _score(self, out):
        return -max_softmax(out.logits)


@register
class MaxLogit(Detector):
    name = "max_logit"
    title = "Maximum logit (MLS)"
    family = "output"
    formula = "S(x) = -max_c f_c(x)"
    latex = r"S(x) = -\max_c f_c(x)"
    intuition = ("The softmax normalises away how strongly the network responds; the raw largest logit keeps it. "
                 "Strong in large-scale and open-set benchmarks (Vaze et al. 2022).")
    reference = Reference("Dan Hendrycks, Steven Basart, Mantas Mazeika, Andy Zou, Joseph Kwon, Mohammadreza "
                          "Mostajabi, Jacob Steinhardt, Dawn Song",
                          "Scaling Out-of-Distribution Detection for Real-World Settings", "ICML", 2022,
                          "https://arxiv.org/abs/1911.11132")
    needs = ("logits",)

    def _score(self, out):
        z = np.asarray(out.logits)
        # the maximum in the logits' own dtype (exact), negated and widened to float64 in one pass
        return np.negative(row_reduce(np.maximum, z if z.dtype.kind == "f" else z.astype(np.float64)), dtype=np.float64)


@register
class Energy(Detector):
    name = "energy"
    title = "Energy score"
    family = "output"
    formula = "S(x) = E(x) = -T log sum_c exp(f_c(x) / T)"
    latex = r"S(x) = E(x;T) = -T \log \sum_{c} e^{f_c(x)/T}"
    intuition = ("The free energy of the logits is a log-likelihood up to a constant, so it is aligned with "
                 "the density of the input; unlike MSP it is not squashed by the softmax.")
    reference = Reference("Weitang Liu, Xiaoyun Wang, John D. Owens, Yixuan Li",
                          "Energy-based Out-of-distribution Detection", "NeurIPS", 2020,
                          "https://arxiv.org/abs/2010.03759")
    needs = ("logits",)
    params = {"temperature": Param(1.0, 0.1, 100.0, "log", sweep=(0.5, 1.0, 2.0, 5.0, 10.0, 100.0),
                                   help="T in the free energy; the paper uses T = 1")}

    def _score(self, out):
        t = self.temperature
        if t == 1.0:
            return -logsumexp(out.logits)
        return -t * logsumexp(np.asarray(out.logits, dtype=np.float64) / t)


@register
class Entropy(Detector):
    """The Shannon entropy of the softmax; cited for its use as an uncertainty score on unfamiliar inputs."""

    name = "entropy"
    title = "Predictive entropy"
    family = "output"
    formula = "S(x) = -sum_c p_c log p_c,  p = softmax(f(x))"
    latex = r"S(x) = -\sum_c p_c(x) \log p_c(x)"
    intuition = ("Spread-out predictions mean the network does not know which class this is. "
                 "Uses the whole softmax, not only its maximum.")
    reference = Reference("Balaji Lakshminarayanan, Alexander Pritzel, Charles Blundell",
                          "Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles", "NeurIPS", 2017,
                          "https://arxiv.org/abs/1612.01474")
    needs = ("logits",)

    def _score(self, out):
        z = np.asarray(out.logits, dtype=np.float64)
        logp = z - logsumexp(z)[:, None]
        return -row_reduce(np.add, np.exp(logp) * logp)


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
    reference = Reference("Chuan Guo, Geoff Pleiss, Yu Sun, Kilian Q. Weinberger",
                          "On Calibration of Modern Neural Networks", "ICML", 2017, "https://arxiv.org/abs/1706.04599")
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


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z - logsumexp(z)[:, None]


@register
class KLMatching(Detector):
    """KL matching: the softmax of x against each class's mean softmax on ID validation data (Hendrycks et al. 2022).

    Template d_k = mean softmax over the ID validation samples (train if there is no validation split) that the
    model *predicts* as k, as in the paper and OpenOOD's klm postprocessor; a class that no sample is predicted as
    has no template (OpenOOD's one-hot fallback gives it an infinite KL, so it never wins the minimum either).
    KL(p || d_k) = sum_j p_j (log p_j - log d_kj); log d_k is recomputed in log space where a mean comes near the
    float64 underflow, so it is always finite and exact.
    """

    name = "klm"
    title = "KL matching (KLM)"
    family = "output"
    formula = "S(x) = min_k KL(p(x) || d_k),  d_k = mean softmax of the ID validation samples predicted as k"
    latex = (r"S(x) = \min_k D_{\mathrm{KL}}\big(p(x)\,\Vert\,d_k\big),\quad "
             r"d_k = \frac{1}{|V_k|}\sum_{x' \in V_k} p(x'),\ V_k = \{x' : \hat y(x') = k\}")
    intuition = ("Each class has a typical shape of its whole softmax, including how the leftover probability "
                 "spreads over the other classes. An input whose softmax matches none of these templates is "
                 "unfamiliar.")
    reference = Reference("Dan Hendrycks, Steven Basart, Mantas Mazeika, Andy Zou, Joseph Kwon, Mohammadreza "
                          "Mostajabi, Jacob Steinhardt, Dawn Song",
                          "Scaling Out-of-Distribution Detection for Real-World Settings", "ICML", 2022,
                          "https://arxiv.org/abs/1911.11132")
    needs = ("logits",)
    min_classes = 2

    def _fit(self, ctx: FitContext) -> None:
        data = ctx.val if ctx.val is not None and len(ctx.val) else ctx.train
        z = np.asarray(data.logits)
        pred = z.argmax(axis=1)  # the argmax of the softmax
        k = z.shape[1]
        counts = np.bincount(pred, minlength=k)
        classes = np.flatnonzero(counts)
        counts = counts[classes]
        # d_k = the mean softmax of the samples predicted as k: the float64 softmax computed on the transposed
        # (K, n) logits (contiguous passes over n values, as logsumexp's short rows), then each column's sums per
        # predicted class by bincount (no sorting or gathering of the samples)
        e = np.array(z.T, dtype=np.float64, order="C")
        e -= e.max(axis=0)
        np.exp(e, out=e)
        e /= e.sum(axis=0)
        sums = np.stack([np.bincount(pred, weights=e[j], minlength=k) for j in range(k)], axis=1)[classes]
        with np.errstate(divide="ignore"):
            log_templates = np.log(sums) - np.log(counts)[:, None]
        # a sum near the float64 underflow has lost digits (or is 0): such templates are recomputed in log space
        # (logsumexp over the class's samples minus log n_k), so log d_k stays finite and exact however small
        for t in np.flatnonzero((sums < 1e-280).any(axis=1)):
            logp = log_softmax(z[pred == classes[t]])
            m = logp.max(axis=0)
            log_templates[t] = m + np.log(np.exp(logp - m).sum(axis=0)) - np.log(counts[t])
        self.log_templates_ = log_templates
        self.template_classes_ = classes

    def _score(self, out):
        logp = log_softmax(out.logits)
        p = np.exp(logp)
        with one_blas_thread():  # an n x K x K product: BLAS threads cost more than it (and stall on a busy machine)
            cross = p @ self.log_templates_.T
        kl = row_reduce(np.add, p * logp)[:, None] - cross  # (n, templates)
        return row_reduce(np.minimum, kl)


@register
class GeneralizedEntropy(Detector):
    """GEN: the generalized entropy of the top-M softmax probabilities (Liu, Lochman & Zach 2023).

    G_gamma(p) = sum_{j in top M} p_j^gamma (1 - p_j)^gamma; OpenOOD's gen postprocessor returns -G as its ID
    confidence, so the unfamiliarity score is +G. M is clipped to the number of classes K (M = 100 uses all 10
    digit classes). 1 - p_max is computed as the sum of the other probabilities, so it does not round to 0.
    """

    name = "gen"
    title = "Generalized entropy (GEN)"
    family = "output"
    formula = "S(x) = sum_{j in top-M} p_j^gamma (1 - p_j)^gamma,  p = softmax(f(x))"
    latex = r"S(x) = G_\gamma(p) = \sum_{j=1}^{M} p_{(j)}^{\gamma}\,\big(1 - p_{(j)}\big)^{\gamma}"
    intuition = ("Like the entropy, it is large when the probability is spread out, but a small exponent gamma "
                 "makes it far more sensitive to small probabilities on the runner-up classes.")
    reference = Reference("Xixi Liu, Yaroslava Lochman, Christopher Zach",
                          "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection", "CVPR", 2023,
                          "https://openaccess.thecvf.com/content/CVPR2023/html/Liu_GEN_Pushing_the_Limits_of_"
                          "Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html")
    needs = ("logits",)
    min_classes = 2
    params = {
        "gamma": Param(0.1, 0.001, 1.0, "log", sweep=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0),
                       help="exponent gamma (paper: 0.1)"),
        "M": Param(100, 1, 1000, "log", kind="int", sweep=(1, 2, 3, 5, 10, 100),
                   help="number of largest probabilities summed, clipped to K (paper: 100 on ImageNet, K on CIFAR)"),
    }

    def _score(self, out):
        if int(self.M) >= np.shape(out.logits)[1] and _short_rows(np.asarray(out.logits)):
            return self._score_all_classes(out.logits)
        p = softmax(out.logits)
        rows = np.arange(len(p))
        top = p.argmax(axis=1)
        q = 1.0 - p
        others = p.copy()
        others[rows, top] = 0.0
        q[rows, top] = others.sum(axis=1)  # 1 - p_max without cancellation
        if int(self.M) >= p.shape[1]:  # every class is in the top M: no sorting
            return row_reduce(np.add, (p * q) ** self.gamma)
        order = np.argsort(-p, axis=1, kind="stable")[:, :int(self.M)]
        ps, qs = np.take_along_axis(p, order, 1), np.take_along_axis(q, order, 1)
        return (ps ** self.gamma * qs ** self.gamma).sum(axis=1)

    def _score_all_classes(self, logits) -> np.ndarray:
        """The sum over every class (M >= K) for short rows, on the transposed (K, n) softmax: contiguous passes
        over n values; x^gamma as exp(gamma log x) (vectorised, unlike float64 pow: equal to rounding)."""
        p = softmax_columns(logits)
        cols = np.arange(p.shape[1])
        top = p.argmax(axis=0)
        others = p.copy()
        others[top, cols] = 0.0
        q = np.subtract(1.0, p)
        q[top, cols] = others.sum(axis=0)  # 1 - p_max without cancellation
        q *= p
        with np.errstate(divide="ignore"):  # p q = 0 gives log 0 = -inf and exp(-inf) = 0 = 0^gamma
            np.log(q, out=q)
        q *= self.gamma
        np.exp(q, out=q)
        return q.sum(axis=0)


@register
class CosineSimilarity(Detector):
    """Maximum cosine similarity between the penultimate feature h and the class weight vectors W_k of the head.

    Techapanurak et al. train with a cosine head; here it is used post hoc on the trained linear head's W.
    A zero feature vector has similarity 0 with every class.
    """

    name = "cosine"
    title = "Maximum cosine similarity"
    family = "output"
    formula = "S(x) = -max_k cos(h(x), w_k) = -max_k w_k.h / (||w_k|| ||h||)"
    latex = r"S(x) = -\max_k \frac{w_k^\top h(x)}{\lVert w_k\rVert\,\lVert h(x)\rVert}"
    intuition = ("The direction of the feature vector says which class it resembles, its length mostly says how "
                 "strongly the network responds. An input pointing away from every class direction is unfamiliar.")
    reference = Reference("Engkarat Techapanurak, Masanori Suganuma, Takayuki Okatani",
                          "Hyperparameter-Free Out-of-Distribution Detection Using Cosine Similarity", "ACCV", 2020,
                          "https://openaccess.thecvf.com/content/ACCV2020/html/Techapanurak_Hyperparameter-Free_"
                          "Out-of-Distribution_Detection_Using_Cosine_Similarity_ACCV_2020_paper.html")
    needs = ("features", "model")

    def _fit(self, ctx):
        w = ctx.model.head_weight
        self.directions_ = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

    def _score(self, out):
        h = np.asarray(out.features, dtype=np.float64)
        h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        return -(h @ self.directions_.T).max(axis=1)
