"""The detector registry: importing this package registers every family."""
from . import logits, gradients, activations, features, density, openset, uncertainty, classic, oneclass  # noqa: F401,I001
from .base import (FAMILIES, REGISTRY, Detector, FitContext, NotFittedError, Param, Reference, create, default_params,
                   register, score_together, shares_search)

# list detectors in the survey's taxonomy order (family by family), each family in registration order
_order = list(FAMILIES)
for _name, _cls in sorted(REGISTRY.items(), key=lambda kv: _order.index(kv[1].family)):
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["FAMILIES", "REGISTRY", "Detector", "FitContext", "NotFittedError", "Param", "Reference", "create",
           "default_params",
           "register", "score_together", "shares_search"]
