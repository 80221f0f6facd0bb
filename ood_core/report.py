"""Results as tables and documents: metric and confusion tables per OOD set (pandas), for the pages and notebooks."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import pandas as pd

from . import metrics

METRIC_COLUMNS = {  # metric key -> column label; arrows say which direction is better
    "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑", "aupr_out": "AUPR-Out ↑", "fpr95": "FPR@95TPR ↓",
    "detection_error": "Detection error ↓",
}
OSCR_COLUMN = "OSCR ↑"  # open-set recognition only


def metrics_frame(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                  id_correct: Optional[np.ndarray] = None) -> pd.DataFrame:
    """One row per OOD set, the five detection metrics in percent (from ood_core.metrics); with `id_correct`
    (open-set recognition: which known test images the classifier gets right) an OSCR column too."""
    rows = {}
    for name, s in ood_scores.items():
        rows[name] = {METRIC_COLUMNS[k]: 100 * v for k, v in metrics.all_metrics(id_scores, s).as_dict().items()}
        if id_correct is not None:
            rows[name][OSCR_COLUMN] = 100 * metrics.oscr(id_scores, id_correct, s)
    return pd.DataFrame.from_dict(rows, orient="index")


def confusion_frame(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], threshold: float) -> pd.DataFrame:
    """Counts at a threshold per OOD set (flagged as OOD when score > threshold)."""
    rows = {}
    for name, s in ood_scores.items():
        c = metrics.confusion_at(id_scores, s, threshold)
        rows[name] = {"ID kept": c.id_accepted, "ID flagged": c.id_rejected,
                      "OOD missed": c.ood_accepted, "OOD caught": c.ood_rejected}
    return pd.DataFrame.from_dict(rows, orient="index")
