"""pipeline.compute_outputs: the one forward pass in pieces, with progress and cancel, giving the same numbers."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ood_core import jobs, pipeline


def test_pieces_give_the_same_outputs_and_report_progress_to_the_end(default_experiment, monkeypatch):
    exp = default_experiment
    whole = pipeline.compute_outputs(exp.model, exp.bench, "cpu")
    monkeypatch.setattr(pipeline, "FORWARD_CHUNK", 256)  # a multiple of the batch size: the same batches
    seen: list[float] = []
    pieces = pipeline.compute_outputs(exp.model, exp.bench, "cpu", progress=lambda f, m: seen.append(f))
    assert list(pieces) == list(whole)
    for name in whole:
        np.testing.assert_array_equal(pieces[name].logits, whole[name].logits)
        np.testing.assert_array_equal(pieces[name].features, whole[name].features)
        np.testing.assert_array_equal(pieces[name].labels, whole[name].labels)
        assert pieces[name].inputs is exp.bench.splits()[name].images  # the split's compact inputs, not a copy
    n = sum(len(s) for s in exp.bench.splits().values())
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= n // 256


def test_a_cancelled_forward_pass_stops_with_cancelled(default_experiment):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(jobs.Cancelled):
        pipeline.compute_outputs(default_experiment.model, default_experiment.bench, "cpu", cancel=cancel)
