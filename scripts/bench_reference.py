"""Our detectors against pytorch-ood 0.4 on the same arrays: time (median of 3), AUROC, and the matmul floor.

Every detector both libraries have is fitted on the same ID train features/logits (K = 10 classes) and scores
the same 10,000 ID test and 10,000 OOD samples; each run is fit + both scores. Both libraries run in one
process, interleaved (ours, theirs, theirs, ours, ...), so machine load hits both alike. Beside each time:
the floor, the detector's unavoidable matrix-product flops (FLOORS below) divided by the float32 matmul rate
measured in the same process just before (`a @ b`, 4096 x 4096 float32), and the peak memory each call added.

    .venv/bin/pip install -r requirements-bench.txt        # pytorch-ood, for this script only
    PYTHONPATH=. .venv/bin/python scripts/bench_reference.py --size small
    PYTHONPATH=. .venv/bin/python scripts/bench_reference.py --size large --detectors knn,nnguide
    PYTHONPATH=. .venv/bin/python scripts/bench_reference.py --e2e ours        # end-to-end, see e2e()
    PYTHONPATH=. .venv/bin/python scripts/bench_reference.py --e2e reference --part 1/3
    PYTHONPATH=. .venv/bin/python scripts/bench_reference.py --report          # docs/bench/reference.md

Results accumulate in docs/bench/reference.json (one row per size and detector; a rerun replaces its rows),
so a size can be measured in several short invocations. `--before REV` also runs the library as it was at git
revision REV, in the same rounds as ours and the reference (median time), and reports the largest relative
difference of its scores from today's.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "bench"
RESULTS = OUT / "reference.json"

SIZES = {"small": (5_000, 128), "medium": (50_000, 512), "large": (50_000, 2048)}
N_TEST, N_OOD, K = 10_000, 10_000, 10
VIM_DIM = 64


# --- the arrays ---------------------------------------------------------------------------------------

@dataclass
class Split:
    h: np.ndarray  # features (n, D) float32
    z: np.ndarray  # logits (n, K) float32
    y: np.ndarray  # labels, -1 for OOD


def make_arrays(n_train: int, dim: int, seed: int = 0, n_test: int = N_TEST, n_ood: int = N_OOD):
    """Penultimate-like features: ReLU(class mean + noise with a power-law spectrum), variance of the i-th
    principal direction ~ (1 + i)^-1.2 (condition number ~ D^1.2 before the ReLU), a nearest-class-mean head
    W h + b (float32, as a network computes it); OOD samples sit between classes with larger, differently
    shaped noise. Returns (train, test, ood, W, b)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mix = (basis * (1.0 / (1.0 + np.arange(dim))) ** 0.6).astype(np.float32)
    means = (rng.normal(0.0, 0.4, size=(K, dim)) * (1.0 + np.arange(dim)) ** -0.3 + 0.4).astype(np.float32)
    s = 8.0 / np.sqrt(dim)
    w = (s * means + 0.3 * rng.standard_normal((K, dim)) / np.sqrt(dim)).astype(np.float32)
    b = (-0.5 * s * (means.astype(np.float64) ** 2).sum(1) + rng.normal(0.0, 0.3, K)).astype(np.float32)

    def split(n, ood=False):
        y = np.arange(n) % K
        h = np.empty((n, dim), np.float32)
        for i in range(0, n, 8192):  # block by block: no float64 or full-size temporaries
            m = min(8192, n - i)
            noise = rng.standard_normal((m, dim), dtype=np.float32) @ mix.T
            if ood:  # near the middle of two classes, with a little more noise
                other = (y[i:i + m] + 1 + rng.integers(0, K - 1, m)) % K
                mix_w = rng.uniform(0.25, 0.75, (m, 1)).astype(np.float32)
                block = mix_w * means[y[i:i + m]] + (1 - mix_w) * means[other] + 1.1 * noise
            else:
                block = means[y[i:i + m]] + noise
            h[i:i + m] = np.maximum(block, 0.0)
        z = (h @ w.T + b).astype(np.float32)
        return Split(h, z, np.full(n, -1) if ood else y)

    return split(n_train), split(n_test), split(n_ood, ood=True), w, b


# --- measuring ----------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


# The allocator is left as every process has it (glibc's dynamic mmap threshold: memory freed by one call is
# reused by the next, as in the app or in a user's script). Before each measured call malloc_trim(0) returns every
# freed page to the system, so the resident set is what is alive, and what the call touches shows in its peak.
# (Until 2026-11-30 this script set M_MMAP_THRESHOLD to 1 MiB, so every large array was a fresh mapping: that made
# every call of float64 code pay twice the page faults of float32 code, a cost no real process pays.)
_LIBC = _libc()


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# a call faster than this is repeated until the repeats take this long, and its time is their mean
MIN_TIMED_S = 0.25


def measure(fn: Callable[[], object]) -> tuple[float, float, float, object]:
    """(wall s, CPU s of all threads, peak RSS added in MiB, result) of one call (the mean of repeats of a
    call under MIN_TIMED_S, so millisecond detectors are not timed at the resolution of the scheduler)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # freed memory back to the system: the resident set is what is alive
    reset = _reset_peak()
    base = _status_kib("VmRSS") if reset else _status_kib("VmHWM")
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    wall, cpu, reps = time.perf_counter() - t0, time.process_time() - c0, 1
    peak = max(0.0, (_status_kib("VmHWM") - base) / 1024)
    if wall < MIN_TIMED_S:
        reps = int(min(1000, np.ceil(MIN_TIMED_S / max(wall, 1e-5))))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            res = fn()
        wall, cpu = (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps
    return wall, cpu, peak, res


def matmul_rate(side: int = 4096) -> float:
    """float32 GFLOP/s of `a @ b` on side x side matrices, now, in this process (best of 2)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((side, side), dtype=np.float32)
    b = rng.standard_normal((side, side), dtype=np.float32)
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * side ** 3 / best / 1e9


def core_rate(side: int = 2048) -> float:
    """float32 GFLOP per CPU-second of `a @ b` on one BLAS thread (side x side, best of 2): the per-core rate,
    which time-slicing by other processes does not change (CPU time does not count the time a thread waits)."""
    from ood_core.linalg import one_blas_thread

    rng = np.random.default_rng(2)
    a = rng.standard_normal((side, side), dtype=np.float32)
    best = np.inf
    with one_blas_thread():
        for _ in range(2):
            c0 = time.process_time()
            a @ a
            best = min(best, time.process_time() - c0)
    return 2 * side ** 3 / best / 1e9


def auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([s_id, s_ood]).astype(np.float64)
    if not np.all(np.isfinite(s)):
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))], s))


# --- our side -----------------------------------------------------------------------------------------

class Head:
    """What our detectors read from the model: logits = W h + b (float64 copies, as ModelAdapter gives)."""

    def __init__(self, w, b):
        self.head_weight = np.asarray(w, dtype=np.float64)
        self.head_bias = np.asarray(b, dtype=np.float64)


def ours_runner(lib, name: str, params: dict, train: Split, sets: list[Split], w, b):
    """A function doing fit + score of every set with the library `lib` (today's ood_core, or an older one)."""
    from importlib import import_module

    det_mod = import_module(lib.__name__ + ".detectors")
    Outputs = import_module(lib.__name__ + ".inference").Outputs
    head = Head(w, b)
    out_train = Outputs(train.z, train.h, train.y)
    outs = [Outputs(s.z, s.h, s.y) for s in sets]

    def run():
        det = det_mod.create(name, **params)
        t0 = time.perf_counter()
        det.fit(det_mod.FitContext(train=out_train, model=head, num_classes=K, seed=0))
        times = [time.perf_counter() - t0]
        scores = []
        for o in outs:
            t0 = time.perf_counter()
            scores.append(det.score(o))
            times.append(time.perf_counter() - t0)
        return scores, times

    return run


# --- pytorch-ood's side -------------------------------------------------------------------------------

API = {"logits": "logits", "features": "features", "maps": "feature_maps"}


def ref_runner(kind: str, make: Callable, train: Split, sets: list[Split], needs_fit: bool):
    """fit + predict of a pytorch-ood detector on arrays: kind is "logits", "features" or "maps" (its
    FeatureMapsDetector API, fed the features as (n, D, 1, 1) maps)."""
    import torch

    t = torch.from_numpy

    def as_input(s: Split):
        if kind == "logits":
            return t(s.z)
        return t(s.h)[:, :, None, None] if kind == "maps" else t(s.h)

    def run():
        det = make()
        t0 = time.perf_counter()
        if needs_fit:  # outside no_grad: temperature scaling fits by gradient descent
            getattr(det, f"fit_{API[kind]}")(as_input(train), t(train.y))
        times = [time.perf_counter() - t0]
        with torch.no_grad():
            predict = getattr(det, f"predict_{API[kind]}")
            scores = []
            for s in sets:
                t0 = time.perf_counter()
                scores.append(predict(as_input(s)).double().numpy())
                times.append(time.perf_counter() - t0)
        return scores, times

    return run


def linear_head(w, b, flatten: bool = False):
    import torch

    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    if not flatten:
        return lin

    def head(x):
        return lin(x.flatten(1))

    return head


# --- the detectors both libraries have ----------------------------------------------------------------

@dataclass
class Case:
    name: str  # our registry name
    params: dict
    kind: str  # the reference's API: logits / features / maps
    make: Callable  # (w, b, train) -> a pytorch-ood detector
    fit: bool = True
    # unavoidable matrix-product flops, (N train, n queries, D, K) -> flops
    floor: Callable = lambda N, n, d, k: 0.0
    note: str = ""
    family: str = ""


def _cases() -> list[Case]:
    import torch
    from pytorch_ood import detector as R

    tt = torch.from_numpy
    gemm = lambda m, n, k: 2.0 * m * n * k  # noqa: E731
    return [
        Case("msp", {}, "logits", lambda w, b, tr: R.MaxSoftmax(None), fit=False),
        Case("max_logit", {}, "logits", lambda w, b, tr: R.MaxLogit(None), fit=False),
        Case("energy", {}, "logits", lambda w, b, tr: R.EnergyBased(None), fit=False),
        Case("entropy", {}, "logits", lambda w, b, tr: R.Entropy(None), fit=False,
             note="theirs clips p at 1e-7"),
        Case("gen", {}, "logits", lambda w, b, tr: R.GEN(None, gamma=0.1), fit=False,
             note="theirs: the mean over all K, p clipped to [1e-7, 1-1e-7]; ours: the sum over min(M, K)"),
        Case("temp_scaling", {}, "logits", lambda w, b, tr: R.TemperatureScaling(None),
             note="both fit T on the ID train logits here; theirs: 50 LBFGS steps, -max softmax; ours: bounded "
                  "scalar search, -log max softmax"),
        Case("klm", {}, "logits", lambda w, b, tr: R.KLMatching(None)),
        Case("mahalanobis", {}, "features", lambda w, b, tr: R.Mahalanobis(None),
             floor=lambda N, n, d, k: gemm(N, d, d) + gemm(n, d, d),
             note="floor: covariance N D^2 + whitening n D^2 (x2 flops each)"),
        Case("rmd", {}, "features", lambda w, b, tr: R.RMD(None),
             floor=lambda N, n, d, k: gemm(N, d, d) + 2 * gemm(n, d, d),
             note="floor: one covariance (the background one is it plus the means' scatter) + two whitenings"),
        Case("knn", {"k": 50}, "features", lambda w, b, tr: R.KNN(None, k=50),
             floor=lambda N, n, d, k: gemm(n, N, d), note="floor: all query-bank inner products"),
        Case("vim", {"dim": VIM_DIM}, "features",
             lambda w, b, tr: R.ViM(None, d=VIM_DIM, w=tt(w), b=tt(b)),
             floor=lambda N, n, d, k: gemm(N, d, d) + gemm(N + n, d, VIM_DIM),
             note=f"dim {VIM_DIM}; floor: covariance + projections on the principal subspace (eigensolver not counted)"),
        Case("gmm", {"n_components": 1, "covariance": "full", "dim": 4096}, "features",
             lambda w, b, tr: R.GMM(None, reg=1e-3 * float(tr.h.astype(np.float64).var(0).mean())),
             floor=lambda N, n, d, k: gemm(N, d, d) + k * gemm(n, d, d),
             note="one full Gaussian per class on all D (ours: n_components=1, dim >= D; their reg = our "
                  "reg_covar x mean variance); floor: covariances + K whitenings"),
        Case("she", {}, "features", lambda w, b, tr: R.SHE(None, linear_head(w, b))),
        Case("nnguide", {"k": 10}, "features", lambda w, b, tr: R.NNGuide(None, linear_head(w, b), k=10),
             floor=lambda N, n, d, k: gemm(n, N, d), note="floor: all query-bank inner products"),
        Case("fdbd", {}, "features", lambda w, b, tr: R.fDBD(None, linear_head(w, b))),
        Case("nci", {}, "features", lambda w, b, tr: R.NCI(None, linear_head(w, b), alpha=1e-4)),
        Case("dice", {"sparsity": 90.0}, "features", lambda w, b, tr: R.DICE(None, tt(w), tt(b), p=0.9)),
        Case("react", {"percentile": 90.0}, "maps",
             lambda w, b, tr: R.ReAct(None, linear_head(w, b, True), percentile=0.9)),
        Case("ash_p", {"percentile": 90.0}, "maps",
             lambda w, b, tr: R.ASH(None, linear_head(w, b, True), variant="ash-p", percentile=0.9), fit=False),
        Case("ash_b", {"percentile": 90.0}, "maps",
             lambda w, b, tr: R.ASH(None, linear_head(w, b, True), variant="ash-b", percentile=0.9), fit=False),
        Case("ash_s", {"percentile": 90.0}, "maps",
             lambda w, b, tr: R.ASH(None, linear_head(w, b, True), variant="ash-s", percentile=0.9), fit=False),
        Case("scale", {"percentile": 85.0}, "maps",
             lambda w, b, tr: R.SCALE(None, linear_head(w, b, True), percentile=0.85), fit=False),
        Case("vra", {"q_low": 60.0, "q_high": 90.0, "gamma": 0.0}, "maps",
             lambda w, b, tr: R.VRA(None, linear_head(w, b, True), lower_percentile=0.6, upper_percentile=0.9),
             note="not the same function: theirs clips to [alpha, beta], ours zeroes below alpha (the authors' code)"),
    ]


def load_before(rev: str):
    """ood_core as it was at git revision `rev`, imported as the package `ood_core_before`."""
    import importlib.util

    tmp = Path(tempfile.mkdtemp(prefix="ood-core-before-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "ood_core"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    spec = importlib.util.spec_from_file_location("ood_core_before", tmp / "ood_core" / "__init__.py",
                                                  submodule_search_locations=[str(tmp / "ood_core")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ood_core_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def _rel_diffs(a: list, b: list) -> np.ndarray:
    """|a_i - b_i| / |b_i| over the concatenated score arrays."""
    a, b = np.concatenate(a), np.concatenate(b)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


def max_rel_diff(a: list, b: list) -> float:
    """max_i |a_i - b_i| / |b_i|: strict where scores are far from 0, meaningless where a score is a difference
    of two large terms that nearly cancel (RMD, ViM); see max_diff_over_max."""
    return float(np.max(_rel_diffs(a, b)))


def median_rel_diff(a: list, b: list) -> float:
    """median_i |a_i - b_i| / |b_i|: the typical relative difference, robust to the few scores near 0."""
    return float(np.median(_rel_diffs(a, b)))


def max_diff_over_max(a: list, b: list) -> float:
    """max_i |a_i - b_i| / max_i |b_i|: the difference relative to the size of the scores."""
    a, b = np.concatenate(a), np.concatenate(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def bench_size(size: str, names: list[str], runs: int, before_rev: str | None, seed: int) -> list[dict]:
    import torch

    import ood_core

    n_train, dim = SIZES[size]
    t0 = time.perf_counter()
    train, test, ood, w, b = make_arrays(n_train, dim, seed)
    print(f"# {size}: {n_train} x {dim} train, {N_TEST} ID + {N_OOD} OOD queries, K={K} "
          f"(arrays in {time.perf_counter() - t0:.1f} s); torch {torch.__version__} threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}", flush=True)
    before = load_before(before_rev) if before_rev else None
    cases = [c for c in _cases() if not names or c.name in names]
    rows = []
    for case in cases:
        sets = [test, ood]
        ours = ours_runner(ood_core, case.name, case.params, train, sets, w, b)
        ref = ref_runner(case.kind, lambda: case.make(w, b, train), train, sets, case.fit)
        # warm-up on a slice: imports and first-call costs stay out of the timings
        small = Split(train.h[:2000], train.z[:2000], train.y[:2000])
        q = [Split(s.h[:200], s.z[:200], s.y[:200]) for s in sets]
        ours_runner(ood_core, case.name, case.params, small, q, w, b)()
        ref_runner(case.kind, lambda: case.make(w, b, small), small, q, case.fit)()
        flops = case.floor(n_train, N_TEST + N_OOD, dim, K)
        rates = [matmul_rate()]
        o_runs, r_runs, b_runs = [], [], []
        old = None
        if before is not None:  # the library at REV, timed in the same rounds
            old = ours_runner(before, case.name, case.params, train, sets, w, b)
            ours_runner(before, case.name, case.params, small, q, w, b)()
        for r in range(runs):
            order = [("ours", ours), ("ref", ref)] if r % 2 == 0 else [("ref", ref), ("ours", ours)]
            if old is not None:
                order.insert(r % 3, ("before", old))
            for who, fn in order:
                if flops and who == "ours":  # the floor's rate, measured right before each timed run of ours
                    rates.append(matmul_rate())
                wall, cpu, peak, (scores, parts) = measure(fn)
                {"ours": o_runs, "ref": r_runs, "before": b_runs}[who].append((wall, cpu, peak, scores, parts))
        rate = statistics.median(rates[1:] or rates)
        per_core = core_rate() if flops else 0.0
        o_scores, r_scores = o_runs[-1][3], r_runs[-1][3]
        med = lambda runs_, i: statistics.median(x[i] for x in runs_)  # noqa: E731
        row = {
            "size": size, "N": n_train, "D": dim, "detector": case.name, "params": case.params,
            "ours_s": med(o_runs, 0), "ref_s": med(r_runs, 0),
            "ours_runs_s": [round(x[0], 4) for x in o_runs], "ref_runs_s": [round(x[0], 4) for x in r_runs],
            "ours_cpu_s": med(o_runs, 1), "ref_cpu_s": med(r_runs, 1),
            "ours_peak_mib": max(x[2] for x in o_runs), "ref_peak_mib": max(x[2] for x in r_runs),
            # fit, score of the 10,000 ID queries, score of the 10,000 OOD queries (median over runs)
            "ours_parts_s": [statistics.median(x[4][i] for x in o_runs) for i in range(3)],
            "ref_parts_s": [statistics.median(x[4][i] for x in r_runs) for i in range(3)],
            "auroc_ours": auroc(*o_scores), "auroc_ref": auroc(*r_scores),
            "floor_gflop": flops / 1e9, "matmul_gflops": rate, "matmul_gflops_runs": [round(x, 1) for x in rates],
            "floor_s": flops / (rate * 1e9),
            # the same floor in CPU seconds: flops at the per-core rate, against our CPU seconds (all threads)
            "core_gflops": per_core, "floor_cpu_s": flops / (per_core * 1e9) if flops else 0.0,
            "load": os.getloadavg()[0], "note": case.note, "allocator": "default",
            # how far pytorch-ood's scores are from ours (float64 where ours is), e.g. their float32 rounding in fDBD
            # and ViM: meaningful where both compute the same function (not Mahalanobis and RMD, whose covariance
            # pytorch-ood leaves undivided by N, which scales the distances)
            "ref_max_diff_over_max": max_diff_over_max(r_scores, o_scores),
            "ref_median_rel_diff": median_rel_diff(r_scores, o_scores),
        }
        if before is not None:
            b_scores = b_runs[-1][3]
            row["before_s"] = med(b_runs, 0)
            row["before_max_rel_diff"] = max_rel_diff(o_scores, b_scores)
            row["before_max_diff_over_max"] = max_diff_over_max(o_scores, b_scores)
        rows.append(row)
        ratio = row["ref_s"] / row["ours_s"]
        floor = f"{row['ours_s'] / row['floor_s']:.2f}x floor" if flops else "no matmul floor"
        extra = (f", before {_t(row['before_s'])} against {_t(row['ours_s'])} now (max rel diff "
                 f"{row['before_max_rel_diff']:.1e}, {row['before_max_diff_over_max']:.1e} of the largest score)"
                 if before is not None else "")
        if flops:
            extra += f", CPU {row['ours_cpu_s']:.2f} s = {row['ours_cpu_s'] / row['floor_cpu_s']:.2f}x CPU floor"
        if row["ref_median_rel_diff"] < 1e-2:  # the same function, computed another way
            extra += (f"; theirs differ from ours by {row['ref_max_diff_over_max']:.1e} of the largest score at "
                      f"most, {row['ref_median_rel_diff']:.1e} relative in the median")
        else:
            extra += "; theirs are another function or scale of the features"
        extra += "; fit + ID + OOD queries: ours " + " + ".join(_t(x) for x in row["ours_parts_s"]) + \
            ", ref " + " + ".join(_t(x) for x in row["ref_parts_s"])
        print(f"{case.name:12s} ours {row['ours_s']:8.3f} s  ref {row['ref_s']:8.3f} s  ref/ours {ratio:6.2f}  "
              f"{floor}  AUROC {row['auroc_ours']:.4f} / {row['auroc_ref']:.4f}  peak +{row['ours_peak_mib']:.0f} / "
              f"+{row['ref_peak_mib']:.0f} MiB  ({rate:.0f} GFLOP/s, load {row['load']:.1f}){extra}", flush=True)
        del ours, ref, old, o_runs, r_runs, b_runs
        gc.collect()
    if len(cases) == len(_cases()):
        rows.append(bench_together(size, cases, train, [test, ood], w, b, runs))
    return rows


def bench_together(size: str, cases: list[Case], train: Split, sets: list[Split], w, b, runs: int) -> dict:
    """All shared detectors as the app runs them (pipeline.evaluate): each fitted, then every set scored by all of
    them at once through detectors.score_together, where KNN and NNGuide share one pass of their matrix product,
    within linalg.sharing(), where Mahalanobis, RMD and ViM compute the tied covariance once (and Mahalanobis and
    RMD one whitening of each set).
    The reference has no such path: its side of the comparison is the sum of its detectors' times."""
    from ood_core import linalg
    from ood_core.detectors import FitContext, create, score_together
    from ood_core.inference import Outputs

    ctx = FitContext(train=Outputs(train.z, train.h, train.y), model=Head(w, b), num_classes=K, seed=0)
    outs = [Outputs(s.z, s.h, s.y) for s in sets]

    def run():
        with linalg.sharing():
            dets = [create(c.name, **c.params).fit(ctx) for c in cases]
            return [score_together(dets, o) for o in outs]

    results = [measure(run) for _ in range(runs)]
    row = {"size": size, "detector": "_together", "N": len(train.h), "D": train.h.shape[1], "count": len(cases),
           "ours_s": statistics.median(r[0] for r in results), "ours_cpu_s": statistics.median(r[1] for r in results),
           "ours_peak_mib": max(r[2] for r in results), "ours_runs_s": [round(r[0], 3) for r in results],
           "load": os.getloadavg()[0]}
    print(f"all {len(cases)} together (score_together) ours {row['ours_s']:.2f} s, CPU {row['ours_cpu_s']:.2f} s, "
          f"peak +{row['ours_peak_mib']:.0f} MiB (load {row['load']:.1f})", flush=True)
    return row


def code_version() -> str:
    """The commit the library was measured at (with "+changes" when the working tree differs from it)."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "ood_core"], capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_rows(rows: list[dict], path: Path = RESULTS) -> None:
    """Merge rows into the results file: a row replaces the one of the same size (or e2e part) and detector."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    key = lambda r: (r.get("size"), r.get("detector"))  # noqa: E731
    new = {key(r) for r in rows}
    version = code_version()
    for r in rows:
        r.setdefault("code", version)
    data["rows"] = [r for r in data["rows"] if key(r) not in new] + rows
    data["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    path.write_text(json.dumps(data, indent=1))


# --- end to end -----------------------------------------------------------------------------------------

E2E_TRAIN, E2E_TEST, E2E_OOD = 10_000, 10_000, 2_000
E2E_OOD_SETS = ("gaussian", "rademacher", "blobs", "uniform")


def e2e_data(seed: int = 0):
    """The default experiment's trained model (digits, small CNN, 16 x 16) and a real-size data set for it:
    ID train and test drawn from the digits with random shifts of up to 2 pixels and pixel noise (std 0.05),
    normalised like the benchmark, and the 4 synthetic OOD sets of 2,000 images each."""
    from ood_core import pipeline
    from ood_core.data.registry import make_ood_set
    from ood_core.spec import Spec

    exp = pipeline.prepare(Spec(), cache_dir=ROOT / "data" / "cache", device="cpu", ood_sets=())
    bench = exp.bench
    rng = np.random.default_rng(seed)
    pixels = bench.to_pixels(np.concatenate([bench.train.x, bench.val.x, bench.test.x]))
    labels = np.concatenate([bench.train.y, bench.val.y, bench.test.y])

    def draw(n):
        idx = rng.integers(0, len(pixels), n)
        out = np.empty((n,) + pixels.shape[1:], np.float32)
        for i, j in enumerate(idx):
            dy, dx = rng.integers(-2, 3, 2)
            out[i] = np.roll(pixels[j], (dy, dx), axis=(1, 2))
        out += rng.normal(0.0, 0.05, out.shape).astype(np.float32)
        return bench.normalise(np.clip(out, 0.0, 1.0)), labels[idx]

    train, test = draw(E2E_TRAIN), draw(E2E_TEST)
    ood = {name: bench.normalise(make_ood_set(name, bench.to_pixels(test[0]), E2E_OOD, seed)) for name in E2E_OOD_SETS}
    return exp.model.eval(), train, test, ood


def e2e_ours(model, train, test, ood) -> dict:
    """One forward pass per split (run_inference), then every shared detector fitted once, and all of them scoring
    each set together (detectors.score_together, what the app's evaluate does)."""
    from ood_core import linalg
    from ood_core.detectors import FitContext, create, score_together
    from ood_core.inference import ModelAdapter, run_inference

    t0 = time.perf_counter()
    outs = {"train": run_inference(model, *train, keep_inputs=False), "test": run_inference(model, *test, keep_inputs=False)}
    for name, x in ood.items():
        outs[name] = run_inference(model, x, np.full(len(x), -1), keep_inputs=False)
    forward = time.perf_counter() - t0
    ctx = FitContext(train=outs["train"], model=ModelAdapter(model), num_classes=K, seed=0)
    fits, dets = {}, []
    with linalg.sharing():  # as pipeline.evaluate does: statistics and KNN/NNGuide's search computed once
        for case in _cases():
            t1 = time.perf_counter()
            dets.append(create(case.name, **case.params).fit(ctx))
            fits[case.name] = time.perf_counter() - t1
        t1 = time.perf_counter()
        for s in ["test", *ood]:
            score_together(dets, outs[s])
    return {"forward_s": forward, "fit_s": fits, "score_s": time.perf_counter() - t1, "detectors": len(dets),
            "total_s": time.perf_counter() - t0}


def e2e_reference(model, train, test, ood, names: list[str]) -> dict:
    """pytorch-ood as its documentation uses it: each detector built on the model, fitted with fit(loader) when it
    needs fitting (its own pass over the ID train set) and scoring every set with predict(x) in batches of 256."""
    import torch
    from pytorch_ood import detector as R
    from torch.utils.data import DataLoader, TensorDataset

    w = model.head.weight.detach().numpy()
    b = model.head.bias.detach().numpy()
    feats = model.features
    maps = lambda x: model.features(x)[:, :, None, None]  # noqa: E731
    head_maps = lambda x: model.head(x.flatten(1))  # noqa: E731
    tt = torch.from_numpy
    loader = DataLoader(TensorDataset(tt(train[0]), tt(train[1])), batch_size=256)
    makers = {
        "msp": lambda: R.MaxSoftmax(model), "max_logit": lambda: R.MaxLogit(model),
        "energy": lambda: R.EnergyBased(model), "entropy": lambda: R.Entropy(model),
        "gen": lambda: R.GEN(model, gamma=0.1), "temp_scaling": lambda: R.TemperatureScaling(model),
        "klm": lambda: R.KLMatching(model), "mahalanobis": lambda: R.Mahalanobis(feats), "rmd": lambda: R.RMD(feats),
        "knn": lambda: R.KNN(feats, k=50), "vim": lambda: R.ViM(feats, d=VIM_DIM, w=tt(w), b=tt(b)),
        "gmm": lambda: R.GMM(feats), "she": lambda: R.SHE(feats, model.head),
        "nnguide": lambda: R.NNGuide(feats, model.head, k=10), "fdbd": lambda: R.fDBD(feats, model.head),
        "nci": lambda: R.NCI(feats, model.head, alpha=1e-4), "dice": lambda: R.DICE(feats, tt(w), tt(b), p=0.9),
        "react": lambda: R.ReAct(maps, head_maps, percentile=0.9),
        "ash_p": lambda: R.ASH(maps, head_maps, variant="ash-p", percentile=0.9),
        "ash_b": lambda: R.ASH(maps, head_maps, variant="ash-b", percentile=0.9),
        "ash_s": lambda: R.ASH(maps, head_maps, variant="ash-s", percentile=0.9),
        "scale": lambda: R.SCALE(maps, head_maps, percentile=0.85),
        "vra": lambda: R.VRA(maps, head_maps, lower_percentile=0.6, upper_percentile=0.9),
    }
    per = {}
    t0 = time.perf_counter()
    for name in names:
        t1 = time.perf_counter()
        det = makers[name]()
        if getattr(det, "requires_fit", False) or name in ("react", "vra", "klm", "temp_scaling"):
            det.fit(loader)
        with torch.no_grad():
            for x in [test[0], *ood.values()]:
                for i in range(0, len(x), 256):
                    det.predict(tt(x[i:i + 256]))
        per[name] = time.perf_counter() - t1
    return {"detectors_s": per, "total_s": time.perf_counter() - t0}


def run_e2e(who: str, part: str) -> dict:
    import torch

    names = [c.name for c in _cases()]
    i, n = (int(v) for v in part.split("/"))
    names = names[(i - 1) * len(names) // n: i * len(names) // n]
    model, train, test, ood = e2e_data()
    print(f"# e2e {who} part {part}: {len(train[0])} train, {len(test[0])} test, {len(ood)} OOD sets of {E2E_OOD}; "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}", flush=True)
    c0 = time.process_time()
    res = e2e_ours(model, train, test, ood) if who == "ours" else e2e_reference(model, train, test, ood, names)
    res.update(size="e2e", detector=f"{who} {part}", who=who, part=part, cpu_s=time.process_time() - c0,
               load=os.getloadavg()[0])
    print(json.dumps(res, indent=1), flush=True)
    return res


# --- the report -------------------------------------------------------------------------------------------

def _t(seconds: float) -> str:
    """A time for the table: milliseconds below 0.1 s."""
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def _split(parts) -> str:
    """A row's fit and scoring (both query sets) times, medians over its runs: "fit / scoring"."""
    return f"{_t(parts[0])} / {_t(parts[1] + parts[2])}" if parts else "—"


def report(path: Path = RESULTS) -> str:
    """The Markdown table and the figures. A floor uses the float32 matmul rate measured right before each timed
    run of ours (their median), so it sees the load the detector saw; the best rate at each size is printed too."""
    rows = json.loads(path.read_text())["rows"]
    lines = ["| size (N x D) | detector | ours | pytorch-ood | speed-up | fit / scoring, ours | "
             "fit / scoring, theirs | ours / floor | floor | AUROC ours / theirs | peak MiB ours / theirs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    totals, notes = {}, {}
    order = {c.name: i for i, c in enumerate(_cases())}
    for size in SIZES:
        at = sorted((r for r in rows if r.get("size") == size and r["detector"] in order),
                    key=lambda r: order[r["detector"]])
        if not at:
            continue
        rate = max(r["matmul_gflops"] for r in at)
        for r in at:
            floor_s = r["floor_gflop"] / r["matmul_gflops"]
            lines.append(f"| {r['N']:,} x {r['D']} | `{r['detector']}` | {_t(r['ours_s'])} | {_t(r['ref_s'])} | "
                         f"{r['ref_s'] / r['ours_s']:.2f}x | {_split(r['ours_parts_s'])} | "
                         f"{_split(r['ref_parts_s'])} | " + (f"{r['ours_s'] / floor_s:.2f}" if floor_s else "—"))
            lines[-1] += (f" | {_t(floor_s)} | " if floor_s else " | — | ") + (
                f"{r['auroc_ours']:.4f} / {r['auroc_ref']:.4f} | {r['ours_peak_mib']:.0f} / {r['ref_peak_mib']:.0f} |")
            t = totals.setdefault(size, [0.0, 0.0, 0, rate, [], 0.0, 0.0])
            t[0] += r["ours_s"]
            t[1] += r["ref_s"]
            t[2] += 1
            t[4].append(r["load"])
            t[5] += r["ours_cpu_s"]
            t[6] += r["ref_cpu_s"]
            if r.get("note"):
                notes[r["detector"]] = r["note"]
    lines.append("")
    for size, (o, t, n, rate, loads, o_cpu, t_cpu) in totals.items():
        # CPU seconds (all threads) beside the wall times: less sensitive to the load than wall time, not immune (a
        # loaded machine also inflates spinning threads and cache misses)
        together = [r for r in rows if r.get("size") == size and r["detector"] == "_together"]
        lines.append(f"- all {n} shared detectors at {SIZES[size][0]:,} x {SIZES[size][1]}, each alone: ours {o:.2f} "
                     f"s, pytorch-ood {t:.2f} s ({t / o:.2f}x); CPU seconds {o_cpu:.2f} / {t_cpu:.2f} "
                     f"({t_cpu / o_cpu:.2f}x); best matmul rate {rate:.0f} GFLOP/s; load average "
                     f"{min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores")
        if together:
            g = together[-1]
            lines.append(f"  - together as the app scores them (one `score_together` call per set, KNN and NNGuide "
                         f"sharing one matrix product): ours {g['ours_s']:.2f} s against pytorch-ood's {t:.2f} s "
                         f"({t / g['ours_s']:.2f}x); CPU seconds {g['ours_cpu_s']:.2f} / {t_cpu:.2f} "
                         f"({t_cpu / g['ours_cpu_s']:.2f}x); load {g['load']:.1f}")
    knn = [r for r in rows if r.get("size") == "large" and r.get("detector") == "knn"]
    if knn:
        r = knn[-1]
        lines.append(f"- KNN, 10,000 queries against the 50,000 x 2048 bank: {r['ours_parts_s'][1]:.1f} s "
                     f"(fit {r['ours_parts_s'][0]:.2f} s), peak memory added {r['ours_peak_mib']:.0f} MiB "
                     f"during fit + 20,000 queries")
    e2e = [r for r in rows if r.get("size") == "e2e"]
    ours = [r for r in e2e if r["who"] == "ours"]
    ref = [r for r in e2e if r["who"] == "reference"]
    if ref:  # the parts of the latest reference run only (a run split i/n replaces one split differently)
        ref = [r for r in ref if r["part"].split("/")[1] == ref[-1]["part"].split("/")[1]]
    if ours and ref:
        o, t = ours[-1]["total_s"], sum(r["total_s"] for r in ref)
        lines.append(f"- end to end ({E2E_TEST:,} test + {len(E2E_OOD_SETS)} OOD sets of {E2E_OOD:,}, "
                     f"{E2E_TRAIN:,} train, {ours[-1].get('detectors') or len(ours[-1]['detectors_s'])} detectors, one run each): ours {o:.1f} s "
                     f"(forward passes {ours[-1]['forward_s']:.1f} s), pytorch-ood {t:.1f} s ({t / o:.1f}x); "
                     f"CPU seconds {ours[-1]['cpu_s']:.0f} / {sum(r['cpu_s'] for r in ref):.0f}")
    if notes:
        lines += ["", "Notes:"] + [f"- `{k}`: {v}" for k, v in notes.items()]
    lines += ["", "Each row's runs, CPU seconds, fit/score split, load average, matmul rates and the commit it measured "
              "are in docs/bench/reference.json. Both libraries run with the process's default allocator. Peak MiB "
              "is the growth of the resident set during the call, after malloc_trim(0) returned freed memory (rows "
              "without `\"allocator\"` there were measured with every large allocation a fresh mapping, which "
              "charged float64 code twice the page faults of float32 code). docs/bench/scaling.png has exact peaks."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", choices=list(SIZES), help="array size(s) to run (default: small)")
    ap.add_argument("--detectors", default="", help="comma-separated subset of the shared detectors")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--before", metavar="REV",
                    help="also time ood_core as of git revision REV in the same rounds, and compare its scores")
    ap.add_argument("--e2e", choices=("ours", "reference"), help="the end-to-end case instead of the arrays")
    ap.add_argument("--part", default="1/1", help="with --e2e reference: which slice of the detectors, i/n")
    ap.add_argument("--report", action="store_true", help="print the table and write docs/bench/reference.md")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.report:
        text = report()
        (OUT / "reference.md").write_text(text + "\n")
        print(text)
        return 0
    if args.e2e:
        rows = [run_e2e(args.e2e, args.part if args.e2e == "reference" else "1/1")]
    else:
        names = [n for n in args.detectors.split(",") if n]
        rows = [r for size in (args.size or ["small"]) for r in bench_size(size, names, args.runs, args.before, args.seed)]
    if not args.no_save:
        save_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
