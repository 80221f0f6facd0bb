"""The one-way flow: Spec -> Benchmark -> model -> Outputs (one forward pass per split) -> scores -> metrics."""
from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from . import linalg, metrics, outputs_cache, tuning
from .data import Benchmark, build_benchmark
from .device import default_device, resolve_device
from .jobs import check_cancelled
from .detectors import REGISTRY, Detector, FitContext, create, score_together, shares_search
from .inference import ModelAdapter, Outputs, run_inference
from .models import Progress, TrainResult, get_model
from .models.checkpoint import state_dict_sha256
from .models import checkpoint as _checkpoint
from .spec import Spec

ID_SPLITS = ("train", "val", "test")


@dataclass
class Experiment:
    """A prepared experiment: its data, trained model and cached Outputs of every split."""

    spec: Spec
    bench: Benchmark
    training: TrainResult
    outputs: dict[str, Outputs]
    device: str = field(default_factory=default_device)
    cache_dir: Optional[Path | str] = None
    _adapter: Optional[ModelAdapter] = field(default=None, repr=False)
    _members: dict = field(default_factory=dict, repr=False)

    @property
    def model(self):
        return self.training.model

    @property
    def adapter(self) -> Optional[ModelAdapter]:
        """The model adapter detectors use; None for one-class models (no classifier head)."""
        if not self.is_classifier:
            return None
        if self._adapter is None:
            self._adapter = ModelAdapter(self.model, self.device, input_std=self.bench.std)
        return self._adapter

    def unavailable_detectors(self, names: Optional[Iterable[str]] = None) -> dict[str, str]:
        """{detector: why this experiment's model cannot serve it} among `names` (default: all): a brought model
        may lack features, a head, feature maps or dropout (models.foreign); the project's models lack nothing."""
        from .models.foreign import unavailable_detectors

        return unavailable_detectors(list(REGISTRY) if names is None else list(names), self.model)

    @property
    def ood_names(self) -> list[str]:
        return list(self.bench.ood)

    @property
    def is_classifier(self) -> bool:
        return self.outputs["test"].logits.shape[1] > 0

    @property
    def id_correct(self) -> Optional[np.ndarray]:
        """Which ID test samples the classifier gets right (what OSCR counts); None for one-class models."""
        if not self.is_classifier:
            return None
        test = self.outputs["test"]
        return test.logits.argmax(axis=1) == test.labels

    @property
    def id_accuracy(self) -> Optional[float]:
        """Closed-set accuracy on the ID test split; None for one-class models (nothing to classify)."""
        if not self.is_classifier:
            return None
        return metrics.accuracy(self.outputs["test"].logits, self.outputs["test"].labels)

    def outputs_of(self, x: np.ndarray) -> Outputs:
        """The one forward pass on new inputs (n, C, H, W), normalised like the benchmark's: what detectors score.
        Labels are -1 (unknown); the inputs are kept for the detectors that run the network again."""
        if not self.is_classifier:
            raise ValueError(f"the {self.spec.model} model has no classifier head to run on new inputs")
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits, feats = self.adapter.forward(x)
        return Outputs(logits, feats, np.full(len(x), -1), x)

    def with_ood_sets(self, names: Iterable[str], ood_fraction: float = 0.2) -> "Experiment":
        """A copy of this experiment with more registered OOD sets (e.g. a user's upload, registry.register_user_ood_set)
        built at its image size and channels, normalised alike and run through the model once; this experiment is not
        changed (it may be shared). Each set has a fifth of the ID test size, as build_benchmark's, drawn by the seed."""
        from .data.registry import make_ood_set
        from .data.benchmark import Split

        names = [n for n in dict.fromkeys(names) if n not in self.bench.ood]
        if not names:
            return self
        pixels = self.bench.to_pixels(self.bench.test.x)
        n = max(1, int(round(ood_fraction * len(pixels))))
        ood, outputs = dict(self.bench.ood), dict(self.outputs)
        for name in names:
            x = self.bench.normalise(make_ood_set(name, pixels, n, self.spec.seed))  # fewer when the set is smaller
            ood[name] = split = Split(x, np.full(len(x), -1, dtype=np.int64))
            outputs[name] = run_inference(self.model, split.x, split.y, self.device)
        return dataclasses.replace(self, bench=dataclasses.replace(self.bench, ood=ood), outputs=outputs)

    def member_spec(self, i: int) -> Spec:
        """The spec of ensemble member i: this one with another initialisation and batch order (training.member)."""
        return self.spec.with_member(i)

    def member_adapter(self, i: int, progress: Optional[Callable[[Progress], None]] = None,
                       cancel=None) -> ModelAdapter:
        """Ensemble member i: member 0 is this model; others are trained (or loaded) with another initialisation.

        `progress` gets the training's epochs; `cancel` (an Event) stops a training with jobs.Cancelled, leaving
        no checkpoint of that member (members finished before are whole models and stay cached)."""
        if i == 0:
            return self.adapter
        if i not in self._members:
            res = get_model(self.member_spec(i), self.bench, progress, cache_dir=self.cache_dir, device=self.device,
                            cancel=cancel)
            self._members[i] = ModelAdapter(res.model.to(self.device).eval(), self.device, input_std=self.bench.std)
        return self._members[i]

    def fit_context(self, progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> FitContext:
        def members(i: int, on_epoch: Optional[Callable[[Progress], None]] = None) -> ModelAdapter:
            return self.member_adapter(i, on_epoch, cancel)

        return FitContext(train=self.outputs["train"], val=self.outputs["val"], model=self.adapter,
                          num_classes=self.bench.num_classes, member_models=members if self.is_classifier else None,
                          seed=self.spec.seed, progress=progress, cancel=cancel)

    def fit_detector(self, name: str, params: Optional[Mapping] = None,
                     progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> Detector:
        """A detector fitted on this experiment's ID data; `progress`/`cancel` reach long fits (the ensemble's)."""
        from . import serving

        serving.check_detector_allowed(name, dict(params or {}))  # shared mode: bounded ensembles
        return create(name, **dict(params or {})).fit(self.fit_context(progress, cancel))

    def score(self, detector: Detector, splits: Optional[Iterable[str]] = None, cancel=None) -> dict[str, np.ndarray]:
        """Scores of each split (default: ID test and every OOD set); `cancel` is checked between splits."""
        names = list(splits) if splits is not None else ["test", *self.ood_names]
        out = {}
        for s in names:
            check_cancelled(cancel)
            out[s] = detector.score(self.outputs[s])
        return out

    def fit_and_score(self, name: str, params: Optional[Mapping] = None, splits: Optional[Iterable[str]] = None,
                      progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                      fit_share: float = 0.1) -> dict[str, np.ndarray]:
        """fit_detector then score, as a job's work: progress over both (the fit takes `fit_share` of the bar, each
        split a share by its size), jobs.Cancelled between units when `cancel` is set. The same numbers as
        score(fit_detector(name, params))."""
        report = progress or (lambda f, m: None)
        title = REGISTRY[name].title if name in REGISTRY else name
        report(0.0, f"fitting {title}")
        det = self.fit_detector(name, params, lambda f, m: report(fit_share * f, m), cancel)
        names = list(splits) if splits is not None else ["test", *self.ood_names]
        sizes = np.array([max(1, len(self.outputs[s])) for s in names], dtype=float)
        done = np.concatenate([[0.0], np.cumsum(sizes) / sizes.sum()])
        out = {}
        for j, s in enumerate(names):
            check_cancelled(cancel)
            report(fit_share + (1 - fit_share) * done[j], f"{title}: scoring {s} ({len(self.outputs[s]):,} images)")
            out[s] = det.score(self.outputs[s])
        report(1.0, f"{title}: done")
        return out


FORWARD_CHUNK = 4096  # images per piece of the one forward pass between progress reports and cancel checks
FORWARD_PIXELS = 128 * 28 * 28  # pixels per batch of the one forward pass: 128 images at 28 px, 32 at 56 px


def forward_batch(input_shape: tuple[int, ...]) -> int:
    """Images per batch of the one forward pass: about FORWARD_PIXELS pixels (a multiple of 16, 16 to 512).

    On the CPU a batch whose activations stay in the caches costs less per image: the small CNN at 28 px took
    0.31 ms of CPU per image in batches of 128, 0.45 ms in the detectors' 256 and 0.83 ms in 1,024 (one thread).
    Each image is computed on its own, so the outputs are the same bit for bit at any batch size."""
    h, w = input_shape[-2], input_shape[-1]
    return int(min(512, max(16, FORWARD_PIXELS // max(1, h * w) // 16 * 16)))


def compute_outputs(model, bench: Benchmark, device: Optional[str] = None,
                    progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> dict[str, Outputs]:
    """The single forward pass of every split (ID train/val/test and each OOD set), on `device` (default:
    device.default_device()), in pieces of FORWARD_CHUNK images: `progress(fraction, message)` after each piece,
    jobs.Cancelled between pieces when `cancel` is set. The same numbers as one pass per split. Only the piece being
    run exists as float inputs; each Outputs keeps its split's compact `images` for the methods that run the network
    again."""
    device = resolve_device(device)
    splits = bench.splits()
    total, done = max(1, sum(len(s) for s in splits.values())), 0
    batch = forward_batch(bench.input_shape)
    out = {}
    for name, split in splits.items():
        pieces = []
        for i in range(0, max(len(split), 1), FORWARD_CHUNK):
            check_cancelled(cancel)
            pieces.append(run_inference(model, split.images[i:i + FORWARD_CHUNK], split.y[i:i + FORWARD_CHUNK],
                                        device, batch_size=batch, keep_inputs=False))
            done += len(pieces[-1])
            if progress:
                progress(done / total, f"running the model on {name} ({done:,} of {total:,} images)")
        out[name] = Outputs(np.concatenate([p.logits for p in pieces]), np.concatenate([p.features for p in pieces]),
                            np.concatenate([p.labels for p in pieces]), split.images,
                            {k: np.concatenate([p.extras[k] for p in pieces]) for k in pieces[0].extras})
    return out


def prepare(spec: Spec, progress: Optional[Callable[[Progress], None]] = None, cache_dir: Path | str | None = None,
            device: Optional[str] = None, retrain: bool = False, model=None,
            ood_sets: Optional[Iterable[str]] = None, bench: Optional[Benchmark] = None,
            on_wait: Optional[Callable[[int], None]] = None, cancel=None,
            on_forward: Optional[Callable[[float, str], None]] = None) -> Experiment:
    """Build the benchmark, get the model (cache, training, or the user's `model`) and run inference once.

    `ood_sets`: the synthetic and transformed OOD sets to build (default: all of them). The setting's own
    test set ("unknown" in OSR, "novel"/"anomalous" in ND/AD) is always there; `ood_sets=()` keeps it alone.
    `bench`: the spec's benchmark when the caller already built it (it does not depend on the model).
    `on_wait(place)`: called while a training waits for a slot of the training queue (models.get_model).
    `cancel` (an Event): a training stops with jobs.Cancelled when it is set, and caches nothing; so does the forward
    pass. `on_forward(fraction, message)`: the forward pass's progress (compute_outputs).
    The forward pass is kept on disk (outputs_cache) and read back by the next run of the same model (the SHA-256 of
    its weights and buffers) on the same data.
    Features of 1,024 dimensions or more are kept as float16 values, fresh or read back alike (outputs_cache).
    """
    device = resolve_device(device)
    if bench is None:
        bench = build_benchmark(spec) if ood_sets is None else build_benchmark(spec, tuple(ood_sets))
    if model is not None:
        training = TrainResult(model.eval(), [], 0.0, from_cache=False)  # the user's model: neither trained nor cached
    else:
        training = get_model(spec, bench, progress, cache_dir, device=device, retrain=retrain, on_wait=on_wait,
                             cancel=cancel)
    check_cancelled(cancel)
    training.model.to(device).eval()
    model_id = state_dict_sha256(training.model.state_dict())
    root = cache_dir or _checkpoint.DEFAULT_CACHE_DIR  # read now: tests and servers may point it elsewhere
    key = outputs_cache.outputs_key(model_id, bench)
    outputs = outputs_cache.load(root, key, bench)
    if outputs is None:
        outputs = outputs_cache.as_stored(compute_outputs(training.model, bench, device, on_forward, cancel))
        outputs_cache.save(root, key, outputs)  # nothing is written where the cache cannot be
    return Experiment(spec, bench, training, outputs, device, cache_dir)


def resolve_detectors(names: str | Iterable[str], exp: Optional["Experiment"] = None) -> list[str]:
    """'all', a comma-separated string or a list of names -> validated list of registry names.

    With an experiment, 'all' means every detector that applies to its setting and model, and naming one
    that does not apply is an error.
    """
    from .settings import detectors_for, is_applicable

    if isinstance(names, str):
        if names.strip() == "all":
            names = (detectors_for(exp.spec.setting, exp.spec.model, exp.bench.num_classes, net=exp.model,
                                   regime=exp.spec.training.regime) if exp else list(REGISTRY))
        else:
            names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown detector(s): {', '.join(unknown)}; run `python -m ood_core list-detectors`")
    if exp is not None:
        bad = [n for n in names if not is_applicable(n, exp.spec.setting, exp.spec.model, exp.bench.num_classes,
                                                     exp.spec.training.regime)]
        if bad:
            needs = list(dict.fromkeys(r for n in bad for r in REGISTRY[n].regimes))
            hint = f" (they score a classifier trained in the regime {' or '.join(needs)})" if needs else ""
            raise ValueError(f"detector(s) {', '.join(bad)} do not apply to setting {exp.spec.setting!r} "
                             f"with model {exp.spec.model!r} trained in regime {exp.spec.training.regime!r}{hint}")
        missing = exp.unavailable_detectors(names)
        if missing:
            raise ValueError("; ".join(f"{n} does not apply to this model: {why}" for n, why in missing.items()))
    if not names:
        raise ValueError("no detector chosen")
    return names


def _work_units(names: list[str]) -> list[list[str]]:
    """The detectors in the order they run: each alone, except those that can share a neighbour search (KNN,
    NNGuide), which run together where the first of them stands."""
    sharing = [n for n in names if shares_search(n)]
    units: list[list[str]] = []
    for n in names:
        if n not in sharing or len(sharing) < 2:
            units.append([n])
        elif n == sharing[0]:
            units.append(sharing)
    return units


def evaluate(exp: Experiment, detector_names: str | Iterable[str] = "all",
             params: Optional[Mapping[str, Mapping]] = None,
             on_progress: Optional[Callable[[int, int, str], None]] = None,
             all_splits: bool = False, cancel=None, tune: bool = False) -> tuple[list[dict], dict[str, dict]]:
    """Score every detector on ID test and every OOD set; one detector failing never stops the others.

    `tune`: each detector given no `params` and tunable (tuning.is_tunable) has its parameters chosen first on the
    experiment's OOD *validation* sets (tuning.tune; never a test set); its rows then carry `tuned` (the parameters
    that differ from the defaults) and `val_auroc` (mean validation AUROC at the default and the chosen values).

    Detectors that search the same normalised ID features (KNN, NNGuide) are fitted one after the other and scored
    together (detectors.score_together: one matrix product for all of them, the same numbers); each one's `seconds`
    is then its own tuning and fit plus an equal share of the joint scoring.

    Returns (rows, scores): rows are dicts with detector, ood_set, the metrics (fractions) and `error`
    (None or a message), in the order of the detectors; scores[detector][split] are the score arrays of ID test and
    the OOD sets, plus train and val when `all_splits` (for exporting them; the metrics never need them). `cancel`
    (an Event) stops the run with jobs.Cancelled between detectors and splits, never recorded as a detector's error.
    """
    names = resolve_detectors(detector_names, exp)
    params = params or {}
    osr = exp.spec.setting == "osr"
    id_correct = exp.id_correct if osr else None
    splits = [*(("train", "val") if all_splits else ()), "test", *exp.ood_names]
    by_name: dict[str, list[dict]] = {}
    all_scores: dict[str, dict] = {}
    started = 0
    with linalg.sharing():  # statistics several detectors compute alike are computed once (linalg.shared)
        for unit in _work_units(names):
            for name in unit:
                if on_progress:
                    on_progress(started, len(names), name)
                started += 1
            for name, (sc, err, seconds, tuned) in _evaluate_unit(exp, unit, params, tune, splits, cancel).items():
                if sc is not None:
                    all_scores[name] = sc
                by_name[name] = _rows(name, exp, sc, err, seconds, tuned, osr, id_correct)
    if on_progress:
        on_progress(len(names), len(names), "")
    return [r for name in names for r in by_name[name]], {n: all_scores[n] for n in names if n in all_scores}


def score_values(exp: "Experiment", name: str, param_sets: list[Mapping], outs: list[Outputs],
                 on_progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                 labels: Optional[list[str]] = None) -> list:
    """Detector `name` fitted with each of `param_sets` on the experiment's ID data, and scored on every Outputs of
    `outs` with all the sets together (detectors.score_together: a neighbour search, KNN's or NNGuide's, makes one
    pass per Outputs for all of them; the same numbers as each alone). Per parameter set: the list of its score
    arrays (one per Outputs), or the exception its fit or scoring raised. If the joint pass fails, each set is
    scored alone, so an error stays with its set. on_progress(fraction, message): fitting a tenth of the bar, then
    one step per Outputs, each fit named by its `labels` entry; `cancel` (an Event): jobs.Cancelled between fits and
    Outputs."""
    fitted, results = {}, [None] * len(param_sets)
    for i, params in enumerate(param_sets):
        check_cancelled(cancel)
        if on_progress:
            what = labels[i] if labels else f"parameter set {i + 1}"
            on_progress(0.1 * i / len(param_sets), f"fitting {what} ({i + 1}/{len(param_sets)})")
        try:
            fitted[i] = exp.fit_detector(name, dict(params), cancel=cancel)
        except Exception as e:  # one bad set is its own error; the others go on
            results[i] = e
    try:
        scores = {i: [] for i in fitted}
        for j, out in enumerate(outs):
            check_cancelled(cancel)
            if on_progress:
                on_progress(0.1 + 0.9 * j / len(outs), f"scoring {len(out):,} images for all {len(fitted)} at once")
            for i, sc in zip(fitted, score_together(list(fitted.values()), out)):
                scores[i].append(sc)
    except Exception:  # the joint pass failed: each set alone (jobs.Cancelled is no Exception: it stops the run)
        scores = {}
        for i, det in fitted.items():
            check_cancelled(cancel)
            try:
                scores[i] = [det.score(out) for out in outs]
            except Exception as e:
                results[i] = e
    for i, sc in scores.items():
        results[i] = sc
    return results


def _failure(e: Exception) -> str:
    traceback.clear_frames(e.__traceback__)
    return f"{type(e).__name__}: {e}"


def _evaluate_unit(exp: Experiment, unit: list[str], params: Mapping, tune: bool, splits: list[str],
                   cancel) -> dict[str, tuple]:
    """evaluate's work for one unit of _work_units: each detector tuned (if asked) and fitted, then all of them
    scored together when they share a search, else each alone. {name: (scores or None, error or None, seconds,
    tuning result or None)}; one detector failing never stops the others."""
    fitted: dict[str, Detector] = {}
    errors: dict[str, str] = {}
    tuned: dict[str, object] = {}
    seconds: dict[str, float] = {}
    for name in unit:
        check_cancelled(cancel)
        t0 = time.perf_counter()
        try:
            chosen = params.get(name)
            if tune and chosen is None and tuning.is_tunable(name):
                tuned[name] = tuning.tune(exp, name, cancel=cancel)
                chosen = tuned[name].params
            fitted[name] = exp.fit_detector(name, chosen, cancel=cancel)
        except Exception as e:  # isolate: record the message, keep going
            errors[name] = _failure(e)
        seconds[name] = time.perf_counter() - t0
    scores: dict[str, dict] = {}
    if len(fitted) > 1:
        t0 = time.perf_counter()
        try:
            for s in splits:
                check_cancelled(cancel)
                for name, sc in zip(fitted, score_together(list(fitted.values()), exp.outputs[s])):
                    scores.setdefault(name, {})[s] = sc
        except Exception as e:  # the shared pass failed: each scores alone below, so a failure is attributed
            traceback.clear_frames(e.__traceback__)  # (jobs.Cancelled is no Exception: it stops the run)
            scores = {}
        else:
            for name in fitted:
                seconds[name] += (time.perf_counter() - t0) / len(fitted)
    for name, det in fitted.items():
        if name not in scores:
            t0 = time.perf_counter()
            try:
                scores[name] = exp.score(det, splits, cancel)
            except Exception as e:
                errors[name] = _failure(e)
            seconds[name] += time.perf_counter() - t0
    result = {}
    for name in unit:
        sc = scores.get(name) if name not in errors else None
        bad = [s for s, v in sc.items() if not np.all(np.isfinite(v))] if sc is not None else []
        if bad:
            errors[name], sc = f"FloatingPointError: non-finite scores on {', '.join(bad)}", None
        result[name] = (sc, errors.get(name), seconds[name], tuned.get(name))
    return result


def _rows(name: str, exp: Experiment, sc: Optional[dict], err: Optional[str], seconds: float, tuned,
          osr: bool, id_correct) -> list[dict]:
    """evaluate's rows for one detector: one per OOD set, with the metrics when it has scores."""
    rows = []
    for ood in exp.ood_names:
        row = {"detector": name, "ood_set": ood, "auroc": None, "aupr_in": None, "aupr_out": None,
               "fpr95": None, "detection_error": None, "error": err, "seconds": seconds}
        if osr:
            row["oscr"] = None
        if tuned is not None:
            row.update(tuned=tuned.changed(), val_auroc={"default": tuned.default_val_auroc,
                                                         "tuned": tuned.val_auroc})
        if sc is not None:
            row.update(metrics.all_metrics(sc["test"], sc[ood]).as_dict())
            if osr:
                row["oscr"] = metrics.oscr(sc["test"], id_correct, sc[ood])
        rows.append(row)
    return rows
