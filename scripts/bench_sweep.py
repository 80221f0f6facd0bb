"""A sweep of one detector's parameter (the Sensitivity page) at a real size: `compare.sweep`, which shares work
between the values (KNN's and NNGuide's normalised bank and one query-bank pass per split for all values, ViM's
covariance), against fitting and scoring each value alone, as the sweep did before.

    PYTHONPATH=. .venv/bin/python scripts/bench_sweep.py [--size medium] [--detector knn --param k --values 1,5,10,20,50,100,200]

The features are scripts/bench_reference.py's (penultimate-like, float32, K = 10), put in place of the default
experiment's outputs: N train, 10,000 ID test, one OOD set of 10,000 (detectors that read the model's head, such as
ViM, only at the 128-d size: the default model's). Prints both times (one run each, ours first,
then alone), their ratio, the peak resident memory each added, and whether every row is the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    import bench_reference as B  # noqa: E402  (its arrays and its memory measurement)

    from ood_core import compare, metrics, pipeline
    from ood_core.inference import Outputs
    from ood_core.spec import Spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=list(B.SIZES))
    ap.add_argument("--detector", default="knn")
    ap.add_argument("--param", default="k")
    ap.add_argument("--values", default="1,5,10,20,50,100,200")
    args = ap.parse_args(argv)
    values = [type_of(v) for v in args.values.split(",")]

    n, dim = B.SIZES[args.size]
    from ood_core.detectors import REGISTRY

    if "model" in REGISTRY[args.detector].needs and dim != 128:
        raise SystemExit(f"{args.detector} reads the default model's head, whose features have 128 dimensions: "
                         "use --size small")
    train, test, ood, w, b = B.make_arrays(n, dim)
    exp = pipeline.prepare(Spec(), device="cpu")
    out = {"train": Outputs(train.z, train.h, train.y), "val": Outputs(test.z[:0], test.h[:0], test.y[:0]),
           "test": Outputs(test.z, test.h, test.y), "ood": Outputs(ood.z, ood.h, ood.y)}
    exp = dataclasses.replace(exp, outputs=out, bench=dataclasses.replace(exp.bench, ood={"ood": None}))

    def alone():
        rows = []
        for v in values:
            sc = exp.score(exp.fit_detector(args.detector, {args.param: v}))
            rows.append({"value": v, "ood_set": "ood", "auroc": metrics.auroc(sc["test"], sc["ood"]),
                         "fpr95": metrics.fpr95(sc["test"], sc["ood"]), "error": None})
        return rows

    print(f"# {args.detector} sweep of {args.param} over {values} at {n:,} x {dim} (10,000 ID + 10,000 OOD queries)")
    t_sweep, _, peak_sweep, rows = B.measure(lambda: compare.sweep(exp, args.detector, args.param, values))
    t_alone, _, peak_alone, rows_alone = B.measure(alone)
    print(f"compare.sweep {t_sweep:.2f} s (peak +{peak_sweep:.0f} MiB); each value alone {t_alone:.2f} s "
          f"(peak +{peak_alone:.0f} MiB): {t_alone / t_sweep:.2f}x; same rows: {rows == rows_alone}")
    return 0


def type_of(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


if __name__ == "__main__":
    raise SystemExit(main())
