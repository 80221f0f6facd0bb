"""What a GPU changes, measured with the library's own training and inference code (no new code paths).

    PYTHONPATH=. python scripts/bench_gpu.py [--device cuda] [--quick] [--json out.json]

- the CIFAR-style ResNet-18 (ood_core/models/resnet.py): seconds per training epoch on 50,000 32×32×3 images
  (train_classifier: AdamW, one-cycle, batch 128; random images and labels: the cost of an epoch does not depend
  on what the pixels show), then one forward pass (run_inference) of 10,000 images;
- the small CNN on the packaged MNIST sample's size (3,000 training images, 28 px): seconds per epoch.
The data are random, seeded; times are wall-clock medians over the epochs after the first (the first pays for
CUDA's start-up and cuDNN's autotuning) and over three forward passes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from ood_core import Spec, TrainConfig
from ood_core.data.benchmark import Benchmark, Split
from ood_core.device import default_device
from ood_core.inference import run_inference
from ood_core.models.train import train_classifier


def random_bench(spec: Spec, n_train: int, n_val: int, shape: tuple[int, int, int], classes: int) -> Benchmark:
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.standard_normal((n, *shape), dtype=np.float32), rng.integers(0, classes, n).astype(np.int64))

    c = shape[0]
    return Benchmark(spec, [str(i) for i in range(classes)], np.zeros((c, 1, 1), np.float32),
                     np.ones((c, 1, 1), np.float32), split(n_train), split(n_val), split(n_val))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def epochs_case(model: str, n_train: int, shape, epochs: int, batch: int, device: str) -> dict:
    spec = Spec(model=model, image_size=shape[-1], training=TrainConfig(epochs=epochs, batch_size=batch))
    bench = random_bench(spec, n_train, 1000, shape, 10)
    marks = [time.perf_counter()]
    train_classifier(spec, bench, progress=lambda p: (sync(device), marks.append(time.perf_counter())), device=device)
    per_epoch = np.diff(marks)
    steady = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
    return {"model": model, "images": n_train, "shape": list(shape), "batch": batch, "epochs": epochs,
            "first_epoch_s": float(per_epoch[0]), "epoch_s_median": float(statistics.median(steady))}


def forward_case(n: int, device: str) -> dict:
    from ood_core.models import build_model

    model = build_model("resnet18_cifar", 3, 10).to(device).eval()
    x = np.random.default_rng(1).standard_normal((n, 3, 32, 32), dtype=np.float32)
    y = np.zeros(n, np.int64)
    times = []
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        run_inference(model, x, y, device)
        sync(device)
        times.append(time.perf_counter() - t)
    return {"model": "resnet18_cifar", "images": n, "forward_s_median": float(statistics.median(times))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=default_device(), help="default: ood_core.device.default_device()")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script only")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    q = a.quick
    info = {"device": a.device, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None}
    print(json.dumps(info), flush=True)
    rows = [epochs_case("resnet18_cifar", 512 if q else 50_000, (3, 32, 32), 2 if q else 3, 128, a.device)]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(forward_case(256 if q else 10_000, a.device))
    print(json.dumps(rows[-1]), flush=True)
    rows.append(epochs_case("small_cnn", 300 if q else 3_000, (1, 28, 28), 2 if q else 5, 64, a.device))
    print(json.dumps(rows[-1]), flush=True)
    print("\n| case | device | figure |\n|---|---|---|")
    r = rows
    print(f"| ResNet-18 (CIFAR-style), one training epoch, {r[0]['images']:,} 32×32×3 images, batch 128 | {a.device} "
          f"| {r[0]['epoch_s_median']:.1f} s (first epoch {r[0]['first_epoch_s']:.1f} s) |")
    print(f"| ResNet-18, one forward pass of {r[1]['images']:,} 32×32×3 images | {a.device} | "
          f"{r[1]['forward_s_median']:.2f} s |")
    print(f"| small CNN, one training epoch, {r[2]['images']:,} 28×28 images, batch 64 | {a.device} | "
          f"{r[2]['epoch_s_median']:.2f} s (first epoch {r[2]['first_epoch_s']:.2f} s) |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
