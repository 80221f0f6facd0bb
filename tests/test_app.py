"""AppTest tests of the Experiment and Scores pages, and of the helpers in pages/_support.py.

The `default_experiment` fixture trains the default model into the per-session temporary cache
(conftest sets OOD_EXPLORER_CACHE), so the app loads it from disk instead of training again.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from ood_core import Spec, metrics
from ood_core.detectors import REGISTRY, Detector, Param
from ood_core.models import checkpoint_path
from ood_core.spec import TrainConfig
from pages import _support as ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture
def app(default_experiment) -> AppTest:
    """The app on its default page (Experiment), after one run."""
    return AppTest.from_file(APP, default_timeout=120).run()


@pytest.fixture
def scores(app) -> AppTest:
    return app.switch_page("pages/scores.py").run()


def figures_of(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def traces(fig: dict) -> list[tuple[str, str]]:
    return [(t["type"], t.get("name", "")) for t in fig["data"]]


def percent(text: str) -> float:
    return float(text.strip().rstrip("%"))


def model_uploader(at: AppTest):
    """The Experiment page's model upload (the page also has one for the user's own images)."""
    return next(u for u in at.file_uploader if u.label.startswith("Model file"))


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# --- Experiment page -------------------------------------------------------------------------------

def test_experiment_page_shows_accuracy_form_examples_and_sidebar(app, default_experiment):
    no_exception(app)
    acc = next(m for m in app.metric if m.label == "ID test accuracy")
    assert percent(acc.value) >= 97.0
    assert app.get("form"), "the experiment form is missing"
    assert "Train / load model" in [b.label for b in app.button]
    # 1 row of ID images + one image list per OOD set, captions "true → predicted" on the ID row
    assert len(app.image) == 1 + len(default_experiment.ood_names)
    assert "→" in app.image[0].captions[0] and len(app.image[0].value) == 16
    side = " ".join(m.value for m in app.sidebar.markdown)
    assert "**Dataset:** Digits (scikit-learn, 8×8) · 16 px" in side and "**Seed:** 0" in side and f"**Epochs:** {Spec().training.epochs}" in side
    assert "**Model from cache:** yes" in side  # the fixture put the checkpoint on disk
    assert f"**ID test accuracy:** {acc.value}" in side
    # the checkpoint's provenance, as recorded in it
    from ood_core.models.reproducible import TRAIN_THREADS
    from ood_core.text import provenance_line

    prov = default_experiment.training.provenance
    captions = [c.value for c in app.sidebar.caption]
    assert prov and f"Model provenance: {provenance_line(prov)}" in captions
    assert f"{TRAIN_THREADS} training thread" in provenance_line(prov)


def test_a_page_that_loads_no_model_says_whether_it_is_on_disk(default_experiment):
    """Methods opened from a link loads no model: the sidebar says "on disk" or "not trained yet", not "no"."""
    assert ui.cache_words(Spec(), {}, None) == "on disk, not loaded by this page"
    never = Spec(seed=9731)
    checkpoint_path(never).unlink(missing_ok=True)
    assert ui.cache_words(never, {}, None) == "not trained yet"
    assert ui.cache_words(Spec(), {"from_cache": True, "source": "on-disk cache"}, None) == "yes (on-disk cache)"
    assert ui.cache_words(Spec(), {"from_cache": False}, None) == "no"


def test_submitting_the_default_form_reuses_the_cached_model(app):
    submit = next(b for b in app.button if b.label == "Train / load model")
    submit.click().run()
    no_exception(app)
    assert any("Reused the cached model" in i.value for i in app.info), [i.value for i in app.info]
    assert not app.success  # nothing was trained


def test_a_new_spec_trains_as_a_job_and_retrain_anyway_trains_again(app, land):
    base = Spec()
    one_epoch = ui.make_spec(base, base.dataset, base.seed, 1, base.training.lr, base.training.batch_size)
    checkpoint_path(one_epoch).unlink(missing_ok=True)  # cold, whatever ran before
    form_button = next(b for b in app.button if b.label == "Train / load model")
    next(n for n in app.number_input if n.label == "Epochs").set_value(1)
    form_button.click().run()
    no_exception(app)
    # the run that started the training ended at once: the form is still there, the training runs in a job
    assert "Train / load model" in [b.label for b in app.button]
    (job,) = ui.jobs.runner().jobs()
    assert job.title.startswith("Training the model of this experiment") and job.estimate.trains == 1
    land(app)
    no_exception(app)
    assert any("Trained a new model: 1 epoch in" in s.value for s in app.success), [i.value for i in app.info]
    assert checkpoint_path(one_epoch).exists()
    assert app.session_state[ui.SPEC_KEY].training.epochs == 1
    # the setting diagram, then the training curve of the new model
    figs = figures_of(app)
    assert len(figs) == 2 and figs[1]["layout"]["xaxis"]["title"]["text"] == "epoch"
    form_button = next(b for b in app.button if b.label == "Train / load model")
    app.checkbox(key="retrain-anyway").check()
    form_button.click().run()
    land(app)
    no_exception(app)
    assert any("Trained a new model" in s.value for s in app.success)
    assert len(ui.jobs.runner().jobs()) <= 1  # collected jobs of models on disk are forgotten


def test_a_training_can_be_cancelled_and_keeps_nothing(app, land):
    base = Spec()
    spec = ui.make_spec(base, base.dataset, 7, 40, base.training.lr, base.training.batch_size)
    checkpoint_path(spec).unlink(missing_ok=True)
    next(n for n in app.number_input if n.label == "Epochs").set_value(40)
    next(n for n in app.number_input if n.label == "Seed").set_value(7)
    next(b for b in app.button if b.label == "Train / load model").click().run()
    no_exception(app)
    assert app.session_state[ui.SPEC_KEY].key() == spec.key()
    (job,) = ui.jobs.runner().jobs()
    app.selectbox(key="dataset-picker").set_value("mnist-sample").run()  # the page answers while it trains
    no_exception(app)
    assert job.active and next(n for n in app.number_input if n.label == "Epochs").value == 15
    job.cancel()  # what the panel's Cancel button does
    land(app)
    no_exception(app)
    assert job.state == ui.jobs.CANCELLED and not checkpoint_path(spec).exists()
    assert any("cancelled after" in i.value and "nothing of it was kept" in i.value for i in app.info)
    assert any(b.label.startswith("Run again") for b in app.button)  # the estimate and a button to try again


def test_a_large_upload_starts_from_a_per_class_cap_that_trains_in_about_a_minute(app, monkeypatch):
    from ood_core import estimates
    from ood_core.data import datasets

    rng = np.random.default_rng(0)  # 10 classes of 500 colour images at 36 px: 300 of each to train on
    images = rng.integers(0, 256, (5000, 36, 36, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=np.repeat(np.arange(10), 500))
    monkeypatch.setitem(datasets.DATASETS, "upload-cap-test", None)  # undone at the end: the upload leaves too
    datasets.register_user_dataset("upload-cap-test", buf.getvalue(), filename="cap.npz")
    app.run()  # the picker lists the datasets registered when it is drawn
    app.selectbox(key="dataset-picker").set_value("upload-cap-test").run()
    no_exception(app)
    cap = next(n for n in app.number_input if n.label.startswith("Training images per class"))
    spec = Spec(dataset="upload-cap-test", image_size=36, training=TrainConfig(epochs=15))
    assert cap.value == estimates.suggested_per_class(spec, [300] * 10) == 130  # all 3,000 would take > 50 s
    assert any("130 images per class" in c.value for c in app.caption)
    app.selectbox(key="dataset-picker").set_value("digits").run()  # the default experiment: all of it fits
    assert next(n for n in app.number_input if n.label.startswith("Training images per class")).value == 0


def test_a_real_dataset_picked_on_the_experiment_page_trains_at_its_size_and_reaches_scores(app, tmp_path,
                                                                                        monkeypatch, land):
    monkeypatch.setattr("ood_core.models.checkpoint.DEFAULT_CACHE_DIR", tmp_path)  # cold, whatever ran before
    app.selectbox(key="dataset-picker").set_value("mnist-sample").run()
    no_exception(app)
    size = next(s for s in app.selectbox if s.label == "Image size (px)")
    epochs = next(n for n in app.number_input if n.label == "Epochs")
    assert size.value == 28 and epochs.value == 15  # the dataset's own size and epochs, not the digits'
    size.set_value(16)
    epochs.set_value(1)
    next(n for n in app.number_input if n.label.startswith("Training images per class")).set_value(30)
    next(b for b in app.button if b.label == "Train / load model").click().run()
    land(app)
    no_exception(app)
    spec = app.session_state[ui.SPEC_KEY]
    assert (spec.dataset, spec.image_size, spec.train_per_class, spec.training.epochs) == ("mnist-sample", 16, 30, 1)
    assert any("Trained a new model: 1 epoch in" in s.value for s in app.success)
    images = next(m for m in app.metric if m.label == "Images")
    assert images.value.startswith("300 / ")  # 30 per class x 10 classes
    scores = app.switch_page("pages/scores.py").run()
    no_exception(scores)
    assert figures_of(scores), "the Scores page drew no chart on the MNIST sample"


def test_a_dataset_that_is_not_on_disk_says_where_to_put_it(app, tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_DATA_ROOT", str(tmp_path))
    app.selectbox(key="dataset-picker").set_value("cifar10").run()
    no_exception(app)
    text = " ".join(w.value for w in app.warning)
    assert "CIFAR-10** is not on this machine" in text and str(tmp_path / "cifar-10-batches-py") in text
    assert any(b.label.startswith("Download CIFAR-10 (about 163 MB)") for b in app.button), [b.label for b in app.button]


def test_invalid_learning_rate_gives_a_message_not_a_traceback(app):
    lr = next(n for n in app.number_input if n.label == "Learning rate")
    lr.set_value(0.0)
    next(b for b in app.button if b.label == "Train / load model").click().run()
    no_exception(app)
    assert any("lr must be in (0, 10)" in e.value for e in app.error)
    assert ui.Spec().key() == app.session_state[ui.SPEC_KEY].key()  # the spec did not change


def test_corrupt_upload_gives_an_error_and_keeps_the_trained_model(app):
    model_uploader(app).upload("broken.pt", b"this is not a checkpoint").run()
    no_exception(app)
    assert any("Could not use broken.pt" in e.value and "not a loadable PyTorch checkpoint" in e.value
               for e in app.error)
    assert all(len(e.value) < 200 for e in app.error)  # a message, not PyTorch's page of advice
    assert ui.USER_MODEL_KEY not in app.session_state


def test_wrong_shape_upload_says_it_does_not_match(app):
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3, 7), "head.bias": torch.zeros(3)}, buf)
    model_uploader(app).upload("other.pt", buf.getvalue()).run()
    no_exception(app)
    assert any("does not match" in e.value for e in app.error)


def test_good_upload_replaces_the_model_and_can_be_undone(app, default_experiment, fresh_runner, land):
    model_uploader(app).upload("mine.pt", ui.state_dict_bytes(default_experiment)).run()
    no_exception(app)
    (job,) = fresh_runner.jobs()  # its forward pass over every split is a job, with a progress bar and Cancel
    assert job.title == "Running your model mine.pt" and "runs your model once on" in job.estimate.what
    # estimated from its own forward pass, timed when it was loaded: per image, times every split's images
    per_image = app.session_state[ui.USER_MODEL_KEY]["forward_s"]
    n = sum(len(s) for s in default_experiment.bench.splits().values())
    assert per_image > 0 and job.estimate.seconds == pytest.approx(per_image * n)
    assert "ms per image, timed when it was loaded" in job.estimate.what
    land(app)
    no_exception(app)
    assert any("Using your model `mine.pt`" in s.value for s in app.success)
    # (AppTest drops app.py's sidebar after the first run, so check the state the sidebar reads)
    assert app.session_state[ui.USER_MODEL_KEY]["name"] == "mine.pt"
    acc = next(m for m in app.metric if m.label == "ID test accuracy")
    assert acc.value == f"{default_experiment.id_accuracy:.1%}"  # same weights, same accuracy
    next(b for b in app.button if b.label == "Use the trained model again").click().run()
    no_exception(app)
    assert ui.USER_MODEL_KEY not in app.session_state


def _npz(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images)
    return buf.getvalue()


def test_an_uploaded_ood_set_joins_every_page_and_can_be_removed(app, default_experiment):
    from ood_core.data.registry import OOD_SETS

    white = np.full((40, 12, 12), 255, dtype=np.uint8)  # blank white squares: far from any digit
    ood_uploader = next(u for u in app.file_uploader if u.label.startswith("OOD images"))
    ood_uploader.upload("white.npz", _npz(white)).run()
    no_exception(app)
    (name,) = app.session_state[ui.USER_OOD_KEY]
    assert name.startswith("upload-white-") and OOD_SETS[name].kind == "natural"
    assert any(f"Added **{name}**" in s.value for s in app.success)
    exp = default_experiment.with_ood_sets([name])
    assert name not in default_experiment.outputs  # the shared experiment is not changed
    # a fifth of the ID test size, and no more than the 40 images uploaded; white pixels, normalised alike
    assert len(exp.outputs[name]) == min(40, round(0.2 * len(exp.bench.test)))
    np.testing.assert_allclose(exp.bench.to_pixels(exp.bench.ood[name].x), 1.0, atol=1e-6)
    scores = app.switch_page("pages/scores.py").run()
    no_exception(scores)
    assert name in scores.multiselect(key="scores-sets").options
    scores.multiselect(key="scores-sets").set_value(["gaussian", name]).run()
    no_exception(scores)
    sc = exp.score(exp.fit_detector("msp"))
    expected = metrics.all_metrics(sc["test"], sc[name])
    assert scores.dataframe[0].value.loc[name, "AUROC ↑"] == pytest.approx(100 * expected.auroc)
    at = scores.switch_page("pages/experiment.py").run()
    next(b for b in at.button if b.label == "Remove").click().run()
    no_exception(at)
    assert at.session_state[ui.USER_OOD_KEY] == []
    assert name not in at.switch_page("pages/scores.py").run().multiselect(key="scores-sets").options


def test_an_ood_upload_that_is_not_images_says_so_and_keeps_the_experiment(app):
    ood_uploader = next(u for u in app.file_uploader if u.label.startswith("OOD images"))
    ood_uploader.upload("bad.npz", b"not an npz at all").run()
    no_exception(app)
    assert any(e.value.startswith("bad.npz cannot be used:") for e in app.error), [e.value for e in app.error]
    assert ui.USER_OOD_KEY not in app.session_state or not app.session_state[ui.USER_OOD_KEY]
    assert any(m.label == "ID test accuracy" for m in app.metric)  # the experiment is still there


def test_upload_handler_directly():
    with pytest.raises(ValueError, match="empty"):
        ui.load_uploaded_model(b"", Spec())
    with pytest.raises(ValueError, match="not a loadable PyTorch checkpoint"):
        ui.load_uploaded_model(b"\x00garbage", Spec())


# --- Scores page -----------------------------------------------------------------------------------

def test_scores_page_draws_histogram_roc_pr_with_expected_traces(scores, default_experiment):
    no_exception(scores)
    sets = scores.multiselect(key="scores-sets").value
    assert sets == ["rotated", "gaussian"]
    hist, roc, pr = figures_of(scores)
    assert [t for t, _ in traces(hist)] == ["bar"] * 3
    assert traces(hist)[0][1].startswith("ID (test)")
    assert [n.split(" (")[0] for _, n in traces(hist)[1:]] == sets
    assert [n.split(" (")[0] for _, n in traces(roc)] == [*sets, "chance"]
    assert len(traces(pr)) == 2 * len(sets)
    assert ui.reference_line("msp") in [c.value for c in scores.caption]  # the full reference, title linked
    # the threshold line starts where 95% of ID test scores are kept
    id_msp = default_experiment.score(default_experiment.fit_detector("msp"), ["test"])["test"]
    t95 = metrics.threshold_at_tpr(id_msp, 0.95)
    assert any(math.isclose(s["x0"], t95, rel_tol=1e-6) for s in hist["layout"]["shapes"])


def test_scores_page_metrics_match_the_library_and_have_tooltips(scores, default_experiment):
    table = scores.dataframe[0].value
    exp = default_experiment
    sc = exp.score(exp.fit_detector("msp"))
    for ood in ("rotated", "gaussian"):
        expected = metrics.all_metrics(sc["test"], sc[ood])
        assert table.loc[ood, "AUROC ↑"] == pytest.approx(100 * expected.auroc)
        assert table.loc[ood, "FPR@95TPR ↓"] == pytest.approx(100 * expected.fpr95)
    acc = next(m for m in scores.metric if m.label == "ID test accuracy")
    assert acc.help == metrics.DEFINITIONS["id_accuracy"]
    assert percent(acc.value) >= 97.0
    cfg = ui.metric_column_config()
    assert cfg["FPR@95TPR ↓"]["help"] == metrics.DEFINITIONS["fpr95"]
    # confusion counts at the default threshold keep at least 95% of ID
    counts = scores.dataframe[1].value
    assert list(counts.columns) == ["ID kept", "ID flagged", "OOD missed", "OOD caught"]
    kept, flagged = counts.loc["rotated", "ID kept"], counts.loc["rotated", "ID flagged"]
    assert kept + flagged == len(sc["test"]) and kept / (kept + flagged) >= 0.95


def test_open_set_recognition_adds_oscr_to_the_table_and_draws_its_curve(default_experiment):
    from ood_core import pipeline
    from ood_core.spec import TrainConfig

    spec = Spec(setting="osr", training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    pipeline.prepare(spec, device="cpu")  # trained first (the pages' training job has tests of its own)
    at.run()
    no_exception(at)
    experiment_acc = next(m for m in at.metric if m.label == "Closed-set accuracy").value  # known classes only
    assert f"**Closed-set accuracy:** {experiment_acc}" in " ".join(m.value for m in at.sidebar.markdown)
    at.switch_page("pages/scores.py").run()
    no_exception(at)
    assert at.multiselect(key="scores-sets").value == ["unknown", "rotated"]
    exp = pipeline.prepare(spec, device="cpu")  # cached by the app's run
    sc = exp.score(exp.fit_detector("msp"))
    correct = exp.outputs["test"].logits.argmax(1) == exp.outputs["test"].labels
    table = at.dataframe[0].value
    for ood in ("unknown", "rotated"):
        assert table.loc[ood, "OSCR ↑"] == pytest.approx(100 * metrics.oscr(sc["test"], correct, sc[ood]))
        assert table.loc[ood, "OSCR ↑"] <= 100 * correct.mean() + 1e-9
    oscr_fig = next(f for f in figures_of(at) if f["layout"]["title"]["text"].startswith("Open-set classification"))
    assert [n.split(" (")[0] for _, n in traces(oscr_fig)] == ["unknown", "rotated"]
    ceiling = [s for s in oscr_fig["layout"]["shapes"] if s["y0"] == s["y1"]]
    assert ceiling and ceiling[0]["y0"] == pytest.approx(correct.mean())  # the closed-set accuracy line
    assert ui.OSCR_COLUMN in ui.metric_column_config()
    acc = next(m for m in at.metric if m.label == "Closed-set accuracy")
    assert acc.value == experiment_acc and percent(acc.value) == pytest.approx(100 * correct.mean(), abs=0.05)


def test_outside_open_set_recognition_there_is_no_oscr(scores):
    assert "OSCR ↑" not in scores.dataframe[0].value.columns
    assert not any(f["layout"]["title"]["text"].startswith("Open-set") for f in figures_of(scores))


def test_changing_a_parameter_rescores(scores, default_experiment):
    scores.selectbox(key="scores-detector").set_value("energy").run()
    no_exception(scores)
    before = scores.dataframe[0].value.copy()
    slider = scores.select_slider(key="param-energy-temperature")
    assert slider.value == 1.0 and "10" in slider.options  # options are shown formatted
    slider.set_value(10.0).run()
    no_exception(scores)
    after = scores.dataframe[0].value
    assert not np.allclose(before.values, after.values)
    exp = default_experiment
    sc = exp.score(exp.fit_detector("energy", {"temperature": 10.0}))
    assert after.loc["rotated", "AUROC ↑"] == pytest.approx(100 * metrics.auroc(sc["test"], sc["rotated"]))


def test_a_parameter_spanning_decades_is_picked_from_log_spaced_values(scores, default_experiment):
    # NCI's alpha (0 to 10, default 1e-4): a select slider of 0 and five values a decade, not 100,000 steps of 1e-4
    scores.selectbox(key="scores-detector").set_value("nci").run()
    no_exception(scores)
    slider = scores.select_slider(key="param-nci-alpha")
    assert slider.value == 1e-4 and slider.options[:3] == ["0", "0.0001", "0.00016"] and "0.01" in slider.options
    slider.set_value(0.01).run()
    no_exception(scores)
    exp = default_experiment
    sc = exp.score(exp.fit_detector("nci", {"alpha": 0.01}))
    auroc = scores.dataframe[0].value.loc["rotated", "AUROC ↑"]
    assert auroc == pytest.approx(100 * metrics.auroc(sc["test"], sc["rotated"]))


def test_a_capped_detector_says_how_many_training_features_it_was_fit_on(scores, default_experiment):
    scores.selectbox(key="scores-detector").set_value("ocsvm").run()
    no_exception(scores)
    n = len(default_experiment.outputs["train"])  # under OC-SVM's max_fit: all of them
    assert any(f"Fit on all {n:,} ID training features" in c.value for c in scores.caption)


def test_threshold_slider_updates_the_counts(scores):
    slider = scores.slider(key=next(s.key for s in scores.slider if s.key.startswith("threshold-")))
    slider.set_value(slider.max).run()
    no_exception(scores)
    counts = scores.dataframe[1].value
    assert (counts["ID flagged"] == 0).all() and (counts["OOD caught"] == 0).all()


def test_no_ood_set_chosen_shows_a_hint(scores):
    scores.multiselect(key="scores-sets").set_value([]).run()
    no_exception(scores)
    assert any("Pick at least one OOD set" in i.value for i in scores.info)
    assert not scores.get("plotly_chart")


class _Broken(Detector):
    """A detector that fails on purpose: NaN scores or an exception while fitting."""

    name, title, family = "broken_for_test", "Broken (test only)", "output"
    latex = r"S(x) = \mathrm{NaN}"
    params = {"mode": Param("nan", kind="choice", choices=("nan", "raise"), help="how to fail")}

    def _fit(self, ctx):
        if self.mode == "raise":
            raise np.linalg.LinAlgError("singular covariance (on purpose)")

    def _score(self, out):
        return np.full(len(out), np.nan)


@pytest.fixture
def broken_detector():
    REGISTRY[_Broken.name] = _Broken
    yield _Broken.name
    del REGISTRY[_Broken.name]


def test_a_failing_detector_shows_an_error_and_the_page_stays_usable(broken_detector, scores):
    scores.selectbox(key="scores-detector").set_value(broken_detector).run()
    no_exception(scores)
    assert any("NaN or infinite" in e.value for e in scores.error)
    scores.selectbox(key=f"param-{broken_detector}-mode").set_value("raise").run()  # a choice param widget
    no_exception(scores)
    assert any("singular covariance" in e.value for e in scores.error)
    scores.selectbox(key="scores-detector").set_value("msp").run()  # back to a working one
    no_exception(scores)
    assert not scores.error and len(figures_of(scores)) == 3


# --- pure helpers ----------------------------------------------------------------------------------

def test_umap_warmup_waits_its_delay_unless_someone_needs_it_now(monkeypatch):
    import time as _time

    calls = []
    monkeypatch.setattr(ui.embedding, "warm_umap", lambda: calls.append(_time.perf_counter()))
    w = ui._UmapWarmup(delay=60.0)
    _time.sleep(0.2)
    assert calls == [] and w.thread.is_alive()  # still waiting: the first page is being drawn
    t0 = _time.perf_counter()
    w.join()  # the Embeddings page needs UMAP now
    assert len(calls) == 1 and calls[0] - t0 < 5.0 and not w.thread.is_alive()
    monkeypatch.setattr(ui.embedding, "warm_umap", lambda: (_ for _ in ()).throw(RuntimeError("no numba")))
    ui._UmapWarmup(delay=0.0).join()  # a failing warm-up is only a lost optimisation, never an error


def test_the_pages_directory_workaround_still_matches_streamlit():
    """pages/_support.py switches Streamlit's v1 `pages/` mode off (`_leave_pages_directory_mode`) so that a first
    visit straight to /scores runs app.py's st.navigation. That relies on private Streamlit internals: if an
    upgrade changes them, this test fails loudly (the browser test's first visit to /scores checks the behaviour)."""
    import inspect

    import streamlit
    from streamlit.commands import navigation
    from streamlit.runtime import pages_manager
    from streamlit.runtime.scriptrunner import script_runner

    why = (f"Streamlit {streamlit.__version__} changed the internals behind pages/_support.py's "
           "_leave_pages_directory_mode; re-check how it treats a pages/ folder beside app.py")
    assert hasattr(pages_manager.PagesManager, "uses_pages_directory"), why
    assert 'main_script_parent / "pages"' in inspect.getsource(pages_manager.PagesManager.__init__), why
    assert "if PagesManager.uses_pages_directory:" in inspect.getsource(script_runner), why
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation), why


def test_shared_mode_bounds_the_experiment_form(default_experiment, monkeypatch):
    monkeypatch.setenv("OOD_EXPLORER_SHARED", "1")
    at = AppTest.from_file(APP, default_timeout=120).run()
    no_exception(at)
    epochs = next(n for n in at.number_input if n.label == "Epochs")
    batch = next(n for n in at.number_input if n.label == "Batch size")
    assert epochs.proto.max == 60 and batch.proto.min == 16
    assert "This server is shared" in epochs.help
    from pages import _support as ui

    with pytest.raises(ValueError, match="at most 60 epochs per training, you asked for 500"):
        ui.make_spec(Spec(), "digits", 0, 500, 3e-3, 64)


def test_a_one_class_training_reports_the_epochs_it_trained_not_the_classifier_field(land):
    # Deep SVDD trains its own SVDD_HP epochs (15), whatever the spec's classifier epochs (30 by default)
    from ood_core.models.oneclass import SVDD_HP

    spec = Spec(setting="nd", model="deep_svdd", normal_class=6)
    assert spec.training.epochs != SVDD_HP["epochs"]
    checkpoint_path(spec).unlink(missing_ok=True)  # cold, whatever ran before
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["spec"] = spec
    at.run()
    next(b for b in at.button if b.label == "Train / load model").click().run()
    land(at)
    no_exception(at)
    assert any(f"Trained a new model: {SVDD_HP['epochs']} epochs in" in s.value for s in at.success), \
        [s.value for s in at.success]


def test_one_class_pages_say_what_they_report_instead_of_an_empty_accuracy(default_experiment):
    from ood_core import pipeline
    from ood_core.spec import TrainConfig

    spec = Spec(setting="nd", model="deep_svdd", normal_class=3, training=TrainConfig(epochs=1))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    pipeline.prepare(spec, device="cpu")  # trained first (the pages' training job has tests of its own)
    at.run()
    no_exception(at)
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "**Seed:** 0" in side and "Epochs" not in side and "accuracy" not in side  # nor in the sidebar
    note = ui.no_accuracy_note(spec)
    assert "class 3" in note and "novel" in note and "no classifier" in note
    for page in (None, "pages/scores.py"):  # the Experiment page, then Scores
        if page:
            at.switch_page(page).run()
            no_exception(at)
        assert not any("accuracy" in m.label for m in at.metric)  # no big empty "ID test accuracy —"
        assert note in [c.value for c in at.caption]
    ad = ui.no_accuracy_note(Spec(setting="ad", model="deep_svdd", contamination=0.1))
    assert "anomalous" in ad and "10%" in ad


def test_scores_page_explains_below_chance_and_knn_with_k_above_a_class(scores, default_experiment):
    from ood_core import report

    exp = default_experiment
    sets = scores.multiselect(key="scores-sets").value

    def notes(name, params):
        sc = exp.score(exp.fit_detector(name, params))
        ctx = report.explain_context(exp, name, params)
        return [n for o in sets for n in report.explain_result(name, "ood", sc["test"], sc[o],
                                                               metrics.auroc(sc["test"], sc[o]), {**ctx, "ood_set": o})]

    expected = notes("msp", {})
    # whether MSP ranks Gaussian noise the wrong way depends on the trained weights: recompute it on this model
    sc = exp.score(exp.fit_detector("msp"))
    below = metrics.auroc(sc["test"], sc["gaussian"]) < 0.5
    assert below == any("below 50% on gaussian: the detector ranks the wrong way" in n for n in expected)
    shown = " ".join(i.value for i in scores.info)
    assert all(n in shown for n in expected)
    scores.selectbox(key="scores-detector").set_value("knn").run()
    scores.select_slider(key="param-knn-k").set_value(200).run()
    no_exception(scores)
    expected = notes("knn", {"k": 200})
    smallest = int(np.bincount(exp.outputs["train"].labels).min())
    assert smallest < 200 and any(f"k = 200 is larger than the smallest ID class's training count (n = {smallest})" in n
                                  for n in expected)
    shown = " ".join(i.value for i in scores.info)
    assert all(n in shown for n in expected)
    scores.select_slider(key="param-knn-k").set_value(10).run()  # k below every class: no k note
    assert "is larger than the smallest ID class" not in " ".join(i.value for i in scores.info)
    scores.selectbox(key="scores-detector").set_value("dice").run()
    no_exception(scores)
    # how many units are dead depends on the trained weights: recount them on this model
    dead = int(report.dead_units(exp.outputs["train"].features).sum())
    expected = notes("dice", {})
    if dead:
        assert any(f"{dead} of the 128 penultimate units are dead" in n for n in expected)
    else:
        assert not any("penultimate units are dead" in n for n in expected)
    assert all(n in " ".join(i.value for i in scores.info) for n in expected)


def test_rmd_in_novelty_detection_is_explained_as_carrying_no_information(default_experiment):
    from ood_core import pipeline
    from ood_core.spec import TrainConfig

    spec = Spec(setting="nd", model="deep_svdd", normal_class=3, training=TrainConfig(epochs=1))
    pipeline.prepare(spec, device="cpu")  # trained first: alone, this test would otherwise see the training job
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    at.run().switch_page("pages/scores.py").run()
    at.selectbox(key="scores-detector").set_value("rmd").run()
    no_exception(at)
    assert (at.dataframe[0].value["AUROC ↑"] == 50.0).all()
    shown = " ".join(i.value for i in at.info)
    assert "carries no information in this setting" in shown and "same Gaussian" in shown


def test_a_link_with_query_parameters_opens_that_experiment(default_experiment):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["seed"] = "3"
    at.query_params["epochs"] = "2"
    at.run()
    no_exception(at)
    spec = at.session_state[ui.SPEC_KEY]
    assert (spec.seed, spec.training.epochs, spec.setting) == (3, 2, "ood")
    assert "**Seed:** 3 · **Epochs:** 2" in " ".join(m.value for m in at.sidebar.markdown)
    # the URL keeps describing the experiment, so a reload or a copied link restores it
    assert {k: at.query_params[k] for k in ("setting", "seed", "epochs")} == {"setting": "ood", "seed": "3",
                                                                              "epochs": "2"}
    link = at.sidebar.code[0].value
    assert "setting=ood" in link and "seed=3" in link and "epochs=2" in link


def test_a_bad_link_falls_back_to_the_default_experiment_with_a_warning(default_experiment):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["seed"] = "three"
    at.run()
    no_exception(at)
    assert at.session_state[ui.SPEC_KEY] == Spec()
    assert any("seed='three' is not a valid int" in w.value for w in at.warning)


def test_spec_query_round_trip():
    from ood_core.spec import TrainConfig

    spec = Spec(setting="ad", model="deep_svdd", seed=4, normal_class=7, contamination=0.1,
                training=TrainConfig(epochs=5))
    q = spec.to_query()
    assert q == {"setting": "ad", "model": "deep_svdd", "seed": "4", "epochs": "5", "normal": "7",
                 "contamination": "0.1"}
    assert Spec.from_query(q) == spec and Spec.from_query({}) == Spec() and Spec().to_query() == {"setting": "ood"}
    assert "known" not in Spec(setting="ood", known_classes=4).to_query()  # a field that does not matter here
    with pytest.raises(ValueError, match="unknown setting 'x'"):
        Spec.from_query({"setting": "x"})


def test_a_link_restores_the_scores_pages_choices(default_experiment):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"detector": "energy", "sets": "uniform,blobs", "p.temperature": "2"})
    at.run()
    at.switch_page("pages/scores.py")
    at.query_params.update({"detector": "energy", "sets": "uniform,blobs", "p.temperature": "2"})
    at.run()
    no_exception(at)
    assert at.selectbox(key="scores-detector").value == "energy"
    assert at.multiselect(key="scores-sets").value == ["uniform", "blobs"]
    assert at.select_slider(key="param-energy-temperature").value == 2.0
    # the metrics shown are those of energy at T = 2 on the two sets the link named
    scores = default_experiment.score(default_experiment.fit_detector("energy", {"temperature": 2.0}))
    table = at.dataframe[0].value
    assert list(table.index) == ["uniform", "blobs"]
    assert table.loc["blobs", "AUROC ↑"] == pytest.approx(100 * metrics.auroc(scores["test"], scores["blobs"]))
    # a choice made on the page goes back into the URL; another detector's parameters leave it
    at.selectbox(key="scores-detector").set_value("msp").run()
    assert at.query_params["detector"] == "msp" and "p.temperature" not in at.query_params
    assert at.query_params["sets"] == "uniform,blobs"


# --- long work as jobs on the Scores page ------------------------------------------------------------

class _Gated(Detector):
    """A network-running detector (test only) whose fit waits for the test's gate, checking for a cancel meanwhile;
    its score is the negative max logit (a known answer)."""

    name, title, family = "gated_for_test", "Gated (test only)", "output"
    latex = r"S(x) = -\max_c f_c(x)"
    runs_network = True
    gate = None  # threading.Event, set by the fixture
    fits: list = []

    def _fit(self, ctx):
        type(self).fits.append("started")
        while not self.gate.wait(0.01):
            ctx.check_cancelled()
        ctx.report(1.0, "gate open")

    def _score(self, out):
        return -out.logits.max(axis=1)


@pytest.fixture
def gated_detector(fresh_runner):
    import threading

    _Gated.gate, _Gated.fits = threading.Event(), []
    REGISTRY[_Gated.name] = _Gated
    yield _Gated
    _Gated.gate.set()
    del REGISTRY[_Gated.name]


def _job_buttons(at: AppTest, prefix: str) -> list:
    return [b for b in at.button if (b.key or "").startswith(prefix)]


def test_a_slow_detector_runs_as_a_job_the_page_stays_usable_and_cancel_keeps_nothing(gated_detector, scores,
                                                                                       fresh_runner,
                                                                                       default_experiment):
    assert ui.detector_label(gated_detector.name).endswith(ui.SLOW_MARK)  # marked slow where it is picked
    assert ui.SLOW_MARK in scores.selectbox(key="scores-detector").help
    scores.selectbox(key="scores-detector").set_value(gated_detector.name).run()
    no_exception(scores)
    (job,) = fresh_runner.jobs()
    assert job.state == "running" and job.title == "Scoring with Gated (test only)"
    assert len(scores.get("progress")) == 1 and len(_job_buttons(scores, "job-cancel-")) == 1
    assert not scores.dataframe and not scores.get("plotly_chart")  # no result yet, and no spinner blocking
    # the page stays usable: another widget reruns it while the job runs
    scores.multiselect(key="scores-sets").set_value(["gaussian"]).run()
    no_exception(scores)
    assert scores.multiselect(key="scores-sets").value == ["gaussian"] and scores.query_params["sets"] == "gaussian"
    assert job.state == "running" and len(scores.get("progress")) == 1 and fresh_runner.jobs() == [job]
    # cancel: the work stops at its next check and nothing is kept
    _job_buttons(scores, "job-cancel-")[0].click().run()
    assert job.wait(60) and job.state == "cancelled"
    scores.run()
    no_exception(scores)
    assert fresh_runner.result(job.key) is None and not scores.dataframe and not scores.get("progress")
    assert any("cancelled" in i.value and "nothing of it was kept" in i.value for i in scores.info)
    # nothing was cached: running it again fits again, and then shows the library's numbers
    gated_detector.gate.set()
    again = _job_buttons(scores, "job-start-")
    assert len(again) == 1 and again[0].label.startswith("Run again")
    again[0].click().run()
    (job2,) = fresh_runner.jobs()
    assert job2 is not job and job2.wait(60) and job2.state == "done"
    scores.run()
    no_exception(scores)
    assert gated_detector.fits == ["started", "started"]
    exp = default_experiment
    expected = exp.score(exp.fit_detector(gated_detector.name))  # a third fit, here
    gated_detector.fits.clear()
    table = scores.dataframe[0].value
    assert list(table.index) == ["gaussian"]
    auroc = metrics.auroc(expected["test"], expected["gaussian"])
    assert table.loc["gaussian", "AUROC ↑"] == pytest.approx(100 * auroc)
    assert not scores.get("progress")
    # a finished job is never paid for twice: another session asking for it gets the kept result
    other = AppTest.from_file(APP, default_timeout=120)
    other.query_params.update({"detector": gated_detector.name, "sets": "gaussian"})
    other.run().switch_page("pages/scores.py")
    other.query_params.update({"detector": gated_detector.name, "sets": "gaussian"})
    other.run()
    no_exception(other)
    assert gated_detector.fits == [] and len(fresh_runner.jobs()) == 1
    assert other.dataframe[0].value.loc["gaussian", "AUROC ↑"] == table.loc["gaussian", "AUROC ↑"]


def test_the_deep_ensemble_says_how_long_first_then_trains_its_member_as_a_job(fresh_runner, default_experiment):
    from ood_core import pipeline
    from ood_core.models import checkpoint_path
    from ood_core.spec import TrainConfig

    spec = Spec(training=TrainConfig(epochs=1))
    pipeline.prepare(spec, device="cpu")  # its own model first: the job below trains the ensemble's member only
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["spec"] = spec
    at.run().switch_page("pages/scores.py").run()
    at.selectbox(key="scores-detector").set_value("ensemble").run()
    at.slider(key="param-ensemble-members").set_value(2).run()
    no_exception(at)
    assert not fresh_runner.jobs()  # it trains a network: nothing starts before the user says so
    (note,) = [i.value for i in at.info if "Deep ensemble" in i.value]
    assert "trains 1 network (ensemble member 2 of 2" in note
    (start,) = _job_buttons(at, "job-start-")
    assert start.label.startswith("Score with Deep ensemble (")
    start.click().run()
    no_exception(at)
    (job,) = fresh_runner.jobs()
    assert job.estimate.trains == 1 and job.wait(300) and job.state == "done", job.error
    at.run()
    no_exception(at)
    exp = pipeline.prepare(spec, device="cpu")  # cached by the app's run, as is the member the job trained
    assert checkpoint_path(exp.member_spec(1)).exists()
    sc = exp.score(exp.fit_detector("ensemble", {"members": 2}))
    table = at.dataframe[0].value
    for ood in table.index:
        assert table.loc[ood, "AUROC ↑"] == pytest.approx(100 * metrics.auroc(sc["test"], sc[ood]))
    # the member is cached now: the next ensemble of the same members starts at once, with no question asked
    at.selectbox(key="param-ensemble-measure").set_value("mutual_info").run()
    no_exception(at)
    assert len(fresh_runner.jobs()) == 2 and fresh_runner.jobs()[-1].estimate.trains == 0


def test_a_link_to_an_uncached_model_trains_it_when_quick_and_asks_first_when_slow(fresh_runner, land):
    from ood_core import estimates
    from ood_core.data import build_benchmark

    quick = Spec(seed=21, training=TrainConfig(epochs=1))
    checkpoint_path(quick).unlink(missing_ok=True)
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(quick.to_query())
    at.run()
    no_exception(at)
    (job,) = fresh_runner.jobs()  # quick (estimates.SLOW_S or less): it started on its own
    assert job.estimate == estimates.training(quick, len(build_benchmark(quick).train))
    assert job.estimate.seconds <= estimates.SLOW_S
    land(at)
    no_exception(at)
    assert checkpoint_path(quick).exists() and any(m.label == "ID test accuracy" for m in at.metric)
    slow = Spec(seed=21, training=TrainConfig(epochs=400))
    est = estimates.training(slow, len(build_benchmark(slow).train))
    assert est.seconds > estimates.SLOW_S
    other = AppTest.from_file(APP, default_timeout=300)
    other.query_params.update(slow.to_query())
    other.run()
    no_exception(other)
    assert len(fresh_runner.jobs()) <= 1  # nothing new started: it says how long first
    assert any("takes " + est.words() in i.value for i in other.info), [i.value for i in other.info]
    start = next(b for b in other.button if b.label.startswith("Train the model"))
    assert start.label == f"Train the model ({ui.jobs.duration_words(est.seconds)})"
    start.click().run()
    (job,) = [j for j in fresh_runner.jobs() if j.active]
    job.cancel()


class _TutorialNet(torch.nn.Module):
    """The PyTorch CIFAR-10 tutorial's network, for 1-channel 16 px images: conv-pool-conv-pool-fc-fc-fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 6, 3), torch.nn.Conv2d(6, 16, 3)
        self.pool = torch.nn.MaxPool2d(2, 2)
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(16 * 2 * 2, 60), torch.nn.Linear(60, 42), torch.nn.Linear(42, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_an_exported_program_and_a_torchvision_state_dict_run_on_every_page(app, default_experiment, land):
    import torchvision

    torch.manual_seed(0)
    net = _TutorialNet().eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 16, 16),)), buf)
    model_uploader(app).upload("tutorial.pt2", buf.getvalue()).run()
    land(app)
    no_exception(app)
    assert any("Using your model `tutorial.pt2`" in s.value for s in app.success), [e.value for e in app.error]
    x = torch.from_numpy(default_experiment.bench.test.x)
    with torch.no_grad():
        expected = (net(x).argmax(1).numpy() == default_experiment.bench.test.y).mean()
    acc = next(m for m in app.metric if m.label == "ID test accuracy")
    assert acc.value == f"{expected:.1%}"  # the uploaded network's own predictions
    for page in ("pages/scores.py", "pages/compare.py", "pages/sensitivity.py", "pages/methods.py",
                 "pages/embeddings.py", "pages/activations.py", "pages/explanations.py"):  # every page works on it
        at = app.switch_page(page).run()
        no_exception(at)
        assert at.get("plotly_chart") or at.get("imgs") or page.endswith("methods.py"), page
    app.switch_page("pages/experiment.py").run()
    next(b for b in app.button if b.label == "Use the trained model again").click().run()
    resnet = torchvision.models.resnet18(num_classes=10)
    buf = io.BytesIO()
    torch.save(resnet.state_dict(), buf)
    app.selectbox(key="upload-arch").set_value("resnet18").run()
    model_uploader(app).upload("resnet18.pt", buf.getvalue()).run()
    land(app)
    no_exception(app)
    assert any("Using your model `resnet18.pt`" in s.value for s in app.success), [e.value for e in app.error]
    assert any("resnet18" in c.value and "head" in c.value for c in app.caption)  # what the adapter found
    scores = app.switch_page("pages/scores.py").run()
    no_exception(scores)
    assert scores.dataframe[0].value.shape[0] >= 1


def test_torchvision_weights_say_what_they_are_before_any_download(app):
    weights = app.text_input(key="pretrained-name")
    weights.set_value("ResNet18_Weights.IMAGENET1K_V1").run()
    no_exception(app)
    caption = next(c.value for c in app.caption if "ResNet18_Weights.IMAGENET1K_V1" in c.value)
    assert "resnet18" in caption and "11,689,512 parameters" in caption and "44.7 MB" in caption
    assert "1,000 classes" in caption
    # ImageNet's 1,000 classes are not the digits' 10: said, and nothing is offered to download
    assert any("give 1,000 classes" in w.value for w in app.warning)
    assert not [b for b in app.button if (b.key or "") == "use-pretrained"]
    app.text_input(key="pretrained-name").set_value("ResNet18_Weights.NOPE").run()
    no_exception(app)
    assert any("Torchvision has no weights named" in e.value for e in app.error)


def test_slider_format_uses_exponent_form_only_for_large_or_tiny_ranges():
    assert ui.slider_format(-3.2, 12.5) == "%.4g"
    assert ui.slider_format(0.001, 0.5) == "%.4g"
    assert ui.slider_format(0.0, 0.0) == "%.4g"
    assert ui.slider_format(1.2e7, 5.883e7) == "%.3e"  # printed as 58830000 with %.4g
    assert ui.slider_format(-2e5, 10.0) == "%.3e"
    assert ui.slider_format(1e-6, 1.2e-5) == "%.3e"
