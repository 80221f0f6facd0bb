"""Distance- and density-based detectors on penultimate features."""
from __future__ import annotations

import numpy as np

from .base import Detector, Param, logsumexp, register


def class_means_and_precision(feats: np.ndarray, labels: np.ndarray, num_classes: int, shrink: float = 1e-6):
    """Class means (K, D) and the precision of the shared (tied) covariance, a small ridge for stability."""
    x = np.asarray(feats, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(x)
    ridge = shrink * max(np.trace(cov) / len(cov), 1e-12)
    cov = cov + ridge * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    if not np.all(np.isfinite(precision)):
        raise np.linalg.LinAlgError("covariance of the ID features is singular")
    return means, precision


def mahalanobis_sq(x: np.ndarray, means: np.ndarray, precision: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Squared Mahalanobis distances (n, K) via h'Ph - 2h'Pm + m'Pm, chunked; never an n x n matrix."""
    mp = means @ precision  # (K, D)
    mpm = np.einsum("kd,kd->k", mp, means)
    out = np.empty((len(x), len(means)))
    for i in range(0, len(x), chunk):
        xb = np.asarray(x[i:i + chunk], dtype=np.float64)
        xpx = np.einsum("nd,de,ne->n", xb, precision, xb, optimize=True)
        out[i:i + chunk] = xpx[:, None] - 2.0 * xb @ mp.T + mpm[None, :]
    return np.maximum(out, 0.0)


@register
class Mahalanobis(Detector):
    name = "mahalanobis"
    title = "Mahalanobis distance"
    family = "distance"
    formula = "S(x) = min_c (h - mu_c)' Sigma^-1 (h - mu_c),  class means mu_c, shared covariance Sigma"
    latex = r"S(x) = \min_c\, (h(x)-\mu_c)^\top \Sigma^{-1} (h(x)-\mu_c)"
    intuition = ("Model each class's features as a Gaussian with a shared covariance; a sample far from every "
                 "class centre, in the metric of that covariance, is unfamiliar.")
    reference = "Lee et al., A Simple Unified Framework for Detecting OOD Samples and Adversarial Attacks, NeurIPS 2018"
    needs = ("features",)

    def _fit(self, ctx):
        self.means_, self.precision_ = class_means_and_precision(ctx.train.features, ctx.train.labels, ctx.num_classes)

    def _score(self, out):
        return mahalanobis_sq(out.features, self.means_, self.precision_).min(axis=1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kth_neighbour_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance from each query to its k-th nearest row of `bank`, streamed in query chunks.

    Uses |q|^2 + |b|^2 - 2 q.b with one (chunk x bank) block in memory at a time.
    """
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    k = int(min(k, len(bank)))
    bank_sq = (bank * bank).sum(axis=1)
    out = np.empty(len(queries), dtype=np.float64)
    for i in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32)
        d2 = (q * q).sum(axis=1)[:, None] + bank_sq[None, :] - 2.0 * (q @ bank.T)
        kth = np.partition(d2, k - 1, axis=1)[:, k - 1]
        out[i:i + chunk] = np.sqrt(np.maximum(kth, 0.0))
    return out


@register
class KNN(Detector):
    name = "knn"
    title = "Deep k-nearest neighbours (KNN)"
    family = "distance"
    formula = "S(x) = || z(x) - z_(k) ||_2,  z = h / ||h||, z_(k) its k-th nearest normalised ID train feature"
    latex = r"S(x) = \big\lVert z(x) - z_{(k)}(x) \big\rVert_2,\quad z = h/\lVert h\rVert_2"
    intuition = ("No assumption about the shape of the feature distribution: an input whose k-th nearest "
                 "training neighbour is far away lies in a region the network never saw.")
    reference = "Sun et al., Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"
    needs = ("features",)
    params = {"k": Param(50, 1, 500, "log", kind="int", sweep=(1, 5, 10, 20, 50, 100, 200),
                         help="which neighbour's distance is the score (paper: 50 on CIFAR-10)")}

    def _fit(self, ctx):
        self.bank_ = l2_normalise(ctx.train.features)

    def _score(self, out):
        return kth_neighbour_distance(l2_normalise(out.features), self.bank_, self.k)


@register
class ViM(Detector):
    name = "vim"
    title = "ViM (virtual-logit matching)"
    family = "distance"
    formula = "S(x) = alpha ||P_perp (h - u)|| - log sum_c exp f_c(x),  u = -W^+ b, P_perp onto the residual subspace"
    latex = (r"S(x) = \alpha\,\lVert (h(x)-u)^{P^\perp}\rVert - \log\sum_c e^{f_c(x)},\quad "
             r"\alpha = \frac{\sum_i \max_c f_c(x_i)}{\sum_i \lVert (h_i-u)^{P^\perp}\rVert}")
    intuition = ("Features of OOD inputs have a component outside the principal subspace of ID features; "
                 "ViM turns its norm into a virtual logit scaled to match the real ones.")
    reference = "Wang et al., ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"
    needs = ("features", "logits", "model")
    params = {"dim": Param(64, 1, 2048, "log", kind="int", sweep=(8, 16, 32, 64, 96),
                           help="dimension of the principal subspace (paper: D/2 for small feature spaces)")}

    def _fit(self, ctx):
        w, b = ctx.model.head_weight, ctx.model.head_bias
        h = np.asarray(ctx.train.features, dtype=np.float64)
        dim = int(min(self.dim, h.shape[1] - 1))
        self.u_ = -np.linalg.pinv(w) @ b
        c = h - self.u_
        cov = c.T @ c / len(c)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        self.ns_ = np.ascontiguousarray(eigvec[:, order[dim:]])  # residual directions
        vlogit = np.linalg.norm(c @ self.ns_, axis=1)
        self.alpha_ = float(np.asarray(ctx.train.logits, dtype=np.float64).max(axis=1).mean() / max(vlogit.mean(), 1e-12))

    def _score(self, out):
        vlogit = self.alpha_ * np.linalg.norm((np.asarray(out.features, dtype=np.float64) - self.u_) @ self.ns_, axis=1)
        return vlogit - logsumexp(out.logits)
