"""Density-based detectors: likelihood of features (or feature-map statistics) under a model of the ID data."""
from __future__ import annotations

import numpy as np

from .. import linalg
from .base import Detector, Param, Reference, logsumexp, register, softmax

# Scoring a full Gaussian per class costs one float64 triangular product per class and query: K n D^2 flops. From
# SCREEN_DIM dimensions on, every class is first scored in float32 (a product at twice the float64 rate), and only the
# classes that can still matter are scored again in float64: those within SCREEN_MARGIN nats of the best by their
# float32 log-likelihoods widened by an error bound. A class further below adds less than e^-40 (4e-18) of the best
# class's term to the mixture, so the scores are today's float64 ones (the others count as -inf).
SCREEN_DIM = 256
SCREEN_MARGIN = 40.0
# the error bound: SCREEN_SAFETY times the largest relative error of the float32 squared distances measured at fit
# time on ID train features (at least SCREEN_MIN_REL), plus SCREEN_ABS nats; a class whose measured error exceeds
# SCREEN_MAX_REL (an ill-conditioned covariance) is never screened
SCREEN_SAFETY, SCREEN_MIN_REL, SCREEN_MAX_REL, SCREEN_ABS = 100.0, 1e-4, 1e-5, 1e-3
SCREEN_PROBES = 512


def screen_rows(z: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """float32 (z - origin), the subtraction in float64 and rounded once: the input of the float32 class screen."""
    return np.subtract(z, origin, dtype=np.float64).astype(np.float32)


class OneGaussian:
    """A one-component Gaussian "mixture" in closed form: the maximum-likelihood mean and covariance plus
    reg on the diagonal, which is exactly where scikit-learn's GaussianMixture(n_components=1) ends (its EM
    step with every responsibility 1 is this estimate), without its k-means start and EM iterations.

    `covariance`: "full" or "tied" (the same for one component), or "diag". Scores like GaussianMixture's
    score_samples: log N(z; mean, Sigma), the full case by a product with the inverse Cholesky factor per chunk of
    rows (linalg.whiten).
    """

    def __init__(self, z: np.ndarray, covariance: str, reg: float, probes: np.ndarray | None = None,
                 screen_origin: np.ndarray | None = None):
        _, means, _ = linalg.class_means(z, np.zeros(len(z), dtype=np.int64))
        self.means_ = means  # (1, D), as GaussianMixture.means_
        self.diag = covariance == "diag"
        dim = z.shape[1]
        if self.diag:
            self.var_ = linalg.column_sq_deviations(z, means[0]) / len(z) + reg
            if not np.all(self.var_ > 0):
                raise ValueError("a class's ID features have zero variance in some dimension; raise reg_covar")
            log_det = float(np.log(self.var_).sum())
        else:
            cov = linalg.scatter(z, means[0]) / len(z)
            cov.flat[::dim + 1] += reg
            self.gaussian_ = linalg.Whitened(means, cov, origin=means[0], what="covariance of a class's ID features")
            log_det = self.gaussian_.log_det()
        self.constant_ = -0.5 * (dim * np.log(2.0 * np.pi) + log_det)
        self.screen_rel_ = None  # the relative error bound of screen_sq_distances, None: no float32 screening
        if not self.diag and probes is not None and dim >= SCREEN_DIM:
            origin = means[0] if screen_origin is None else np.asarray(screen_origin, dtype=np.float64)
            self.inverse32_ = np.asfortranarray(self.gaussian_.inverse.astype(np.float32))
            # the mean in whitened coordinates about the shared origin: L^-1 (mu - origin), in float64, rounded once
            self.shift32_ = linalg.whiten(self.gaussian_.inverse, means, origin)[0].astype(np.float32)
            exact = self.gaussian_.chunk_sq_distances(probes)[:, 0]
            err = float(np.max(np.abs(self.screen_sq_distances(screen_rows(probes, origin)) - exact)
                               / np.maximum(exact, 1e-300)))
            if err <= SCREEN_MAX_REL:
                self.screen_rel_ = max(SCREEN_MIN_REL, SCREEN_SAFETY * err)

    def screen_sq_distances(self, rows32: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distances to the mean in float32 (float64 sums): for screening classes only.

        `rows32` are screen_rows(z, origin), the rows centred on the origin shared by all classes in float64 and
        rounded once, so that one chunk's centring serves every class: L^-1 (z - mu) = L^-1 (z - origin) - shift.
        The float32 errors are that rounding, the rounding of L^-1 and of the shift, and the triangular product's;
        they are measured at fit on this very function."""
        w = linalg.triangular_product(self.inverse32_, rows32.copy())
        w -= self.shift32_
        return np.einsum("nd,nd->n", w, w, dtype=np.float64)

    def score_samples(self, z: np.ndarray) -> np.ndarray:
        """log N(z; mean, Sigma) per row."""
        if self.diag:
            sq = np.einsum("nd,d->n", (np.asarray(z, dtype=np.float64) - self.means_[0]) ** 2, 1.0 / self.var_)
        else:
            sq = self.gaussian_.chunk_sq_distances(z)[:, 0]  # called on one chunk (class_log_likelihoods)
        return self.constant_ - 0.5 * sq


@register
class ClassGMM(Detector):
    name = "gmm"
    title = "Class-conditional Gaussian mixture"
    family = "density"
    formula = ("S(x) = -log sum_c pi_c p(h | c),  p(h | c) a Gaussian mixture fitted to class c's ID train "
               "features (after PCA to `dim`)")
    latex = (r"S(x) = -\log \sum_c \pi_c\, p(h(x)\mid c),\quad "
             r"p(h\mid c) = \sum_m \omega_{cm}\,\mathcal N(h;\mu_{cm},\Sigma_{cm})")
    intuition = ("Fit a small mixture of Gaussians to each class's training features. A feature with a low "
                 "density under all classes together is unlike the training data.")
    reference = (
        Reference("Kimin Lee, Kibok Lee, Honglak Lee, Jinwoo Shin",
                  "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
                  "NeurIPS", 2018, "https://arxiv.org/abs/1807.03888"),
        Reference("Jingkang Yang, Pengyun Wang, Dejian Zou, Zitang Zhou, Kunyuan Ding, Wenxuan Peng, Haoqi Wang, "
                  "Guangyao Chen, Bo Li, Yiyou Sun, Xuefeng Du, Kaiyang Zhou, Wayne Zhang, Dan Hendrycks, Yixuan Li, "
                  "Ziwei Liu", "OpenOOD: Benchmarking Generalized Out-of-Distribution Detection",
                  "NeurIPS Datasets and Benchmarks", 2022, "https://arxiv.org/abs/2210.07242"),
    )
    needs = ("features",)
    params = {
        "n_components": Param(1, 1, 5, "linear", kind="int", sweep=(1, 2, 3, 4, 5),
                              help="Gaussians per class"),
        "covariance": Param("full", kind="choice", choices=("full", "diag", "tied"), sweep=("full", "diag", "tied"),
                            help="covariance type of each class's mixture (scikit-learn GaussianMixture)"),
        "reg_covar": Param(1e-3, 1e-8, 10.0, "log", sweep=(1e-6, 1e-4, 1e-3, 1e-2, 1e-1),
                           help="added to the covariance diagonal, in units of the mean feature variance"),
        "dim": Param(32, 1, 4096, "log", kind="int", sweep=(8, 16, 32, 64, 128),
                     help="PCA dimension fitted on all ID train features (capped at the feature size): a full "
                          "covariance in 128-d is singular with ~100 samples per class"),
        "combine": Param("mixture", kind="choice", choices=("mixture", "max"), sweep=("mixture", "max"),
                         help="mixture: -log sum_c pi_c p(h|c), the ID density; max: -max_c log p(h|c)"),
    }

    def _fit(self, ctx):
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        h = ctx.train.features
        y = np.asarray(ctx.train.labels)
        dim = int(min(self.dim, h.shape[1], len(h) - 1))
        self.pca_ = (PCA(n_components=dim, random_state=ctx.seed).fit(np.asarray(h, dtype=np.float64))
                     if dim < h.shape[1] else None)
        z = self._reduce(h) if self.pca_ is not None else h  # without PCA: the float32 features, read by chunks
        # reg_covar is relative so that one value works whatever the scale of the features
        _, mean, _ = linalg.class_means(z, np.zeros(len(z), dtype=np.int64))
        scale = float(max((linalg.column_sq_deviations(z, mean[0]) / len(z)).mean(), 1e-12))
        self.classes_ = np.unique(y)
        self.log_prior_ = np.log(np.array([(y == c).mean() for c in self.classes_]))
        self.gmms_ = []
        # rows spread over all ID train features (every class, so near and far points), on which each class's float32
        # screening error is measured
        probes = z[np.linspace(0, len(z) - 1, min(SCREEN_PROBES, len(z))).astype(np.int64)]
        self.origin_ = mean[0]  # the screen centres every chunk once, on the mean of all ID train features

        def fit_class(sl):
            zc = z[y == self.classes_[sl.start]]
            m = int(min(self.n_components, len(zc)))
            if m == 1:  # closed form, equal to what GaussianMixture(1) converges to
                return OneGaussian(zc, self.covariance, self.reg_covar * scale, probes, self.origin_)
            gmm = GaussianMixture(n_components=m, covariance_type=self.covariance, reg_covar=self.reg_covar * scale,
                                  random_state=ctx.seed, max_iter=200)
            return gmm.fit(np.asarray(zc, dtype=np.float64))

        # one class per worker: its scatter, factorisations and probes run in that worker's thread (nested chunked
        # work runs serially there, in the same order, so every number is the same as class after class)
        self.gmms_ = list(linalg.map_chunks(fit_class, [slice(i, i + 1) for i in range(len(self.classes_))]))

    def _reduce(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        return self.pca_.transform(h) if self.pca_ is not None else h

    def _screens(self) -> bool:
        """Whether scoring screens the classes in float32 first (one full Gaussian per class, see SCREEN_DIM)."""
        return len(self.gmms_) > 1 and all(isinstance(g, OneGaussian) and g.screen_rel_ is not None
                                           for g in self.gmms_)

    def class_log_likelihoods(self, features: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """log p(h | c) for every class, shape (n, K), by chunks of rows.

        With `offsets` (K,) and float32 screening available, only the classes whose log p(h | c) + offsets_c can
        come within SCREEN_MARGIN nats of the row's best are computed; the others are -inf."""
        out = np.empty((len(features), len(self.gmms_)))
        screen = offsets is not None and self._screens()

        def chunk_ll(sl):
            z = self._reduce(features[sl])
            if not screen:
                out[sl] = np.stack([g.score_samples(z) for g in self.gmms_], axis=1)
                return
            rows32 = screen_rows(z, self.origin_)  # centred once for all classes
            d32 = np.stack([g.screen_sq_distances(rows32) for g in self.gmms_], axis=1)
            rel = np.array([g.screen_rel_ for g in self.gmms_])
            approx = np.array([g.constant_ for g in self.gmms_]) + offsets - 0.5 * d32
            tol = 0.5 * rel * d32 + SCREEN_ABS
            keep = approx + tol >= (approx - tol).max(axis=1, keepdims=True) - SCREEN_MARGIN
            block = np.full(d32.shape, -np.inf)
            for c, g in enumerate(self.gmms_):
                rows = np.flatnonzero(keep[:, c])
                if rows.size:
                    block[rows, c] = g.score_samples(z[rows])
            out[sl] = block

        for _ in linalg.map_chunks(chunk_ll, linalg.row_chunks(len(features), features.shape[1])):
            pass
        return out

    def _score(self, out):
        if self.combine == "max":
            return -self.class_log_likelihoods(out.features, np.zeros(len(self.gmms_))).max(axis=1)
        return -logsumexp(self.class_log_likelihoods(out.features, self.log_prior_) + self.log_prior_[None, :])


def gram_row_sums(fmap: np.ndarray, powers) -> np.ndarray:
    """Per channel, the row sums of the p-th order Gram matrix: (sum_j [F^p F^pT]_ij)^(1/p), shape (n, P, C).

    F is a sample's (C, h*w) feature map and F^p its element-wise power. The row sum equals F^p (F^p^T 1),
    so no C x C matrix is built. The root is taken after the sum, as in Sastry & Oore's code.
    """
    a = np.asarray(fmap, dtype=np.float64).reshape(len(fmap), fmap.shape[1], -1)
    powers = [int(p) for p in powers]
    if any(p < 1 for p in powers) or powers != sorted(powers):
        raise ValueError(f"powers must be ascending positive integers, got {powers}")
    out = np.empty((len(a), len(powers), a.shape[1]))
    ap, cur = a.copy(), 1
    for j, p in enumerate(powers):
        while cur < p:  # F^p by repeated in-place products: far cheaper than pow
            ap *= a
            cur += 1
        g = np.matmul(ap, ap.sum(axis=1)[:, :, None])[:, :, 0]
        out[:, j] = np.sign(g) * np.abs(g) ** (1.0 / p)
    return out


@register
class GramMatrices(Detector):
    """Gram-matrix deviations (Sastry & Oore 2020) as in the authors' code: row sums of the Gram matrices, and
    (with `divide_by_msp`) each deviation divided by the maximum softmax probability."""

    name = "gram"
    title = "Gram matrices"
    family = "density"
    formula = ("S(x) = sum_l delta_l(x) / E_val[delta_l],  delta_l = sum_{p,j} how far G^p_l(x)_j lies outside "
               "[min, max] of the predicted class's ID train values, relative to |min| or |max|")
    latex = (r"S(x) = \sum_l \frac{\delta_l(x)}{\mathbb E_{\mathrm{val}}[\delta_l]},\quad "
             r"\delta_l = \sum_{p,j} \frac{[\mathrm{mn}_j - G^p_{l,j}]_+}{|\mathrm{mn}_j|} + "
             r"\frac{[G^p_{l,j} - \mathrm{mx}_j]_+}{|\mathrm{mx}_j|},\quad G^p_l = (F_l^p F_l^{p\top})^{1/p}\mathbf 1")
    intuition = ("Gram matrices of feature maps describe an image's texture and style at every layer. For each "
                 "predicted class we record the range of their values on training images; an input outside "
                 "these ranges at many layers is unfamiliar.")
    reference = Reference("Chandramouli Shama Sastry, Sageev Oore",
                          "Detecting Out-of-Distribution Examples with Gram Matrices", "ICML", 2020,
                          "https://arxiv.org/abs/1912.12510")
    needs = ("logits", "model", "feature_maps")
    runs_network = True
    params = {
        "max_power": Param(10, 1, 10, "linear", kind="int", sweep=(1, 2, 3, 5, 10),
                           help="orders p = 1..P of the Gram matrices (paper: 1..10)"),
        "divide_by_msp": Param(True, kind="choice", choices=(True, False), sweep=(True, False),
                               help="divide each deviation by the maximum softmax probability (authors' code)"),
    }

    def _powers(self):
        return tuple(range(1, int(self.max_power) + 1))

    def _layer_stats(self, inputs: np.ndarray):
        """Yield (batch slice, per-layer Gram row sums (b, P, C_l)) over batches of the inputs."""
        step = max(1, int(getattr(self.model_, "batch_size", 256)))
        for i in range(0, len(inputs), step):
            maps = self.model_.layer_feature_maps(inputs[i:i + step])
            yield slice(i, i + step), [gram_row_sums(m, self._powers()) for m in maps]

    def _deviations(self, out) -> np.ndarray:
        """Per-layer total deviations (n, L) of a split from its predicted class's [min, max]."""
        if out.inputs is None:
            raise ValueError("Gram needs the input images of this split; they were not kept")
        pred = np.asarray(out.logits).argmax(axis=1)
        dev = np.zeros((len(out), len(self.mins_)))
        for sl, stats in self._layer_stats(out.inputs):
            p = pred[sl]
            for l, g in enumerate(stats):
                lo, hi = self.mins_[l][p], self.maxs_[l][p]
                below = np.maximum(lo - g, 0.0) / np.abs(lo + 1e-6)
                above = np.maximum(g - hi, 0.0) / np.abs(hi + 1e-6)
                dev[sl, l] = (below + above).sum(axis=(1, 2))
        if self.divide_by_msp:
            dev /= softmax(out.logits).max(axis=1)[:, None]
        return dev

    def _fit(self, ctx):
        self.model_ = ctx.model
        train = ctx.train
        if train.inputs is None:
            raise ValueError("Gram needs the ID train images to fit; they were not kept")
        k = np.asarray(train.logits).shape[1]
        pred = np.asarray(train.logits).argmax(axis=1)
        mins, maxs, all_min, all_max = None, None, None, None
        for sl, stats in self._layer_stats(train.inputs):
            if mins is None:
                mins = [np.full((k,) + g.shape[1:], np.inf) for g in stats]
                maxs = [np.full((k,) + g.shape[1:], -np.inf) for g in stats]
                all_min = [np.full(g.shape[1:], np.inf) for g in stats]
                all_max = [np.full(g.shape[1:], -np.inf) for g in stats]
            p = pred[sl]
            for l, g in enumerate(stats):
                all_min[l] = np.minimum(all_min[l], g.min(axis=0))
                all_max[l] = np.maximum(all_max[l], g.max(axis=0))
                for c in np.unique(p):
                    mins[l][c] = np.minimum(mins[l][c], g[p == c].min(axis=0))
                    maxs[l][c] = np.maximum(maxs[l][c], g[p == c].max(axis=0))
        if mins is None:
            raise ValueError("Gram needs at least one ID train image")
        for l in range(len(mins)):
            missing = ~np.isfinite(mins[l][:, 0, 0])  # classes never predicted on ID train: use all of ID train
            mins[l][missing], maxs[l][missing] = all_min[l], all_max[l]
        self.mins_, self.maxs_ = mins, maxs
        # each layer's deviation is normalised by its mean on held-out ID data (the paper's validation split)
        held_out = ctx.val if ctx.val is not None and len(ctx.val) and ctx.val.inputs is not None else train
        self.layer_norm_ = self._deviations(held_out).mean(axis=0) + 1e-7

    def _score(self, out):
        return (self._deviations(out) / self.layer_norm_[None, :]).sum(axis=1)
