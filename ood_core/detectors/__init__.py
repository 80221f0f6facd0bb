"""The detector registry: importing this package registers every family."""
# registration order = listing order: the survey's taxonomy, output scores first
from . import logits, gradients, activations, features, density, openset, uncertainty, classic  # noqa: F401,I001
from .base import FAMILIES, REGISTRY, Detector, FitContext, NotFittedError, Param, create, register

__all__ = ["FAMILIES", "REGISTRY", "Detector", "FitContext", "NotFittedError", "Param", "create", "register"]
