"""Command line: the same numbers as the dashboard, for scripts and for checking.

    python -m ood_core list-detectors
    python -m ood_core list-datasets [--data-root DIR]
    python -m ood_core fetch-data mnist cifar10 [--data-root DIR]
    python -m ood_core run --dataset digits --setting ood --detectors all --seed 0 --json out.json
    python -m ood_core run --dataset mnist-sample --setting osr --known 6 --splits 5
    python -m ood_core run --dataset cifar10 --setting osr --osr-protocol cifar+10 --osr-splits literature
    python -m ood_core run --dataset cifar10 --data-root DIR --ood-preset survey
    python -m ood_core run --dataset cifar10 --model-file net.pt2          # a brought model: scored, not trained
    python -m ood_core run --dataset cifar10 --model-file r18.pt --arch resnet18 --input-norm imagenet
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from . import metrics, report
from .compare import METRIC_KEYS, run_seeds, summarise  # noqa: F401  (re-exported)
from .device import ENV_VAR, check_device
from .models.registry import MODELS, model_names
from .data import osr_splits
from .spec import OSR_PROTOCOLS, OSR_SPLIT_MODES, REGIME_EPOCHS, REGIMES, SETTINGS, Spec, TrainConfig, default_epochs

if TYPE_CHECKING:
    from .jobs import Estimate


def _fmt_param(name, p) -> str:
    rng = "" if p.kind == "choice" else f" [{p.low:g}..{p.high:g}{', log' if p.scale == 'log' else ''}]"
    if p.kind == "choice":
        rng = f" {{{'|'.join(map(str, p.choices))}}}"
    return f"{name}={p.default}{rng}"


def list_detectors(out=None) -> None:
    from .detectors import REGISTRY

    out = out or sys.stdout  # looked up at call time, so redirections and capture work
    width = max(len(n) for n in REGISTRY)
    for name, cls in REGISTRY.items():
        params = ", ".join(_fmt_param(k, p) for k, p in cls.params.items()) or "-"
        out.write(f"{name:<{width}}  {cls.family:<10}  {params}\n")


def markdown_table(summary: list[dict], names: list[str], ood_sets: list[str], by: str = "detector",
                   metrics: tuple[str, ...] = ("auroc", "fpr95")) -> str:
    """Rows `names` (the summary's `by` field) x OOD sets; each cell the metrics in percent joined by ' / '
    (mean ± sample std, ddof=1, when the summary averages several rows), and a last column with the mean over the sets."""
    cell_of = {(s[by], s["ood_set"]): s for s in summary}
    header = f"| {by} | " + " | ".join(ood_sets) + " | mean |"
    lines = [header, "|" + "---|" * (len(ood_sets) + 2)]

    def cell(s) -> str:
        if s["n"] > 1:
            return " / ".join(f"{100 * s[m + '_mean']:.1f}±{100 * s[m + '_std']:.1f}" for m in metrics)
        return " / ".join(f"{100 * s[m + '_mean']:.1f}" for m in metrics)

    for name in names:
        cells, ok = [], []
        for ood in ood_sets:
            s = cell_of.get((name, ood))
            if s is None or s["auroc_mean"] is None:
                cells.append("error" if s is not None else "–")
                continue
            cells.append(cell(s))
            ok.append(s)
        mean = " / ".join(f"{100 * np.mean([s[m + '_mean'] for s in ok]):.1f}" for m in metrics) if ok else "error"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def _save_outputs(exp, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, o in exp.outputs.items():
        np.savez(folder / f"{split}.npz", logits=o.logits, features=o.features, labels=o.labels)


def _save_scores(scores: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for det, per_split in scores.items():
        np.savez(folder / f"{det}.npz", **{k: np.asarray(v) for k, v in per_split.items()})


def _pct(m, sd, n) -> str:
    if m is None:
        return "error"
    return f"{100 * m:.1f}±{100 * sd:.1f}" if n > 1 else f"{100 * m:.1f}"


def tuned_table(rows: list[dict], unit: str) -> str:
    """The parameters chosen on validation data, one line per (detector, seed or split), as a Markdown table."""
    lines = ["\nParameters tuned on OOD validation data (mean validation AUROC %: default -> tuned)\n",
             f"| detector | {unit} | chosen (differs from the default) | validation AUROC |", "|---|---|---|---|"]
    seen = set()
    for r in rows:
        key = (r["detector"], r.get(unit))
        if "tuned" not in r or key in seen:
            continue
        seen.add(key)
        chosen = ", ".join(f"{k}={v}" for k, v in r["tuned"].items()) or "the defaults"
        v = r["val_auroc"]
        fmt = (lambda x: "-" if x is None else f"{100 * x:.1f}")
        lines.append(f"| {r['detector']} | {r.get(unit)} | {chosen} | {fmt(v['default'])} -> {fmt(v['tuned'])} |")
    if len(lines) == 3:
        lines.append("| (no detector with parameters that score the cached outputs) | | | |")
    return "\n".join(lines)


def run_osr(args, base: Spec) -> int:
    from . import protocols

    base = base.replace(setting="osr", known_classes=args.known, osr_splits=args.osr_splits,
                        osr_protocol=args.osr_protocol)
    check_osr_protocol(base, args.splits)
    synthetic = parse_synthetic(args.synthetic)
    if not args.quiet:  # before any work: what the splits will cost, trainings and scoring
        splits = [protocols.osr_split_spec(base, i) for i in range(args.splits)]
        print(f"estimate: {classifier_estimate(args, splits, synthetic).words()}", file=sys.stderr)
    res = protocols.run_osr(base, args.splits, args.detectors, synthetic, cache_dir=args.cache_dir, device=args.device,
                            on_progress=None if args.quiet else _stderr_progress, tune=args.tune_on_validation)
    summ = protocols.summarise_by(res.rows, ("detector", "ood_set"), ("auroc", "fpr95", "oscr", "aupr_in", "aupr_out"))
    accs = np.array(res.accuracies, dtype=float)
    print(f"OSR protocol: {osr_splits.describe(base)}")
    print(f"OSR on {base.dataset}: {base.known_classes} known classes, {args.splits} split(s); closed-set accuracy "
          f"{_pct(accs.mean(), metrics.sample_std(accs), len(accs))}%  (mean ± sample std over {len(accs)} splits, in %)\n")
    over = f" (mean ± sample std over {len(accs)} splits)" if len(accs) > 1 else ""
    print(f"| detector | AUROC{over} | FPR@95TPR{over} | OSCR{over} |\n|---|---|---|---|")
    for s in summ:
        if s["ood_set"] == "unknown":
            print(f"| {s['detector']} | {_pct(s['auroc_mean'], s['auroc_std'], s['n'])} | "
                  f"{_pct(s['fpr95_mean'], s['fpr95_std'], s['n'])} | {_pct(s['oscr_mean'], s['oscr_std'], s['n'])} |")
    if synthetic:
        print(synthetic_table(summ, "detector", synthetic))
    if args.tune_on_validation:
        print(tuned_table(res.rows, "split"))
    print(f"\n({res.seconds:.1f} s)")
    if args.json:
        _write_json(args.json, res.as_json(base, {"splits": args.splits, "summary": summ}))
    return 0


def check_osr_protocol(base: Spec, splits: int) -> None:
    """Before any training: the protocol fits the dataset, every split's known classes exist (the literature's lists
    are as many as they are), and CIFAR+N finds CIFAR-100, where its unknowns come from."""
    from .data import DATASETS, load_dataset
    from .protocols import osr_split_spec

    n = load_dataset(base.dataset, base.image_size).num_classes
    for i in range(splits):
        osr_splits.known_classes_of(osr_split_spec(base, i), n)
    if base.osr_protocol in osr_splits.CIFAR_PLUS and not DATASETS["cifar100"].found():
        raise ValueError(f"--osr-protocol {base.osr_protocol} takes its unknowns from CIFAR-100, which is "
                         f"{DATASETS['cifar100'].status()}")


def run_one_class(args, base: Spec) -> int:
    from . import protocols

    classes = None if args.normal_class is None else [args.normal_class]
    cb = None if args.quiet else _stderr_progress
    synthetic = parse_synthetic(args.synthetic)
    methods = protocols.ONE_CLASS_METHODS if args.one_class_methods == "all" else protocols.DEFAULT_ONE_CLASS_METHODS
    if args.curve and synthetic:
        raise ValueError("--synthetic does not apply to --curve (the curve scores the anomalous test set only)")
    if not args.quiet:  # before any work: what the one-class models not cached yet will cost
        print(f"estimate: {one_class_estimate(args, base, classes, methods).words()}", file=sys.stderr)
    if args.setting == "ad" and args.curve:
        res = protocols.contamination_curve(base, classes=classes, methods=methods,
                                            cache_dir=args.cache_dir, device=args.device, on_progress=cb)
        summ = protocols.summarise_by(res.rows, ("method", "contamination"))
        ratios = sorted({r["contamination"] for r in res.rows})
        print("Mean AUROC (%) over normal classes, by contamination ratio\n")
        print("| method | " + " | ".join(f"{100 * r:.0f}%" for r in ratios) + " |\n|---|" + "---|" * len(ratios))
        by = {(s["method"], s["contamination"]): s for s in summ}
        for m in dict.fromkeys(r["method"] for r in res.rows):
            print(f"| {m} | " + " | ".join(_pct(by[(m, r)]["auroc_mean"], 0, 1) for r in ratios) + " |")
    else:
        res = protocols.run_one_class(base, args.setting, base.contamination, classes, methods,
                                      synthetic=synthetic,
                                      cache_dir=args.cache_dir, device=args.device, on_progress=cb)
        target = "novel" if args.setting == "nd" else "anomalous"
        own = [r for r in res.rows if r["ood_set"] == target]
        summ = protocols.summarise_by(own, ("method",))
        per = {(r["method"], r["normal_class"]): r for r in own}
        cls = sorted({r["normal_class"] for r in own})
        what = "novelty detection" if args.setting == "nd" else f"anomaly detection, {100 * base.contamination:.0f}% contamination"
        print(f"One-vs-all {what} on {base.dataset}: AUROC (%) per normal class\n")
        print("| method | " + " | ".join(map(str, cls)) + f" | mean ± sample std over {len(cls)} class{'es' if len(cls) > 1 else ''} |\n|---|" + "---|" * (len(cls) + 1))
        for s in summ:
            cells = [("error" if per[(s["method"], c)]["auroc"] is None else f"{100 * per[(s['method'], c)]['auroc']:.1f}")
                     for c in cls]
            print(f"| {s['method']} | " + " | ".join(cells) + f" | {_pct(s['auroc_mean'], s['auroc_std'], s['n'])} |")
        if synthetic:
            summ = protocols.summarise_by(res.rows, ("method", "ood_set"))
            print(synthetic_table(summ, "method", synthetic))
    print(f"\n({res.seconds:.1f} s)")
    if args.json:
        _write_json(args.json, res.as_json(base, {"summary": summ}))
    return 0


def classifier_estimate(args, specs: list[Spec], ood_sets=None) -> "Estimate":
    """What a run over seeds or OSR splits will take (estimates.classifier_runs): the networks not in the cache yet,
    with the ensemble's other members when the detectors include it, and the detectors on every run; sized by the
    first spec's benchmark (with `ood_sets`, default: the setting's own)."""
    from . import estimates
    from .data import build_benchmark
    from .pipeline import resolve_detectors
    from .settings import detectors_for

    first = specs[0]
    bench = build_benchmark(first) if ood_sets is None else build_benchmark(first, ood_sets)
    names = (detectors_for(first.setting, first.model, bench.num_classes, regime=first.training.regime)
             if str(args.detectors).strip() == "all" else resolve_detectors(args.detectors))
    scored = len(bench.test) + sum(len(s) for s in bench.ood.values())
    return estimates.classifier_runs(specs, names, {"train": len(bench.train), "val": len(bench.val)}, scored,
                                     args.cache_dir)


def one_class_estimate(args, base: Spec, classes: Optional[list[int]], methods) -> "Estimate":
    """What a one-vs-all run (or the contamination curve) will take, from estimates.one_class: the models not in the
    cache yet, each trained on about as many images as the first normal class has (its benchmark's training split)."""
    from . import estimates, protocols
    from .data import build_benchmark, load_dataset

    classes = list(range(load_dataset(base.dataset, base.image_size).num_classes) if classes is None else classes)
    first = base.replace(setting=args.setting, normal_class=classes[0], model=methods[0][0])
    train_size = len(build_benchmark(first, ood_sets=()).train)
    if args.setting == "ad" and args.curve:
        return estimates.contamination_curve(base, protocols.CURVE_RATIOS, classes, methods, train_size,
                                             args.cache_dir)
    return estimates.one_class(base, args.setting, base.contamination, classes, methods, train_size, args.cache_dir)


def group_means_table(summary: list[dict], ood_sets: list[str], dataset: str) -> str:
    """Detectors x (near-OOD mean, far-OOD mean) AUROC in percent for a dataset with survey pairs; '' otherwise."""
    from .compare import pivot, with_group_means

    dets, oods, mean = pivot(summary, "auroc", "mean")
    cols, grown, _ = with_group_means(oods, mean, np.zeros_like(mean), dataset)
    extra = cols[len(oods):]
    if not extra:
        return ""
    lines = ["| detector | " + " | ".join(extra) + " |", "|" + "---|" * (len(extra) + 1)]
    for i, d in enumerate(dets):
        cells = ["error" if np.isnan(v) else f"{100 * v:.1f}" for v in grown[i, len(oods):]]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_synthetic(text: str) -> tuple[str, ...]:
    """--synthetic: '' (none), 'all', or a comma-separated list of synthetic / transformed OOD set names."""
    from .data import DEFAULT_OOD_SETS, OOD_SETS

    text = (text or "").strip()
    if text == "all":
        return tuple(DEFAULT_OOD_SETS)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {', '.join(unknown)} for --synthetic; available: {', '.join(OOD_SETS)}")
    return names


def synthetic_table(summary: list[dict], by: str, sets: tuple[str, ...]) -> str:
    """Mean AUROC (%) of each method on each synthetic / transformed set, from a summary by (by, ood_set)."""
    over = "splits" if by == "detector" else "normal classes"
    names = list(dict.fromkeys(s[by] for s in summary))
    return (f"\nAUROC (%) on the synthetic and transformed OOD sets (mean over {over})\n\n"
            + markdown_table(summary, names, list(sets), by, ("auroc",)))


def _stderr_progress(frac: float, msg: str) -> None:
    print(f"[{100 * frac:5.1f}%] {msg}", file=sys.stderr)


def _write_json(path: str, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(report.to_json(doc))


# which settings each setting-specific option applies to; giving one elsewhere is an error, not silently ignored
APPLIES = {
    "detectors": ("ood", "osr"), "seeds": ("ood",), "epochs": ("ood", "osr"), "regime": ("ood", "osr"),
    "known": ("osr",), "splits": ("osr",), "osr_splits": ("osr",), "osr_protocol": ("osr",), "contamination": ("ad",),
    "normal_class": ("nd", "ad"), "one_class_methods": ("nd", "ad"),
    "curve": ("ad",), "synthetic": ("osr", "nd", "ad"), "save_outputs": ("ood",), "save_scores": ("ood",),
    "ood_preset": ("ood",), "model": ("ood", "osr"), "tune_on_validation": ("ood", "osr"), "model_file": ("ood",),
    "pretrained": ("ood",), "model_factory": ("ood",),
}
# options of a brought model (--model-file, --pretrained, --model-factory) and those of training, which it skips
BROUGHT_OPTIONS = ("arch", "num_classes", "head_layer", "conv_layer", "input_norm", "input_size", "fetch_weights")
TRAINING_OPTIONS = ("model", "epochs", "regime", "seeds")
DEFAULTS = {"detectors": "all", "seeds": 1, "regime": "ce", "contamination": 0.05, "synthetic": "",
            "osr_splits": "random", "osr_protocol": "standard", "one_class_methods": "default"}


def check_options(args) -> None:
    """Refuse options that do not apply to the chosen setting, and bad values, before any work; fill defaults."""
    check_brought_options(args)  # before the defaults: a training option the user gave is refused
    for name, settings in APPLIES.items():
        value = getattr(args, name)
        if value not in (None, False) and args.setting not in settings:
            flag = "--" + name.replace("_", "-")
            where = ", ".join(f"--setting {s}" for s in settings)
            raise ValueError(f"{flag} does not apply to --setting {args.setting} (only to {where})")
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.known is None:  # the protocol's own K and number of splits (CIFAR+N 4; TinyImageNet 20 over 10 trials)
        args.known = osr_splits.default_known(args.dataset, args.osr_protocol)
    if args.splits is None:
        args.splits = osr_splits.default_splits(args.dataset, args.osr_splits, args.osr_protocol)
    if args.epochs is not None and not 1 <= args.epochs <= 500:
        raise ValueError(f"--epochs must be in 1..500, got {args.epochs}")
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if args.splits < 1:
        raise ValueError("--splits must be at least 1")
    if args.per_class is not None and args.per_class < 1:
        raise ValueError(f"--per-class must be at least 1 (leave it out for every training image), got {args.per_class}")
    args.device = None if args.device is None else check_device(args.device)  # None: device.default_device()


def brought_source(args) -> Optional[str]:
    """The one model source given (--model-file, --pretrained or --model-factory), or None (train one)."""
    given = [v for v in (args.model_file, args.pretrained, args.model_factory) if v]
    if len(given) > 1:
        raise ValueError("give one of --model-file, --pretrained and --model-factory, not several")
    return given[0] if given else None


def check_brought_options(args) -> None:
    """A brought model is scored as it is: the training options do not apply to it, and its own options need it."""
    source = brought_source(args)
    if source is None:
        given = [o for o in BROUGHT_OPTIONS if getattr(args, o) not in (None, False)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to a brought model: give --model-file, "
                             "--pretrained or --model-factory")
        return
    trained = [o for o in TRAINING_OPTIONS if getattr(args, o) is not None]
    if trained:
        raise ValueError(f"--{trained[0]} does not apply to a brought model: it is scored as it is, not trained")
    if args.arch and not args.model_file:
        raise ValueError("--arch names the architecture of a state_dict given with --model-file")
    if args.fetch_weights and not args.pretrained:
        raise ValueError("--fetch-weights downloads the weights named by --pretrained")
    args.input_norm = parse_input_norm(args.input_norm)


def parse_input_norm(text: Optional[str]):
    """--input-norm: dataset, imagenet, pixels, half, or MEAN/STD (comma-separated per channel, or one value)."""
    from .models.foreign import NORMALISATIONS

    if text is None or text in ("dataset", *NORMALISATIONS):
        return text
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--input-norm must be dataset, {', '.join(NORMALISATIONS)} or MEAN/STD such as "
                         f"0.5,0.5,0.5/0.25,0.25,0.25; got {text!r}") from None
    return mean, std


def load_brought(args, bench):
    """The model of --model-file / --pretrained / --model-factory, wrapped and checked on the benchmark; its
    account goes to stderr (what was found, the input transform, the detectors it cannot serve and why)."""
    from .models.loading import load_model, summary_lines

    source = brought_source(args)
    if args.model_file:
        source = str(Path(args.model_file).expanduser())
    model, info = load_model(source, bench=bench, arch=args.arch, num_classes=args.num_classes, head=args.head_layer,
                             conv=args.conv_layer, normalisation=args.input_norm, input_size=args.input_size,
                             fetch=args.fetch_weights, allow_code=bool(args.model_factory))
    if not args.quiet:
        for line in summary_lines(info):
            print(line, file=sys.stderr)
    return model, info


def check_output_paths(args) -> None:
    """Create and probe every output location before any work, so a run never fails at its very end."""
    for flag, value, is_dir in (("--json", args.json, False), ("--save-outputs", args.save_outputs, True),
                                ("--save-scores", args.save_scores, True)):
        if value:
            _check_writable(Path(value), is_dir, flag)


def _check_writable(path: Path, is_dir: bool, flag: str) -> None:
    folder = path if is_dir else path.parent
    if not is_dir and path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    if is_dir and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ood-write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write there ({e.strerror or type(e).__name__})") from None


def use_data_root(args) -> None:
    """--data-root, where given, becomes $OOD_DATA_ROOT for this process (what data_root() reads)."""
    import os

    if args.data_root:
        os.environ["OOD_DATA_ROOT"] = str(Path(args.data_root).expanduser())


def resolve_dataset(args):
    """--data-root and --dataset (a registered name, or a path to the user's class folders / .zip / .npz) -> the
    DatasetInfo; a set that is absent or refused is an error now, before any training."""
    from .data import DATASETS, data_root, datasets, load_dataset

    use_data_root(args)
    name = args.dataset
    if name not in DATASETS:
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(f"--dataset {name}: neither a registered dataset ({', '.join(DATASETS)}) nor an existing "
                             f"folder, .zip or .npz")
        name = f"user-{path.stem}"
        datasets.register_user_dataset(name, path, filename=path.name)
    info = DATASETS[name]
    if not info.found():
        raise ValueError(f"--dataset {name}: {info.status()} (data root {data_root()})")
    if args.image_size is not None:
        Spec(image_size=args.image_size)  # the spec's own check and message, before any work
    load_dataset(name, args.image_size or info.default_size)  # decode now: a bad file fails before training
    return info


def resolve_ood_sets(args, dataset) -> list[str]:
    """--ood-set PATH (each registered as a natural set named after the file) and --ood-preset survey (the survey's
    near and far sets for this dataset; absent ones are skipped with a note). Returns the extra set names."""
    from .data import registry

    names: list[str] = []
    for path in args.ood_set or []:
        p = Path(path).expanduser()
        if not p.exists():
            raise ValueError(f"--ood-set {path}: no such folder or file")
        names.append(registry.register_user_ood_set(p.stem, p, filename=p.name))
    if args.ood_preset:
        near, far = registry.survey_sets(dataset.name)
        if not near and not far:
            raise ValueError(f"--ood-preset survey: the survey has no benchmark pairs for {dataset.name}; it has them "
                             f"for {', '.join(registry.SURVEY_PAIRS)}")
        absent = [s for s in near + far if not registry.ood_set_available(s)]
        if absent and not args.quiet:
            print(f"note: skipped OOD sets whose files are absent: {', '.join(absent)}", file=sys.stderr)
        names += [s for s in near + far if s not in absent]
    return list(dict.fromkeys(names))


def list_datasets_cmd(args) -> int:
    from .data import data_root, list_datasets

    use_data_root(args)
    print(f"data root: {data_root()}  (--data-root or $OOD_DATA_ROOT)\n")
    for d in list_datasets():
        shape = f"{d['channels']}×{d['size']}×{d['size']}, {d['classes']} classes"
        print(f"{d['name']:<14} {d['title']:<34} {shape:<26} {d['status']}")
    return 0


def fetch_data_cmd(args) -> int:
    from .data import DATASETS, data_root, sources

    use_data_root(args)
    unknown = [n for n in args.names if n not in sources.TORCHVISION_SETS]
    if unknown:
        raise ValueError(f"cannot fetch {', '.join(unknown)}; torchvision fetches {', '.join(sources.TORCHVISION_SETS)}")
    root = data_root()
    for name in args.names:
        if DATASETS[name].found(root):
            print(f"{name}: already in {root}")
            continue
        print(f"{name}: downloading about {sources.download_bytes(name) / 2**20:.0f} MB into {root} "
              "(torchvision's download, checked against its checksums)")
        sources.fetch(name, root, progress=lambda f, m: print(f"  [{100 * f:3.0f}%] {m}", file=sys.stderr))
        print(f"{name}: done")
    return 0


def run(args) -> int:
    from . import pipeline
    from .models import DEFAULT_CACHE_DIR, cache_status

    check_options(args)
    check_output_paths(args)
    cache = Path(args.cache_dir or DEFAULT_CACHE_DIR)
    writable, reason = cache_status(cache)
    if not writable:  # before any work: a run that trains for minutes must not fail at the save
        print(f"error: the model cache {cache} is not writable ({reason}); pass --cache-dir to a writable folder",
              file=sys.stderr)
        return 2
    from . import estimates, serving

    if not serving.rates_only():  # estimates corrected by the trainings timed with this cache (ood_core/timings.py)
        estimates.use_training_times(cache)
    dataset = resolve_dataset(args)
    extra_sets = resolve_ood_sets(args, dataset)
    if extra_sets and args.setting != "ood":  # the protocols score them beside their own unknowns
        args.synthetic = ",".join(dict.fromkeys([*filter(None, args.synthetic.split(",")), *extra_sets]))
    training = TrainConfig(epochs=args.epochs or default_epochs(dataset.default_epochs, args.regime),
                           regime=args.regime)
    from .models.loading import SPEC_MODEL

    model_name = SPEC_MODEL if brought_source(args) else args.model or Spec.model
    base = Spec(setting=args.setting, dataset=dataset.name, model=model_name, training=training, seed=args.seed,
                image_size=args.image_size or dataset.default_size, train_per_class=args.per_class or 0,
                contamination=args.contamination if args.setting == "ad" else Spec.contamination)
    if not args.quiet:
        print(f"data: {dataset.title} at {base.image_size} px"
              + (f", at most {base.train_per_class} training images per class" if base.train_per_class else ""),
              file=sys.stderr)
    if args.curve and args.setting != "ad":
        raise ValueError("--curve is the anomaly-detection contamination curve: use it with --setting ad")
    if args.setting == "osr":
        return run_osr(args, base)
    if args.setting in ("nd", "ad"):
        return run_one_class(args, base)
    seeds = list(range(args.seed, args.seed + args.seeds))
    started: dict[int, float] = {}
    from .data import DEFAULT_OOD_SETS, build_benchmark

    sets = None if not extra_sets else tuple(dict.fromkeys([*DEFAULT_OOD_SETS, *extra_sets]))
    brought = None
    if brought_source(args):  # checked on the benchmark before any scoring
        bench = build_benchmark(base) if sets is None else build_benchmark(base, sets)
        brought = load_brought(args, bench)
    elif not args.quiet:  # before any work: what the seeds will cost, trainings and scoring
        print(f"estimate: {classifier_estimate(args, [base.with_seed(s) for s in seeds], sets).words()}",
              file=sys.stderr)

    def get_experiment(seed: int):
        started[seed] = time.perf_counter()
        if brought is not None:
            return pipeline.prepare(base.with_seed(seed), device=args.device, model=brought[0], bench=bench)

        def progress(p):
            if not args.quiet:
                acc = f" val acc {100 * p.val_accuracy:.1f}%" if np.isfinite(p.val_accuracy) else ""
                print(f"[seed {seed}] epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}{acc}", file=sys.stderr)

        return pipeline.prepare(base.with_seed(seed), progress=progress, cache_dir=args.cache_dir, device=args.device,
                                ood_sets=sets)

    def on_seed(seed: int, exp, rows: list[dict], scores: dict) -> None:
        if not args.quiet:
            how = "brought" if brought is not None else "from cache" if exp.training.from_cache else "trained"
            print(f"[seed {seed}] model {how}, "
                  f"ID accuracy {100 * exp.id_accuracy:.2f}%, {time.perf_counter() - started[seed]:.1f} s",
                  file=sys.stderr)
        suffix = f"seed{seed}" if len(seeds) > 1 else ""
        if args.save_outputs:
            _save_outputs(exp, Path(args.save_outputs) / suffix)
        if args.save_scores:
            _save_scores(scores, Path(args.save_scores) / suffix)

    # "all" = every detector that applies to each seed's experiment; named ones are checked before any training
    all_rows, accs = run_seeds(get_experiment, seeds, args.detectors, all_splits=bool(args.save_scores),
                               on_seed=on_seed, tune=args.tune_on_validation)
    ood_sets = list(dict.fromkeys(r["ood_set"] for r in all_rows))
    summary = summarise(all_rows)
    acc_txt = f"{100 * np.mean(accs):.2f}%" + (f" ± {100 * metrics.sample_std(accs):.2f}" if len(accs) > 1 else "")
    over = f"; mean ± sample std over {len(accs)} seeds" if len(accs) > 1 else ""
    print(f"ID test accuracy: {acc_txt}   (cells: AUROC / FPR@95TPR, in %{over})\n")
    print(markdown_table(summary, list(dict.fromkeys(r["detector"] for r in all_rows)), ood_sets))
    near_far = group_means_table(summary, ood_sets, base.dataset)
    if near_far:
        print("\nThe survey's near- and far-OOD averages (AUROC %, mean over the sets of each group that ran)\n")
        print(near_far)
    if args.tune_on_validation:
        print(tuned_table(all_rows, "seed"))
    errors = [(s["detector"], e) for s in summary for e in s["errors"]]
    for det, e in dict.fromkeys(errors):
        print(f"\n{det} failed: {e}")
    if args.json:
        doc = report.seeds_doc(base, seeds, all_rows, summary, accs)
        if brought is not None:
            doc["model"] = brought[1]
        _write_json(args.json, doc)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood_core", description="OOD Explorer from the command line")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list-detectors", help="one detector per line: name, family, parameters")
    ld = sub.add_parser("list-datasets", help="every dataset: found / not found, and where it is looked for")
    ld.add_argument("--data-root", default=None, help="dataset folder (default $OOD_DATA_ROOT, else data/)")
    fd = sub.add_parser("fetch-data", help="download datasets with torchvision (checksums checked) into the data root")
    fd.add_argument("names", nargs="+", help="mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn")
    fd.add_argument("--data-root", default=None, help="dataset folder (default $OOD_DATA_ROOT, else data/)")
    r = sub.add_parser("run", help="train (or load) the model, score detectors on every OOD set")
    r.add_argument("--dataset", default="digits",
                   help="a registered dataset (list-datasets) or a path: class folders, a .zip of them, or an .npz "
                        "with images and labels (default digits)")
    r.add_argument("--data-root", default=None, help="where registered datasets are read (default $OOD_DATA_ROOT, "
                                                     "else data/), in torchvision's layouts")
    r.add_argument("--model", default=None, choices=model_names(kind="classifier"),
                   help="OOD/OSR classifier (default small_cnn): " + "; ".join(
                       f"{n}: {MODELS[n].title}, {MODELS[n].contract.describe()}" for n in model_names(kind="classifier")))
    r.add_argument("--image-size", type=int, default=None, help="image side in px, a multiple of 4 in 8..64 "
                                                                "(default: the dataset's own; digits 16)")
    r.add_argument("--per-class", type=int, default=None, help="at most this many training images per class "
                                                               "(seeded draw; default all)")
    r.add_argument("--ood-set", action="append", default=None, metavar="PATH",
                   help="an extra OOD set: a folder, .zip or .npz of unlabelled images (repeatable)")
    r.add_argument("--ood-preset", default=None, choices=["survey"],
                   help="OOD: the survey's near/far benchmark sets for the dataset (absent ones skipped)")
    r.add_argument("--setting", default="ood", choices=SETTINGS)
    r.add_argument("--detectors", default=None, help="OOD/OSR: 'all' (default) or a comma-separated list of names")
    r.add_argument("--tune-on-validation", action="store_true",
                   help="OOD/OSR: choose each detector's parameters from its sweep list by the AUROC on held-out OOD "
                        "validation data (the validation split's unknowns; synthetic and transformed sets drawn again "
                        "from the validation images), never on a test set; the chosen values are printed")
    r.add_argument("--seed", type=int, default=0, help="first seed")
    r.add_argument("--seeds", type=int, default=None, help="OOD: number of seeds (each a freshly trained model; default 1)")
    r.add_argument("--epochs", type=int, default=None,
                   help="OOD/OSR: classifier training epochs, 1..500 (default: the dataset's, 30 for digits, 15 for the "
                        "others; " + ", ".join(f"{n} with --regime {r}" for r, n in REGIME_EPOCHS.items()) + ")")
    r.add_argument("--regime", default=None, choices=list(REGIMES),
                   help="classifier training: cross-entropy, outlier exposure, LogitNorm, closedset (Vaze et al. "
                        "2022: longer training, warm-up and cosine schedule, label smoothing 0.1, random shifts, "
                        "rotations and zooms), or rpl / arpl (reciprocal points, Chen et al. 2020 / 2021; score them "
                        "with the rpl detector)")
    r.add_argument("--known", type=int, default=None,
                   help="OSR: number of known classes K (2..N-1; default 6, 4 in CIFAR+N, 20 on tinyimagenet)")
    r.add_argument("--splits", type=int, default=None,
                   help="OSR: number of known/unknown splits (default 5; 10 trials on tinyimagenet, the survey's "
                        "Table 8; with --osr-splits literature, the published ones)")
    r.add_argument("--osr-splits", default=None, choices=list(OSR_SPLIT_MODES),
                   help="OSR: random (default: split i draws its known classes with seed i) or literature (the fixed "
                        "splits shared since Neal et al. 2018, as in ARPL's and Vaze et al.'s code: mnist, svhn, "
                        "cifar10, cifar+10/+50, tinyimagenet)")
    r.add_argument("--osr-protocol", default=None, choices=list(OSR_PROTOCOLS),
                   help="OSR: standard (default: K known classes of the dataset, its others unknown) or cifar+10 / "
                        "cifar+50 (--dataset cifar10: 4 CIFAR-10 classes known, 10 or 50 CIFAR-100 animal classes "
                        "unknown; needs CIFAR-100 in the data root)")
    r.add_argument("--contamination", type=float, default=None, help="AD: contamination ratio in [0, 0.5) (default 0.05)")
    r.add_argument("--normal-class", type=int, default=None, help="ND/AD: only this normal class (default: all)")
    r.add_argument("--curve", action="store_true", help="AD: the whole contamination curve 0-20%%")
    r.add_argument("--one-class-methods", default=None, choices=("default", "all"),
                   help="ND/AD: 'default' leaves out the models that take minutes per normal class on 2 CPU cores "
                        "(Deep SVDD with pretraining, OC-GAN, AnoGAN, CSI, U-std, multiresolution KD) and those with "
                        "an ImageNet-pretrained teacher (U-std and multiresolution KD on EfficientNet-Lite0); 'all' "
                        "runs them too")
    r.add_argument("--synthetic", default=None,
                   help="OSR/ND/AD: also score these synthetic or transformed OOD sets ('all' or a comma-separated "
                        "list; default none: the protocols' own unknowns only)")
    r.add_argument("--json", help="write the results as JSON here")
    r.add_argument("--save-outputs", help="folder for one .npz per split (logits, features, labels)")
    r.add_argument("--save-scores", help="folder for one .npz per detector (one array per split)")
    r.add_argument("--cache-dir", default=None, help="model checkpoint cache (default data/cache)")
    r.add_argument("--device", default=None,
                   help=f"cpu, cuda or cuda:N (default: ${ENV_VAR} when set, else cuda when available, else cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b = r.add_argument_group("a brought model (OOD setting): scored as it is, not trained")
    b.add_argument("--model-file", default=None, metavar="PATH",
                   help="an exported program (torch.export.save, .pt2), a TorchScript file (torch.jit.save) or a "
                        "state_dict (with --arch)")
    b.add_argument("--arch", default=None, help="the state_dict's architecture: small_cnn, resnet18_cifar or a "
                                                "torchvision classifier (resnet18, resnet50, densenet121, vit_b_16, ...)")
    b.add_argument("--num-classes", type=int, default=None, help="classes of --arch (default: the dataset's)")
    b.add_argument("--pretrained", default=None, metavar="WEIGHTS",
                   help="torchvision weights by enum name, e.g. ResNet50_Weights.IMAGENET1K_V2 (from torchvision's "
                        "cache; see --fetch-weights); their transforms set the input size and normalisation")
    b.add_argument("--fetch-weights", action="store_true", help="download --pretrained weights into torchvision's "
                                                                "cache when they are not there")
    b.add_argument("--model-factory", default=None, metavar="MODULE:FUNCTION",
                   help="your own code: package.module:function returning the nn.Module (given num_classes / "
                        "in_channels when it takes them)")
    b.add_argument("--head-layer", default=None, help="name of the final linear layer (default: found by a dry run)")
    b.add_argument("--conv-layer", default=None, help="name of the Grad-CAM layer (default: the last convolutional "
                                                      "block, found by a dry run)")
    b.add_argument("--input-norm", default=None,
                   help="the normalisation the model expects: dataset (default), imagenet, pixels ([0, 1]), half "
                        "([-1, 1]) or MEAN/STD per channel, e.g. 0.49,0.48,0.45/0.25,0.24,0.26")
    b.add_argument("--input-size", type=int, default=None,
                   help="the model's input side in px, images are resized to it (default: the model's own when it "
                        "says, else the dataset's)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list-detectors":
            list_detectors()
            return 0
        if args.command == "list-datasets":
            return list_datasets_cmd(args)
        if args.command == "fetch-data":
            return fetch_data_cmd(args)
        return run(args)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m ood_core.cli, as python -m ood_core
    sys.exit(main())
