"""Known-answer tests of ood_core.report (metric and confusion tables) and ood_core.text (short error messages)."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import report
from ood_core.text import brief

ID = np.array([0.0, 1.0, 2.0, 3.0])


# --- tables ------------------------------------------------------------------------------------------

def test_confusion_frame_counts_by_hand():
    # flagged as OOD when score > 2: ID 3 is flagged; OOD 2.5 and 3.5 are caught, 0.5 is missed
    table = report.confusion_frame(ID, {"a": np.array([2.5, 3.5, 0.5]), "b": np.array([5.0, 6.0])}, 2.0)
    assert list(table.index) == ["a", "b"]
    assert list(table.columns) == ["ID kept", "ID flagged", "OOD missed", "OOD caught"]
    assert table.loc["a"].tolist() == [3, 1, 1, 2]
    assert table.loc["b"].tolist() == [3, 1, 0, 2]
    # a score equal to the threshold is kept
    assert report.confusion_frame(ID, {"a": np.array([2.0])}, 2.0).loc["a"].tolist() == [3, 1, 1, 0]


def test_metrics_frame_percent_by_hand():
    # "far" lies above every ID score; "mixed": 0.5 beats one ID score, 2.5 beats three -> AUROC 4/8
    table = report.metrics_frame(ID, {"far": np.array([5.0, 6.0]), "mixed": np.array([0.5, 2.5])})
    assert list(table.columns) == list(report.METRIC_COLUMNS.values())
    far = table.loc["far"]
    assert far[report.METRIC_COLUMNS["auroc"]] == pytest.approx(100.0)
    assert far[report.METRIC_COLUMNS["fpr95"]] == pytest.approx(0.0)
    assert far[report.METRIC_COLUMNS["aupr_out"]] == pytest.approx(100.0)
    assert far[report.METRIC_COLUMNS["detection_error"]] == pytest.approx(0.0)
    assert table.loc["mixed", report.METRIC_COLUMNS["auroc"]] == pytest.approx(50.0)
    assert report.OSCR_COLUMN not in table


def test_metrics_frame_oscr_column_reaches_the_accuracy_on_perfect_separation():
    correct = np.array([True, True, False, True])
    table = report.metrics_frame(ID, {"far": np.array([5.0, 6.0])}, correct)
    assert table.loc["far", report.OSCR_COLUMN] == pytest.approx(75.0)  # OSCR's maximum = closed-set accuracy


# --- short messages ----------------------------------------------------------------------------------

TORCH_LOAD_ERROR = (
    "this file is not a loadable PyTorch checkpoint (UnpicklingError: Weights only load failed. This file can still "
    "be loaded, to do so you have two options, do those steps only if you trust the source of the checkpoint. "
    "\n\t(1) In PyTorch 2.6, we changed the default value of the `weights_only` argument in `torch.load` from `False` "
    "to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can result in "
    "arbitrary code execution. Do it only if you got the file from a trusted source.\n\t(2) Alternatively, to load "
    "with `weights_only=True` please check the recommended steps in the following error message.)")


def test_brief_keeps_the_message_and_drops_the_details():
    # PyTorch's advice on the following lines goes
    first = TORCH_LOAD_ERROR.splitlines()[0]
    assert brief(TORCH_LOAD_ERROR) == first and len(first) < 240 and "(1)" not in first
    # on one line it is over the limit: the exception's details go, its name stays
    one_line = TORCH_LOAD_ERROR.replace("\n\t", " ")
    assert brief(one_line) == "this file is not a loadable PyTorch checkpoint (UnpicklingError)"
    long = "this file is not a loadable PyTorch checkpoint (UnpicklingError: Weights only load failed. " + "x " * 200
    assert brief(long) == "this file is not a loadable PyTorch checkpoint (UnpicklingError)"
    assert brief("short message\nsecond line") == "short message"
    assert brief("word " * 100).endswith(" …") and len(brief("word " * 100)) <= 242
    assert brief("") == "unknown error" and brief("  \n ") == "unknown error"
    assert brief("a " * 20, limit=10) == "a a a a a …"
