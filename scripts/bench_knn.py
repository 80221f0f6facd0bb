"""Time KNN scoring against a large feature bank: 10,000 queries vs a 100,000 x 512 float32 bank (seeded).

Each back end runs in a fresh subprocess, so its resident-memory high-water mark (VmHWM) is its own. The
script reports the median of 3 runs in seconds and the peak resident memory added by the search itself
(peak VmHWM during the runs minus the resident size once bank and queries exist). Targets: <= 5 s and
<= 1 GiB extra on 2 cores.

    PYTHONPATH=. .venv/bin/python scripts/bench_knn.py                # numpy, the default back end
    PYTHONPATH=. .venv/bin/python scripts/bench_knn.py --backend numpy --backend faiss --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 5.0
TARGET_BYTES = 1 << 30


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _unit_rows(n: int, d: int, rng, block: int = 8192):
    """n seeded Gaussian rows of dimension d, L2-normalised, filled block by block (no full-size temporaries)."""
    import numpy as np

    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, block):
        b = rng.standard_normal((min(block, n - i), d), dtype=np.float32)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        out[i:i + len(b)] = b
    return out


def child(args) -> dict:
    """One back end, in this (fresh) process: build the data, then time `runs` searches."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from ood_core import neighbours as F

    rng = np.random.default_rng(args.seed)
    bank = _unit_rows(args.bank, args.dim, rng)
    queries = _unit_rows(args.queries, args.dim, rng)
    backend = args.backend
    F.kth_neighbour_distance(queries[:64], bank[:1000], args.k, backend=backend)  # load libraries, warm up
    reset = _reset_peak()
    base_rss = _status_kib("VmRSS")
    base_hwm = _status_kib("VmHWM")
    times, cpu = [], []
    result = None
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result = F.kth_neighbour_distance(queries, bank, args.k, backend=backend)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - c0)
    peak_hwm = _status_kib("VmHWM")
    # exactness spot check: float64 brute force on a few queries
    sub = queries[:200].astype(np.float64)
    d = np.sqrt(np.maximum((sub ** 2).sum(1)[:, None] + (bank.astype(np.float64) ** 2).sum(1)[None]
                           - 2.0 * sub @ bank.T.astype(np.float64), 0.0))
    exact = np.partition(d, args.k - 1, axis=1)[:, args.k - 1]
    return {
        "backend": backend, "bank": [args.bank, args.dim], "queries": args.queries, "k": args.k,
        "threads": os.cpu_count(), "runs_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        # CPU seconds of all threads: on a busy machine, median_cpu_s / threads estimates the quiet wall time
        "median_cpu_s": round(statistics.median(cpu), 3), "load_avg_1min": os.getloadavg()[0],
        # with the reset, peak - RSS before the runs; without it, the peak can only be bounded from above
        "peak_added_mib": round((peak_hwm - (base_rss if reset else min(base_rss, base_hwm))) / 1024, 1),
        "peak_reset": reset,
        "max_abs_error_vs_float64": float(np.abs(result[:200] - exact).max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", action="append", choices=("numpy", "faiss"),
                    help="back end(s) to time, each in its own subprocess (default: numpy, the library's default)")
    ap.add_argument("--bank", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=50, help="the KNN detector's default k")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object per back end")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.backend = args.backend[0]
        print(json.dumps(child(args)))
        return 0
    ok = True
    for backend in args.backend or ["numpy"]:
        cmd = [sys.executable, __file__, "--child", "--backend", backend, "--bank", str(args.bank),
               "--queries", str(args.queries), "--dim", str(args.dim), "--k", str(args.k),
               "--runs", str(args.runs), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{backend}: failed\n{proc.stderr}", file=sys.stderr)
            ok = False
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["meets_targets"] = res["median_s"] <= TARGET_SECONDS and res["peak_added_mib"] * 2**20 <= TARGET_BYTES
        ok &= res["meets_targets"]
        if args.json:
            print(json.dumps(res))
        else:
            print(f"{res['backend']:6s} {args.queries} queries x {args.bank}x{args.dim} bank, k={args.k}: "
                  f"median {res['median_s']:.2f} s of {res['runs_s']} (CPU {res['median_cpu_s']:.2f} s, load "
                  f"{res['load_avg_1min']:.1f}), peak added RSS {res['peak_added_mib']:.0f} MiB, "
                  f"max |error| vs float64 {res['max_abs_error_vs_float64']:.1e}  "
                  f"[{'meets' if res['meets_targets'] else 'MISSES'} <= {TARGET_SECONDS:.0f} s, <= 1 GiB]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
