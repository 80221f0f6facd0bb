"""The survey's open-set methods on the OSR protocol: AUROC and OSCR over random known/unknown splits.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_openset.py --dataset mnist-sample --known 6 --splits 5 \
        [--epochs N] [--regimes ce,rpl,arpl,arpl_cs,crosr,osrci,gopenmax] [--first-split S] \
        [--json docs/bench/openset.json] [--cache-dir DIR]
    PYTHONPATH=. .venv/bin/python scripts/bench_openset.py --merge a.json b.json ... [--json merged.json]

Split i uses seed i (as `python -m ood_core run --setting osr` does): it draws the K known classes, and one small CNN
is trained per split and regime (cached on disk, so a rerun only scores). The methods:
- cross-entropy classifier: MSP (the baseline), OpenGAN (also with box_fakes=0, the paper's game alone, and with the
  auxiliary outliers of outlier exposure) and C2AE on its penultimate features;
- the rpl, arpl and arpl_cs regimes: their own score (`rpl`, minus the largest distance to the reciprocal points) and
  MSP on the same network;
- the crosr regime: CROSR (OpenMax on logits and latents), OpenMax on its logits alone and MSP on the same network;
- the osrci regime: OSRCI's unknown-class probability, its max-known-logit form and MSP on the same network;
- the gopenmax regime: G-OpenMax, plain OpenMax and MSP on the same network.
Reported per method: AUROC and OSCR (%, mean ± sample std over the splits, unknowns = the other classes), closed-set
accuracy of its network, the seconds to train the network per split (from the checkpoint when cached) and the
seconds to fit the detector (OpenGAN and C2AE train their own small networks). The survey's MNIST numbers
(Salehi et al. 2022, Table 8) stand beside them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# per regime: the (label, detector, params) its classifier is scored with, and the survey's MNIST AUROC of each
METHODS: dict[str, list[tuple[str, str, dict]]] = {
    "ce": [("MSP (cross-entropy)", "msp", {}), ("OpenGAN on features", "opengan", {}),
           ("OpenGAN, the paper's game (box_fakes=0)", "opengan", {"box_fakes": 0.0}),
           ("OpenGAN + auxiliary outliers", "opengan", {"outliers": "auxiliary"}),
           ("C2AE on features", "c2ae", {})],
    "rpl": [("RPL", "rpl", {}), ("MSP of the RPL network", "msp", {})],
    "arpl": [("ARPL (no confusing samples)", "rpl", {}), ("MSP of the ARPL network", "msp", {})],
    "arpl_cs": [("ARPL+CS", "rpl", {}), ("MSP of the ARPL+CS network", "msp", {})],
    "crosr": [("CROSR", "crosr", {}), ("OpenMax on the CROSR network's logits alone", "openmax", {}),
              ("MSP of the CROSR network", "msp", {})],
    "osrci": [("OSRCI", "osrci", {}), ("OSRCI, max known logit", "osrci", {"form": "max_known_logit"}),
              ("MSP of the OSRCI network", "msp", {})],
    "gopenmax": [("G-OpenMax", "gopenmax", {}), ("OpenMax of the G-OpenMax network", "openmax", {}),
                 ("MSP of the G-OpenMax network", "msp", {})],
}
# the survey's Table 8 has no ARPL+CS row
SURVEY_MNIST = {"MSP (cross-entropy)": 97.8, "OpenGAN on features": 99.9, "C2AE on features": 98.9, "RPL": 99.6,
                "CROSR": 99.2, "OSRCI": 98.8}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [100 * v for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(args) -> dict:
    from ood_core import Spec, TrainConfig, pipeline
    from ood_core.data.datasets import get_info

    info = get_info(args.dataset)
    size = args.image_size or info.default_size
    epochs = args.epochs or info.default_epochs
    per: dict[tuple[str, str], dict[str, list]] = {}
    trainings: dict[str, list[dict]] = {}
    for regime in args.regimes:
        for split in range(args.first_split, args.first_split + args.splits):
            spec = Spec(setting="osr", dataset=args.dataset, image_size=size, known_classes=args.known, seed=split,
                        training=TrainConfig(epochs=epochs, regime=regime))
            t0 = time.perf_counter()
            exp = pipeline.prepare(spec, cache_dir=args.cache_dir, device="cpu", ood_sets=())
            trainings.setdefault(regime, []).append({
                "split": split, "seed": spec.seed, "known": exp.bench.meta["known_classes"],
                "train_seconds": exp.training.seconds, "from_cache": exp.training.from_cache,
                "wall_seconds": time.perf_counter() - t0, "id_accuracy": exp.id_accuracy})
            found = []
            for label, det, params in METHODS[regime]:
                rows, _ = pipeline.evaluate(exp, [det], {det: params})
                (r,) = [r for r in rows if r["ood_set"] == "unknown"]
                if r["error"]:
                    raise RuntimeError(f"{label} failed on split {split}: {r['error']}")
                got = per.setdefault((regime, label), {"auroc": [], "oscr": [], "fit_seconds": []})
                got["auroc"].append(r["auroc"])
                got["oscr"].append(r["oscr"])
                got["fit_seconds"].append(r["seconds"])
                found.append(f"{label} {100 * r['auroc']:.1f}")
            print(f"{regime} split {split}: accuracy {100 * exp.id_accuracy:.1f}%, trained in "
                  f"{exp.training.seconds:.0f} s{' (cached)' if exp.training.from_cache else ''}; " + ", ".join(found),
                  file=sys.stderr, flush=True)
    return {"command": " ".join(sys.argv), "dataset": args.dataset, "image_size": size, "known": args.known,
            "splits": args.splits, "first_split": args.first_split, "epochs": epochs,
            "methods": summarise(per, trainings), "trainings": trainings}


def summarise(per: dict[tuple[str, str], dict[str, list]], trainings: dict[str, list[dict]]) -> list[dict]:
    """One row per (regime, method): mean ± std over the splits, medians of seconds, the per-split values."""
    methods = []
    for (regime, label), got in per.items():
        acc = [t["id_accuracy"] for t in trainings[regime]]
        det, params = next((d, p) for lab, d, p in METHODS[regime] if lab == label)
        methods.append({
            "regime": regime, "detector": det, "params": params, "label": label,
            "auroc": mean_std(got["auroc"]), "oscr": mean_std(got["oscr"]), "id_accuracy": mean_std(acc),
            "train_seconds_median": statistics.median(t["train_seconds"] for t in trainings[regime]),
            "fit_seconds_median": statistics.median(got["fit_seconds"]),
            "survey_mnist_auroc": SURVEY_MNIST.get(label),
            "auroc_per_split": [100 * a for a in got["auroc"]], "oscr_per_split": [100 * a for a in got["oscr"]],
            "fit_seconds_per_split": list(got["fit_seconds"])})
    return methods


def merge(paths: list[str]) -> dict:
    """The results of several runs over disjoint splits (say, one process per split with --first-split) as one: the
    per-split values of each run, summarised again. A run of one split may come from before the per-split OSCR and fit
    seconds were written (its mean is that split's value)."""
    per: dict[tuple[str, str], dict[str, list]] = {}
    trainings: dict[str, list[dict]] = {}
    docs = [json.loads(Path(p).read_text()) for p in paths]
    for path, doc in zip(paths, docs):
        for regime, runs in doc["trainings"].items():
            trainings.setdefault(regime, []).extend(runs)
        for m in doc["methods"]:
            single = len(m["auroc_per_split"]) == 1
            if "oscr_per_split" not in m and not single:
                raise SystemExit(f"{path}: no per-split OSCR for {m['label']}; merge runs of one split each, or runs "
                                 "written by this version of the script")
            got = per.setdefault((m["regime"], m["label"]), {"auroc": [], "oscr": [], "fit_seconds": []})
            got["auroc"] += [a / 100 for a in m["auroc_per_split"]]
            got["oscr"] += [a / 100 for a in m.get("oscr_per_split", [m["oscr"][0]])]
            got["fit_seconds"] += m.get("fit_seconds_per_split", [m["fit_seconds_median"]])
    for regime, runs in trainings.items():
        splits = [t["split"] for t in runs]
        if len(set(splits)) != len(splits):
            raise SystemExit(f"the merged runs repeat a split of the {regime} regime: {sorted(splits)}")
    head = docs[0]
    return {"command": " ".join(sys.argv), "merged": [d["command"] for d in docs], "dataset": head["dataset"],
            "image_size": head["image_size"], "known": head["known"],
            "splits": len({t["split"] for runs in trainings.values() for t in runs}), "epochs": head["epochs"],
            "methods": summarise(per, trainings), "trainings": trainings}


def table(doc: dict) -> str:
    lines = ["| method | AUROC % | OSCR % | closed-set accuracy % | training s / split (median) | fit s (median) "
             "| survey, MNIST |", "|---|---|---|---|---|---|---|"]
    for m in doc["methods"]:
        survey = "" if m["survey_mnist_auroc"] is None else f"{m['survey_mnist_auroc']:.1f}"
        lines.append(f"| {m['label']} | {m['auroc'][0]:.1f} ± {m['auroc'][1]:.1f} | {m['oscr'][0]:.1f} ± "
                     f"{m['oscr'][1]:.1f} | {m['id_accuracy'][0]:.1f} ± {m['id_accuracy'][1]:.1f} | "
                     f"{m['train_seconds_median']:.0f} | {m['fit_seconds_median']:.1f} | {survey} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist-sample")
    p.add_argument("--image-size", type=int, default=0, help="pixels (default: the dataset's)")
    p.add_argument("--known", type=int, default=6)
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--first-split", type=int, default=0,
                   help="the first split's seed (default 0): several processes can each train some splits into one "
                        "cache, and a last run over all of them only scores")
    p.add_argument("--epochs", type=int, default=0, help="classifier epochs (default: the dataset's, 15 for the sample)")
    p.add_argument("--regimes", default=",".join(METHODS), type=lambda s: [r for r in s.split(",") if r])
    p.add_argument("--cache-dir", default=None, help="model cache (default: the project's)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="instead of running: merge these results of runs over disjoint splits into one table")
    args = p.parse_args(argv)
    bad = [r for r in args.regimes if r not in METHODS]
    if bad:
        p.error(f"unknown regime(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    doc = merge(args.merge) if args.merge else run(args)
    print(table(doc))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
