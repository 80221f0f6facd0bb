"""Same spec, same weights: train alone, beside other trainings, and under other OMP_NUM_THREADS; report max |Δw|.

    PYTHONPATH=. .venv/bin/python scripts/bench_reproducibility.py [--epochs 30] [--models small_cnn,deep_svdd]

Each comparison trains with retrain=True into a throw-away cache, so nothing is read from disk. Issue 10's
figure: max |Δw| = 0 for alone vs 3 concurrent trainings and for OMP_NUM_THREADS 1 vs 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spec(model: str, seed: int, epochs: int):
    from ood_core import Spec
    from ood_core.spec import TrainConfig

    setting = "ood" if model == "small_cnn" else "nd"
    return Spec(setting=setting, model=model, seed=seed, training=TrainConfig(epochs=epochs))


def train_weights(model: str, seed: int, epochs: int, cache: str) -> dict:
    """Train one spec from scratch; its state_dict as numpy arrays."""
    from ood_core.data import build_benchmark
    from ood_core.models import get_model

    spec = _spec(model, seed, epochs)
    res = get_model(spec, build_benchmark(spec, ()), cache_dir=cache, device="cpu", retrain=True)
    return {k: v.detach().cpu().double().numpy() for k, v in res.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    import numpy as np

    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a)


def _child(model: str, seed: int, epochs: int, out: str) -> None:
    import numpy as np

    with tempfile.TemporaryDirectory() as cache:
        np.savez(out, **train_weights(model, seed, epochs, cache))


def in_subprocess(model: str, seed: int, epochs: int, omp: int) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "w.npz")
        env = {**os.environ, "OMP_NUM_THREADS": str(omp), "MKL_NUM_THREADS": str(omp)}
        subprocess.run([sys.executable, __file__, "--child", model, str(seed), str(epochs), out], check=True, env=env)
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--models", default="small_cnn,deep_svdd,autoencoder,geotrans")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], int(a.child[1]), int(a.child[2]), a.child[3])
        return
    rows = []
    for model in a.models.split(","):
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            alone = {s: train_weights(model, s, a.epochs, cache) for s in (11, 12, 13)}
            t_alone = time.perf_counter() - t0
            together: dict = {}
            threads = [threading.Thread(target=lambda s=s: together.__setitem__(s, train_weights(model, s, a.epochs, cache)))
                       for s in (11, 12, 13)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_together = time.perf_counter() - t0
        d_conc = max(max_diff(alone[s], together[s]) for s in alone)
        omp1 = in_subprocess(model, 11, a.epochs, 1)
        omp2 = in_subprocess(model, 11, a.epochs, 2)
        rows.append({"model": model, "epochs": a.epochs, "alone_vs_3_concurrent": d_conc,
                     "omp1_vs_omp2": max_diff(omp1, omp2), "omp1_vs_in_process": max_diff(omp1, alone[11]),
                     "seconds_3_alone": round(t_alone, 1), "seconds_3_concurrent": round(t_together, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| model | epochs | max abs dw: alone vs 3 concurrent | OMP 1 vs 2 | subprocess vs in-process | 3 trainings alone / at once (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['epochs']} | {r['alone_vs_3_concurrent']:g} | {r['omp1_vs_omp2']:g} | "
              f"{r['omp1_vs_in_process']:g} | {r['seconds_3_alone']} / {r['seconds_3_concurrent']} |")


if __name__ == "__main__":
    main()
