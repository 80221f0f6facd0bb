"""Uncertainty detectors: disagreement between stochastic passes (MC dropout) or between models (deep ensemble)."""
from __future__ import annotations
