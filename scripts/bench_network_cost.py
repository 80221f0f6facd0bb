"""What the detectors that run the network again cost, in forward passes of the model: estimates.NETWORK_FORWARDS.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_network_cost.py [--runs 3] [--json docs/bench/network_cost.json]
    PYTHONPATH=. .venv/bin/python scripts/bench_network_cost.py --report docs/bench/network_cost.json

On the default experiment (digits at 16 px, the small CNN) and on the MNIST sample at 28 px, each network-running
detector is fitted and scored as the app does (Experiment.fit_and_score: ID test and every OOD set) at its default
parameters, the median of --runs runs after an untimed one. Its cost per image (the seconds divided by the images it
runs the network on: the scored ones, plus the ID training / validation images its fit reads, estimates.FIT_SPLITS)
is divided by the model's own forward pass per image, timed as the estimates time it (estimates.time_forward, the
median of --runs timings), in the same run: the detector's cost in forward passes. MC dropout is timed at 20 and 100
passes with its shortcut (the features once, then dropout and head), and at 20 passes of the whole network
(detectors.uncertainty.mc_dropout_logits with shortcut=False, what a model with dropout inside its features costs).
CROSR needs a network of its own regime, trained here once per dataset (cached in a temporary folder).

The check: a CIFAR-style ResNet-18 on the digits at 16 px (a model about 23 times as costly as the small CNN),
trained briefly here, with each detector's time against two estimates: the forward passes above times the ResNet's
own timed forward pass (what estimates.detector says now), and the small CNN's rates scaled by the image size alone
(RATES_BEFORE: what it said before it timed the model). --report prints the tables of a JSON with today's estimates.
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
from ood_core.detectors.uncertainty import _private, mc_dropout_logits  # noqa: E402

CASES = (("digits", 16, 30), ("mnist-sample", 28, 15))  # dataset, image side, epochs (the datasets' defaults)
PLAIN = ("odin", "mahalanobis_pre", "mc_dropout", "gram", "knn_conv")
CHECK = ("digits", 16, 2, "resnet18_cifar", ("odin", "mahalanobis_pre", "gram", "knn_conv"))


def images(exp, name: str) -> int:
    return scored(exp) + sum(len(exp.outputs[s]) for s in estimates.FIT_SPLITS.get(name, ()))


def scored(exp) -> int:
    return sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))


def median_time(fn, runs: int) -> float:
    fn()  # untimed: first-call costs (hooks, allocations)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_s(exp, runs: int) -> float:
    x = exp.bench.test.images[:estimates.PROBE_IMAGES]
    return statistics.median(estimates.time_forward(exp.adapter, x) for _ in range(runs))


def full_passes(exp, passes: int):
    """MC dropout's logits without its shortcut, on every scored split: the whole network on each pass."""
    twin = _private(exp.adapter)
    return lambda: [mc_dropout_logits(twin, exp.outputs[s].inputs, passes, 0, shortcut=False)
                    for s in ("test", *exp.ood_names)]


def measure(exp, names, runs: int, dataset: str, side: int, model: str) -> list[dict]:
    fwd = forward_s(exp, runs)
    print(f"  {dataset} {side} px {model}: forward pass {fwd * 1e3:.3f} ms per image", file=sys.stderr, flush=True)
    jobs = [(name, default_params(name), lambda n=name: exp.fit_and_score(n, default_params(n))) for name in names]
    if "mc_dropout" in names:
        p100 = {**default_params("mc_dropout"), "passes": 100}
        jobs += [("mc_dropout", p100, lambda: exp.fit_and_score("mc_dropout", p100)),
                 ("mc_dropout_full", {"passes": 20}, full_passes(exp, 20))]
    rows = []
    for name, params, fn in jobs:
        seconds = median_time(fn, runs)
        n = images(exp, name.replace("_full", ""))
        rows.append({"dataset": dataset, "side": side, "model": model, "detector": name,
                     "passes": params.get("passes"), "seconds": seconds, "images": n, "forward_s": fwd,
                     "forwards": seconds / (n * fwd)})
        print(f"  {name} {params.get('passes') or ''}: {seconds:.2f} s on {n:,} images -> "
              f"{rows[-1]['forwards']:.2f} forward passes per image", file=sys.stderr, flush=True)
    return rows


def check(cache: str, runs: int) -> list[dict]:
    dataset, side, epochs, model, names = CHECK
    spec = Spec(dataset=dataset, image_size=side, model=model, training=TrainConfig(epochs=epochs))
    exp = pipeline.prepare(spec, cache_dir=cache, device="cpu")
    return [{**r, "size_factor": estimates._size(spec)} for r in measure(exp, names, runs, dataset, side, model)]


# estimates.NETWORK_S_PER_IMAGE before the estimates timed the model (commit 1c48805): seconds per image at 16 px of
# the small CNN, times the size factor, whatever the model
RATES_BEFORE = {"odin": 2.2e-4, "mahalanobis_pre": 2.6e-4, "mc_dropout": 8e-5, "gram": 3.2e-4, "crosr": 1.2e-4,
                "knn_conv": 1.3e-4}


def report(data: dict) -> str:
    """The tables, from measured rows and today's estimates: forward passes per image against estimates', and the
    check's seconds against both estimates."""
    rows, checked = data["rows"], data["check"]
    cases = list(dict.fromkeys((r["dataset"], r["side"]) for r in rows))
    keys = list(dict.fromkeys((r["detector"], r["passes"]) for r in rows))
    lines = ["| detector | " + " | ".join(f"{d} {s} px" for d, s in cases) + " | estimates |",
             "|---|" + "---|" * len(cases) + "---|"]
    for name, passes in keys:
        cells = [next((f"{r['forwards']:.2f}" for r in rows if (r["detector"], r["passes"]) == (name, passes)
                       and (r["dataset"], r["side"]) == c), "-") for c in cases]
        label = name if name in estimates.NETWORK_FORWARDS else f"{name} ({passes} passes)"
        est = estimates.network_forwards(name.replace("_full", ""), {"passes": passes}, not name.endswith("_full"))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {est:.2f} |")
    fwd = {c: next(r["forward_s"] for r in rows if (r["dataset"], r["side"]) == c) for c in cases}
    lines += ["", "Forward pass per image (small CNN, cross-entropy): " + ", ".join(
        f"{d} {s} px {f * 1e3:.3f} ms" for (d, s), f in fwd.items())
        + f" (estimates.REFERENCE_FORWARD_S: {estimates.REFERENCE_FORWARD_S * 1e3:.3f} ms at 16 px)", ""]
    if checked:
        c = checked[0]
        lines += [f"| {c['model']}, {c['dataset']} {c['side']} px | measured | estimate now (its timed forward "
                  f"pass, {c['forward_s'] * 1e3:.2f} ms) | ratio | estimate before (the small CNN's rate) | ratio |",
                  "|---|---|---|---|---|---|"]
        for r in checked:
            forwards = estimates.network_forwards(r["detector"], default_params(r["detector"]))
            now = forwards * r["forward_s"] * r["images"]
            before = RATES_BEFORE[r["detector"]] * r["size_factor"] * r["images"]
            lines.append(f"| {r['detector']} | {r['seconds']:.2f} s | {now:.2f} s | {now / r['seconds']:.2f} | "
                         f"{before:.2f} s | {before / r['seconds']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, help="print the tables of an earlier run's JSON, measure nothing")
    a = ap.parse_args()
    if a.report:
        print(report(json.loads(Path(a.report).read_text())))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for dataset, side, epochs in CASES:
            for regime, names in (("ce", PLAIN), ("crosr", ("crosr",))):
                spec = Spec(dataset=dataset, image_size=side, training=TrainConfig(epochs=epochs, regime=regime))
                exp = pipeline.prepare(spec, cache_dir=cache, device="cpu")
                rows += measure(exp, names, a.runs, dataset, side, f"small_cnn ({regime})")
        checked = check(cache, a.runs)
    data = {"runs": a.runs, "rows": rows, "check": checked}
    print(report(data))
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
