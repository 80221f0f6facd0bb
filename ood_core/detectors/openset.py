"""Open-set recognition detectors: recalibrate the classifier with an explicit unknown class."""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from .base import Detector, Param, Reference, logsumexp, register

# libMR's MR() default: the tail is shifted so its smallest value sits at this amount before the Weibull fit
LIBMR_TRANSLATE = 10000.0
EUCOS_EU_WEIGHT = 1.0 / 200.0  # the paper's code: euclidean / 200 + cosine


def fit_weibull_high(data: np.ndarray, tail_size: int,
                     translate: float = LIBMR_TRANSLATE) -> tuple[float, float, float]:
    """libMR's FitHigh: a 2-parameter Weibull, by maximum likelihood, on the `tail_size` largest values.

    As libMR, the tail is shifted to t = tail + translate - small_score first, small_score = the tail's smallest
    value; returns (shape k, log scale, small_score). The MLE shape solves the profile equation sum w_i u_i / sum w_i - 1/k - mean(u) = 0 with
    u_i = log(t_i / t_max), w_i = exp(k u_i) (scale-free, so the large shape that the shift causes never
    overflows); log scale = log t_max + log(mean w) / k. A tail of equal values gives a step at that value.
    """
    tail = np.sort(np.asarray(data, dtype=np.float64).reshape(-1))[-int(tail_size):]
    if len(tail) < 2:
        raise ValueError("a Weibull tail needs at least two values")
    small = float(tail[0])
    t = tail + translate - small
    if t[0] <= 0:
        raise ValueError("translate must be positive")
    u = np.log1p((tail - tail[-1]) / t[-1])  # log(t / t_max) <= 0, from exact differences of the raw tail
    mean_u = u.mean()

    def g(log_k: float) -> float:
        k = np.exp(log_k)
        w = np.exp(k * u)
        return float((w * u).sum() / w.sum() - 1.0 / k - mean_u)

    lo, hi = np.log(1e-6), np.log(1e15)
    log_k = brentq(g, lo, hi, xtol=1e-12) if g(hi) > 0 else hi  # g(hi) <= 0 only for a constant tail
    k = float(np.exp(log_k))
    log_scale = float(np.log(t[-1]) + np.log(np.exp(k * u).mean()) / k)
    return k, log_scale, small


def weibull_high_cdf(x: np.ndarray, shape: float, log_scale: float, small: float,
                     translate: float = LIBMR_TRANSLATE) -> np.ndarray:
    """libMR's W_score for a FitHigh model: the Weibull CDF at x + translate - small (0 where that is <= 0)."""
    t = np.asarray(x, dtype=np.float64) + translate - small
    with np.errstate(divide="ignore"):
        z = shape * (np.log(np.maximum(t, 0.0)) - log_scale)
    return np.where(t > 0, -np.expm1(-np.exp(np.minimum(z, 700.0))), 0.0)


def av_distance(v: np.ndarray, mavs: np.ndarray, kind: str) -> np.ndarray:
    """Distances (n, K) between activation vectors v (n, K) and the class MAVs (K, K): euclidean, cosine or eucos."""
    v = np.asarray(v, dtype=np.float64)
    eu = np.stack([np.linalg.norm(v - m, axis=1) for m in mavs], axis=1)  # direct differences: no cancellation
    if kind == "euclidean":
        return eu
    norms = np.maximum(np.linalg.norm(v, axis=1)[:, None] * np.linalg.norm(mavs, axis=1)[None, :], 1e-300)
    cos = 1.0 - (v @ mavs.T) / norms  # scipy.spatial.distance.cosine
    return cos if kind == "cosine" else eu * EUCOS_EU_WEIGHT + cos


@register
class OpenMax(Detector):
    """OpenMax: recalibrate the top logits with per-class Weibull models of the distance to the class's mean logits.

    Activation vectors are the logits (as in the paper). Per class c: the mean activation vector (MAV) of the ID train
    samples of class c that are classified correctly, and a Weibull fitted as libMR's FitHigh (MLE on the tail_size
    largest distances of those samples to their MAV, shifted by libMR's default 10000; no native libMR) whose CDF
    is the probability that a distance is an outlier's. For the alpha top-ranked classes of x (rank r = 1..alpha),
    w_c = 1 - ((alpha - r + 1) / alpha) * CDF_c(d(v, MAV_c)), w = 1 elsewhere; v^_c = v_c w_c, the unknown logit is
    v_0 = sum_c v_c (1 - w_c), and the score is the unknown class's probability in softmax(v^, v_0) over K + 1
    (the convention of OpenOOD's openmax postprocessor). Distances: the paper's eucos (euclidean / 200 + cosine),
    euclidean (OpenOOD) or cosine.
    """

    name = "openmax"
    title = "OpenMax"
    family = "open_set"
    formula = ("S(x) = softmax(v^_1..v^_K, v_0)_0,  v^_c = v_c w_c,  v_0 = sum_c v_c (1 - w_c),  "
               "w_c = 1 - (alpha - rank_c + 1)/alpha * WeibullCDF_c(d(v, MAV_c)) for the top-alpha classes")
    latex = (r"S(x) = \frac{e^{\hat v_0}}{e^{\hat v_0} + \sum_c e^{\hat v_c}},\quad \hat v_c = v_c\,w_c,\ "
             r"\hat v_0 = \sum_c v_c (1 - w_c),\ w_c = 1 - \tfrac{\alpha - r_c + 1}{\alpha}\,"
             r"F_c\big(d(v, \mu_c)\big)")
    intuition = ("Each class learns, with extreme value theory, how far its correctly classified training logits "
                 "fall from their mean. Logits far from every class's mean hand their mass to an explicit "
                 "'unknown' class, whose probability is the score.")
    reference = Reference("Abhijit Bendale, Terrance E. Boult", "Towards Open Set Deep Networks", "CVPR", 2016,
                          "https://arxiv.org/abs/1511.06233")
    needs = ("logits",)
    min_classes = 2
    params = {
        "tail_size": Param(20, 2, 1000, "log", kind="int", sweep=(5, 10, 20, 50, 100),
                           help="number of largest distances the Weibull is fitted to (paper and OpenOOD: 20)"),
        "alpha": Param(3, 1, 100, "linear", kind="int", sweep=(1, 2, 3, 5, 10),
                       help="number of top classes recalibrated, clipped to K (OpenOOD: 3; paper: 10 of 1000)"),
        "distance": Param("eucos", kind="choice", choices=("eucos", "euclidean", "cosine"),
                          help="distance to the MAV: eucos = euclidean/200 + cosine (paper), euclidean (OpenOOD)"),
    }

    def _fit(self, ctx):
        v = np.asarray(ctx.train.logits, dtype=np.float64)
        y = np.asarray(ctx.train.labels)
        k = v.shape[1]
        correct = v.argmax(axis=1) == y
        mavs, weibulls = [], []
        for c in range(k):
            av = v[correct & (y == c)]
            if len(av) < 2:
                raise ValueError(f"OpenMax needs at least two correctly classified ID train samples of class {c}, "
                                 f"found {len(av)}")
            mav = av.mean(axis=0)
            mavs.append(mav)
            weibulls.append(fit_weibull_high(av_distance(av, mav[None], self.distance)[:, 0], self.tail_size))
        self.mavs_ = np.stack(mavs)
        self.weibull_ = np.array(weibulls)  # (K, 3): shape, log scale, small score

    def _score(self, out):
        v = np.asarray(out.logits, dtype=np.float64)
        n, k = v.shape
        cdf = weibull_high_cdf(av_distance(v, self.mavs_, self.distance), *self.weibull_.T)
        alpha = min(int(self.alpha), k)
        ranked = np.argsort(-v, axis=1, kind="stable")[:, :alpha]
        omega = np.zeros_like(v)
        np.put_along_axis(omega, ranked, np.broadcast_to((alpha - np.arange(alpha)) / alpha, (n, alpha)), axis=1)
        w = 1.0 - omega * cdf
        z = np.concatenate([v * w, (v * (1.0 - w)).sum(axis=1, keepdims=True)], axis=1)
        return np.exp(z[:, -1] - logsumexp(z))
