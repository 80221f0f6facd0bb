"""Classic outlier detectors (scikit-learn) fitted on the network's ID train features.

OC-SVM and LOF cost about N^2 D to fit on N features (and OC-SVM's support vectors grow with N): on a large
bank (60,000 MNIST training images) they would take minutes, so they fit on a seeded, class-stratified
subsample of at most `max_fit` features (`stratified_subsample`; all of them when the bank is smaller, which then
gives exactly the scores of a fit on the whole bank). The scalers still use every ID train feature (cheap). Scores
are computed in chunks of SCORE_CHUNK rows, so memory stays bounded; each row's score does not depend on the others.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from .base import REGISTRY, Detector, Param, Reference, register

_L2 = Param(False, kind="choice", choices=(False, True), sweep=(False, True),
            help="L2-normalise the features before scaling them")
_SCALING = Param("standard", kind="choice", choices=("standard", "gcn_minmax"), sweep=("standard", "gcn_minmax"),
                 help="standard: each feature to zero mean and unit variance over the ID train features; gcn_minmax: "
                      "Ruff et al.'s preprocessing for raw pixels, global contrast normalisation (L1) of each sample, "
                      "then min-max scaling with the extremes of the ID train features")
SCORE_CHUNK = 8192  # rows scored at a time (a multiple of scikit-learn's 256-row neighbour-search chunks)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `n` of the samples, each class keeping its share of them (largest remainders),
    drawn by `seed`; every index (in order) when there are no more than `n` samples."""
    labels = np.asarray(labels)
    m = len(labels)
    if n >= m:
        return np.arange(m)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (n / m)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[:n - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, 60013])
    keep = [rng.choice(np.flatnonzero(inverse == c), size=int(t), replace=False) for c, t in enumerate(take) if t]
    return np.sort(np.concatenate(keep))


def fit_bank_note(name: str, params: Optional[Mapping[str, Any]], n_bank: int) -> Optional[str]:
    """"fit on N of M ID training features ..." for a detector with a `max_fit` cap (None for the others), from
    its parameters (defaults filled in) and the size M of the ID training bank: what the card and the app show."""
    spec = REGISTRY[name].params.get("max_fit") if name in REGISTRY else None
    if spec is None:
        return None
    cap = int(dict(params or {}).get("max_fit", spec.default))
    if cap >= n_bank:
        return f"Fit on all {n_bank:,} ID training features (max_fit = {cap:,})."
    return (f"Fit on {cap:,} of {n_bank:,} ID training features: a seeded subsample stratified by class "
            f"(max_fit = {cap:,}; scores use every image).")


_MAX_FIT = Param(5000, 100, 1_000_000, "log", kind="int", sweep=(1000, 2000, 5000),
                 help="fit on at most this many ID train features: a seeded subsample stratified by class (all of "
                      "them when there are fewer; the app says \"fit on N of M\"). The fit's cost grows about as "
                      "the square of this number; every image is still scored")


class _SklearnOnFeatures(Detector):
    """Shared plumbing: optionally L2-normalise, scale with ID train statistics (`scaling`), fit an estimator."""

    family = "classic"
    needs = ("features",)

    def _prepare(self, features: np.ndarray) -> np.ndarray:
        h = np.asarray(features, dtype=np.float64)
        if self.l2_normalise:
            h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        return h

    def _fit(self, ctx):
        h = self._prepare(ctx.train.features)
        if self.scaling == "gcn_minmax":
            from ..models.preprocess import ContrastMinMax

            self.scaler_ = _TorchScaler(ContrastMinMax().fit(torch.from_numpy(h)))
        else:
            from sklearn.preprocessing import StandardScaler

            self.scaler_ = StandardScaler().fit(h)
        self.n_bank_ = len(h)
        cap = getattr(self, "max_fit", None)
        if cap is not None and cap < len(h):
            h = h[stratified_subsample(ctx.train.labels, int(cap), ctx.seed)]
        self.n_fit_ = len(h)
        self.estimator_ = self._estimator(ctx, len(h)).fit(self.scaler_.transform(h))

    def _score(self, out):
        f = out.features
        return np.concatenate([self._score_scaled(self.transform(f[i:i + SCORE_CHUNK]))
                               for i in range(0, len(f), SCORE_CHUNK)])

    def _score_scaled(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _estimator(self, ctx, n_train: int):
        raise NotImplementedError

    def transform(self, features: np.ndarray) -> np.ndarray:
        """The features as the estimator sees them (normalised, scaled)."""
        return self.scaler_.transform(self._prepare(features))


class _TorchScaler:
    """A fitted torch preprocessing module used like a scikit-learn scaler: transform(float64 array) -> array."""

    def __init__(self, module) -> None:
        self.module = module

    def transform(self, h: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.asarray(h, dtype=np.float64))).numpy()


@register
class OneClassSVMDetector(_SklearnOnFeatures):
    name = "ocsvm"
    title = "One-class SVM"
    formula = "S(x) = -(sum_i alpha_i k(z_i, z) - rho),  RBF kernel on scaled features z"
    latex = r"S(x) = -\Big(\sum_i \alpha_i\, k(z_i, z(x)) - \rho\Big),\quad k(a,b) = e^{-\gamma\lVert a-b\rVert^2}"
    intuition = ("Find the smallest smooth region of feature space that holds all but a fraction nu of the ID "
                 "training features. The further outside it a feature lies, the more unfamiliar the input.")
    reference = Reference("Bernhard Schölkopf, John C. Platt, John Shawe-Taylor, Alex J. Smola, Robert C. Williamson",
                          "Estimating the Support of a High-Dimensional Distribution", "Neural Computation", 2001,
                          "https://doi.org/10.1162/089976601750264965")
    params = {
        "nu": Param(0.1, 0.001, 1.0, "log", sweep=(0.01, 0.05, 0.1, 0.2, 0.5),
                    help="upper bound on the fraction of ID train features left outside the region"),
        "gamma": Param("scale", kind="choice", choices=("scale", "auto"), sweep=("scale", "auto"),
                       help="RBF width: 'scale' = 1 / (D var(z)), 'auto' = 1 / D (scikit-learn)"),
        "l2_normalise": _L2,
        "scaling": _SCALING,
        "max_fit": _MAX_FIT,
    }

    def _estimator(self, ctx, n_train):
        from sklearn.svm import OneClassSVM

        return OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma)

    def _score_scaled(self, z):
        return -self.estimator_.decision_function(z)


@register
class IsolationForestDetector(_SklearnOnFeatures):
    name = "iforest"
    title = "Isolation forest"
    formula = "S(x) = 2^(-E[path length of z] / c(n)),  averaged over random isolation trees"
    latex = r"S(x) = 2^{-\mathbb E_t[\ell_t(z(x))]/c(n)}"
    intuition = ("Random axis-aligned splits isolate an unusual point in few steps; points deep inside the "
                 "ID cloud need many. A short average path means unfamiliar.")
    reference = Reference("Fei Tony Liu, Kai Ming Ting, Zhi-Hua Zhou", "Isolation Forest", "ICDM", 2008,
                          "https://doi.org/10.1109/ICDM.2008.17")
    params = {
        "n_estimators": Param(100, 10, 2000, "log", kind="int", sweep=(50, 100, 200, 500),
                              help="number of trees, seeded by the experiment seed (paper and scikit-learn: 100)"),
        "l2_normalise": _L2,
        "scaling": _SCALING,
    }

    def _estimator(self, ctx, n_train):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=int(self.n_estimators), random_state=ctx.seed)

    def _score_scaled(self, z):
        return -self.estimator_.score_samples(z)


@register
class LOFDetector(_SklearnOnFeatures):
    name = "lof"
    title = "Local outlier factor (LOF)"
    formula = "S(x) = mean_{o in N_k(z)} lrd(o) / lrd(z),  lrd = inverse mean reachability distance to the k neighbours"
    latex = r"S(x) = \frac{1}{k}\sum_{o\in N_k(z)} \frac{\mathrm{lrd}_k(o)}{\mathrm{lrd}_k(z(x))}"
    intuition = ("Compare how crowded a point's neighbourhood is with how crowded its neighbours' own "
                 "neighbourhoods are. A point in a much sparser spot than its neighbours is an outlier.")
    reference = Reference("Markus M. Breunig, Hans-Peter Kriegel, Raymond T. Ng, Jörg Sander",
                          "LOF: Identifying Density-Based Local Outliers", "SIGMOD", 2000,
                          "https://doi.org/10.1145/342009.335388")
    params = {
        "n_neighbors": Param(20, 1, 500, "log", kind="int", sweep=(5, 10, 20, 50, 100),
                             help="k, the neighbourhood size (scikit-learn default 20)"),
        "l2_normalise": _L2,
        "scaling": _SCALING,
        "max_fit": _MAX_FIT,
    }

    def _estimator(self, ctx, n_train):
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=int(min(self.n_neighbors, max(n_train - 1, 1))), novelty=True)

    def _score_scaled(self, z):
        return -self.estimator_.score_samples(z)
