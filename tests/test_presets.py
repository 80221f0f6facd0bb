"""Teaching presets (ood_core/presets.py): well formed, and each lesson's inequality holds on the shipped default.

The lesson tests train (or load from the session cache) each preset's experiment: the default 30-epoch model,
its outlier-exposure twin and the open-set model, about 20 s each on two cores, so they are marked slow. The
inequalities are recomputed here from ood_core's metrics, apart from the preset's own check.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ood_core import Spec, activation_stats, metrics, pipeline
from ood_core.presets import PRESETS, Lesson
from ood_core.spec import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_well_formed():
    assert len(PRESETS) >= 4
    for name, p in PRESETS.items():
        assert p.name == name and re.fullmatch(r"[a-z-]+", name)
        # two sentences: a lesson a teacher reads out, not a paragraph
        assert len(re.findall(r"[.!?](\s|$)", p.lesson)) == 2, p.lesson
        assert (ROOT / "pages" / f"{p.page}.py").exists()
        query = p.query()
        assert query["preset"] == name and Spec.from_query(query) == p.spec  # the link carries the experiment
        assert all(isinstance(v, str) for v in query.values())


def test_check_refuses_an_experiment_of_another_spec():
    with pytest.raises(ValueError, match="is about the experiment"):
        PRESETS["near-far"].check(SimpleNamespace(spec=Spec(seed=1)))


class _Stub:
    """An experiment whose every detector gives fixed scores (for a check's arithmetic on a known case)."""

    def __init__(self, spec, scores):
        self.spec, self.scores = spec, scores

    def fit_detector(self, name, params=None):
        return name

    def score(self, detector, splits=None):
        return {s: self.scores[s] for s in (splits or self.scores)}


def test_a_lesson_that_does_not_show_says_so_with_its_numbers():
    # mirrored digits perfectly separated, noise not at all: the near-far lesson does not hold here
    scores = {"test": np.zeros(4), "gaussian": np.zeros(4), "flipped": np.ones(4)}
    lesson = PRESETS["near-far"].check(_Stub(PRESETS["near-far"].spec, scores))
    assert lesson == Lesson(False, "Mahalanobis's AUROC is 50.0% on Gaussian noise (far OOD) but 100.0% on mirrored "
                                   "digits (near OOD).")


# --- the lessons on the shipped default (seed 0, 30 epochs) ------------------------------------------------

@pytest.fixture(scope="module")
def prepare(default_experiment, cache_dir):
    """Experiments by spec, from the session cache (the default one is the conftest's)."""
    made = {default_experiment.spec: default_experiment}

    def get(spec: Spec):
        if spec not in made:
            made[spec] = pipeline.prepare(spec, cache_dir=cache_dir, device="cpu")
        return made[spec]

    return get


def auroc(exp, detector: str, ood_set: str) -> float:
    scores = exp.score(exp.fit_detector(detector), ["test", ood_set])
    return metrics.auroc(scores["test"], scores[ood_set])


def independent(name: str, prepare) -> tuple[float, float]:
    """(larger, smaller): the two sides of each lesson's inequality, computed here."""
    p = PRESETS[name]
    exp = prepare(p.spec)
    if name == "outlier-exposure":
        ce = prepare(Spec(training=TrainConfig(regime="ce")))
        return auroc(exp, "msp", "gaussian"), auroc(ce, "msp", "gaussian")
    if name == "near-far":
        return auroc(exp, "mahalanobis", "gaussian"), auroc(exp, "mahalanobis", "flipped")
    if name == "react":
        return auroc(exp, "react", "rotated"), auroc(exp, "energy", "rotated")
    if name == "features-beat-outputs":
        def mean(d):
            return np.mean([auroc(exp, d, s) for s in exp.ood_names])
        return min(mean(d) for d in ("mahalanobis", "vim", "knn")), max(mean(d) for d in ("msp", "max_logit", "energy"))
    if name == "open-set":
        return min(auroc(exp, "mahalanobis", "gaussian"), auroc(exp, "mahalanobis", "rotated")), \
            auroc(exp, "mahalanobis", "unknown")
    raise AssertionError(f"no independent computation for preset {name!r}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_each_lesson_shows_on_the_shipped_default(name, prepare):
    p = PRESETS[name]
    assert p.spec.seed == 0 and p.spec.training.epochs == Spec().training.epochs  # the shipped default's seed
    lesson = p.check(prepare(p.spec), prepare)
    larger, smaller = independent(name, prepare)
    assert larger > smaller, (name, larger, smaller)
    assert lesson.holds, lesson.message
    if name != "features-beat-outputs":  # the message quotes both sides (the other one quotes six means)
        assert f"{100 * larger:.1f}%" in lesson.message and f"{100 * smaller:.1f}%" in lesson.message


@pytest.mark.slow
def test_react_clips_more_from_ood_than_from_id(prepare):
    """The mechanism the ReAct preset states: the activation min(h, c) removes is larger on rotated digits."""
    exp = prepare(PRESETS["react"].spec)
    c = activation_stats.clip_threshold(exp.outputs["train"].features, 90.0)
    removed = {s: np.maximum(exp.outputs[s].features - c, 0).sum(axis=1).mean() for s in ("test", "rotated")}
    assert removed["rotated"] > removed["test"]
    assert f"{removed['rotated']:.1f} per rotated digit against {removed['test']:.1f}" in \
        PRESETS["react"].check(exp, prepare).message
