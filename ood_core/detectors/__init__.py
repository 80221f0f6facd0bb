"""The detector registry: importing this package registers every family."""
from . import activations, features, gradients, logits  # noqa: F401  (registration side effects)
from .base import FAMILIES, REGISTRY, Detector, FitContext, NotFittedError, Param, create, register

__all__ = ["FAMILIES", "REGISTRY", "Detector", "FitContext", "NotFittedError", "Param", "create", "register"]
