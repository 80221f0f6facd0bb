"""Real-digit quality (issue 11's figures): open-set recognition and one-class novelty detection on the packaged
MNIST sample (5,000 real digits, 28 px), through the library's protocols, beside the targets and the survey's numbers.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_quality.py [--only osr,nd] [--splits 5] [--first-split 0]
        [--classes 0,1,...] [--regime closedset] [--epochs N] [--detectors a,b,c|all] [--tune]
        [--cache-dir DIR] [--json out.json]

- OSR: 6 known of 10 classes, `--splits` seeded splits (protocols.run_osr), the classifier trained in `--regime`
  (default closedset: Vaze et al. 2022's recipe at its default epochs, models/recipes.py); AUROC of each post-hoc
  detector on the unknown classes, mean ± sample std over the splits; closed-set accuracy and OSCR beside it.
  `--detectors` names the detectors (default: OSR_DETECTORS; `all`: every detector that serves the model);
  `--tune` chooses each tunable detector's parameters on the split's own validation unknowns first (never the test
  unknowns; tuning.py), and the table says what was chosen. `--first-split S` runs splits S..S+splits-1 (seeds S, ...):
  splits 5-7 are held out to choose recipes and epochs, so that the benchmark's splits 0-4 never choose anything.
- ND: one-vs-all, each class in turn the normal one (protocols.run_one_class with its ONE_CLASS_METHODS); AUROC on
  the novel test set, mean ± sample std over the classes.
- Training seconds are per split (OSR) or per model and normal class (ND), as recorded when each model was trained.
  Without --cache-dir the models go to a fresh temporary folder, so every one is trained (and timed) here.
The survey's numbers (Salehi et al. 2022, Tables 7 and 8) are on full MNIST (60,000 training images, other splits);
the sample trains on 3,000 images (OSR: 1,800 of the known classes; ND: about 300 of the normal class).
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

from ood_core import Spec, TrainConfig, protocols  # noqa: E402
from ood_core.compare import summarise_by  # noqa: E402
from ood_core.data.datasets import get_info  # noqa: E402
from ood_core.metrics import sample_std  # noqa: E402
from ood_core.spec import REGIMES, default_epochs  # noqa: E402

DATASET, SIZE = "mnist-sample", 28
OSR_DETECTORS = ("msp", "max_logit", "energy", "openmax", "mahalanobis", "vim", "knn", "gmm", "rmd")
# targets (issue 11) and the survey's MNIST numbers, in AUROC %
OSR_TARGETS = {"msp": 97.0, "best": 98.5}
ND_TARGETS = {"Deep SVDD": 93.0, "best": 98.0}
OSR_SURVEY = {"msp": "softmax 97.8", "openmax": "OpenMax 98.1", "max_logit": "MLS 99.3", "rpl": "RPL 99.6",
              "opengan": "OpenGAN 99.9", "c2ae": "C2AE 98.9"}
ND_SURVEY = {"Deep SVDD": "Deep SVDD 94.8", "raw pixels · ocsvm (scaling=gcn_minmax)": "OC-SVM 96.0"}


def _pct(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "error"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * mean:.1f}"


def _seconds(values: list[float]) -> str:
    return f"{np.median(values):.0f}" if values else "-"


def osr(splits: int, regime: str, epochs: Optional[int], cache_dir: str,
        detectors: str | tuple[str, ...] = OSR_DETECTORS, tune: bool = False, first_split: int = 0) -> dict:
    """OSR 6/4 over `splits` splits: one summary row per detector, the closed-set accuracy and training seconds.
    `tune`: each split's tunable detectors are tuned on its validation unknowns first (protocols.run_osr)."""
    epochs = epochs or default_epochs(get_info(DATASET).default_epochs, regime)
    base = Spec(setting="osr", dataset=DATASET, image_size=SIZE, known_classes=6, seed=first_split,
                training=TrainConfig(epochs=epochs, regime=regime))
    t0 = time.perf_counter()
    res = protocols.run_osr(base, splits, detectors, cache_dir=cache_dir, device="cpu", tune=tune)
    rows = [r for r in res.rows if r["ood_set"] == "unknown"]
    summ = summarise_by(rows, ("detector",), ("auroc", "oscr"))
    errors = {r["detector"]: r["error"] for r in rows if r["error"]}
    for s in summ:
        s["error"] = errors.get(s["detector"])
        s["tuned"] = [r["tuned"] for r in rows if r["detector"] == s["detector"] and "tuned" in r]
    det_arg = detectors if isinstance(detectors, str) else ",".join(detectors)
    train_s = [next(r["train_seconds"] for r in rows if r["split"] == i) for i in range(splits)]
    accs = np.array(res.accuracies, dtype=float)
    return {"command": f"run_osr(Spec(dataset={DATASET!r}, image_size={SIZE}, setting='osr', known_classes=6, "
                       f"seed={first_split}, "
                       f"training=TrainConfig(epochs={epochs}, regime={regime!r})), splits={splits}, "
                       f"detectors={det_arg!r}, tune={tune})",
            "regime": regime, "tune": tune, "first_split": first_split, "epochs": epochs, "splits": splits, "seconds": round(time.perf_counter() - t0, 1),
            "closed_set_accuracy": [100 * accs.mean(), 100 * (sample_std(accs) or 0.0)],
            "train_seconds_per_split": train_s, "summary": summ, "rows": rows}


def nd(classes: list[int], cache_dir: str) -> dict:
    """ND one-vs-all over `classes`: one summary row per method, training seconds per model and class."""
    base = Spec(setting="nd", dataset=DATASET, image_size=SIZE)
    t0 = time.perf_counter()
    res = protocols.run_one_class(base, "nd", classes=classes, cache_dir=cache_dir, device="cpu")
    rows = [r for r in res.rows if r["ood_set"] == "novel"]
    summ = summarise_by(rows, ("method",))
    train_s: dict[str, list[float]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        per_class = {r["normal_class"]: r["train_seconds"] for r in rows if r["model"] == model}
        train_s[model] = [per_class[c] for c in classes]
    model_of = {r["method"]: r["model"] for r in rows}
    for s in summ:
        s["model"] = model_of[s["method"]]
    return {"command": f"run_one_class(Spec(dataset={DATASET!r}, image_size={SIZE}, setting='nd'), 'nd', "
                       f"classes={classes})", "classes": classes, "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds_per_class": train_s, "summary": summ, "rows": rows}


def _target_cell(name: str, best: str, targets: dict) -> str:
    cells = []
    if name in targets:
        cells.append(f">= {targets[name]:.1f}")
    if name == best:
        cells.append(f"best >= {targets['best']:.1f}")
    return ", ".join(cells) or "-"


def _tuned_cell(per_split: list[dict]) -> str:
    """The parameters tuning chose on each split, '; '-separated ('default' where it kept the defaults)."""
    return "; ".join(", ".join(f"{k}={v}" for k, v in t.items()) or "default" for t in per_split) or "-"


def osr_table(r: dict) -> str:
    summ = sorted(r["summary"], key=lambda s: -(s["auroc_mean"] or 0))
    best = summ[0]["detector"]
    first = r.get("first_split", 0)
    lines = [f"OSR 6/4 on {DATASET} at {SIZE} px, splits {first}-{first + r['splits'] - 1}, regime {r['regime']}, {r['epochs']} epochs: "
             f"closed-set accuracy {r['closed_set_accuracy'][0]:.1f} ± {r['closed_set_accuracy'][1]:.1f} %; "
             f"training {_seconds(r['train_seconds_per_split'])} s per split (median); whole run {r['seconds']:.0f} s"
             + ("; parameters tuned on each split's validation unknowns" if r.get("tune") else ""),
             "", "| detector | AUROC % | OSCR % | target | survey (full MNIST) | tuned (per split) |",
             "|---|---|---|---|---|---|"]
    for s in summ:
        lines.append(f"| {s['detector']} | {_pct(s['auroc_mean'], s['auroc_std'])} | "
                     f"{_pct(s['oscr_mean'], s['oscr_std'])} | {_target_cell(s['detector'], best, OSR_TARGETS)} | "
                     f"{OSR_SURVEY.get(s['detector'], '-')} | {_tuned_cell(s.get('tuned', []))} |")
    for s in summ:
        if s.get("error"):
            lines.append(f"{s['detector']} failed: {s['error']}")
    lines.append("")
    msp = next((s for s in summ if s["detector"] == "msp"), None)
    if msp is not None:
        lines.append(f"targets: MSP {100 * msp['auroc_mean']:.1f} (>= {OSR_TARGETS['msp']:.0f}: "
                     f"{'met' if 100 * msp['auroc_mean'] >= OSR_TARGETS['msp'] else 'NOT met'})")
    lines.append(f"best {best} "
                 f"{100 * summ[0]['auroc_mean']:.1f} (>= {OSR_TARGETS['best']}: "
                 f"{'met' if 100 * summ[0]['auroc_mean'] >= OSR_TARGETS['best'] else 'NOT met'})")
    return "\n".join(lines)


def nd_table(r: dict) -> str:
    summ = sorted(r["summary"], key=lambda s: -(s["auroc_mean"] or 0))
    best = summ[0]["method"]
    lines = [f"ND one-vs-all on {DATASET} at {SIZE} px, normal classes {r['classes']}; whole run {r['seconds']:.0f} s",
             "", "| method | AUROC % | target | survey (full MNIST) | training s per class (median) |",
             "|---|---|---|---|---|"]
    for s in summ:
        lines.append(f"| {s['method']} | {_pct(s['auroc_mean'], s['auroc_std'])} | "
                     f"{_target_cell(s['method'], best, ND_TARGETS)} | {ND_SURVEY.get(s['method'], '-')} | "
                     f"{_seconds(r['train_seconds_per_class'][s['model']])} |")
    svdd = next(s for s in summ if s["method"] == "Deep SVDD")
    lines.append("")
    lines.append(f"targets: Deep SVDD {100 * svdd['auroc_mean']:.1f} (>= {ND_TARGETS['Deep SVDD']:.0f}: "
                 f"{'met' if 100 * svdd['auroc_mean'] >= ND_TARGETS['Deep SVDD'] else 'NOT met'}); best {best} "
                 f"{100 * summ[0]['auroc_mean']:.1f} (>= {ND_TARGETS['best']:.0f}: "
                 f"{'met' if 100 * summ[0]['auroc_mean'] >= ND_TARGETS['best'] else 'NOT met'})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="osr,nd", help="comma-separated: osr, nd")
    ap.add_argument("--splits", type=int, default=5, help="OSR: number of seeded splits (default 5)")
    ap.add_argument("--first-split", type=int, default=0,
                    help="OSR: the first split's seed (default 0; 5-7 are held out for choosing recipes)")
    ap.add_argument("--classes", default=None, help="ND: comma-separated normal classes (default all 10)")
    ap.add_argument("--regime", default="closedset", choices=REGIMES, help="OSR: the classifier's training regime")
    ap.add_argument("--epochs", type=int, default=None, help="OSR: training epochs (default: the regime's own)")
    ap.add_argument("--detectors", default=",".join(OSR_DETECTORS),
                    help="OSR: comma-separated detector names, or 'all' (default: %(default)s)")
    ap.add_argument("--tune", action="store_true",
                    help="OSR: tune each detector's parameters on the split's validation unknowns first")
    ap.add_argument("--cache-dir", default=None, help="model cache (default: a fresh temporary folder)")
    ap.add_argument("--json", help="write the summaries and rows here too")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or any(n not in ("osr", "nd") for n in names):
        ap.error("--only takes osr, nd or both")
    classes = list(range(10)) if args.classes is None else [int(c) for c in args.classes.split(",")]
    report: dict = {"dataset": DATASET, "image_size": SIZE}
    with tempfile.TemporaryDirectory(prefix="ood-bench-quality-") as tmp:
        cache = args.cache_dir or tmp
        for name in names:
            if name == "osr":
                dets = "all" if args.detectors.strip() == "all" else tuple(
                    d.strip() for d in args.detectors.split(",") if d.strip())
                report["osr"] = osr(args.splits, args.regime, args.epochs, cache, dets, args.tune, args.first_split)
                print(osr_table(report["osr"]) + "\n", flush=True)
            else:
                report["nd"] = nd(classes, cache)
                print(nd_table(report["nd"]) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
