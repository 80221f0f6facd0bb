"""What a training costs at 16 px and how that grows with the image side: the registry's `train_seconds` and
`size_overhead`, which ood_core/estimates.py scales by (`size_factor`).

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_size_cost.py [--sides 16,28,40] [--runs 2]
        [--models small_cnn,deep_svdd,...] [--reference-models small_cnn,deep_svdd,geotrans]
        [--json docs/bench/size_cost.json]

Each model trains a few epochs on the packaged MNIST sample resized to each side (a classifier on the OOD setting's
ID training split, a one-class model on digit 0's), one training thread as in the app (training_threads), the
fastest of --runs runs after an untimed one. Per model it prints t(side) / t(16 px) beside the image-area ratio
(side / 16)^2 and the per-image overhead share f that fits t(side) / t(16) = f + (1 - f) (side / 16)^2 by least
squares: the part of a training step that does not grow with the pixels (the optimiser's step, Python, the small
layers after pooling).
A one-class model is also timed with twice its short epochs: its default training is then the fixed part
(2 t1 - t2) plus the epochs' part (t2 - t1) times the epoch ratio, and the ratios and the rate come from that
(scaling the short run whole counted the fixed part, the centre or the teacher's pass, up to 22.5 times: CSI's 90
epochs from 4).
Beside it, the rate the estimates start from: seconds per training image at 16 px (a classifier's per epoch, a
one-class model's whole default training), with the registry's values (ModelEntry's `train_seconds` and
`size_overhead`). --json keeps the rows of the models not run (each row has its date).
This shared machine trains up to twice as slowly on some days as on others. --reference-models times models whose
registry rates stand in the same run (their rows are not written): the median of their registry rate / measured rate
is that hour's speed factor (their rates here are the short run scaled whole, as their registry rates were measured),
and each timed model's rate times it ("normalised") is the rate to put in the registry, consistent with the others'.
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
from ood_core.models.reproducible import training_threads  # noqa: E402
from ood_core.models.train import train_classifier  # noqa: E402

from bench_oneclass_gen import TRAINERS  # noqa: E402  (this folder: the one-class trainers and their defaults)

DATASET = "mnist-sample"


# the epochs each timed run of a one-class model trains instead of its defaults (bench_oneclass_gen.TRAINERS): a few,
# long enough to time (about a second or more at 16 px); the small CNN trains CLASSIFIER_EPOCHS
SHORT = {"deep_svdd": {"epochs": 30}, "deep_svdd_pretrained": {"epochs": 5, "pretrain_epochs": 5},
         "autoencoder": {"epochs": 10}, "geotrans": {"epochs": 2}, "lsa": {"epochs": 10}, "ocgan": {"epochs": 10},
         "anogan": {"epochs": 20}, "csi": {"epochs": 4}, "ustd": {"epochs": 2}, "mkd": {"epochs": 2},
         "ustd_lite0": {"epochs": 2}, "mkd_lite0": {"epochs": 2}}
CLASSIFIER = "small_cnn"
CLASSIFIER_EPOCHS = 2
MODELS_TIMED = (CLASSIFIER, *SHORT)


def describe(model: str) -> str:
    if model == CLASSIFIER:
        return f"{CLASSIFIER_EPOCHS} epochs"
    what = " + ".join(f"{v}" for v in SHORT[model].values()) + " epochs"
    return what + {"anogan": " (no search)", "mkd": " (at 32 px whatever the side)"}.get(model, "")


def rate_multiple(model: str) -> float:
    """What the registry's rate counts, as a multiple of a timed run: a classifier's one epoch, a one-class model's
    whole default training."""
    if model == CLASSIFIER:
        return 1 / CLASSIFIER_EPOCHS
    defaults = TRAINERS[model][1]
    return sum(defaults[k] for k in SHORT[model]) / sum(SHORT[model].values())


def train(model: str, spec: Spec, bench, scale: int = 1) -> None:
    if model == CLASSIFIER:
        train_classifier(spec, bench, None, "cpu")
    else:
        trainer, defaults = TRAINERS[model]
        trainer(spec, bench, None, "cpu", hp={**defaults, **{k: scale * v for k, v in SHORT[model].items()}})


def whole_training(t1: float, t2: float, multiple: float) -> float:
    """A one-class model's default training from its short run (t1) and the run twice as long (t2): a fixed part
    (2 t1 - t2: building, the centre or the teacher's pass, the final features) plus `multiple` times the epochs'
    part (t2 - t1), not t1 scaled whole, which would count the fixed part `multiple` times."""
    return t1 + (multiple - 1.0) * (t2 - t1)


def seconds(model: str, side: int, runs: int, scale: int = 1) -> tuple[float, int]:
    """The fastest of `runs` trainings of `model`'s case at `side` px (its SHORT epochs times `scale`), and its
    training images."""
    one_class = model != CLASSIFIER
    spec = Spec(setting="nd" if one_class else "ood", dataset=DATASET, image_size=side, model=model,
                training=TrainConfig(epochs=CLASSIFIER_EPOCHS), **({"normal_class": 0} if one_class else {}))
    bench = build_benchmark(spec, ood_sets=())
    best = np.inf
    for _ in range(runs):
        with training_threads("cpu"):
            t0 = time.perf_counter()
            train(model, spec, bench, scale)
            best = min(best, time.perf_counter() - t0)
    return float(best), len(bench.train)


def overhead_share(sides: list[int], ratios: list[float]) -> float:
    """f of t(side) / t(16) = f + (1 - f) a, a = (side / 16)^2, by least squares over the sides other than 16."""
    a = np.array([(s / REFERENCE_SIDE) ** 2 for s in sides])
    r = np.array(ratios)
    keep = a != 1.0
    return float(np.sum((r[keep] - a[keep]) * (1 - a[keep])) / np.sum((1 - a[keep]) ** 2))


def speed_factor(rows: list[dict]) -> float:
    """The median of the reference models' registry rate / measured rate: above 1 when the machine trains faster
    than when the registry's rates were measured, below 1 when slower."""
    return float(np.median([r["registry_rate"] / r["rate_16px"] for r in rows]))  # rate_16px: scaled whole here


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="16,28,40")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS_TIMED))
    ap.add_argument("--reference-models", default="",
                    help="models whose registry rates stand, timed in the same run to scale the others' rates")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sides = [int(s) for s in a.sides.split(",")]
    if REFERENCE_SIDE not in sides:
        ap.error(f"--sides must include the reference side {REFERENCE_SIDE}")
    timed = [m.strip() for m in a.models.split(",") if m.strip()]
    references = [m.strip() for m in a.reference_models.split(",") if m.strip()]
    if set(timed) & set(references):
        ap.error("a model is either timed or a reference, not both")
    rows = []
    for model in references + timed:
        t, t2, whole = {}, {}, {}
        seconds(model, REFERENCE_SIDE, 1)  # untimed: the first training in a process also pays torch's warm-up
        for side in sides if model not in references else [REFERENCE_SIDE]:  # a reference's rate: 16 px only
            t[side], n = seconds(model, side, a.runs)
            whole[side] = t[side] * rate_multiple(model)  # a classifier's one epoch: its fixed part is small
            # twice the epochs: the fixed part counted once (whole_training); not for a reference model, whose
            # registry rate was measured as its short run scaled whole
            if model != CLASSIFIER and model not in references:
                t2[side], _ = seconds(model, side, a.runs, scale=2)
                whole[side] = whole_training(t[side], t2[side], rate_multiple(model))
            print(f"  {model} at {side} px: {t[side]:.2f} s ({describe(model)}, {n} images)"
                  + (f", {t2[side]:.2f} s with twice the epochs; the default training {whole[side]:.1f} s"
                     if side in t2 else ""), file=sys.stderr, flush=True)
        # the ratios and the rate from the whole default training (a classifier's: its epochs alike)
        ratios = [whole[s] / whole[REFERENCE_SIDE] for s in t]
        f = overhead_share(list(t), ratios) if len(t) > 1 else float("nan")
        rate = whole[REFERENCE_SIDE] / n  # seconds per training image at 16 px, as the registry's
        scaled = t[REFERENCE_SIDE] * rate_multiple(model) / n  # the short run scaled whole (this script before)
        rows.append({"model": model, "what": describe(model), "train_images": n, "seconds": t,
                     "seconds_twice_the_epochs": t2, "whole_training_s": whole,
                     "ratio_to_16px": dict(zip(t, ratios)), "overhead_share": f, "rate_16px": rate,
                     "rate_16px_scaled_short_run": scaled, "date": time.strftime("%Y-%m-%d"), "runs": a.runs,
                     "registry_rate": MODELS[model].train_seconds, "registry_overhead": MODELS[model].size_overhead})
    reference_rows, rows = rows[:len(references)], rows[len(references):]
    factor = speed_factor(reference_rows) if reference_rows else 1.0
    for r in rows:
        r["rate_16px_normalised"] = r["rate_16px"] * factor
        r["speed_factor"] = factor
        r["reference_models"] = {x["model"]: x["registry_rate"] / x["rate_16px"] for x in reference_rows}
    others = [s for s in sides if s != REFERENCE_SIDE]
    lines = ["| model | timed | " + " | ".join(f"t({s}) / t(16)" for s in others) + " | fitted f | registry f | "
             "rate at 16 px | the short run scaled whole | normalised rate | registry rate |",
             "|---|---|" + "---|" * len(others) + "---|---|---|---|---|---|"]
    for r in reference_rows + rows:
        lines.append(f"| {r['model']} | {r['what']} | "
                     + " | ".join(f"{r['ratio_to_16px'][s]:.2f}" if s in r["ratio_to_16px"] else "" for s in others)
                     + f" | {'' if np.isnan(r['overhead_share']) else format(r['overhead_share'], '.2f')} | "
                     f"{r['registry_overhead']:g} | {r['rate_16px']:.2g} | {r['rate_16px_scaled_short_run']:.2g} | "
                     + (f"{r['rate_16px_normalised']:.2g}" if "rate_16px_normalised" in r else "(reference)")
                     + f" | {r['registry_rate']:.2g} |")
    lines.append("| area ratio (side / 16)^2 | | " + " | ".join(f"{(s / REFERENCE_SIDE) ** 2:.2f}" for s in others)
                 + " | 0 | | | | | |")
    print("\n".join(lines))
    print("\nrate: seconds per training image at 16 px, one thread (a classifier's per epoch, a one-class model's "
          "whole default training; AnoGAN's registry rate also counts its scoring search)")
    if reference_rows:
        print(f"normalised: times {factor:.3f}, the median of the reference models' registry rate / rate ("
              + ", ".join(f"{r['model']} {r['registry_rate'] / r['rate_16px']:.3f}" for r in reference_rows) + ")")
    if a.json:  # rows of other models already in the file are kept (each row has its date)
        path = Path(a.json)
        old = json.loads(path.read_text())["rows"] if path.exists() else []
        done = {r["model"] for r in rows}
        merged = [r for r in old if r["model"] not in done] + rows
        path.write_text(json.dumps({"dataset": DATASET, "sides": sides, "runs": a.runs, "rows": merged}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
