"""Registries of one-class models: builders (for loading checkpoints) and trainers.

A one-class model is an nn.Module with `kind = "one_class"`, `features(x) -> (n, D)` and
`anomaly_score(x) -> (n,)` (higher = more anomalous) or None when it has no score of its own.
A trainer has the signature `(spec, bench, progress, device) -> TrainResult`.
"""
from __future__ import annotations

from typing import Callable

ONE_CLASS_BUILDERS: dict[str, Callable] = {}  # name -> (in_channels, image_size) -> nn.Module
ONE_CLASS_TRAINERS: dict[str, Callable] = {}
ONE_CLASS_TITLES: dict[str, str] = {}


def register_one_class(name: str, title: str, builder: Callable, trainer: Callable) -> None:
    ONE_CLASS_BUILDERS[name] = builder
    ONE_CLASS_TRAINERS[name] = trainer
    ONE_CLASS_TITLES[name] = title
