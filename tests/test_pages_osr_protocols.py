"""The Experiment page's OSR options (pages/experiment.py, osr_protocol_picker): the CIFAR+10 / +50 protocols on
CIFAR-10 when CIFAR-100 is there (a note when it is not), the literature's published splits beside random ones, and
K fixed by the protocol; the spec the form builds carries them. Fixture files as in tests/test_osr_protocols.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from test_osr_protocols import write_cifar10, write_cifar100
from pages import _support as ui

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def app(default_experiment, tmp_path, monkeypatch) -> AppTest:
    write_cifar10(tmp_path)
    monkeypatch.setenv("OOD_DATA_ROOT", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.radio(key="setting-picker").set_value("osr").run()
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def submit(at: AppTest) -> None:
    next(n for n in at.number_input if n.label == "Epochs").set_value(1)
    next(b for b in at.button if b.label == "Train / load model").click().run()


def test_without_cifar100_the_page_says_why_cifar_plus_is_not_offered(app):
    app.selectbox(key="dataset-picker").set_value("cifar10").run()
    no_exception(app)
    assert not any(s.label == "OSR protocol" for s in app.selectbox)
    assert any("CIFAR+10 / CIFAR+50 take their unknowns from CIFAR-100, which is not found" in c.value
               for c in app.caption)
    assert app.radio(key="osr-splits").options == ["Random (seeded)", "Literature (fixed)"]


def test_literature_splits_fix_k_and_join_the_spec(app, land):
    app.selectbox(key="dataset-picker").set_value("cifar10").run()
    app.radio(key="osr-splits").set_value("literature").run()
    no_exception(app)
    assert any(c.value == "Known classes K = 6, fixed by the protocol." for c in app.caption)
    assert not any(n.label == "Known classes K" for n in app.number_input)
    next(s for s in app.selectbox if s.label == "Image size (px)").set_value(8)
    app.run()
    submit(app)
    land(app)
    no_exception(app)
    spec = app.session_state[ui.SPEC_KEY]
    assert (spec.dataset, spec.osr_splits, spec.known_classes) == ("cifar10", "literature", 6)
    # the sidebar's lines name the published split 0 of CIFAR-10 (iCGY96/ARPL split.py: [0, 6, 4, 9, 1, 7]); AppTest
    # loses the sidebar on reruns, so its lines are read from the function that writes them
    lines = ui.setting_lines(spec)
    assert "**Known classes (K=6):** 0, 1, 4, 6, 7, 9" in lines
    assert any(line.startswith("**OSR protocol:** K known classes of the dataset") and "published splits" in line
               for line in lines)


def test_cifar_plus_10_is_offered_with_cifar100_and_sets_k_to_4(app, tmp_path, land):
    write_cifar100(tmp_path)
    app.selectbox(key="dataset-picker").set_value("cifar10").run()
    protocol = next(s for s in app.selectbox if s.label == "OSR protocol")
    assert protocol.options[1:] == ["CIFAR+10: 4 CIFAR-10 classes known, 10 CIFAR-100 animal classes unknown",
                                    "CIFAR+50: 4 CIFAR-10 classes known, 50 CIFAR-100 animal classes unknown"]
    protocol.set_value("cifar+10").run()
    no_exception(app)
    assert any(c.value == "Known classes K = 4, fixed by the protocol." for c in app.caption)
    next(s for s in app.selectbox if s.label == "Image size (px)").set_value(8)
    app.run()
    submit(app)
    land(app)
    no_exception(app)
    spec = app.session_state[ui.SPEC_KEY]
    assert (spec.osr_protocol, spec.osr_splits, spec.known_classes) == ("cifar+10", "random", 4)
    assert "**Known classes (K=4):** 0, 1, 8, 9" in ui.setting_lines(spec)
    # the setting's explanation says where this protocol's unknowns come from
    app.run()
    assert any("the unknowns at test are 10 CIFAR-100 animal classes" in c.value for c in app.caption)
