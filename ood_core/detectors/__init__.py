"""The detector registry: importing this package registers every family."""
from . import activations, classic, density, features, gradients, logits, openset, uncertainty  # noqa: F401  (registration)
from .base import FAMILIES, REGISTRY, Detector, FitContext, NotFittedError, Param, create, register

__all__ = ["FAMILIES", "REGISTRY", "Detector", "FitContext", "NotFittedError", "Param", "create", "register"]
