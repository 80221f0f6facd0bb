"""scripts/bench_size_cost.py's arithmetic, on hand-made timings: the fixed part of a training counted once, the
overhead share of a known mix, and the speed factor from reference models."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_size_cost as bsc  # noqa: E402


def test_whole_training_counts_the_fixed_part_once():
    # a fixed 1 s plus 0.5 s per short run: 1.5 s, and 2 s with twice the epochs; 10 short runs' worth = 1 + 10 * 0.5
    assert bsc.whole_training(1.5, 2.0, 10) == pytest.approx(6.0)
    # no fixed part: the short run scaled whole
    assert bsc.whole_training(2.0, 4.0, 7.5) == pytest.approx(15.0)


def test_overhead_share_recovers_a_known_mix():
    sides = [16, 28, 40]
    for f in (0.0, 0.3, 1.0):
        ratios = [f + (1 - f) * (s / 16) ** 2 for s in sides]
        assert bsc.overhead_share(sides, ratios) == pytest.approx(f)


def test_speed_factor_is_the_median_of_registry_over_measured():
    rows = [{"registry_rate": 1.0, "rate_16px": 2.0}, {"registry_rate": 3.0, "rate_16px": 4.0},
            {"registry_rate": 0.1, "rate_16px": 0.1}]
    assert bsc.speed_factor(rows) == pytest.approx(0.75)  # median of 0.5, 0.75, 1.0: a machine slower that hour
