"""ood_core.costs: expected seconds from the fitted table (no timing is asserted: the table is data)."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import costs
from ood_core.detectors import REGISTRY


def test_fit_recovers_known_coefficients():
    """Rows made from known per-term costs give those costs back (non-negative least squares, exact data)."""
    truth = {"const": 0.01, "ND2": 2e-11, "nD2": 5e-11, "D3": 1e-10}
    rows = []
    for n_bank, dim, n_query in [(5_000, 128, 1_000), (50_000, 512, 10_000), (50_000, 2048, 10_000),
                                 (200_000, 512, 10_000), (20_000, 1024, 30_000), (10_000, 256, 2_000)]:
        secs = sum(c * costs.TERMS[t](n_bank, n_query, dim) for t, c in truth.items())
        rows.append({"detector": "mahalanobis", "N": n_bank, "D": dim, "n": n_query, "seconds": secs})
    fitted = costs.fit(rows, 100.0)["detectors"]["mahalanobis"]
    for term, c in truth.items():
        assert fitted[term] == pytest.approx(c, rel=1e-6)
    # the ND term, absent from the data, gets (numerically) no weight
    assert fitted.get("ND", 0.0) * 200_000 * 512 < 1e-6 * sum(r["seconds"] for r in rows)


def test_expected_seconds_covers_the_measured_detectors_and_grows_with_size():
    table = costs.table()["detectors"]
    for name in ("mahalanobis", "rmd", "knn", "vim", "gmm", "nnguide", "she", "fdbd", "nci", "msp", "react"):
        assert name in table and name in REGISTRY
        small = costs.expected_seconds(name, 5_000, 1_000, 128)
        large = costs.expected_seconds(name, 200_000, 40_000, 2048)
        assert 0 < small < large and np.isfinite(large)


def test_expected_seconds_is_none_where_the_table_says_nothing():
    assert costs.expected_seconds("odin", 1000, 100, 128) is None  # runs the network: not a function of sizes
    assert costs.expected_seconds("no_such_detector", 1000, 100, 128) is None


def test_every_detector_term_is_a_known_term():
    for name, terms in costs.DETECTOR_TERMS.items():
        assert name in REGISTRY and set(terms) <= set(costs.TERMS)


def test_detector_pickers_show_the_expected_time_on_the_experiments_data(default_experiment, monkeypatch):
    """The pickers' label is the detector's label plus costs.expected_seconds at the experiment's own sizes (bank =
    ID train outputs, queries = ID test + every OOD set, D = feature size); network-running ones use estimates, in
    forward passes of the model (timed once: here a known 0.3 ms per image, so the label cannot differ from an
    earlier page's timing of another copy of the same model)."""
    from ood_core import estimates
    from pages import _support as ui

    exp = default_experiment
    monkeypatch.setattr(estimates, "model_forward", lambda e: estimates.Forward(3e-4, True))
    ui._shown_cost.clear()  # labels another test's pages drew and kept
    label = ui.detector_format(exp)
    shown = label("knn")  # calibrates the table to this machine once (costs.calibrate)
    n_bank, dim = exp.outputs["train"].features.shape
    n_query = sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))
    expected = costs.expected_seconds("knn", n_bank, n_query, dim)
    assert shown == f"{ui.detector_label('knn')} · {ui.seconds_words(expected)}"
    odin = estimates.NETWORK_FORWARDS["odin"] * 3e-4 * n_query
    assert estimates.detector(exp, "odin").seconds == pytest.approx(odin)
    assert label("odin") == f"{ui.detector_label('odin')} · {ui.seconds_words(odin)}"
    assert [ui.seconds_words(s) for s in (0.05, 0.42, 12.4, 300)] == ["<0.1 s", "~0.4 s", "~12 s", "~5 min"]


def test_the_suggested_per_class_cap_keeps_a_training_near_the_budget():
    from ood_core import estimates
    from ood_core.spec import Spec, TrainConfig

    spec = Spec(image_size=36, training=TrainConfig(epochs=15))  # the small CNN
    per_image = estimates.training(spec, 1).seconds  # rate x epochs x area (the small CNN grows with it alone)
    assert per_image == pytest.approx(3.5e-4 * 15 * (36 / 16) ** 2)  # 0.02658 s
    # 10 classes of 300: all of them would take 3,000 x per_image > 35 s; the largest cap that fits is
    # floor(35 / (10 x per_image)) = 131, rounded down to a multiple of 10
    assert 3000 * per_image > estimates.SUGGESTED_TRAINING_S == 35
    assert int(35 / (10 * per_image)) == 131 and estimates.suggested_per_class(spec, [300] * 10) == 130
    assert estimates.suggested_per_class(spec, [300] * 10, budget_s=3001 * per_image) == 0  # everything fits
    # uneven classes: a cap only trims the large ones (cap + 50 images must fit: cap <= 35 / per_image - 50)
    cap = estimates.suggested_per_class(spec, [5000, 50])
    assert cap == int(35 / per_image - 50) // 10 * 10
    assert estimates.suggested_per_class(spec, [100] * 2, budget_s=per_image) == 10  # never below 10
    assert estimates.suggested_per_class(spec, []) == 0


def test_the_size_factor_grows_with_the_area_but_for_a_models_fixed_share(tmp_path):
    import dataclasses

    from ood_core import estimates
    from ood_core.models import MODELS
    from ood_core.spec import Spec

    assert estimates.size_factor(16) == 1.0 and estimates.size_factor(32) == 4.0  # the area alone
    assert estimates.size_factor(32, 0.25) == pytest.approx(0.25 + 0.75 * 4)  # a quarter does not grow: 3.25
    assert estimates.size_factor(8, 0.5) == pytest.approx(0.5 + 0.5 / 4)  # nor shrink
    # a training is scaled by its own model's share
    spec = Spec(setting="nd", model="lsa", image_size=32)
    lsa = MODELS["lsa"]
    assert estimates.training(spec, 100).seconds == pytest.approx(
        lsa.train_seconds * 100 * estimates.size_factor(32, lsa.size_overhead))
    # so is each model a one-vs-all protocol trains, whatever the base spec's own model
    base = spec.replace(model="deep_svdd")
    est = estimates.one_class(base, "nd", 0.05, [0], [("lsa", "model_score", {})], train_size=100, cache_dir=tmp_path)
    assert est.seconds == pytest.approx(lsa.train_seconds * 100 * estimates.size_factor(32, lsa.size_overhead)
                                        + estimates.ONE_CLASS_METHOD_S)
    with pytest.raises(ValueError, match="size_overhead is a share"):
        dataclasses.replace(MODELS["small_cnn"], size_overhead=1.5)
