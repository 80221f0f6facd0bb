"""Density-based detectors: likelihood of features (or feature-map statistics) under a model of the ID data."""
from __future__ import annotations
