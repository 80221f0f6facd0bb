"""The one registry of models: every architecture the app, the CLI and the protocols can train, one entry each.

An entry says what a model is (name, title, description), which of the survey's settings it serves, which
inputs it accepts (its `InputContract`), how to build it and how to train it. A model is one file in
`ood_core/models/`: its nn.Module and a `register_model(ModelEntry(...))` call at the bottom; the package
imports every module in its folder, so nothing else lists it. Everything that offers models (the Experiment
page's pickers, `settings.models_for`, the CLI's `--model`, the protocols' method labels) reads this registry.

A trainer has the signature `(spec, bench, progress, device, cancel) -> TrainResult`; `epochwise()` adapts one
without a cancel argument of its own (a one-class trainer) by checking `cancel` after each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..spec import CLASSIFIER_SETTINGS, ONE_CLASS_SETTINGS, SETTINGS

KINDS = ("classifier", "one_class")


@dataclass(frozen=True)
class InputContract:
    """The square images a model accepts: channel counts and sides in pixels.

    `channels` empty = any count (the first layer is built for the data's); a side must lie in
    [min_side, max_side] (max_side None = no upper bound) and be a multiple of `multiple_of`.
    """

    channels: tuple[int, ...] = ()
    min_side: int = 8
    max_side: Optional[int] = None
    multiple_of: int = 1

    def problem(self, channels: int, side: int) -> Optional[str]:
        """Why (channels, side) images do not fit, as a clause ("it takes 28 px images only"); None when they do."""
        if self.channels and channels not in self.channels:
            want = " or ".join(map(str, self.channels))
            return f"it takes {want}-channel images, not {channels}-channel ones"
        if side < self.min_side or (self.max_side is not None and side > self.max_side) or side % self.multiple_of:
            if self.max_side == self.min_side:
                return f"it takes {self.min_side} px images only, not {side} px ones"
            return f"it takes images of {self.sides_text()}, not {side} px ones"
        return None

    def accepts(self, channels: int, side: int) -> bool:
        return self.problem(channels, side) is None

    def sides_text(self) -> str:
        """The sides in words: "28 px only", "8 px or more", "8–64 px, multiples of 4"."""
        if self.max_side == self.min_side:
            return f"{self.min_side} px only"
        span = f"{self.min_side} px or more" if self.max_side is None else f"{self.min_side}–{self.max_side} px"
        return span + (f", multiples of {self.multiple_of}" if self.multiple_of > 1 else "")

    def describe(self) -> str:
        """The whole contract in words, e.g. "any channels, 28 px only"."""
        ch = "any channels" if not self.channels else " or ".join(map(str, self.channels)) + " channel(s)"
        return f"{ch}, {self.sides_text()}"


Builder = Callable[[int, int, int], nn.Module]  # (in_channels, num_classes, image_size) -> a fresh model
Trainer = Callable  # (spec, bench, progress, device, cancel) -> TrainResult


@dataclass(frozen=True)
class ModelEntry:
    """One model: what it is, where it applies, what it accepts, how it is built and trained.

    `kind`: "classifier" (the contract of cnn.SmallCNN: `features`, `head`, `last_conv`, `feature_maps`,
    `features_from_maps`; logits, features and every post-hoc detector) or "one_class" (`features` and
    `anomaly_score`, no head). `own_score`: whether a one-class model has a score of its own (the
    `model_score` detector); `short` is the name in tables and method labels; `default_side` is the side
    `build_model` uses when none is given. `train_seconds`: what a training costs on 2 CPU cores at 16 px, in seconds
    per training image: per epoch for a classifier, whose epochs come from the Spec; for the whole training of a
    one-class model, whose epochs its method fixes. `size_overhead`: the share of that time that does not grow with
    the image's pixels (the optimiser's step, Python, layers after pooling); ood_core/estimates.py scales the rest
    by the image area (estimates.size_factor). Both from scripts/bench_size_cost.py; a model not measured keeps 0,
    the area alone, which overestimates at larger sides rather than under.
    """

    name: str
    title: str
    short: str
    description: str
    kind: str
    settings: tuple[str, ...]
    contract: InputContract
    build: Builder
    train: Trainer
    train_seconds: float
    own_score: bool = False
    default_side: int = 16
    size_overhead: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        wrong = [s for s in self.settings if s not in SETTINGS]
        if not self.settings or wrong:
            raise ValueError(f"model {self.name!r}: settings must be some of {', '.join(SETTINGS)}, got "
                             f"{self.settings!r}")
        allowed = CLASSIFIER_SETTINGS if self.kind == "classifier" else ONE_CLASS_SETTINGS
        if set(self.settings) - set(allowed):
            raise ValueError(f"model {self.name!r}: a {self.kind} serves only {', '.join(allowed)}")
        if not 0.0 <= self.size_overhead <= 1.0:
            raise ValueError(f"model {self.name!r}: size_overhead is a share in [0, 1], got {self.size_overhead!r}")
        if not self.contract.accepts(self.contract.channels[0] if self.contract.channels else 1, self.default_side):
            raise ValueError(f"model {self.name!r}: its default side {self.default_side} px breaks its own contract "
                             f"({self.contract.describe()})")


MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model to the registry under its name (once)."""
    if entry.name in MODELS:
        raise ValueError(f"model name {entry.name!r} registered twice")
    MODELS[entry.name] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove a model from the registry (a test's temporary model)."""
    MODELS.pop(name, None)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; a ValueError that lists the registered models otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, in_channels: int, num_classes: int, image_size: Optional[int] = None) -> nn.Module:
    """A fresh model by name, for images of `in_channels` channels and side `image_size` (default: the model's own
    default side); a ValueError in one sentence when the name is unknown or the images break its contract."""
    entry = get_entry(name)
    side = entry.default_side if image_size is None else int(image_size)
    problem = entry.contract.problem(int(in_channels), side)
    if problem:
        raise ValueError(f"model {name!r} ({entry.short}) does not fit these images: {problem}")
    return entry.build(int(in_channels), int(num_classes), side)


def model_names(kind: Optional[str] = None, setting: Optional[str] = None) -> tuple[str, ...]:
    """Registered models, in registration order, of one kind and/or serving one setting."""
    return tuple(n for n, e in MODELS.items()
                 if (kind is None or e.kind == kind) and (setting is None or setting in e.settings))


def models_fitting(setting: str, channels: int, side: int) -> tuple[str, ...]:
    """The models that serve `setting` and accept (channels, side) images: what a picker offers."""
    return tuple(n for n in model_names(setting=setting) if MODELS[n].contract.accepts(channels, side))


def unfit_reasons(setting: str, channels: int, side: int) -> dict[str, str]:
    """The models of `setting` that do not accept (channels, side) images, each with the reason in words."""
    return {n: MODELS[n].contract.problem(channels, side) for n in model_names(setting=setting)
            if not MODELS[n].contract.accepts(channels, side)}


def model_title(name: str, short: bool = False) -> str:
    """A model's title (or its short name) for display; the name itself when it is not registered."""
    entry = MODELS.get(name)
    if entry is None:
        return name
    return entry.short if short else entry.title


def epochwise(trainer: Callable) -> Trainer:
    """A trainer `(spec, bench, progress, device)` as a registry trainer: `cancel` is checked after every epoch
    (in its progress callback), so a cancelled training stops with jobs.Cancelled at the next epoch's end."""
    from ..jobs import check_cancelled

    def train(spec, bench, progress=None, device=None, cancel=None):
        if cancel is None:
            return trainer(spec, bench, progress, device)

        def report(p) -> None:
            if progress is not None:
                progress(p)
            check_cancelled(cancel)
        return trainer(spec, bench, report, device)

    train.__name__ = getattr(trainer, "__name__", "train")
    train.__doc__ = trainer.__doc__
    return train
