"""Open-set recognition detectors: recalibrate the classifier with an explicit unknown class."""
from __future__ import annotations
