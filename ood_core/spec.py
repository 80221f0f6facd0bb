"""The experiment specification: one frozen value whose hash keys every cache."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

SETTINGS = ("ood",)  # osr, nd, ad join as their protocols land


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained: optimiser settings and number of epochs."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    member: int = 0  # ensemble member index: changes only the initialisation and batch order, not the data split

    def __post_init__(self) -> None:
        if not 1 <= int(self.epochs) <= 500:
            raise ValueError(f"epochs must be in 1..500, got {self.epochs}")
        if not 1 <= int(self.batch_size) <= 4096:
            raise ValueError(f"batch_size must be in 1..4096, got {self.batch_size}")
        if not 0 < float(self.lr) < 10:
            raise ValueError(f"lr must be in (0, 10), got {self.lr}")
        if not 0 <= int(self.member) < 1000:
            raise ValueError(f"member must be in 0..999, got {self.member}")
        if not 0 <= float(self.weight_decay) < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")


@dataclass(frozen=True)
class Spec:
    """What an experiment is: setting, dataset, model, training and seed.

    The same Spec gives the same numbers; `key()` names its cached artefacts.
    """

    setting: str = "ood"
    dataset: str = "digits"
    model: str = "small_cnn"
    training: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    image_size: int = 16

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; choose one of {', '.join(SETTINGS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.image_size not in (8, 16, 24, 32):
            raise ValueError(f"image_size must be one of 8, 16, 24, 32, got {self.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        d = dict(d)
        d["training"] = TrainConfig(**d.get("training", {}))
        return cls(**d)

    def key(self) -> str:
        """A short stable hash of the whole spec (sorted JSON, SHA-256)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_seed(self, seed: int) -> "Spec":
        return dataclasses.replace(self, seed=seed)
