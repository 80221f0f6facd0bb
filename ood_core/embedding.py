"""2-D embeddings of features or pixels (PCA, UMAP, t-SNE), the frame of points behind them, and the
pure mapping from a plotly selection event back to samples.

Everything here is a pure function of arrays and simple arguments, so a page can cache it by a key
string (experiment key, sets, space, method, seed). The intended pattern: fit one reducer per
(experiment, space, method, seed) on ID test + all OOD sets (`fit_reducer(embedding_frame(exp,
exp.ood_names)[1], ...)`), cache it, and get any view's coordinates with `reducer.transform(X_view)`:
rows it was fitted on are looked up (instant, the map does not move); only new rows (an upload) are
transformed, which PCA and UMAP can do and t-SNE cannot (no out-of-sample mapping: embed jointly).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .detectors.base import max_softmax

METHODS = ("pca", "umap", "tsne")
METHOD_TITLES = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
MIN_POINTS = {"pca": 2, "umap": 5, "tsne": 5}
SPACES = ("features", "pixels")
ID_SPLITS = ("train", "val", "test")
OOD_LABEL = "OOD"


# --- embedding -------------------------------------------------------------------------------------

def _check_matrix(X, method: str) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"embedding needs a 2-D array (samples x dimensions), got shape {X.shape}")
    if len(X) < MIN_POINTS[method]:
        raise ValueError(f"{METHOD_TITLES[method]} needs at least {MIN_POINTS[method]} points, got {len(X)}")
    if X.shape[1] < 1:
        raise ValueError("embedding needs at least one dimension per sample")
    if not np.all(np.isfinite(X)):
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"embedding input contains NaN or infinite values ({bad} of {len(X)} samples)")
    return X


def _pca(X: np.ndarray, seed: int):
    from sklearn.decomposition import PCA

    n_comp = min(2, X.shape[0], X.shape[1])
    return PCA(n_components=n_comp, whiten=False, random_state=seed)


_UMAP_CACHE_ON = False


def cache_umap_kernels() -> int:
    """Turn on numba's on-disk cache for UMAP's kernels (umap-learn compiles most without it), so a new
    process loads them instead of compiling again (tens of seconds). Returns how many were switched on.

    The cache lives where numba puts it (__pycache__ beside umap's sources, or NUMBA_CACHE_DIR); numba
    checks the source files' stamps, so a changed umap-learn recompiles. Kernels whose cache cannot
    be placed are left as they are. Idempotent.
    """
    global _UMAP_CACHE_ON
    if _UMAP_CACHE_ON:
        return 0
    import importlib

    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    done = 0
    for name in ("umap.umap_", "umap.utils", "umap.layouts", "umap.spectral", "umap.distances", "umap.sparse"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), NullCache):
                try:
                    obj.enable_caching()
                    done += 1
                except Exception:  # no writable cache location: keep compiling in memory
                    pass
    _UMAP_CACHE_ON = True
    return done


def _umap(n: int, seed: int, n_neighbors: int = 15, min_dist: float = 0.1, **kw):
    import umap  # imported lazily: numba compilation happens on first fit

    cache_umap_kernels()

    return umap.UMAP(n_components=2, n_neighbors=max(2, min(int(n_neighbors), n - 1)), min_dist=min_dist,
                     random_state=seed, **kw)


def _tsne(n: int, seed: int, perplexity: Optional[float] = None, **kw):
    from sklearn.manifold import TSNE

    perp = min(30.0, (n - 1) / 3.0) if perplexity is None else float(perplexity)
    if not 0 < perp < n:
        raise ValueError(f"t-SNE perplexity must be in (0, {n}), got {perp}")
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perp, **kw)


def _pad2(Y: np.ndarray) -> np.ndarray:
    """PCA of 1-D data has one component; pad with zeros so every embedding is (n, 2)."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.shape[1] < 2:
        Y = np.hstack([Y, np.zeros((len(Y), 2 - Y.shape[1]))])
    return Y


def embed(X, method: str = "pca", seed: int = 0, **kw) -> np.ndarray:
    """Embed the rows of X (n, d) in 2-D: method "pca" | "umap" | "tsne", seeded; returns (n, 2) float64.

    UMAP: n_neighbors=15, min_dist=0.1, random_state=seed (single-threaded, hence reproducible).
    t-SNE: init="pca", perplexity=min(30, (n-1)/3). Extra keyword arguments go to the estimator.
    """
    X = _check_matrix(X, method)
    if method == "pca":
        return _pad2(_pca(X, seed).fit_transform(X))
    if method == "umap":
        with warnings.catch_warnings():
            # "n_jobs overridden to 1 by setting random_state": intended, reproducibility first
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(_umap(len(X), seed, **kw).fit_transform(X), dtype=np.float64)
    return np.asarray(_tsne(len(X), seed, **kw).fit_transform(X), dtype=np.float64)


def _row_keys(X: np.ndarray) -> list[bytes]:
    X = np.ascontiguousarray(X, dtype=np.float64)
    return [r.tobytes() for r in X]


@dataclass
class Reducer:
    """A fitted 2-D reducer: `embedding_` of the fitting points, and `transform(X)` for new points.

    PCA and UMAP can place new points on an existing map; t-SNE cannot (`can_transform` is False and
    `transform` raises): embed the points jointly with `embed` instead.
    Rows of X that were among the fitting points get their fitted coordinates back (looked up, exact
    match), so a repeated view costs nothing and the map does not move; only new rows are transformed.
    """

    method: str
    seed: int
    model: Any
    embedding_: np.ndarray
    n_features: int
    fit_seconds: float = 0.0
    _rows: dict = field(default_factory=dict, repr=False)

    @property
    def can_transform(self) -> bool:
        return self.method in ("pca", "umap")

    def transform(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"this reducer was fitted on {self.n_features}-d points, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("embedding input contains NaN or infinite values")
        out = np.zeros((len(X), 2))
        known = np.array([self._rows.get(k, -1) for k in _row_keys(X)], dtype=np.int64)
        hit = known >= 0
        out[hit] = self.embedding_[known[hit]]
        if hit.all():
            return out
        if not self.can_transform:
            raise ValueError("t-SNE has no out-of-sample transform: embed the old and new points together "
                             "with embed(..., method='tsne')")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out[~hit] = _pad2(self.model.transform(X[~hit]))
        return out


def fit_reducer(X_fit, method: str = "pca", seed: int = 0, **kw) -> Reducer:
    """Fit a reducer on X_fit (n, d), to cache per experiment and reuse with `Reducer.transform`."""
    X = _check_matrix(X_fit, method)
    t0 = time.perf_counter()
    if method == "pca":
        model = _pca(X, seed)
        Y = _pad2(model.fit_transform(X))
    elif method == "umap":
        model = _umap(len(X), seed, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            Y = np.asarray(model.fit_transform(X), dtype=np.float64)
    else:
        model = _tsne(len(X), seed, **kw)
        Y = np.asarray(model.fit_transform(X), dtype=np.float64)
    rows = {k: i for i, k in enumerate(_row_keys(X))}
    return Reducer(method, seed, model, Y, X.shape[1], time.perf_counter() - t0, rows)


def warm_umap(seed: int = 0) -> float:
    """Fit and transform a tiny random set once so numba compiles UMAP's kernels; returns seconds taken.

    Call it once at app start (e.g. in a cached resource, in a background thread) so the first user does
    not wait for the compilation. With `cache_umap_kernels` (on by default) the compiled kernels are
    stored on disk, so later processes take a few seconds instead of ~30 s CPU.
    """
    t0 = time.perf_counter()
    X = np.random.default_rng(seed).normal(size=(200, 8))
    red = fit_reducer(X, "umap", seed)  # the same code paths (and numba signatures) as a real map
    red.transform(X[:1] + 0.1)  # new points (fitted rows are looked up, not transformed)
    red.transform(X[:16] + 0.1)
    return time.perf_counter() - t0


# --- the frame of points ---------------------------------------------------------------------------

def frame_from_outputs(outputs: Mapping[str, Any], sets: Sequence[str], class_names: Sequence[str],
                       space: str = "features", max_per_set: Optional[int] = None, seed: int = 0,
                       to_pixels: Optional[Callable[[np.ndarray], np.ndarray]] = None
                       ) -> tuple[pd.DataFrame, np.ndarray]:
    """The frame and matrix behind an embedding, from Outputs-like objects (logits, features, labels, inputs).

    Rows are ordered by `sets`, then by index within the set. With `max_per_set`, each set is subsampled
    (seeded, without replacement, indices kept sorted). Columns: set, kind ("ID"/"OOD"), index (within
    its set), label (int, -1 for OOD), label_name ("OOD" for OOD), pred, pred_name, confidence (max softmax).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    sets = list(dict.fromkeys(sets))
    if not sets:
        raise ValueError("choose at least one set to embed")
    missing = [s for s in sets if s not in outputs]
    if missing:
        raise ValueError(f"unknown set(s) {', '.join(missing)}; available: {', '.join(outputs)}")
    if max_per_set is not None and int(max_per_set) < 1:
        raise ValueError(f"max_per_set must be at least 1, got {max_per_set}")
    rng = np.random.default_rng(seed)
    names = list(class_names)
    parts, mats = [], []
    for s in sets:
        out = outputs[s]
        n = len(out.labels)
        idx = np.arange(n)
        if max_per_set is not None and n > int(max_per_set):
            idx = np.sort(rng.choice(n, size=int(max_per_set), replace=False))
        if space == "features":
            M = np.asarray(out.features)[idx]
        else:
            if out.inputs is None:
                raise ValueError(f"set {s!r} has no stored inputs, so it cannot be embedded in pixel space")
            x = np.asarray(out.inputs[idx])  # only these rows (compact inputs convert them alone)
            M = (to_pixels(x) if to_pixels is not None else x).reshape(len(idx), -1)
        labels = np.asarray(out.labels)[idx].astype(np.int64)
        logits = np.asarray(out.logits)[idx]
        has_head = logits.ndim == 2 and logits.shape[1] > 0  # one-class models give no logits
        pred = logits.argmax(axis=1).astype(np.int64) if len(idx) and has_head else np.full(len(idx), -1, np.int64)
        is_id = s in ID_SPLITS and bool(np.all(labels >= 0))
        parts.append(pd.DataFrame({
            "set": s,
            "kind": "ID" if is_id else "OOD",
            "index": idx.astype(np.int64),
            "label": labels if is_id else np.full(len(idx), -1, np.int64),
            "label_name": [names[i] if 0 <= i < len(names) else str(i) for i in labels] if is_id
            else [OOD_LABEL] * len(idx),
            "pred": pred,
            "pred_name": [names[i] if 0 <= i < len(names) else ("—" if i < 0 else str(i)) for i in pred],
            "confidence": max_softmax(logits) if has_head else np.full(len(idx), np.nan),
        }))
        mats.append(np.asarray(M, dtype=np.float64))
    frame = pd.concat(parts, ignore_index=True)
    return frame, np.concatenate(mats, axis=0)


def embedding_frame(exp, sets: Iterable[str] = (), space: str = "features", max_per_set: Optional[int] = None,
                    seed: int = 0, include_id: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Points of the ID test split and the chosen OOD sets of an Experiment: (frame, matrix to embed).

    space="features": the cached penultimate features; "pixels": the raw images in [0, 1], flattened.
    The ID test split ("test") comes first unless `include_id` is False. See `frame_from_outputs`.
    """
    sets = list(sets)
    if include_id and "test" not in sets:
        sets = ["test", *sets]
    outputs = dict(exp.outputs)
    for s in sets:  # inputs are normally kept in Outputs; fall back to the benchmark's tensors
        if s in outputs and outputs[s].inputs is None and s in exp.bench.splits():
            o = outputs[s]
            outputs[s] = type(o)(o.logits, o.features, o.labels, exp.bench.splits()[s].images)
    return frame_from_outputs(outputs, sets, exp.bench.class_names, space, max_per_set, seed,
                              to_pixels=exp.bench.to_pixels)


def frame_inputs(exp, rows: pd.DataFrame) -> np.ndarray:
    """The normalised input images (n, C, H, W) of frame rows (set, index), e.g. a selection, in row order.

    For display use exp.bench.to_pixels(...); for Grad-CAM pass them as they are.
    """
    splits = exp.bench.splits()
    if len(rows) == 0:
        return np.zeros((0, *exp.bench.input_shape), np.float32)
    out = []
    for s, i in zip(rows["set"], rows["index"]):
        src = exp.outputs[s].inputs if s in exp.outputs and exp.outputs[s].inputs is not None else splits[s].images
        out.append(src[int(i)])
    return np.stack(out)


# --- selection event -> samples --------------------------------------------------------------------

def _selection_points(selection) -> list:
    if selection is None:
        return []
    sel = selection
    if isinstance(sel, Mapping) and "selection" in sel:
        sel = sel["selection"]
    if sel is None:
        return []
    pts = sel.get("points") if isinstance(sel, Mapping) else getattr(sel, "points", None)
    return list(pts or [])


def select_samples(frame: pd.DataFrame, selection) -> pd.DataFrame:
    """Rows of `frame` picked by a plotly selection (click, box or lasso), deduplicated, in frame order.

    `selection` is what `st.plotly_chart(fig, on_select="rerun")` returns, i.e.
    {"selection": {"points": [{"curve_number", "point_index", "customdata": [set, index, ...]}, ...],
    "point_indices": [...], "box": [...], "lasso": [...]}}, or its inner "selection" dict, or None.
    Points are matched by customdata (set, index), so it works whatever the split into traces.
    Points without usable customdata are ignored. The returned frame keeps `frame`'s index labels
    (row positions for a frame from `embedding_frame`), so `xy[result.index]` are their coordinates.
    """
    pts = _selection_points(selection)
    if not pts or len(frame) == 0:
        return frame.iloc[0:0]
    lookup = {(str(s), int(i)): pos for pos, (s, i) in enumerate(zip(frame["set"], frame["index"]))}
    chosen = set()
    for p in pts:
        cd = p.get("customdata") if isinstance(p, Mapping) else None
        if not isinstance(cd, (list, tuple)) or len(cd) < 2:
            continue
        try:
            key = (str(cd[0]), int(round(float(cd[1]))))
        except (TypeError, ValueError):
            continue
        pos = lookup.get(key)
        if pos is not None:
            chosen.add(pos)
    return frame.iloc[sorted(chosen)]


# --- the figure ------------------------------------------------------------------------------------

