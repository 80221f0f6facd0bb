"""What a training costs at 16 px and how that grows with the image side: the registry's `train_seconds` and
`size_overhead`, which ood_core/estimates.py scales by (`size_factor`).

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_size_cost.py [--sides 16,28,40] [--runs 2]
        [--models small_cnn,deep_svdd,...] [--json docs/bench/size_cost.json]

Each model trains a few epochs on the packaged MNIST sample resized to each side (a classifier on the OOD setting's
ID training split, a one-class model on digit 0's), one training thread as in the app (training_threads), the
fastest of --runs runs after an untimed one. Per model it prints t(side) / t(16 px) beside the image-area ratio
(side / 16)^2 and the per-image overhead share f that fits t(side) / t(16) = f + (1 - f) (side / 16)^2 by least
squares: the part of a training step that does not grow with the pixels (the optimiser's step, Python, the small
layers after pooling).
Beside it, the rate the estimates start from: seconds per training image at 16 px (a classifier's per epoch, a
one-class model's whole default training, scaled from the epochs run), with the registry's values (ModelEntry's
`train_seconds` and `size_overhead`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_core import Spec, TrainConfig  # noqa: E402
from ood_core.data import build_benchmark  # noqa: E402
from ood_core.estimates import REFERENCE_SIDE  # noqa: E402
from ood_core.models import MODELS  # noqa: E402
from ood_core.models import oneclass, oneclass_gen, oneclass_ssl  # noqa: E402
from ood_core.models.reproducible import training_threads  # noqa: E402
from ood_core.models.train import train_classifier  # noqa: E402

DATASET = "mnist-sample"


def _one_class(trainer, hp: dict, **short):
    """A one-class trainer run with `short` epochs instead of its defaults `hp`."""
    return lambda spec, bench: trainer(spec, bench, None, "cpu", hp={**hp, **short})


def _whole(hp: dict, **short) -> float:
    """How many times the shortened run's epochs a default training's epochs are."""
    return sum(hp[k] for k in short) / sum(short.values())


SVDD, SVDD_PRE, AE, GEO = oneclass.SVDD_HP, oneclass.SVDD_PRETRAIN_HP, oneclass.AE_HP, oneclass.GEO_HP
LSA, OCGAN, ANOGAN, CSI = oneclass_gen.LSA_HP, oneclass_gen.OCGAN_HP, oneclass_gen.ANOGAN_HP, oneclass_ssl.CSI_HP
USTD, MKD = oneclass_ssl.USTD_HP, oneclass_ssl.MKD_HP
# model: (setting, trainer(spec, bench), what is trained, what the registry's rate counts as a multiple of it): a few
# epochs each, long enough to time (about a second or more at 16 px). A classifier's rate is per epoch; a one-class
# model's is its whole default training
CASES = {
    "small_cnn": ("ood", lambda spec, bench: train_classifier(spec, bench, None, "cpu"), "2 epochs", 0.5),
    "deep_svdd": ("nd", _one_class(oneclass.train_deep_svdd, SVDD, epochs=30), "30 epochs", _whole(SVDD, epochs=30)),
    "deep_svdd_pretrained": ("nd", _one_class(oneclass.train_deep_svdd, SVDD_PRE, epochs=5, pretrain_epochs=5),
                             "5 + 5 epochs", _whole(SVDD_PRE, epochs=5, pretrain_epochs=5)),
    "autoencoder": ("nd", _one_class(oneclass.train_autoencoder, AE, epochs=10), "10 epochs", _whole(AE, epochs=10)),
    "geotrans": ("nd", _one_class(oneclass.train_geotrans, GEO, epochs=2), "2 epochs", _whole(GEO, epochs=2)),
    "lsa": ("nd", _one_class(oneclass_gen.train_lsa, LSA, epochs=10), "10 epochs", _whole(LSA, epochs=10)),
    "ocgan": ("nd", _one_class(oneclass_gen.train_ocgan, OCGAN, epochs=10), "10 epochs", _whole(OCGAN, epochs=10)),
    "anogan": ("nd", _one_class(oneclass_gen.train_anogan, ANOGAN, epochs=20), "20 epochs (no search)",
               _whole(ANOGAN, epochs=20)),
    "csi": ("nd", _one_class(oneclass_ssl.train_csi, CSI, epochs=4), "4 epochs", _whole(CSI, epochs=4)),
    "ustd": ("nd", _one_class(oneclass_ssl.train_ustd, USTD, epochs=2), "2 epochs", _whole(USTD, epochs=2)),
    "mkd": ("nd", _one_class(oneclass_ssl.train_mkd, MKD, epochs=2), "2 epochs (at 32 px whatever the side)",
            _whole(MKD, epochs=2)),
}


def seconds(model: str, side: int, runs: int) -> tuple[float, int]:
    """The fastest of `runs` trainings of `model`'s case at `side` px, and its training images."""
    setting, trainer, _, _ = CASES[model]
    spec = Spec(setting=setting, dataset=DATASET, image_size=side, model=model, training=TrainConfig(epochs=2),
                **({"normal_class": 0} if setting == "nd" else {}))
    bench = build_benchmark(spec, ood_sets=())
    best = np.inf
    for _ in range(runs):
        with training_threads("cpu"):
            t0 = time.perf_counter()
            trainer(spec, bench)
            best = min(best, time.perf_counter() - t0)
    return float(best), len(bench.train)


def overhead_share(sides: list[int], ratios: list[float]) -> float:
    """f of t(side) / t(16) = f + (1 - f) a, a = (side / 16)^2, by least squares over the sides other than 16."""
    a = np.array([(s / REFERENCE_SIDE) ** 2 for s in sides])
    r = np.array(ratios)
    keep = a != 1.0
    return float(np.sum((r[keep] - a[keep]) * (1 - a[keep])) / np.sum((1 - a[keep]) ** 2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="16,28,40")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sides = [int(s) for s in a.sides.split(",")]
    if REFERENCE_SIDE not in sides:
        ap.error(f"--sides must include the reference side {REFERENCE_SIDE}")
    rows = []
    for model in [m.strip() for m in a.models.split(",") if m.strip()]:
        t = {}
        seconds(model, REFERENCE_SIDE, 1)  # untimed: the first training in a process also pays torch's warm-up
        for side in sides:
            t[side], n = seconds(model, side, a.runs)
            print(f"  {model} at {side} px: {t[side]:.2f} s ({CASES[model][2]}, {n} images)", file=sys.stderr,
                  flush=True)
        ratios = [t[s] / t[REFERENCE_SIDE] for s in sides]
        f = overhead_share(sides, ratios)
        rate = t[REFERENCE_SIDE] * CASES[model][3] / n  # seconds per training image at 16 px, as the registry's
        rows.append({"model": model, "what": CASES[model][2], "train_images": n, "seconds": t,
                     "ratio_to_16px": dict(zip(sides, ratios)), "overhead_share": f, "rate_16px": rate,
                     "registry_rate": MODELS[model].train_seconds, "registry_overhead": MODELS[model].size_overhead})
    others = [s for s in sides if s != REFERENCE_SIDE]
    lines = ["| model | timed | " + " | ".join(f"t({s}) / t(16)" for s in others) + " | fitted f | registry f | "
             "rate at 16 px | registry rate |", "|---|---|" + "---|" * len(others) + "---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['what']} | " + " | ".join(f"{r['ratio_to_16px'][s]:.2f}" for s in others)
                     + f" | {r['overhead_share']:.2f} | {r['registry_overhead']:g} | {r['rate_16px']:.2g} | "
                     f"{r['registry_rate']:.2g} |")
    lines.append("| area ratio (side / 16)^2 | | " + " | ".join(f"{(s / REFERENCE_SIDE) ** 2:.2f}" for s in others)
                 + " | 0 | | | |")
    print("\n".join(lines))
    print("\nrate: seconds per training image at 16 px, one thread (a classifier's per epoch, a one-class model's "
          "whole default training; AnoGAN's registry rate also counts its scoring search)")
    if a.json:
        Path(a.json).write_text(json.dumps({"dataset": DATASET, "sides": sides, "runs": a.runs, "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
