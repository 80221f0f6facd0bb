"""How the detectors scale: time and peak memory of fit + score against bank size N, dimension D and queries n.

The distance/density family (Mahalanobis, RMD, KNN, ViM, Residual, GMM, SHE, NNGuide, fDBD, NCI) over a bank of
5k..200k at D = 512 and over D = 128..2048 at N = 50k, scoring 10,000 queries; a few query counts at 50k x 512;
and the cheap logit and activation detectors at a few sizes, so that `ood_core/costs.py` covers every post-hoc
detector. Each point is one fit + score in this process (default parameters, K = 10, the arrays of
scripts/bench_reference.py), with the peak resident memory it added. Points accumulate in
docs/bench/scaling.json; `--plot` draws docs/bench/scaling.png and `--fit` refits ood_core/costs.json.

    PYTHONPATH=. .venv/bin/python scripts/bench_scaling.py --grid bank      # ~4 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python scripts/bench_scaling.py --grid dim
    PYTHONPATH=. .venv/bin/python scripts/bench_scaling.py --grid query --grid cheap
    PYTHONPATH=. .venv/bin/python scripts/bench_scaling.py --plot --fit
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_reference as B  # noqa: E402  (the arrays, the memory probe and the matmul rate)

RESULTS = B.OUT / "scaling.json"
FAMILY = ("mahalanobis", "rmd", "knn", "vim", "residual", "gmm", "she", "nnguide", "fdbd", "nci")
CHEAP = ("msp", "max_logit", "energy", "entropy", "gen", "temp_scaling", "klm", "cosine", "react", "ash_p",
         "ash_b", "ash_s", "scale", "dice", "vra")
GRIDS = {
    "bank": [(n, 512, 10_000) for n in (5_000, 10_000, 20_000, 50_000, 100_000, 200_000)],
    "dim": [(50_000, d, 10_000) for d in (128, 256, 512, 1024, 2048)],
    "query": [(50_000, 512, n) for n in (1_000, 3_000, 30_000)],
    "cheap": [(n, d, q) for n, d, q in ((5_000, 128, 2_000), (20_000, 512, 10_000), (50_000, 2048, 10_000),
                                         (50_000, 512, 40_000))],
}


def run_point(n_bank: int, dim: int, n_query: int, names) -> list[dict]:
    from ood_core.detectors import FitContext, create
    from ood_core.inference import Outputs

    train, test, _, w, b = B.make_arrays(n_bank, dim, seed=0, n_test=n_query, n_ood=0)
    head = B.Head(w, b)
    ctx = FitContext(train=Outputs(train.z, train.h, train.y), model=head, num_classes=B.K, seed=0)
    queries = Outputs(test.z, test.h, test.y)
    small = FitContext(train=Outputs(train.z[:500], train.h[:500], train.y[:500]), model=head, num_classes=B.K)
    rate = B.matmul_rate()
    rows = []
    for name in names:
        create(name).fit(small).score(Outputs(test.z[:50], test.h[:50], test.y[:50]))  # imports, first calls
        wall, cpu, peak, _ = B.measure(lambda: create(name).fit(ctx).score(queries))
        rows.append({"detector": name, "N": n_bank, "D": dim, "n": n_query, "seconds": wall, "cpu_s": cpu,
                     "peak_mib": peak, "matmul_gflops": rate, "load": os.getloadavg()[0]})
        print(f"{name:12s} N={n_bank:>7,} D={dim:>5} n={n_query:>6,}: {wall:8.3f} s (CPU {cpu:7.2f} s), "
              f"peak +{peak:6.0f} MiB  [{rate:.0f} GFLOP/s, load {rows[-1]['load']:.1f}]", flush=True)
        gc.collect()
    return rows


def save(rows: list[dict]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    key = lambda r: (r["detector"], r["N"], r["D"], r["n"])  # noqa: E731
    new = {key(r) for r in rows}
    data["rows"] = [r for r in data["rows"] if key(r) not in new] + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1))


def plot(rows: list[dict], path: Path = B.OUT / "scaling.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (axis, fixed, label) in enumerate((("N", {"D": 512, "n": 10_000}, "bank size N (D = 512, n = 10,000)"),
                                                ("D", {"N": 50_000, "n": 10_000}, "dimension D (N = 50,000, n = 10,000)"))):
        for name in FAMILY:
            pts = sorted((r[axis], r["seconds"], r["peak_mib"]) for r in rows
                         if r["detector"] == name and all(r[k] == v for k, v in fixed.items()))
            if len(pts) < 2:
                continue
            x = [p[0] for p in pts]
            axes[0, col].plot(x, [p[1] for p in pts], marker="o", label=name)
            axes[1, col].plot(x, [max(p[2], 1.0) for p in pts], marker="o", label=name)
        for row, what in enumerate(("fit + score, seconds", "peak memory added, MiB")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(what)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=2)
    rates = [r["matmul_gflops"] for r in rows]
    fig.suptitle(f"Distance and density detectors, {os.cpu_count()} CPU cores "
                 f"(float32 matmul {np.median(rates):.0f} GFLOP/s, median over the run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="append", choices=list(GRIDS), default=[])
    ap.add_argument("--detectors", default="", help="comma-separated subset (default: the grid's detectors)")
    ap.add_argument("--plot", action="store_true", help="draw docs/bench/scaling.png from docs/bench/scaling.json")
    ap.add_argument("--fit", action="store_true", help="refit ood_core/costs.json from docs/bench/scaling.json")
    args = ap.parse_args(argv)
    only = [n for n in args.detectors.split(",") if n]
    for grid in args.grid:
        names = only or (CHEAP + FAMILY if grid == "cheap" else FAMILY)
        for n_bank, dim, n_query in GRIDS[grid]:
            t0 = time.perf_counter()
            save(run_point(n_bank, dim, n_query, names))
            print(f"# point done in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    if args.plot:
        plot(rows)
    if args.fit:
        from ood_core import costs

        table = costs.fit(rows, float(np.median([r["matmul_gflops"] for r in rows])))
        costs.TABLE.write_text(json.dumps(table, indent=1) + "\n")
        worst = {}
        for r in rows:
            costs.table.cache_clear()
            est = costs.expected_seconds(r["detector"], r["N"], r["n"], r["D"])
            if est is not None:
                worst[r["detector"]] = max(worst.get(r["detector"], 0.0), abs(np.log(est / r["seconds"])))
        print(f"wrote {costs.TABLE}: " + ", ".join(f"{k} within x{np.exp(v):.1f}" for k, v in sorted(worst.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
