"""Training time and test accuracy of the registry's classifiers on the packaged MNIST sample at 28 px.

    PYTHONPATH=. python scripts/bench_models.py [--models lenet5 small_cnn] [--runs 3] [--epochs 15] [--json out.json]

Each run trains from scratch (an empty temporary cache, get_model(retrain=True)) with the dataset's default recipe
(cross-entropy, AdamW, one-cycle, batch 64) on the default device (ood_core.device), one training thread as every
training here. Reported per model: parameters, median training seconds over the runs, the rate the estimates use
(seconds per training image and epoch, scaled to 16 px by estimates.size_factor: the registry's `train_seconds`) and the
ID test accuracy (the same in every run: same spec, same weights).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from ood_core import Spec, TrainConfig
from ood_core.data import build_benchmark
from ood_core.device import default_device
from ood_core.estimates import size_factor
from ood_core.models import MODELS, get_model
from ood_core.models.train import accuracy

DATASET, SIDE = "mnist-sample", 28


def bench(model: str, runs: int, epochs: int, device: str) -> dict:
    spec = Spec(dataset=DATASET, image_size=SIDE, model=model, training=TrainConfig(epochs=epochs))
    data = build_benchmark(spec, ())
    seconds, acc = [], None
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            res = get_model(spec, data, cache_dir=cache, device=device, retrain=True)
        seconds.append(res.seconds)
        acc = accuracy(res.model.to(device), data.test.x, data.test.y, device)
    median = statistics.median(seconds)
    rate = median / (len(data.train) * epochs) / size_factor(SIDE)
    return {"model": model, "parameters": sum(p.numel() for p in res.model.parameters()), "train_images":
            len(data.train), "epochs": epochs, "runs": runs, "train_seconds": seconds, "train_seconds_median": median,
            "seconds_per_image_epoch_at_16px": rate, "registry_train_seconds": MODELS[model].train_seconds,
            "test_accuracy": acc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "small_cnn"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--device", default=None, help="default: ood_core.device.default_device()")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = a.device or default_device()
    rows = []
    for m in a.models:
        r = bench(m, a.runs, a.epochs, device)
        rows.append(r)
        print(f"{m}: {r['parameters']:,} parameters, {r['epochs']} epochs over {r['train_images']:,} images in "
              f"{r['train_seconds_median']:.1f} s (median of {r['runs']}; {r['seconds_per_image_epoch_at_16px']:.2e} "
              f"s per image and epoch at 16 px, registry {r['registry_train_seconds']:.1e}), test accuracy "
              f"{r['test_accuracy']:.1%}", flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "dataset": DATASET, "side": SIDE, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
