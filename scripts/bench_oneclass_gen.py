"""The generative one-class methods (LSA, OC-GAN, AnoGAN; ood_core/models/oneclass_gen.py) on ND one-vs-all: each
class of the dataset in turn is normal, the model is trained on it alone and scored by its own score on the novel
test set (every other class), through the library's protocol (protocols.run_one_class), beside the survey's numbers.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_oneclass_gen.py [--dataset mnist-sample] [--size 28]
        [--classes 0,1,...] [--methods lsa,ocgan,anogan,autoencoder] [--cache-dir DIR] [--json out.json]
    python scripts/bench_oneclass_gen.py --table out.json [more.json ...]   (the table of finished or partial runs)

AUROC: mean ± sample std over the normal classes. Training seconds: per class (median), as recorded when each model
was trained; "run s" is the method's whole protocol (trainings, AnoGAN's latent search over every split, scoring).
The autoencoder (the project's plain reconstruction model) is the reference both LSA and OC-GAN build on.
Without --cache-dir the models go to a fresh temporary folder, so every one is trained (and timed) here.
The survey's numbers (Salehi et al. 2022, Table 7) are on full MNIST (6,000 training images per class, 64-d or larger
latents, many more epochs); the packaged sample trains on about 300 images per class at the scale of the models'
cards (module constants of oneclass_gen.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_core import Spec, protocols  # noqa: E402
from ood_core.compare import summarise_by  # noqa: E402
from ood_core.models.registry import MODELS  # noqa: E402

SURVEY_MNIST = {"ocgan": 97.5, "lsa": 97.5, "anogan": 91.3}  # AUROC %, Salehi et al. 2022, Table 7
METHODS = ("lsa", "ocgan", "anogan", "autoencoder")


def run(dataset: str, size: int, classes: list[int], models: list[str], cache_dir: str,
        json_path: Optional[str] = None) -> dict:
    """Each model on each normal class (one protocol call per class, so a long run can be stopped and still report
    the classes done: the JSON is rewritten after every class): summaries and per-class training seconds."""
    base = Spec(setting="nd", dataset=dataset, image_size=size)
    out: dict = {"dataset": dataset, "image_size": size, "classes": classes, "methods": {}}
    for model in models:
        t0 = time.perf_counter()
        rows: list[dict] = []
        for c in classes:
            res = protocols.run_one_class(base, "nd", classes=[c], methods=[(model, "model_score", {})],
                                          cache_dir=cache_dir, device="cpu")
            rows += [r for r in res.rows if r["ood_set"] == "novel"]
            (summary,) = summarise_by(rows, ("method",))
            out["methods"][model] = {"summary": summary, "classes": [r["normal_class"] for r in rows],
                                     "train_seconds": [r["train_seconds"] for r in rows],
                                     "auroc_per_class": {r["normal_class"]: r["auroc"] for r in rows},
                                     "run_seconds": round(time.perf_counter() - t0, 1)}
            print(f"{model}, normal class {c}: AUROC {100 * rows[-1]['auroc']:.1f}, trained in "
                  f"{rows[-1]['train_seconds']:.0f} s ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            if json_path:
                Path(json_path).write_text(json.dumps(out, indent=1, default=float))
    return out


def table(r: dict) -> str:
    lines = [f"ND one-vs-all on {r['dataset']} at {r['image_size']} px", "",
             "| method | AUROC % (mean ± std over classes) | classes | survey, full MNIST | "
             "training s per class (median) | run s |", "|---|---|---|---|---|---|"]
    for model, m in r["methods"].items():
        s = m["summary"]
        std = f" ± {100 * s['auroc_std']:.1f}" if s["auroc_std"] is not None else ""
        survey = f"{SURVEY_MNIST[model]:.1f}" if model in SURVEY_MNIST else "-"
        lines.append(f"| {MODELS[model].short} | {100 * s['auroc_mean']:.1f}{std} | {len(m['classes'])} | {survey} | "
                     f"{np.median(m['train_seconds']):.0f} | {m['run_seconds']:.0f} |")
    lines += ["", "per class AUROC %:"]
    for model, m in r["methods"].items():
        lines.append(f"  {MODELS[model].short}: " + ", ".join(f"{c}: {100 * a:.1f}"
                                                               for c, a in m["auroc_per_class"].items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-sample")
    ap.add_argument("--size", type=int, default=28, help="image side in pixels (a multiple of 4)")
    ap.add_argument("--classes", default=None, help="comma-separated normal classes (default: all of the dataset)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--cache-dir", default=None, help="model cache (default: a fresh temporary folder)")
    ap.add_argument("--json", help="write the summaries and per-class numbers here too (after every class)")
    ap.add_argument("--table", nargs="+", help="print the table of these --json files (merged) and exit")
    args = ap.parse_args()
    if args.table:
        docs = [json.loads(Path(f).read_text()) for f in args.table]
        merged = {**docs[0], "methods": {k: v for d in docs for k, v in d["methods"].items()}}
        print(table(merged))
        return 0
    models = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in models if m not in METHODS]
    if not models or unknown:
        ap.error(f"--methods takes some of {', '.join(METHODS)}")
    if args.classes is None:
        from ood_core.data import load_dataset
        classes = list(range(load_dataset(args.dataset, args.size).num_classes))
    else:
        classes = [int(c) for c in args.classes.split(",")]
    with tempfile.TemporaryDirectory(prefix="ood-bench-oneclass-gen-") as tmp:
        r = run(args.dataset, args.size, classes, models, args.cache_dir or tmp, args.json)
    print("\n" + table(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
