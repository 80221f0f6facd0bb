"""What the detectors that run the network again cost per image: ood_core/estimates.py's NETWORK_S_PER_IMAGE.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_network_cost.py [--runs 3] [--json docs/bench/network_cost.json]

On the default experiment (digits at 16 px, the small CNN) and on the MNIST sample at 28 px, each network-running
detector is fitted and scored as the app does (Experiment.fit_and_score: ID test and every OOD set) at its default
parameters, the median of --runs runs after an untimed one. Its rate is the seconds divided by the images it runs the
network on (the scored ones, plus the ID training / validation images its fit reads: estimates.FIT_SPLITS) and by the
size factor of the experiment (estimates.size_factor: 1 at 16 px), as estimates.detector multiplies them back.
CROSR needs a network of its own regime, trained here once per dataset (cached in a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_core import Spec, TrainConfig, estimates, pipeline  # noqa: E402
from ood_core.detectors import default_params  # noqa: E402

CASES = (("digits", 16, 30), ("mnist-sample", 28, 15))  # dataset, image side, epochs (the datasets' defaults)
PLAIN = ("odin", "mahalanobis_pre", "mc_dropout", "gram", "knn_conv")


def images(exp, name: str) -> int:
    scored = sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))
    return scored + sum(len(exp.outputs[s]) for s in estimates.FIT_SPLITS.get(name, ()))


def timed(exp, name: str, runs: int) -> float:
    exp.fit_and_score(name, default_params(name))  # untimed: first-call costs (hooks, allocations)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        exp.fit_and_score(name, default_params(name))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for dataset, side, epochs in CASES:
            for regime, names in (("ce", PLAIN), ("crosr", ("crosr",))):
                spec = Spec(dataset=dataset, image_size=side, training=TrainConfig(epochs=epochs, regime=regime))
                exp = pipeline.prepare(spec, cache_dir=cache, device="cpu")
                factor = estimates._size(spec)
                for name in names:
                    seconds = timed(exp, name, a.runs)
                    n = images(exp, name)
                    rate = seconds / (n * factor)
                    rows.append({"dataset": dataset, "side": side, "detector": name, "seconds": seconds,
                                 "images": n, "size_factor": factor, "rate": rate,
                                 "registry_rate": estimates.NETWORK_S_PER_IMAGE[name]})
                    print(f"  {dataset} {side} px {name}: {seconds:.2f} s on {n:,} images -> {rate:.2g} s/image "
                          f"(estimates: {estimates.NETWORK_S_PER_IMAGE[name]:g})", file=sys.stderr, flush=True)
    lines = ["| detector | " + " | ".join(f"{d} {s} px: s / image at 16 px" for d, s, _ in CASES) + " | estimates |",
             "|---|" + "---|" * len(CASES) + "---|"]
    for name in (*PLAIN, "crosr"):
        cells = [next(f"{r['rate']:.2g}" for r in rows if r["detector"] == name and r["dataset"] == d)
                 for d, _, _ in CASES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {estimates.NETWORK_S_PER_IMAGE[name]:g} |")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": a.runs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
