"""Classic outlier detectors (scikit-learn) fitted on the network's ID train features."""
from __future__ import annotations
