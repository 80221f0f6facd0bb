"""The experiment specification: one frozen value whose hash keys every cache."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field

# The survey's four settings (Salehi et al. 2022, section 2, Fig. 1)
SETTINGS = ("ood", "osr", "nd", "ad")
SETTING_TITLES = {
    "ood": "Out-of-distribution detection",
    "osr": "Open-set recognition",
    "nd": "Novelty detection (one-class)",
    "ad": "Anomaly detection (contaminated one-class)",
}
CLASSIFIER_SETTINGS = ("ood", "osr")
ONE_CLASS_SETTINGS = ("nd", "ad")
REGIMES = ("ce", "oe", "logitnorm", "closedset", "rpl", "arpl", "arpl_cs", "crosr", "osrci", "gopenmax",
           "rpl_closedset", "arpl_closedset")
REGIME_TITLES = {"ce": "Cross-entropy", "oe": "Outlier exposure (Hendrycks et al. 2019)",
                 "logitnorm": "LogitNorm (Wei et al. 2022)",
                 "closedset": "Good closed-set classifier (Vaze et al. 2022): longer training, cosine schedule, "
                              "label smoothing, random shifts, rotations and zooms",
                 "rpl": "RPL (Chen et al. 2020): logits are distances to learned reciprocal points",
                 "arpl": "ARPL (Chen et al. 2021): reciprocal points with a bounded open space (margin term)",
                 "arpl_cs": "ARPL+CS (Chen et al. 2021): ARPL, plus a small GAN whose confusing samples the classifier "
                            "learns to be unsure about",
                 "crosr": "CROSR (Yoshihashi et al. 2019): the classifier also reconstructs its input from every "
                          "convolutional layer; score with the detector 'CROSR'",
                 "osrci": "OSRCI (Neal et al. 2018): a GAN's counterfactual images near the known classes become an "
                          "extra 'unknown' class; score with the detector 'OSRCI'",
                 "gopenmax": "G-OpenMax (Ge et al. 2017): a conditional GAN's mixtures of known classes become an extra "
                             "'unknown' class; score with the detector 'G-OpenMax'",
                 "rpl_closedset": "RPL + closed-set recipe (Chen et al. 2020; Vaze et al. 2022): reciprocal points, "
                                  "trained longer with the closedset regime's cosine schedule and random shifts, "
                                  "rotations and zooms",
                 "arpl_closedset": "ARPL + closed-set recipe (Chen et al. 2021; Vaze et al. 2022): reciprocal points "
                                   "and the margin term, trained longer with the closedset regime's cosine schedule "
                                   "and random shifts, rotations and zooms"}
# OSR: how the known classes of each split are chosen, and the protocol (data/osr_splits.py)
OSR_SPLIT_MODES = ("random", "literature")
OSR_PROTOCOLS = ("standard", "cifar+10", "cifar+50")
# the regimes trained with the closed-set recipe's warm-up + cosine schedule and per-image random affine augmentation
# (models/recipes.py): closedset itself (with label smoothing) and the reciprocal-point regimes with their own loss
CLOSEDSET_RECIPE_REGIMES = ("closedset", "rpl_closedset", "arpl_closedset")
# a regime's own number of epochs, where it needs more than the dataset's default (the recipe trains longer)
REGIME_EPOCHS: dict[str, int] = {r: 160 for r in CLOSEDSET_RECIPE_REGIMES}


def default_epochs(dataset_epochs: int, regime: str) -> int:
    """The epochs a training starts from: the regime's own (REGIME_EPOCHS) if it has them, else the dataset's."""
    return REGIME_EPOCHS.get(regime, int(dataset_epochs))


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained: optimiser settings, number of epochs and the training regime."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    member: int = 0  # ensemble member index: changes only the initialisation and batch order, not the data split
    regime: str = "ce"  # classifiers only: one of REGIMES

    def __post_init__(self) -> None:
        if not 1 <= int(self.epochs) <= 500:
            raise ValueError(f"epochs must be in 1..500, got {self.epochs}")
        if not 1 <= int(self.batch_size) <= 4096:
            raise ValueError(f"batch_size must be in 1..4096, got {self.batch_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < float(self.lr) < 10):
            raise ValueError(f"lr must be in (0, 10), got {self.lr}")
        if not 0 <= int(self.member) < 1000:
            raise ValueError(f"member must be in 0..999, got {self.member}")
        if not 0 <= float(self.weight_decay) < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if self.regime not in REGIMES:
            raise ValueError(f"unknown training regime {self.regime!r}; choose one of {', '.join(REGIMES)}")


def _short_hash(d: dict) -> str:
    """16 hex digits of the SHA-256 of `d` as sorted JSON: a stable cache key."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


DEFAULT_ONE_CLASS_MODEL = "deep_svdd"  # what a link to a one-class setting that names no model trains


@dataclass(frozen=True)
class Spec:
    """What an experiment is: setting, dataset, model, training and seed.

    The same Spec gives the same numbers; `key()` names its cached artefacts. Setting-specific fields:
    `known_classes` (OSR: K known of N, drawn by `seed`), `osr_splits` (OSR: "random" splits drawn by the seed, or
    the "literature"'s published ones, seed i = split i), `osr_protocol` (OSR: "standard", or "cifar+10" /
    "cifar+50": 4 CIFAR-10 classes known, CIFAR-100 classes unknown), `normal_class` (ND and AD), `contamination`
    (AD: fraction of the training set drawn from the other classes, unlabelled).
    """

    setting: str = "ood"
    dataset: str = "digits"
    model: str = "small_cnn"
    training: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    image_size: int = 16
    known_classes: int = 6
    normal_class: int = 0
    contamination: float = 0.05
    train_per_class: int = 0  # at most this many training images per class (seeded draw); 0 = all
    osr_splits: str = "random"
    osr_protocol: str = "standard"

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; choose one of {', '.join(SETTINGS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))  # numpy integers hash and serialise like ints
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, numbers.Integral) \
                or not 8 <= self.image_size <= 64 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 in 8..64 px (larger images are resized), "
                             f"got {self.image_size!r}")
        object.__setattr__(self, "image_size", int(self.image_size))
        if isinstance(self.train_per_class, bool) or not isinstance(self.train_per_class, numbers.Integral) \
                or self.train_per_class < 0:
            raise ValueError(f"training images per class must be a non-negative integer (0 = all), "
                             f"got {self.train_per_class!r}")
        object.__setattr__(self, "train_per_class", int(self.train_per_class))
        if not isinstance(self.known_classes, int) or self.known_classes < 2:
            raise ValueError(f"known classes K must be an integer >= 2, got {self.known_classes!r}")
        if not isinstance(self.normal_class, int) or self.normal_class < 0:
            raise ValueError(f"normal class must be a non-negative integer, got {self.normal_class!r}")
        if self.osr_splits not in OSR_SPLIT_MODES:
            raise ValueError(f"OSR splits must be one of {', '.join(OSR_SPLIT_MODES)}, got {self.osr_splits!r}")
        if self.osr_protocol not in OSR_PROTOCOLS:
            raise ValueError(f"unknown OSR protocol {self.osr_protocol!r}; choose one of {', '.join(OSR_PROTOCOLS)}")
        if self.osr_protocol != "standard" and self.known_classes != 4:
            raise ValueError(f"the {self.osr_protocol.upper()} protocol has 4 known classes; set K = 4, "
                             f"not {self.known_classes}")
        c = self.contamination
        if not (isinstance(c, (int, float)) and math.isfinite(c) and 0 <= c < 0.5):
            raise ValueError(f"contamination ratio must be in [0, 0.5), got {c!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        d = dict(d)
        d["training"] = TrainConfig(**d.get("training", {}))
        return cls(**d)

    def relevant_dict(self) -> dict:
        """The fields that affect results in this setting (others are dropped, so they never split caches)."""
        d = self.to_dict()
        if self.setting != "osr":
            for name in ("known_classes", "osr_splits", "osr_protocol"):
                d.pop(name)
        if self.setting not in ONE_CLASS_SETTINGS:
            d.pop("normal_class")
        if self.setting != "ad":
            d.pop("contamination")
        for name, default in LATER_FIELDS.items():  # fields added later leave the keys of older specs unchanged
            if d.get(name) == default:
                d.pop(name)
        return d

    def model_key(self) -> str:
        """The key of the trained model: like key(), but specs that train on identical data share it.

        Anomaly detection at 0% contamination trains on exactly the novelty-detection data (the normal class
        alone), so its model is the ND one.
        """
        d = self.relevant_dict()
        if self.setting == "ad" and self.contamination == 0:
            d["setting"] = "nd"
            d.pop("contamination")
        recipe = self.recipe_versions()
        if recipe:
            d["recipe"] = recipe
        return _short_hash(d)

    def recipe_versions(self) -> dict[str, int]:
        """The versions of the changed training recipes this spec's model is trained with (RECIPE_VERSIONS), e.g.
        {"regime:closedset": 2}; empty when none applies, so the keys of every other model stay as they were."""
        names = [f"model:{self.model}"]
        if self.setting in CLASSIFIER_SETTINGS:
            names.append(f"regime:{self.training.regime}")
        return {n: RECIPE_VERSIONS[n] for n in names if n in RECIPE_VERSIONS}

    def key(self) -> str:
        """A short stable hash of the relevant fields (sorted JSON, SHA-256)."""
        return _short_hash(self.relevant_dict())

    def to_query(self) -> dict[str, str]:
        """The spec as URL query parameters (QUERY_FIELDS): the setting always, other fields only where they differ
        from the defaults and matter in this setting, so a link stays short and stable."""
        default = Spec(setting=self.setting)
        relevant = self.relevant_dict()
        out = {"setting": self.setting}
        for key, (path, _) in QUERY_FIELDS.items():
            if key == "setting" or path[0] not in relevant:
                continue
            value, base = _get(self, path), _get(default, path)
            if value != base:
                out[key] = str(value)
        return out

    @classmethod
    def from_query(cls, query) -> "Spec":
        """The spec a link describes (query parameters as strings; absent ones keep their defaults).

        Raises ValueError naming the parameter when a value cannot be read or the spec refuses it."""
        fields: dict = {}
        training: dict = {}
        for key, (path, kind) in QUERY_FIELDS.items():
            if key not in query:
                continue
            raw = query[key]
            raw = raw[-1] if isinstance(raw, (list, tuple)) else raw
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"the link's {key}={raw!r} is not a valid {kind.__name__}") from None
            (training if path[0] == "training" else fields)[path[-1]] = value
        if "model" not in fields and fields.get("setting") in ONE_CLASS_SETTINGS:
            fields["model"] = DEFAULT_ONE_CLASS_MODEL  # the classifier default serves no one-class setting
        return cls(**fields, training=TrainConfig(**training))

    def with_seed(self, seed: int) -> "Spec":
        return dataclasses.replace(self, seed=seed)

    def with_member(self, i: int) -> "Spec":
        """The spec of ensemble member i: another initialisation and batch order (training.member; 0 is this one)."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, member=i))

    def replace(self, **changes) -> "Spec":
        return dataclasses.replace(self, **changes)


def _get(spec: Spec, path: tuple[str, ...]):
    value = spec
    for name in path:
        value = getattr(value, name)
    return value


# fields added after caches existed: dropped from the key at their default, so older cached models stay valid
LATER_FIELDS = {"train_per_class": 0, "osr_splits": "random", "osr_protocol": "standard"}

# training recipes whose defaults changed after models of them were cached: the version joins the model key
# (Spec.model_key), so a cached model of an older recipe is never reused. Raise a version when a recipe changes.
# closedset 2: cosine schedule with warm-up and random affine augmentation (models/recipes.py);
# deep_svdd 2: Ruff et al.'s preprocessing (GCN + min-max) inside the model, LeakyReLU(0.01), no random shifts.
# csi 2: the encoder pooled to a 2x2 grid (a 256-d feature), 30 epochs instead of 15. csi 3: 60 epochs. csi 4: 90.
# ocgan 2: 100 epochs at lr 1e-3 instead of 25 at 2e-4. anogan 2: 400 epochs at lr 1e-3 instead of 40 at 5e-4.
# geotrans 2: 30 epochs instead of 14. deep_svdd 3: 15 epochs at lr 3e-3 instead of 30 at 1e-3.
# deep_svdd_pretrained 2: the one-class phase at lr 1e-3 instead of 1e-4.
RECIPE_VERSIONS: dict[str, int] = {"regime:closedset": 2, "model:deep_svdd": 3, "model:csi": 4, "model:ocgan": 2,
                                   "model:anogan": 2, "model:geotrans": 2, "model:deep_svdd_pretrained": 2}

# query key -> (path in the Spec, type): what a link to a view carries about its experiment
QUERY_FIELDS: dict[str, tuple[tuple[str, ...], type]] = {
    "setting": (("setting",), str), "dataset": (("dataset",), str), "model": (("model",), str),
    "seed": (("seed",), int), "epochs": (("training", "epochs"), int), "lr": (("training", "lr"), float),
    "batch": (("training", "batch_size"), int), "regime": (("training", "regime"), str),
    "known": (("known_classes",), int), "normal": (("normal_class",), int), "contamination": (("contamination",), float),
    "size": (("image_size",), int), "per_class": (("train_per_class",), int),
    "osr_splits": (("osr_splits",), str), "osr_protocol": (("osr_protocol",), str),
}
