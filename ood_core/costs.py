"""What a detector will cost before it runs: expected seconds of fit + score for a data size.

Each detector's time is modelled as a sum of the terms its maths scales with (TERMS below: a constant, the
passes over the bank N x D, covariances N D^2, whitening n D^2, factorisations D^3, neighbour search n N D, ...)
with non-negative coefficients fitted to time measured at many sizes by `scripts/bench_scaling.py`, which
writes them to `ood_core/costs.json` (regenerate with `scripts/bench_scaling.py --fit`). The coefficients are
seconds on the machine that ran the benchmark (its float32 matmul rate is stored beside them); `calibrate()`
rescales them to this machine by timing one small matrix product. K = 10 classes and each detector's default
parameters were used; other class counts and parameters change the time somewhat.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np

TABLE = Path(__file__).with_name("costs.json")

# the size terms, functions of (n_bank N, n_query n, dim D)
TERMS: dict[str, Callable[[float, float, float], float]] = {
    "const": lambda N, n, D: 1.0,
    "N": lambda N, n, D: N,
    "n": lambda N, n, D: n,
    "ND": lambda N, n, D: N * D,
    "nD": lambda N, n, D: n * D,
    "ND2": lambda N, n, D: N * D * D,
    "nD2": lambda N, n, D: n * D * D,
    "D3": lambda N, n, D: D ** 3,
    "nN": lambda N, n, D: n * N,
    "nND": lambda N, n, D: n * N * D,
}

# which terms each detector's time is fitted with (what its fit and score compute)
DETECTOR_TERMS: dict[str, tuple[str, ...]] = {
    **{name: ("const", "n", "nD") for name in ("msp", "max_logit", "energy", "entropy", "gen", "klm")},
    "temp_scaling": ("const", "N", "n"),
    "cosine": ("const", "nD"),
    **{name: ("const", "nD", "ND") for name in ("react", "ash_p", "ash_b", "ash_s", "scale", "dice", "vra")},
    "mahalanobis": ("const", "ND", "ND2", "nD2", "D3"),
    "rmd": ("const", "ND", "ND2", "nD2", "D3"),
    "vim": ("const", "ND", "nD", "ND2", "D3"),
    "residual": ("const", "ND", "nD", "ND2", "D3"),
    "gmm": ("const", "N", "ND", "nD", "ND2", "D3"),  # the default PCA's solver changes with the shape
    "knn": ("const", "ND", "nN", "nND"),
    "nnguide": ("const", "ND", "nN", "nND"),
    "she": ("const", "ND", "nD"),
    "fdbd": ("const", "ND", "nD"),
    "nci": ("const", "ND", "nD"),
}

_factor = 1.0


@lru_cache(maxsize=1)
def table() -> dict:
    """The fitted table: {"matmul_gflops": rate, "detectors": {name: {term: seconds per unit}}} ({} if absent)."""
    try:
        return json.loads(TABLE.read_text())
    except (OSError, ValueError):
        return {}


def expected_seconds(detector_name: str, n_bank: int, n_query: int, dim: int) -> Optional[float]:
    """Expected seconds to fit `detector_name` on n_bank ID train samples of dimension `dim` and score n_query
    samples; None for a detector the table does not cover (those that run the network, the classic ones)."""
    coef = table().get("detectors", {}).get(detector_name)
    if not coef:
        return None
    N, n, D = float(n_bank), float(n_query), float(dim)
    return float(_factor * sum(c * TERMS[t](N, n, D) for t, c in coef.items()))


def calibrate(side: int = 768) -> float:
    """Rescale expected_seconds to this machine: the table's float32 matmul rate over the rate of one
    side x side product timed now (best of 3, a few milliseconds). Returns the factor now applied."""
    global _factor
    ref = table().get("matmul_gflops")
    if not ref:
        return _factor
    a = np.random.default_rng(0).standard_normal((side, side), dtype=np.float32)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    _factor = float(ref / (2 * side ** 3 / best / 1e9))
    return _factor


def fit(rows: list[dict], matmul_gflops: float) -> dict:
    """The table from measured rows {detector, N, n, D, seconds}: per detector, non-negative least squares of
    the relative error (each row weighted by 1 / seconds) on that detector's TERMS."""
    from scipy.optimize import nnls

    out = {}
    for name, terms in DETECTOR_TERMS.items():
        pts = [r for r in rows if r["detector"] == name and r["seconds"] > 0]
        if len(pts) < len(terms):
            continue
        a = np.array([[TERMS[t](r["N"], r["n"], r["D"]) for t in terms] for r in pts], dtype=np.float64)
        y = np.array([r["seconds"] for r in pts])
        scale = np.abs(a).max(axis=0)  # columns of equal size for the solver
        coef, _ = nnls(a / scale / y[:, None], np.ones(len(y)))
        out[name] = {t: float(c / s) for t, c, s in zip(terms, coef, scale) if c > 0}
    return {"matmul_gflops": float(matmul_gflops), "detectors": out}
