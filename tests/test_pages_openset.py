"""AppTest tests of the open-set methods in the pages: the rpl regime on the Experiment page and its score on the
Scores page; OpenGAN on the Scores page as a job (it trains a network), with the library's numbers when it lands."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ood_core import Spec, TrainConfig, metrics, pipeline
from ood_core.spec import REGIME_TITLES
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
# a tiny open-set experiment trained with reciprocal points: 8 px digits, 3 known classes, 2 epochs
RPL_SPEC = Spec(setting="osr", image_size=8, known_classes=3, training=TrainConfig(epochs=2, regime="rpl"))


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture
def rpl_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = RPL_SPEC
    pipeline.prepare(RPL_SPEC, device="cpu")  # trained first (the pages' training job has tests of its own)
    return at.run()


def test_the_regime_picker_offers_reciprocal_points_and_the_rpl_score_matches_the_library(rpl_app):
    at = rpl_app
    no_exception(at)
    picker = next(s for s in at.selectbox if s.label == "Training regime")
    assert {REGIME_TITLES["rpl"], REGIME_TITLES["arpl"]} <= set(picker.options) and picker.value == "rpl"
    assert "reciprocal point" in picker.help and "RPL / ARPL" in picker.help
    assert f"**Training:** {REGIME_TITLES['rpl']}" in " ".join(m.value for m in at.sidebar.markdown)
    at.switch_page("pages/scores.py").run()
    no_exception(at)
    picker = at.selectbox(key="scores-detector")
    assert ui.detector_label("rpl") in picker.options  # offered for a classifier trained with reciprocal points
    picker.set_value("rpl").run()
    no_exception(at)
    exp = pipeline.prepare(RPL_SPEC, device="cpu")  # the cached model the app uses
    sc = exp.score(exp.fit_detector("rpl"))
    table = at.dataframe[0].value
    assert table.loc["unknown", "AUROC ↑"] == pytest.approx(100 * metrics.auroc(sc["test"], sc["unknown"]))


def test_opengan_is_marked_slow_and_scores_as_a_job(rpl_app, fresh_runner, land):
    at = rpl_app.switch_page("pages/scores.py").run()
    assert ui.detector_label("opengan").endswith(ui.SLOW_MARK)
    at.selectbox(key="scores-detector").set_value("opengan").run()
    no_exception(at)
    (job,) = fresh_runner.jobs()
    assert job.title == "Scoring with OpenGAN (discriminator on features)"
    land(at)
    no_exception(at)
    exp = pipeline.prepare(RPL_SPEC, device="cpu")
    sc = exp.score(exp.fit_detector("opengan"))  # seeded: the same discriminator as the job's
    assert at.dataframe[0].value.loc["unknown", "AUROC ↑"] == pytest.approx(
        100 * metrics.auroc(sc["test"], sc["unknown"]))
