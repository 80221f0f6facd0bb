"""The generative one-class methods (LSA, OC-GAN, AnoGAN; ood_core/models/oneclass_gen.py) on ND one-vs-all: each
class of the dataset in turn is normal, the model is trained on it alone and scored by its own score on the novel
test set (every other class), through the library's protocol (protocols.run_one_class), beside the survey's numbers.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/bench_oneclass_gen.py [--dataset mnist-sample] [--size 28]
        [--classes 0,1,...] [--methods lsa,ocgan,anogan,autoencoder] [--cache-dir DIR] [--json out.json]
    python scripts/bench_oneclass_gen.py --table out.json [more.json ...]   (the table of finished or partial runs)
    ... --search-val [--classes 3,8] [--cache-dir DIR] [--json out.json]   (AnoGAN's search settings, validation only)
    ... --select ocgan "epochs=100;lr=0.001" [more variants] [--classes 0,2,5,8] [--json out.json]   (validation)

AUROC: mean ± sample std over the normal classes. Training seconds: per class (median), as recorded when each model
was trained; "run s" is the method's whole protocol (trainings, AnoGAN's latent search over every split, scoring).
--search-val chooses AnoGAN's latent search on VALIDATION data only (the normal class's validation images against the
other classes' validation images, Benchmark.val_ood; never a test image): each image's loss is recorded at every step
of a SEARCH_VAL_STEPS-step search (torch's Adam, as AnoGAN.search), and the validation AUROC is computed for a fixed
number of steps and for the stopping rule (search_stop_rule: a check every ANOGAN_CHECK_EVERY steps, stop when the
loss fell by less than tol), with the mean number of steps the rule used. Each image's search is independent of the
others, so one recorded trajectory gives every setting. Its models are cached like the protocol's (pass the same
--cache-dir to the later run to reuse them).
--select MODEL VARIANT... trains one of TRAINERS (lsa, ocgan, anogan, geotrans, deep_svdd, csi, ...) once per
variant and class (its defaults, e.g. OCGAN_HP, with the variant's changes) and reports the same validation AUROC
(scripts/bench_oneclass_ssl.py's `select`, as CSI's training length was chosen); AnoGAN scores with its default search.
The autoencoder (the project's plain reconstruction model) is the reference both LSA and OC-GAN build on.
Without --cache-dir the models go to a fresh temporary folder, so every one is trained (and timed) here.
The survey's numbers (Salehi et al. 2022, Table 7) are on full MNIST (6,000 training images per class, 64-d or larger
latents, many more epochs); the packaged sample trains on about 300 images per class at the scale of the models'
cards (module constants of oneclass_gen.py).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ood_core import Spec, metrics, protocols  # noqa: E402
from ood_core.compare import summarise_by  # noqa: E402
from ood_core.data import build_benchmark  # noqa: E402
from ood_core.models import get_model  # noqa: E402
from ood_core.models import oneclass, oneclass_gen, oneclass_ssl  # noqa: E402
from ood_core.models.oneclass_gen import ANOGAN_CHECK_EVERY, search_stop_rule  # noqa: E402
from ood_core.models.registry import MODELS  # noqa: E402

SURVEY_MNIST = {"ocgan": 97.5, "lsa": 97.5, "anogan": 91.3}  # AUROC %, Salehi et al. 2022, Table 7
METHODS = ("lsa", "ocgan", "anogan", "autoencoder")
SEARCH_VAL_STEPS = 200  # the longest search --search-val records
SEARCH_VAL_FIXED = (0, 10, 20, 30, 50, 100, 150, 200)  # fixed step counts compared
SEARCH_VAL_TOLS = (0.05, 0.02, 0.01, 0.005, 0.002)  # stopping-rule tolerances compared (at most SEARCH_VAL_STEPS)


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


def search_trajectory(model, x: torch.Tensor, steps: int) -> np.ndarray:
    """Each image's search loss after 0..steps Adam steps, (n, steps + 1): torch's Adam on the summed loss, which
    AnoGAN.search reproduces (tests/test_oneclass_gen.py)."""
    with torch.enable_grad():
        fx = model.features(x).detach()
        z = model.initial_codes(x).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=model.search_lr)
        out = []
        for s in range(steps + 1):
            loss = model.search_loss(x, z, fx)
            out.append(loss.detach().numpy().copy())
            if s == steps:
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
    return np.stack(out, axis=1)


def stopped(traj: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(score, steps used) per image under the stopping rule, from recorded trajectories (n, S + 1)."""
    n, last = traj.shape[0], traj.shape[1] - 1
    score, used = traj[:, last].copy(), np.full(n, last)
    active = np.ones(n, bool)
    for t in range(ANOGAN_CHECK_EVERY, last + 1, ANOGAN_CHECK_EVERY):
        done = active & search_stop_rule(torch.from_numpy(traj[:, t - ANOGAN_CHECK_EVERY]),
                                         torch.from_numpy(traj[:, t]), tol).numpy()
        score[done], used[done] = traj[done, t], t
        active &= ~done
    return score, used


def search_val(dataset: str, size: int, classes: list[int], cache_dir: str, json_path: Optional[str] = None) -> dict:
    """AnoGAN's validation AUROC per class for each fixed step count and each stopping-rule tolerance."""
    base = Spec(setting="nd", dataset=dataset, image_size=size, model="anogan")
    out: dict = {"dataset": dataset, "image_size": size, "classes": [], "fixed": {}, "rule": {}, "seconds": {}}
    for c in classes:
        spec = base.replace(normal_class=c)
        bench = build_benchmark(spec, ())
        t0 = time.perf_counter()
        model = get_model(spec, bench, cache_dir=cache_dir, device="cpu").model.eval()
        t1 = time.perf_counter()
        x = torch.cat([torch.from_numpy(bench.val.x), torch.from_numpy(bench.val_ood["novel"].x)])
        novel = np.r_[np.zeros(len(bench.val.x), bool), np.ones(len(bench.val_ood["novel"].x), bool)]
        traj = search_trajectory(model, x, SEARCH_VAL_STEPS)
        out["classes"].append(c)
        out["seconds"][c] = {"train_or_load": round(t1 - t0, 1), "search": round(time.perf_counter() - t1, 1)}
        for s in SEARCH_VAL_FIXED:
            out["fixed"].setdefault(str(s), []).append(metrics.auroc(traj[~novel, s], traj[novel, s]))
        for tol in SEARCH_VAL_TOLS:
            score, used = stopped(traj, tol)
            r = out["rule"].setdefault(str(tol), {"auroc": [], "mean_steps": []})
            r["auroc"].append(metrics.auroc(score[~novel], score[novel]))
            r["mean_steps"].append(float(used.mean()))
        print(f"class {c}: {out['seconds'][c]}", flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps(out, indent=1, default=float))
    return out


# the one-class trainers and their default hyper-parameters, which --select varies (the generative models here, and
# the other trained ones, whose protocol runs are scripts/bench_oneclass_ssl.py's); bench_size_cost.py times them
TRAINERS = {"lsa": (oneclass_gen.train_lsa, oneclass_gen.LSA_HP), "ocgan": (oneclass_gen.train_ocgan,
            oneclass_gen.OCGAN_HP), "anogan": (oneclass_gen.train_anogan, oneclass_gen.ANOGAN_HP),
            "geotrans": (oneclass.train_geotrans, oneclass.GEO_HP), "deep_svdd": (oneclass.train_deep_svdd,
            oneclass.SVDD_HP), "deep_svdd_pretrained": (oneclass.train_deep_svdd, oneclass.SVDD_PRETRAIN_HP),
            "autoencoder": (oneclass.train_autoencoder, oneclass.AE_HP), "csi": (oneclass_ssl.train_csi,
            oneclass_ssl.CSI_HP), "ustd": (oneclass_ssl.train_ustd, oneclass_ssl.USTD_HP),
            "mkd": (oneclass_ssl.train_mkd, oneclass_ssl.MKD_HP),
            "ustd_lite0": (functools.partial(oneclass_ssl.train_ustd, teacher="lite0"), oneclass_ssl.USTD_HP),
            "mkd_lite0": (functools.partial(oneclass_ssl.train_mkd, teacher="lite0"), oneclass_ssl.MKD_HP)}


def variants(defaults: dict, texts: list[str]) -> dict:
    """{"epochs=100;lr=0.001": the defaults with those values, ...}: each variant's changes to a model's defaults."""
    out = {}
    for text in texts:
        hp = dict(defaults)
        for item in filter(None, (t.strip() for t in text.split(";"))):
            key, _, value = item.partition("=")
            if key not in defaults or not value:
                raise SystemExit(f"--select: {item!r} is not key=value with a key of {', '.join(defaults)}")
            if isinstance(defaults[key], tuple):  # milestones: "50" or "50+80"
                hp[key] = tuple(int(float(v)) for v in value.split("+"))
            else:
                hp[key] = type(defaults[key])(float(value))
        out[text] = hp
    return out


def search_table(r: dict) -> str:
    lines = [f"AnoGAN's latent search on {r['dataset']} at {r['image_size']} px, normal classes {r['classes']}: "
             "VALIDATION AUROC % (normal val vs the other classes' val), mean over the classes", "",
             "| search | validation AUROC % | mean steps per image |", "|---|---|---|"]
    for s, a in r["fixed"].items():
        lines.append(f"| {s} steps | {100 * np.mean(a):.1f} | {s} |")
    for tol, v in r["rule"].items():
        lines.append(f"| stop when the loss falls < {100 * float(tol):g}% in {ANOGAN_CHECK_EVERY} steps (max "
                     f"{SEARCH_VAL_STEPS}) | {100 * np.mean(v['auroc']):.1f} | {np.mean(v['mean_steps']):.0f} |")
    return "\n".join(lines)


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
    ap.add_argument("--search-val", action="store_true", help="choose AnoGAN's search on validation data (see above)")
    ap.add_argument("--select", nargs="+", metavar="MODEL VARIANT",
                    help="a model (one of TRAINERS: lsa, ocgan, anogan, geotrans, ...), then variants of its defaults, "
                         "e.g. 'epochs=100;lr=0.001': each variant's validation AUROC")
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
    torch.set_num_threads(2)
    if args.select:
        from bench_oneclass_ssl import select, variants_table

        model, *texts = args.select
        if model not in TRAINERS or not texts:
            ap.error(f"--select takes one of {', '.join(TRAINERS)}, then one or more variants")
        if (args.dataset, args.size) != ("mnist-sample", 28):
            ap.error("--select runs on the MNIST sample at 28 px (bench_oneclass_ssl's data)")
        trainer, defaults = TRAINERS[model]
        def save(res):  # after every variant
            if args.json:
                Path(args.json).write_text(json.dumps({"model": model, "classes": classes, "variants": res},
                                                      indent=1, default=float))

        res = select(classes, variants(defaults, texts), model, trainer, save)
        print("\n" + variants_table(res, f"{MODELS[model].short}'s training"))
        return 0
    if args.search_val:
        with tempfile.TemporaryDirectory(prefix="ood-bench-anogan-search-") as tmp:
            print("\n" + search_table(search_val(args.dataset, args.size, classes, args.cache_dir or tmp, args.json)))
        return 0
    with tempfile.TemporaryDirectory(prefix="ood-bench-oneclass-gen-") as tmp:
        r = run(args.dataset, args.size, classes, models, args.cache_dir or tmp, args.json)
    print("\n" + table(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
