"""Every detector and explanation of the default experiment on a device (a GPU), against the same model on the CPU.

    PYTHONPATH=. python scripts/check_device.py [--device cuda] [--dataset digits] [--json out.json]
    PYTHONPATH=. python scripts/check_device.py --report docs/bench/check_device.json   (the table of a saved run)

The default experiment's spec (or --dataset's) is prepared on --device from an empty cache: its classifier (and the
deep ensemble's members) trained there. Every detector is scored on it; then the same spec is prepared on the CPU
from the same cache, so it loads the very checkpoint the device wrote, and every detector is scored again. Per
detector: its error on either side, the largest AUROC difference over the OOD sets and the largest score difference
relative to the largest score (the maths is the same; the GPU's float32 kernels sum in other orders, and the
detectors that run the network run it there); the CPU side runs its own forward pass (the outputs the device
cached are removed first). Detectors that train a network of their own (OpenGAN, C2AE) train other weights on the
device, so only their AUROC is compared. The three attribution maps (Grad-CAM, integrated gradients, guided
Grad-CAM) of 16 test images are compared the same way. The CPU tests cannot reach a GPU code path; this does.
Exit status 1 if anything failed, an AUROC differs by more than --auroc-tolerance or a map by more than
--map-tolerance. Score differences are reported, not judged: the features differ by about 1e-3 relative (cuDNN's
TF32 convolutions), and detectors with a threshold (ASH's percentile, VRA's clipping) or a fitted parameter
(temperature scaling's T) turn that into larger score differences by design.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_reference import max_diff_over_max  # noqa: E402


# detectors that train a network of their own at fitting (estimates.FIT_WHAT): on the device they train other
# weights than on the CPU, so their score differences are those of another training (the table says so)
OWN_TRAINING = ("opengan", "c2ae")


def _scores(exp) -> tuple[dict, dict]:
    from ood_core import pipeline

    rows, scores = pipeline.evaluate(exp, "all")
    by = {}
    for r in rows:
        d = by.setdefault(r["detector"], {"error": None, "auroc": {}})
        d["error"] = d["error"] or r["error"]
        if not r["error"]:
            d["auroc"][r["ood_set"]] = r["auroc"]
    return by, scores


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference relative to the largest value (bench_reference.max_diff_over_max, on float64)."""
    return max_diff_over_max([np.asarray(a, np.float64).ravel()], [np.asarray(b, np.float64).ravel()])


def run(a) -> dict:
    import torch

    from ood_core import Spec, explain, pipeline
    from ood_core.device import check_device, describe_device

    device = check_device(a.device)
    spec = Spec() if not a.dataset else Spec(dataset=a.dataset)
    doc = {"command": " ".join(sys.argv), "device": describe_device(device), "torch": torch.__version__,
           "spec": spec.to_dict() if hasattr(spec, "to_dict") else repr(spec), "detectors": {}, "attribution": {}}
    with tempfile.TemporaryDirectory(prefix="ood_check_device_") as cache:
        t = time.perf_counter()
        exp_d = pipeline.prepare(spec, cache_dir=cache, device=device)
        doc["prepare_device_s"] = time.perf_counter() - t
        t = time.perf_counter()
        by_d, sc_d = _scores(exp_d)
        doc["score_device_s"] = time.perf_counter() - t
        shutil.rmtree(Path(cache) / "outputs", ignore_errors=True)  # the CPU runs its own forward pass
        exp_c = pipeline.prepare(spec, cache_dir=cache, device="cpu")
        doc["cpu_loaded_the_device_checkpoint"] = bool(exp_c.training.from_cache)
        t = time.perf_counter()
        by_c, sc_c = _scores(exp_c)
        doc["score_cpu_s"] = time.perf_counter() - t
        doc["id_accuracy"] = {"device": exp_d.id_accuracy, "cpu": exp_c.id_accuracy}
        for name in by_d:
            d, c = by_d[name], by_c.get(name, {"error": "not scored on the CPU", "auroc": {}})
            entry = {"error_device": d["error"], "error_cpu": c["error"]}
            if not d["error"] and not c["error"]:
                sets = sorted(set(d["auroc"]) & set(c["auroc"]))
                entry["auroc_max_diff"] = max((abs(d["auroc"][s] - c["auroc"][s]) for s in sets), default=0.0)
                entry["score_max_rel_diff"] = max(
                    (_rel(sc_d[name][s], sc_c[name][s]) for s in sc_d.get(name, {}) if s in sc_c.get(name, {})),
                    default=0.0)
            entry["trains_on_the_device"] = name in OWN_TRAINING
            doc["detectors"][name] = entry
        x = exp_d.bench.test.x[:16]
        for method in ("gradcam", "integrated_gradients", "guided_gradcam"):
            try:
                md = explain.attribute(exp_d.training.model.to(device), method, x, bench=exp_d.bench)
                mc = explain.attribute(exp_c.training.model.to("cpu"), method, x, bench=exp_c.bench)
                doc["attribution"][method] = {"max_rel_diff": _rel(md, mc)}
            except Exception as e:  # noqa: BLE001 - recorded
                doc["attribution"][method] = {"error": f"{type(e).__name__}: {e}",
                                              "traceback": traceback.format_exc()}
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dataset", default=None, help="default: the default experiment's")
    ap.add_argument("--auroc-tolerance", type=float, default=0.01,
                    help="largest AUROC difference accepted per detector and OOD set (default 0.01, a point)")
    ap.add_argument("--map-tolerance", type=float, default=0.02,
                    help="largest attribution-map difference accepted, relative to the map's largest value (default "
                         "0.02: cuDNN runs float32 convolutions in TF32 by default, 10 bits of mantissa, and "
                         "integrated gradients sums 32 gradient passes)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", metavar="JSON", help="print the table of a saved run (its --json) and exit")
    a = ap.parse_args()
    if a.report:
        return report(json.loads(Path(a.report).read_text()), a)
    doc = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1))
    return report(doc, a)


def report(doc: dict, a) -> int:
    """The table of one run; 1 if anything failed or went beyond a tolerance."""
    bad = []
    print(f"{doc['device']}, torch {doc['torch']}; the CPU loaded the device's checkpoint: "
          f"{doc['cpu_loaded_the_device_checkpoint']}; ID accuracy {doc['id_accuracy']}")
    print("| detector | AUROC max diff | score max diff / max | note |\n|---|---|---|---|")
    for name, e in doc["detectors"].items():
        err = e["error_device"] or e["error_cpu"]
        if err:
            bad.append(name)
            print(f"| {name} | | | {'device' if e['error_device'] else 'cpu'}: {err[:100]} |")
            continue
        if e["auroc_max_diff"] > a.auroc_tolerance:
            bad.append(name)
        note = "trains its own network (other weights)" if e["trains_on_the_device"] else ""
        print(f"| {name} | {e['auroc_max_diff']:.2e} | {e['score_max_rel_diff']:.2e} | {note} |")
    for method, e in doc["attribution"].items():
        if "error" in e or e["max_rel_diff"] > a.map_tolerance:
            bad.append(method)
        print(f"| attribution: {method} | | {e.get('max_rel_diff', float('nan')):.2e} | {e.get('error', '')[:100]} |")
    print(f"prepare on the device {doc['prepare_device_s']:.1f} s; all detectors scored: device "
          f"{doc['score_device_s']:.1f} s, CPU {doc['score_cpu_s']:.1f} s")
    print(f"beyond the tolerance or failed: {', '.join(bad) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
