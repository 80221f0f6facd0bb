"""Figures of the OSR literature's protocols (ood_core/data/osr_splits.py), measured here, never asserted in tests.

    (a) OSR 6/4 on the packaged MNIST sample (real digits, offline): the literature's 5 published MNIST splits beside
        5 seeded random splits (protocols.run_osr, small CNN, the dataset's epochs): closed-set accuracy, AUROC of
        MSP and of the best detector, mean ± sample std over the splits, and the wall time.
    (b) CIFAR+10 and CIFAR+50 data at full size (CIFAR-10 50,000 + 10,000 and CIFAR-100 50,000 + 10,000 images of
        random pixels written as pickled batches): seconds to build the benchmarks of 5 splits, the number of reads
        of each dataset's files (one expected: load_dataset's cache), peak RSS.
    (c) TinyImageNet's reader: seconds to decode a tiny-imagenet-200 folder of `--tiny-per-class` train + 10
        validation JPEGs per class (200 classes), as images per second.

Each case runs in its own fresh subprocess (peak RSS = its ru_maxrss); data files are written beforehand by this
parent process into a temporary data root, so writing them never counts.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_osr_protocols.py [--only a,b,c] [--json out.json]
    PYTHONPATH=. .venv/bin/python scripts/bench_osr_protocols.py --quick       # small sizes: checks the script only
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ("a", "b", "c")
OSR_DETECTORS = ["msp", "max_logit", "energy", "knn", "mahalanobis", "vim"]


def case_a(splits: int, epochs: int | None, cache: str) -> dict:
    from ood_core import Spec, TrainConfig, protocols
    from ood_core.compare import summarise_by
    from ood_core.data import DATASETS

    info = DATASETS["mnist-sample"]
    out = {}
    for mode in ("literature", "random"):
        base = Spec(setting="osr", dataset="mnist-sample", image_size=info.default_size, known_classes=6,
                    osr_splits=mode, training=TrainConfig(epochs=epochs or info.default_epochs))
        t0 = time.perf_counter()
        res = protocols.run_osr(base, splits, OSR_DETECTORS, cache_dir=cache, device="cpu")
        seconds = time.perf_counter() - t0
        summ = summarise_by([r for r in res.rows if r["ood_set"] == "unknown"], ("detector",), ("auroc",))
        best = max(summ, key=lambda s: s["auroc_mean"] or -1)
        msp = next(s for s in summ if s["detector"] == "msp")
        acc = np.array(res.accuracies, float)
        out[mode] = {"known_classes": [r["known_classes"] for r in res.rows if r["detector"] == "msp"],
                     "closed_set_accuracy": [100 * acc.mean(), 100 * acc.std(ddof=1) if len(acc) > 1 else 0.0],
                     "msp_auroc": [100 * msp["auroc_mean"], 100 * msp["auroc_std"]],
                     "best": best["detector"], "best_auroc": [100 * best["auroc_mean"], 100 * best["auroc_std"]],
                     "seconds": seconds}
    return out


def case_b(splits: int) -> dict:
    from ood_core import Spec
    from ood_core.data import build_benchmark, sources

    reads = {"cifar10": 0, "cifar100": 0}
    for name in reads:
        fn = getattr(sources, f"read_{name}")

        def counted(root, fn=fn, name=name):
            reads[name] += 1
            return fn(root)

        setattr(sources, f"read_{name}", counted)
    out = {}
    for protocol in ("cifar+10", "cifar+50"):
        t0 = time.perf_counter()
        sizes = []
        for seed in range(splits):
            bench = build_benchmark(Spec(setting="osr", dataset="cifar10", image_size=32, known_classes=4,
                                         osr_protocol=protocol, seed=seed), ood_sets=())
            sizes.append([len(bench.train), len(bench.test), len(bench.ood["unknown"]),
                          len(bench.val_ood["unknown"])])
        out[protocol] = {"seconds": time.perf_counter() - t0, "train_test_unknown_valunknown": sizes[0]}
    out["reads"] = reads
    return out


def case_c() -> dict:
    from ood_core.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset("tinyimagenet", 32)
    seconds = time.perf_counter() - t0
    return {"images": int(len(data.labels)), "classes": data.num_classes, "seconds": seconds,
            "images_per_second": len(data.labels) / seconds}


def write_cifar(root: Path, quick: bool) -> None:
    r = np.random.default_rng(0)
    n_train, n_test = (3_000, 600) if quick else (50_000, 10_000)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    per = n_train // 5
    for i in range(1, 6):
        with open(c10 / f"data_batch_{i}", "wb") as f:
            pickle.dump({"labels": (np.arange(per) % 10).tolist(),
                         "data": r.integers(0, 256, (per, 3072), dtype=np.uint8)}, f, protocol=4)
    with open(c10 / "test_batch", "wb") as f:
        pickle.dump({"labels": (np.arange(n_test) % 10).tolist(),
                     "data": r.integers(0, 256, (n_test, 3072), dtype=np.uint8)}, f, protocol=4)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # CIFAR-100 with its real superclass names; fine class c in superclass c // 5 (the superclass names, not the
    # fine ones, decide which classes are animals)
    coarse_names = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
                    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
                    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
                    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
                    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2"]
    c100 = root / "cifar-100-python"
    c100.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 100
        with open(c100 / split, "wb") as f:
            pickle.dump({"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                         "data": r.integers(0, 256, (n, 3072), dtype=np.uint8)}, f, protocol=4)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": coarse_names}, f)


def write_tiny(root: Path, per_class: int) -> None:
    from PIL import Image

    r = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    lines = []
    (base / "val" / "images").mkdir(parents=True)
    for c in range(200):
        wnid = f"n{c:08d}"
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for j in range(per_class + 10):
            im = Image.fromarray(r.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            if j < per_class:
                im.save(folder / f"{wnid}_{j}.JPEG", quality=90)
            else:
                name = f"val_{c * 10 + j - per_class}.JPEG"
                im.save(base / "val" / "images" / name, quality=90)
                lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="(a): classifier epochs (default: the dataset's)")
    ap.add_argument("--tiny-per-class", type=int, default=100, help="(c): train images per class (official: 500)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child process's case
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:  # child: one case, its JSON on stdout with the peak RSS
        import resource

        result = {"a": lambda: case_a(args.splits, args.epochs, args.cache), "b": lambda: case_b(args.splits),
                  "c": case_c}[args.case]()
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    report = {}
    with tempfile.TemporaryDirectory(prefix="osr-bench-") as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        root.mkdir()
        names = [n for n in args.only.split(",") if n]
        if "b" in names:
            write_cifar(root, args.quick)
        if "c" in names:
            write_tiny(root, 3 if args.quick else args.tiny_per_class)
        for name in names:
            extra = ["--splits", str(2 if args.quick else args.splits)]
            if name == "a" and (args.epochs or args.quick):
                extra += ["--epochs", str(1 if args.quick else args.epochs)]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OOD_DATA_ROOT": str(root)}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--case", name, "--cache", str(cache), *extra],
                                  env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            report[name] = {**json.loads(done.stdout.strip().splitlines()[-1]),
                            "process_seconds": time.perf_counter() - t0}
            print(f"({name}) {json.dumps(report[name])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
