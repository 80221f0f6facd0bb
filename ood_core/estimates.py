"""How long long work will take, said before it starts ("about 4 min: trains 4 networks"), from measured times.

A training is estimated from the experiment's own model when it was trained here (its checkpoint keeps the
training's seconds, and an ensemble member or another seed of the same spec trains as long), else from the rates
below and each model's `train_seconds` in the model registry (models.registry). The rates were measured at 16 px on
2 CPU cores and scale with the number of images and with the image size (size_factor: the area, but for a share
of each model's work that does not grow with the pixels, its registry entry's `size_overhead`).
Estimates count what is not cached yet: a model on disk costs nothing.
On another machine the rates are off by its speed: once use_training_times(cache folder) is called (the dashboard
does), every training estimate is multiplied by what the trainings timed on this machine's device (its CPU, or its
GPU where trainings run on one) say (timings.speed_factor), and says so; reference_training is the estimate from the
rates alone (the Methods cards' "on 2 cores").
The detectors that run the network again, and an ensemble's other members, are counted in forward passes of the
experiment's own model (NETWORK_FORWARDS), timed once on its device (model_forward): a large uploaded model, or a GPU,
is estimated at its own speed, not at the small CNN's on 2 cores.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional

from . import timings
from .jobs import Estimate
from .models import MODELS, is_cached
from .models.cnn import SMALL_CNN_S_PER_IMAGE_EPOCH
from .models.openset_generative import extra_epochs
from .spec import REGIME_TITLES, Spec, TrainConfig, default_epochs

REFERENCE_SIDE = 16  # the image side the rates were measured at
# seconds per training image and epoch of the small CNN at 16 px: the rate of a model the registry does not know
CLASSIFIER_S_PER_IMAGE_EPOCH = SMALL_CNN_S_PER_IMAGE_EPOCH
DEFAULT_TRAIN_IMAGES = 1078  # the default experiment's ID training split (digits), for the Methods cards' cost lines
# the one-class models' trainings on the Methods card of their score (model_score), per normal class: the default
# novelty-detection experiment (digit 0 of the digits' training split at 16 px) and the MNIST sample (every digit has
# 300 training images) at its 28 px
ONE_CLASS_CASES = (("digits", 16, 107), ("mnist-sample", 28, 300))
# what the detectors that run the network again cost per image, in plain forward passes of the same model (what
# model_forward times), at their default parameters (fit and scoring: the scored images and those of FIT_SPLITS):
# the larger of two cases of scripts/bench_network_cost.py (digits at 16 px and the MNIST sample at 28 px, the small
# CNN, 2 threads; docs/bench/network_cost.json; this shared machine moved such ratios by up to 30% from run to run). The
# model's own forward pass, timed on its device, turns them into seconds: an uploaded ResNet or a GPU costs what it
# costs, not what the small CNN does on 2 cores
NETWORK_FORWARDS = {"odin": 2.9, "mahalanobis_pre": 3.2, "gram": 6.9, "crosr": 1.8, "knn_conv": 1.6}
# MC dropout: with its shortcut (the model's one dropout layer between features and head:
# detectors.uncertainty.reruns_head_only) the features once, MC_FEATURES forward passes, then MC_HEAD_PASS per
# stochastic pass; without it (dropout inside the features) MC_FULL_PASS forward passes per stochastic pass
MC_FEATURES, MC_HEAD_PASS, MC_FULL_PASS = 1.6, 0.002, 1.3
# the small CNN's forward pass per image at 16 px on 2 CPU cores (model_forward, the same benchmark): where no model
# is at hand (the CLI counts runs before it trains), times the size factor and the model's registry weight
REFERENCE_FORWARD_S = 1.5e-4
PROBE_IMAGES = 256  # ID test images model_forward may time: one batch of the detectors' (ModelAdapter's)
PROBE_SECONDS = 0.2  # about how long each of time_forward's timed runs lasts, for a model too slow for a whole batch
# an uploaded model's forward pass per image at 16 px, before it is loaded: not measured (any model may come); about 6
# times the small CNN's, so a large upload is more likely said and asked about than started at once
UNSEEN_MODEL_FORWARD_S = 5e-4
NETWORK_WHAT = {"odin": "an input-gradient step, then a forward pass, per image",
                "mahalanobis_pre": "an input-gradient step, then a forward pass, per image",
                "mc_dropout": "{passes} stochastic passes",
                "gram": "Gram matrices of every layer's feature maps, fitted on the ID training images too",
                "crosr": "a forward pass per image for the layers' latents, fitted on the ID training images too",
                "knn_conv": "a forward pass per image for the pooled convolutional maps, of the ID training images too"}
# the images a detector's fit runs the network on besides the scored ones: Gram's ID training and validation
# statistics, CROSR's ID training latents, the convolutional KNN's bank
FIT_SPLITS = {"gram": ("train", "val"), "crosr": ("train",), "knn_conv": ("train",)}
# the detectors that train small networks on the cached features (measured on 128-d features, one core, a busy
# machine): OpenGAN per step (batches of 128, default width; the cost grows with the square of the width), C2AE per ID
# training sample and epoch
OPENGAN_S_PER_STEP = 0.01
C2AE_S_PER_SAMPLE_EPOCH = 2.5e-5
FIT_WHAT = {"opengan": "trains OpenGAN's generator and discriminator for {steps} steps",
            "c2ae": "trains C2AE's conditioned autoencoder for {epochs} epochs"}
# the detectors with a cost of their own (run the network, train one, or the ensemble's members); every other one
# scores the cached outputs, and all of those together cost POST_HOC_S
OWN_COST = frozenset({*NETWORK_FORWARDS, "mc_dropout", *FIT_WHAT, "ensemble"})
# the regimes that train more than the classifier, as a multiple of a cross-entropy epoch (small CNN, digits at 16 px,
# OSR 6/4, the faster of two 2-epoch trainings on 2 busy cores): ARPL+CS's GAN step per batch, CROSR's decoder; OSRCI's
# and G-OpenMax's extra passes (models.openset_generative.extra_epochs: the GAN's and the fine-tuning's) each cost
# GENERATIVE_PASS epochs
REGIME_EPOCH_COST = {"arpl_cs": 2.4, "crosr": 2.3}
GENERATIVE_PASS = 1.3
POST_HOC_S = 3.0  # every post-hoc detector together, from the cached outputs of one experiment
ONE_CLASS_METHOD_S = 0.1  # one (normal class, method) of a one-class protocol, its model there: inference + scoring
# a KNN or NNGuide sweep scores all its values in one search pass per split (compare.sweep): each value past the
# dearest adds about this share of it (scripts/bench_sweep.py: 7 values of KNN's k in 9.3 s, one alone 5.1 s)
SHARED_SWEEP_EXTRA = 0.15
SLOW_S = 30.0  # longer than this: say so and ask before starting; shorter work starts at once (still as a job)


def _plural(n: int, word: str) -> str:
    """'1 network', '4 networks', '2 classes'."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{'es' if word.endswith('s') else 's'}"


def size_factor(side: int, overhead: float = 0.0) -> float:
    """What one image costs at `side` px relative to REFERENCE_SIDE, when a share `overhead` of the work per image
    does not grow with the pixels (a model's ModelEntry.size_overhead) and the rest grows with the area."""
    return overhead + (1.0 - overhead) * (side / REFERENCE_SIDE) ** 2


def _size(spec: Spec, model: Optional[str] = None) -> float:
    """The size factor of `model`'s work (default: spec's own model; training it, or running it again) at spec's
    image size."""
    entry = MODELS.get(model or spec.model)
    return size_factor(spec.image_size, entry.size_overhead if entry is not None else 0.0)


def training_seconds(exp) -> float:
    """Seconds one training of this experiment's spec takes (another seed or ensemble member trains as long): the
    measured time of its own model when it was trained here, else the reference rate times images and epochs."""
    measured = float(getattr(exp.training, "seconds", 0.0) or 0.0)
    if measured > 0 and exp.training.history:
        return measured
    return training(exp.spec, len(exp.bench.train)).seconds


_times_dir: Optional[Path] = None  # where the trainings timed on this machine are recorded; None: rates alone


def use_training_times(cache_dir: Optional[Path | str]) -> None:
    """Correct every training estimate by the trainings timed in `cache_dir` (timings.py); None: the rates alone."""
    global _times_dir
    _times_dir = Path(cache_dir) if cache_dir is not None else None


def speed(model: str, kind: Optional[str] = None) -> tuple[float, int, bool]:
    """timings.speed_factor of `model` on devices of `kind` (default: this machine's default device, where trainings
    run: device.default_device, so OOD_DEVICE too): (factor, trainings, own); (1, 0, False) when not in use."""
    if _times_dir is None:
        return 1.0, 0, False
    return timings.speed_factor(model, _times_dir, kind or _device_kind())


def _device_kind() -> str:
    """timings.device_kind of the default device; "cpu" when $OOD_DEVICE names none this machine has (the training
    itself then says so, in one sentence: an estimate is not the place)."""
    try:
        return timings.device_kind()
    except ValueError:
        return timings.CPU


def _seconds_per_image(model: str) -> float:
    """The registry's training rate of `model` at 16 px (per epoch for a classifier, the whole training for a
    one-class model); the small CNN's rate for a model the registry does not know."""
    entry = MODELS.get(model)
    return entry.train_seconds if entry is not None else CLASSIFIER_S_PER_IMAGE_EPOCH


def training(spec: Spec, train_images: int) -> Estimate:
    """One training of `spec`'s own model on `train_images` ID training images: reference_training, corrected by
    the trainings timed on this machine (speed) when there are any, which the words then say."""
    est = reference_training(spec, train_images)
    kind = _device_kind() if _times_dir is not None else timings.CPU
    factor, n, own = speed(spec.model, kind)
    gpu = kind != timings.CPU
    if not n:
        if gpu:  # no training timed on this GPU yet: the 2 cores' rates, and what they mean here
            return replace(est, what=f"{est.what} (at the rates of 2 CPU cores: this GPU is likely several times "
                                     "faster until its own trainings are timed)")
        return est
    whose = "this model" if own else "other models"
    where = "this GPU" if gpu else "this machine"
    return replace(est, seconds=est.seconds * factor,
                   what=f"{est.what} (x{factor:.2g} the reference rates, as {_plural(n, 'training')} of {whose} "
                        f"on {where} took)")


def reference_training(spec: Spec, train_images: int) -> Estimate:
    """One training of `spec`'s own model on `train_images` ID training images, from the registry's rates (2 CPU
    cores): a classifier's epochs, or a one-class model's whole training (its epochs are fixed by the method)."""
    entry = MODELS.get(spec.model)
    rate, area = _seconds_per_image(spec.model), _size(spec)
    name = entry.title if entry is not None else spec.model
    if entry is not None and entry.kind != "classifier":
        seconds = rate * train_images * area
        return Estimate(seconds, f"trains the {name} model on {train_images:,} images", trains=1 if seconds > 0 else 0)
    epochs = spec.training.epochs
    what = f"trains 1 network ({name}): {_plural(epochs, 'epoch')} over {train_images:,} images"
    regime = spec.training.regime
    if regime in REGIME_EPOCH_COST or extra_epochs(regime):
        what += f", {REGIME_TITLES[regime].split(' (')[0]}'s extra networks beside it"
    return Estimate(rate * train_images * regime_epochs(regime, epochs) * area, what, trains=1)


# the Experiment page suggests a per-class subsample when a classifier's training is estimated to take longer: with
# the validation passes, the forward pass of every split and the page's own work, the first Scores page of an
# uploaded dataset then comes within about a minute (scripts/bench_upload.py: 51.5 s for a zip of 5,000 36 px PNGs,
# capped at 130 images per class). 35 s since the small CNN's rate was measured again (3.5e-4, not 5e-4): the same
# cap as 50 s gave with the old rate, which overestimated the training by about 40%
SUGGESTED_TRAINING_S = 35.0


def suggested_per_class(spec: Spec, class_counts: Iterable[int], budget_s: float = SUGGESTED_TRAINING_S) -> int:
    """A per-class cap on the training images so that training `spec`'s model is estimated to take at most
    `budget_s` (0 = every image, when they all fit): the largest cap that fits, rounded down to a multiple of 10 (at
    least 10). `class_counts`: the training images of each class in the training split."""
    counts = [int(c) for c in class_counts if int(c) > 0]
    if not counts:
        return 0

    def seconds(cap: int) -> float:
        return training(spec, sum(min(c, cap) for c in counts)).seconds

    if seconds(max(counts)) <= budget_s:
        return 0
    lo, hi = 1, max(counts)  # the largest cap whose estimate fits: seconds() grows with the cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if seconds(mid) <= budget_s else (lo, mid - 1)
    return max(10, lo // 10 * 10)


def regime_epochs(regime: str, epochs: int) -> float:
    """What `epochs` of a classifier in `regime` cost, in cross-entropy epochs (REGIME_EPOCH_COST, OSRCI's passes)."""
    return epochs * REGIME_EPOCH_COST.get(regime, 1.0) + GENERATIVE_PASS * extra_epochs(regime)


def _scored_images(exp, splits: Optional[Iterable[str]] = None) -> int:
    names = list(splits) if splits is not None else ["test", *exp.ood_names]
    return sum(len(exp.outputs[s]) for s in names)


def members_to_train(exp, members: int) -> list[int]:
    """The ensemble members (1..members-1) neither loaded in this experiment nor cached on disk."""
    return [i for i in range(1, int(members))
            if i not in exp._members and not is_cached(exp.member_spec(i), exp.cache_dir)]


@dataclass(frozen=True)
class Forward:
    """One plain forward pass of a model, as the estimates of the detectors that run the network again count it."""
    seconds: float  # per image
    measured: bool  # timed on the experiment's own model and device (model_forward), else the reference rate
    head_only: bool = True  # MC dropout's shortcut applies: each pass reruns dropout and head only


def reference_forward(spec: Spec) -> Forward:
    """The forward pass of `spec`'s model before there is one to time: REFERENCE_FORWARD_S at the spec's image size
    (the size factor), weighted by the model's registry training rate against the small CNN's (ResNet-18: about 23)."""
    entry = MODELS.get(spec.model)
    weight = (entry.train_seconds / SMALL_CNN_S_PER_IMAGE_EPOCH
              if entry is not None and entry.kind == "classifier" and entry.train_seconds > 0 else 1.0)
    return Forward(REFERENCE_FORWARD_S * _size(spec) * weight, False)


_timed: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its Forward, while the model lives
_timed_lock = threading.Lock()


def time_forward(adapter, x) -> float:
    """Seconds per image of adapter.forward on the first images of `x` (at most one batch of the adapter's): the
    fastest of three runs (a busy machine only ever slows a run down). Two untimed runs on 8 images go first: the
    first pays first-call costs (allocations, kernels loaded on a GPU), the second sizes the timed runs, as many
    images as take about PROBE_SECONDS (8 to all of `x`: a large model is timed on fewer images, a small one on the
    batch its detectors run). The outputs come back to the CPU as arrays, so a GPU's work is done when the clock
    stops. ValueError when `x` holds no image."""
    if len(x) == 0:
        raise ValueError("no image to time the forward pass on")
    few = x[:8]
    adapter.forward(few)
    t0 = time.perf_counter()
    adapter.forward(few)
    per_image = (time.perf_counter() - t0) / max(len(few), 1)
    n = int(min(len(x), adapter.batch_size, max(8, PROBE_SECONDS / max(per_image, 1e-9))))
    xs, best = x[:n], float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        adapter.forward(xs)
        best = min(best, time.perf_counter() - t0)
    return best / len(xs)


def model_forward(exp) -> Forward:
    """The forward pass of exp's own model on its device, timed on up to PROBE_IMAGES ID test images (time_forward)
    once per model, with whether MC dropout's shortcut applies to it (detectors.uncertainty.reruns_head_only); the
    reference rate (reference_forward) for a model without a classifier head or one that cannot run here."""
    if not exp.is_classifier or len(exp.bench.test) == 0:
        return reference_forward(exp.spec)
    adapter = exp.adapter
    with _timed_lock:  # one timing at a time: two at once would slow each other down
        found = _timed.get(adapter.model)
        if found is None:
            from .detectors.uncertainty import reruns_head_only

            x = exp.bench.test.images[:PROBE_IMAGES]
            try:
                seconds = time_forward(adapter, x)
            except (RuntimeError, ValueError):  # the detectors will say why; an estimate is not the place
                return reference_forward(exp.spec)
            try:
                head_only = reruns_head_only(adapter, x)
            except ValueError:  # no dropout layer: MC dropout does not apply, and says so when asked
                head_only = True
            found = _timed[adapter.model] = Forward(seconds, True, head_only)
    return found


def detector(exp, name: str, params: Optional[Mapping] = None, splits: Optional[Iterable[str]] = None) -> Estimate:
    """What fitting and scoring detector `name` costs on `exp` (default splits: ID test and every OOD set). The
    detectors that run the network again, and the ensemble's members, are counted in forward passes of exp's own
    model, timed once (model_forward)."""
    from .detectors import REGISTRY, default_params

    p = {**default_params(name), **dict(params or {})} if name in REGISTRY else dict(params or {})
    n = _scored_images(exp, splits)
    if name == "ensemble":
        m = int(p.get("members", 5))
        todo = members_to_train(exp, m)
        forward = model_forward(exp)
        run_s = (m - 1) * forward.seconds * n
        runs = f"runs {_plural(m - 1, 'more network')} on {n:,} images{_timed_words(forward, ' (', ')')}"
        if not todo:
            return Estimate(run_s, f"{runs} (all {m} members are cached)")
        which = ", ".join(str(i + 1) for i in todo)
        return Estimate(len(todo) * training_seconds(exp) + run_s,
                        f"trains {_plural(len(todo), 'network')} (ensemble member{'s' if len(todo) > 1 else ''} "
                        f"{which} of {m}, {'each ' if len(todo) > 1 else ''}cached for next time), then {runs}",
                        trains=len(todo))
    forward = model_forward(exp) if runs_network_again(name) else reference_forward(exp.spec)
    return own_cost(name, p, n, {s: len(exp.outputs[s]) for s in ("train", "val")}, forward)


def runs_network_again(name: str) -> bool:
    """Whether detector `name`'s cost is counted in forward passes of the model (NETWORK_FORWARDS, MC dropout)."""
    return name in NETWORK_FORWARDS or name == "mc_dropout"


def network_forwards(name: str, params: Mapping, head_only: bool = True) -> float:
    """Forward passes per image that detector `name` costs with `params` (NETWORK_FORWARDS; MC dropout's from its
    number of passes, and whether its shortcut applies to the model)."""
    if name == "mc_dropout":
        passes = int(params["passes"])
        return MC_FEATURES + MC_HEAD_PASS * passes if head_only else MC_FULL_PASS * passes
    return NETWORK_FORWARDS[name]


def _timed_words(forward: Forward, before: str = "; ", after: str = "") -> str:
    """'1.5 ms per forward pass of this model, timed here' between `before` and `after`; nothing for a reference
    rate."""
    if not forward.measured:
        return ""
    return f"{before}{forward.seconds * 1e3:.2g} ms per forward pass of this model, timed here{after}"


def own_cost(name: str, params: Mapping, scored: int, split_sizes: Mapping[str, int], forward: Forward) -> Estimate:
    """What detector `name` (its full `params`) costs beyond scoring the cached outputs, from sizes alone: running the
    network again on `scored` images (and on the splits its fit reads, FIT_SPLITS, sized by `split_sizes`), in
    forward passes (network_forwards) of `forward`'s seconds, or training a network on the ID training features; 0 for
    every other detector."""
    if runs_network_again(name):
        images = scored + sum(split_sizes[s] for s in FIT_SPLITS.get(name, ()))
        how = NETWORK_WHAT[name].format(**params)
        if name == "mc_dropout":
            how += " of dropout and the head, on features computed once" if forward.head_only else \
                " of the whole network (its dropout sits inside the features)"
        return Estimate(network_forwards(name, params, forward.head_only) * forward.seconds * images,
                        f"runs the network again on {scored:,} images ({how}{_timed_words(forward)})")
    if name in FIT_WHAT:
        n_train = split_sizes["train"]
        return Estimate(fit_seconds(name, n_train, params), f"{FIT_WHAT[name].format(**params)} on {n_train:,} ID "
                                                            "training features, then scores the cached outputs")
    return Estimate(0.0, "scores the cached outputs")


def tuning_seconds(exp, name: str, grid: Mapping[str, list]) -> Optional[float]:
    """Seconds that tuning a detector which trains a network of its own (FIT_WHAT) costs over `grid`
    (tuning.candidates): one training per value tried, each at that value, the others at their defaults. None for
    any other detector (its fit is cheap: the caller counts its scoring cost once per value)."""
    from .detectors import default_params

    if name not in FIT_WHAT:
        return None
    n_train = len(exp.outputs["train"])
    return float(sum(fit_seconds(name, n_train, {**default_params(name), pname: v})
                     for pname, values in grid.items() for v in values))


def fit_seconds(name: str, n_train: int, params: Mapping) -> float:
    """Seconds that fitting `name` (a detector that trains a network on the cached features) takes with `params`."""
    if name == "opengan":
        return OPENGAN_S_PER_STEP * int(params["steps"]) * max(1.0, (int(params["width"]) / 32) ** 2)
    if name == "c2ae":
        return C2AE_S_PER_SAMPLE_EPOCH * min(n_train, int(params["max_fit"])) * int(params["epochs"])
    raise KeyError(f"{name} trains no network of its own")


def cost_words(name: str) -> str:
    """What a detector costs, in words, before any experiment is chosen (its Methods card): the cached outputs alone,
    a small network trained on them (seconds per 1,000 ID training samples on one core), a training regime of the
    classifier, or the network run again."""
    from .detectors import REGISTRY, default_params

    cls = REGISTRY[name]
    if name in FIT_WHAT:
        p = default_params(name)
        per_thousand, per_ten = fit_seconds(name, 1000, p), fit_seconds(name, 10_000, p)
        how = (f"about {per_thousand:.0f} s on one core" if per_thousand == per_ten else
               f"about {per_thousand:.0f} s per 1,000 ID training samples on one core")
        return f"{FIT_WHAT[name].format(**p)} on the cached features ({how}), then scores the cached outputs"
    if cls.regimes:
        names = " or ".join(cls.regimes) if len(cls.regimes) < 3 else ", ".join(cls.regimes[:-1]) + \
            f" or {cls.regimes[-1]}"
        costs = [REGIME_EPOCH_COST.get(r, 1.0) for r in cls.regimes]
        how = ("as long as cross-entropy's" if max(costs) == 1.0 else
               f"about {min(costs):.1f}x cross-entropy's" if min(costs) == max(costs) else
               f"{min(costs):.1f}x to {max(costs):.1f}x cross-entropy's")
        extra = max(extra_epochs(r) for r in cls.regimes)
        if extra:
            how += f" plus about {GENERATIVE_PASS * extra:.0f} epochs' worth for its GAN and fine-tuning"
        slowest = max(reference_training(Spec(training=TrainConfig(epochs=default_epochs(TrainConfig().epochs, r),
                                                                   regime=r)), DEFAULT_TRAIN_IMAGES).seconds
                      for r in cls.regimes)
        how += f"; about {slowest / 60:.1f} min on 2 cores for the default experiment"
        runs = _runs_again_words(name) if cls.runs_network else "scores its cached outputs (fast)"
        return f"needs a classifier trained in the {names} regime (one training, {how}, cached like it), then {runs}"
    if cls.runs_network:
        return _runs_again_words(name)
    if "model_score" in cls.needs:
        return _one_class_words()
    return "scores the cached outputs of one forward pass (fast)"


def _seconds_short(seconds: float) -> str:
    """'<1 s', '9 s', '1.2 min', '1.5 h': short enough for a list of a dozen trainings."""
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _one_class_words() -> str:
    """The cost of the one-class models' own score: each model's training per normal class on 2 cores, in the two
    cases of ONE_CLASS_CASES, cheapest first (registry rates, not corrected by this machine's trainings)."""
    rows = []
    for name, entry in MODELS.items():
        if entry.kind == "classifier" or not entry.own_score or entry.train_seconds <= 0:
            continue
        secs = [reference_training(Spec(setting="nd", dataset=d, image_size=side, model=name), n).seconds
                for d, side, n in ONE_CLASS_CASES]
        rows.append((secs, entry.short))
    rows.sort()
    (_, s0, n0), (_, s1, n1) = ONE_CLASS_CASES
    listing = " · ".join(f"{short} {' / '.join(_seconds_short(x) for x in secs)}" for secs, short in rows)
    return (f"trains the one-class model first, once per normal class (then cached), and scores the cached outputs "
            f"of one forward pass (fast). Training on 2 cores, {n0} normal images at {s0} px (the default experiment) "
            f"/ {n1} at {s1} px (the MNIST sample): {listing}")


def _runs_again_words(name: str) -> str:
    """'**runs the network again** (slower): about N forward passes of the model per image' (NETWORK_FORWARDS; MC
    dropout's at its default passes, with and without its shortcut; what the ensemble trains)."""
    from .detectors import default_params

    words = "**runs the network again** (slower)"
    if name == "mc_dropout":
        p = default_params(name)
        return (f"{words}: about {network_forwards(name, p):.1f} forward passes of the model per image at "
                f"{p['passes']} passes where its dropout sits just before the head (the features are computed once), "
                f"{network_forwards(name, p, head_only=False):.0f} where the dropout sits inside the features")
    if name in NETWORK_FORWARDS:
        fit = {("train",): " (the scored images and the ID training images its fit reads)",
               ("train", "val"): " (the scored images and the ID training and validation images its fit reads)"}
        return (f"{words}: about {NETWORK_FORWARDS[name]:.1f} forward passes of the model per image"
                f"{fit.get(FIT_SPLITS.get(name, ()), '')}")
    if name == "ensemble":
        more = int(default_params(name)["members"]) - 1
        return (f"{words}: trains {_plural(more, 'more network')} once (cached for next time), then runs each on "
                "every scored image")
    return words


def sweep(exp, name: str, param: str, values: Iterable, sets: Iterable[str], fixed: Optional[Mapping] = None
          ) -> Estimate:
    """A parameter sweep of a detector (compare.sweep) on ID test and `sets`: one fit and scoring per value; the
    ensemble's members are trained once (for the largest ensemble) and shared by the smaller ones. The values of a
    neighbour-search detector (KNN, NNGuide) share one search pass per split: the dearest value's cost plus
    SHARED_SWEEP_EXTRA of it for each other value."""
    from .detectors import shares_search

    values, splits = list(values), ["test", *sets]
    parts = [detector(exp, name, {**dict(fixed or {}), param: v}, splits) for v in values]
    trains = max((p.trains for p in parts), default=0)
    per_training = training_seconds(exp) if trains else 0.0
    train_s = trains * per_training
    run = [p.seconds - p.trains * per_training for p in parts]
    if shares_search(name) and run:
        run_s = max(run) * (1 + SHARED_SWEEP_EXTRA * (len(run) - 1))
    else:
        run_s = sum(run)
    what = f"fits and scores {_plural(len(values), 'value')} of {param} on {_scored_images(exp, splits):,} images"
    if trains:
        what = f"trains {_plural(trains, 'network')} (ensemble members, cached for next time), then " + what
    return Estimate(train_s + max(0.0, run_s), what, trains)


def fit_share(exp, name: str, params: Optional[Mapping] = None) -> float:
    """The share of a detector job's time spent fitting (the ensemble's trainings; Gram's training statistics)."""
    if name == "ensemble":
        total = detector(exp, name, params)
        return 0.9 if total.trains and total.seconds > 0 else 0.1
    if name in FIT_WHAT:
        return 0.9
    return 0.5 if name in ("gram", "knn_conv") else 0.05


def detectors(exp, names: Iterable[str], params: Optional[Mapping[str, Mapping]] = None) -> Estimate:
    """Scoring several detectors on `exp`: the network-running and network-training ones each, every other post-hoc
    one together."""
    names = list(names)
    total = Estimate(POST_HOC_S if any(n not in OWN_COST for n in names) else 0.0)
    for n in names:
        if n in OWN_COST:
            e = detector(exp, n, (params or {}).get(n))
            total = Estimate(total.seconds + e.seconds, total.what, total.trains + e.trains)
    what = [f"scores {_plural(len(names), 'detector')} on {_scored_images(exp):,} images"]
    if total.trains:
        what.insert(0, f"trains {_plural(total.trains, 'ensemble member')}")
    return Estimate(total.seconds, ", ".join(what), total.trains)


def seeds(exp, seed_list: Iterable[int], names: Iterable[str]) -> Estimate:
    """A comparison over seeds: the models not cached are trained, then every detector is scored on each seed."""
    seed_list, names = list(seed_list), list(names)
    todo = [s for s in seed_list if s != exp.spec.seed and not is_cached(exp.spec.with_seed(s), exp.cache_dir)]
    per_seed = detectors(exp, names)
    seconds = len(todo) * training_seconds(exp) + len(seed_list) * per_seed.seconds
    what = f"scores {_plural(len(names), 'detector')} on each of {len(seed_list)} seeds"
    if todo:
        what = f"trains {_plural(len(todo), 'network')} (seeds {', '.join(map(str, todo))}), then " + what
    return Estimate(seconds, what, len(todo) + len(seed_list) * per_seed.trains)


def classifier_runs(specs: Iterable[Spec], names: Iterable[str], split_sizes: Mapping[str, int], scored: int,
                    cache_dir=None) -> Estimate:
    """Runs of classifier `specs` (seeds, or OSR splits: the CLI's `run`) with detectors `names` at their defaults:
    the networks not cached (each spec's own and, when `names` has the ensemble, its other members; each trains as
    long as training(spec, train split)), then on every run what `detectors` counts: the post-hoc detectors together,
    the ensemble's forward passes and each detector's own cost (own_cost) on `scored` images, at the reference forward
    rate (no model to time before it trains: reference_forward). `split_sizes`: the images of the train and val splits
    of one run."""
    from .detectors import default_params

    specs, names = list(specs), list(names)
    forward = reference_forward(specs[0])  # no model to time yet: the reference rate, scaled to the spec's model
    members = int(default_params("ensemble")["members"]) if "ensemble" in names else 0
    models = [s for s in specs if not is_cached(s, cache_dir)]
    extra = [m for m in (s.with_member(i) for s in specs for i in range(1, members)) if not is_cached(m, cache_dir)]
    train_s = sum(training(s, split_sizes["train"]).seconds for s in models + extra)
    per_run = POST_HOC_S if any(n not in OWN_COST for n in names) else 0.0
    per_run += max(0, members - 1) * forward.seconds * scored
    per_run += sum(own_cost(n, default_params(n), scored, split_sizes, forward).seconds for n in names
                   if n != "ensemble")
    what = f"scores {_plural(len(names), 'detector')} on {scored:,} images per run ({_plural(len(specs), 'run')})"
    if models or extra:
        which = [_plural(len(models), "model")] if models else []
        which += [_plural(len(extra), "ensemble member")] if extra else []
        what = f"trains {_plural(len(models) + len(extra), 'network')} ({' and '.join(which)}), then " + what
    return Estimate(train_s + len(specs) * per_run, what, len(models) + len(extra))


def one_class(base: Spec, setting: str, contamination: float, classes: Iterable[int],
              methods: Iterable[tuple[str, str, dict]], train_size: int, cache_dir=None) -> Estimate:
    """The one-vs-all protocol (protocols.run_one_class): the one-class models not cached are trained (one per
    class and model), then every method is scored on every class. `train_size`: training images of one class."""
    classes, methods = list(classes), list(methods)
    models = list(dict.fromkeys(m for m, _, _ in methods if _seconds_per_image(m) > 0))  # the pixels learn nothing
    todo = []
    for c in classes:
        for m in models:
            spec = base.replace(setting=setting, model=m, normal_class=c,
                                contamination=contamination if setting == "ad" else base.contamination)
            if not is_cached(spec, cache_dir):
                todo.append(m)
    seconds = sum(_seconds_per_image(m) * train_size * _size(base, m) * speed(m)[0] for m in todo)
    seconds += ONE_CLASS_METHOD_S * len(classes) * len(methods)
    what = f"scores {_plural(len(methods), 'method')} on {_plural(len(classes), 'normal class')}"
    if todo:
        what = f"trains {_plural(len(todo), 'one-class model')}, then " + what
    return Estimate(seconds, what, len(todo))


def contamination_curve(base: Spec, ratios: Iterable[float], classes: Iterable[int],
                        methods: Iterable[tuple[str, str, dict]], train_size: int, cache_dir=None) -> Estimate:
    """The AD protocol at each contamination ratio (protocols.contamination_curve)."""
    ratios = list(ratios)
    parts = [one_class(base, "ad", r, classes, methods, train_size, cache_dir) for r in ratios]
    seconds, trains = sum(p.seconds for p in parts), sum(p.trains for p in parts)
    what = f"the AD protocol at {_plural(len(ratios), 'contamination ratio')}"
    if trains:
        what += f": trains {_plural(trains, 'one-class model')} in all"
    return Estimate(seconds, what, trains)


def is_slow(estimate: Estimate) -> bool:
    """Whether to say how long it takes and ask before starting (longer than SLOW_S, or it trains networks)."""
    return estimate.seconds > SLOW_S or estimate.trains > 0
