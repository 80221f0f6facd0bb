"""Long work as jobs (ood_core.jobs): states, the result kept by key, cancellation that keeps nothing, the bound on
jobs at once; and the cancellable work itself (training, the deep ensemble's members, the protocols)."""
from __future__ import annotations

import threading

import numpy as np
import torch
import pytest

from ood_core import jobs, serving
from ood_core.jobs import CANCELLED, DONE, FAILED, RUNNING, Cancelled, Estimate, JobRunner

pytestmark = pytest.mark.usefixtures("one_thread")

WAIT = 60  # seconds: a bound against hanging, never a timing assertion


def gated(gate: threading.Event, started: threading.Event | None = None, value=42, steps: int = 4):
    """Work of `steps` units that waits for `gate` before each one, checking cancel between units."""
    def fn(progress, cancel):
        if started is not None:
            started.set()
        for i in range(steps):
            while not gate.wait(0.01):
                jobs.check_cancelled(cancel)
            jobs.check_cancelled(cancel)
            progress((i + 1) / steps, f"unit {i + 1} of {steps}")
        return value
    return fn


def test_a_job_runs_reports_progress_and_keeps_its_result():
    r = JobRunner(slots=1)
    gate, started = threading.Event(), threading.Event()
    job = r.submit("k", gated(gate, started), Estimate(240, "trains 5 networks"), title="ensemble")
    assert started.wait(WAIT)
    assert job.state == RUNNING and job.active and r.result("k") is None
    assert job.estimate.words() == "about 4 min: trains 5 networks"
    gate.set()
    assert job.wait(WAIT)
    assert job.state == DONE and job.progress == 1.0 and job.message == "unit 4 of 4"
    assert r.result("k") == 42 and not job.error


def test_a_finished_job_is_never_computed_twice():
    r = JobRunner(slots=2)
    calls = []

    def fn(progress, cancel):
        calls.append(1)
        return {"scores": np.arange(3)}

    first = r.submit("same", fn)
    assert first.wait(WAIT)
    second = r.submit("same", fn)
    assert second is first and len(calls) == 1
    np.testing.assert_array_equal(r.result("same")["scores"], [0, 1, 2])
    r.submit("other", fn).wait(WAIT)  # another key is another computation
    assert len(calls) == 2


def test_cancel_stops_the_work_and_keeps_no_result():
    r = JobRunner(slots=1)
    gate, started = threading.Event(), threading.Event()
    job = r.submit("k", gated(gate, started))
    assert started.wait(WAIT)
    job.cancel()
    assert job.wait(WAIT)
    assert job.state == CANCELLED and job.result is None and r.result("k") is None
    gate.set()
    again = r.submit("k", gated(gate))  # asking again after a cancel starts afresh
    assert again is not job and again.wait(WAIT) and r.result("k") == 42


def test_a_failure_keeps_its_message_and_the_runner_goes_on():
    r = JobRunner(slots=1)

    def fails(progress, cancel):
        progress(0.5, "half way")
        raise np.linalg.LinAlgError("singular covariance")

    job = r.submit("bad", fails)
    assert job.wait(WAIT)
    assert job.state == FAILED and job.error == "LinAlgError: singular covariance" and r.result("bad") is None
    assert job.progress == 0.5  # where it stopped
    assert r.submit("good", lambda p, c: "fine").wait(WAIT) and r.result("good") == "fine"


def test_at_most_slots_jobs_run_at_once_and_a_queued_one_can_be_cancelled():
    r = JobRunner(slots=1, poll_s=0.01)
    gate, started = threading.Event(), threading.Event()
    first = r.submit("first", gated(gate, started))
    assert started.wait(WAIT)
    second_started = threading.Event()
    second = r.submit("second", gated(gate, second_started))
    third = r.submit("third", gated(gate))
    while second.place is None or third.place is None:
        assert first.state == RUNNING
        threading.Event().wait(0.01)
    assert second.state == jobs.QUEUED and not second_started.is_set() and r.running == 1
    third.cancel()  # leaves the line without ever running
    assert third.wait(WAIT) and third.state == CANCELLED and third.started == third.finished_at
    gate.set()
    assert first.wait(WAIT) and second.wait(WAIT)
    assert (first.state, second.state) == (DONE, DONE) and r.running == 0 and r.queued == 0


def test_two_slots_run_two_jobs_together():
    r = JobRunner(slots=2)
    both = threading.Barrier(2, timeout=WAIT)
    a, b = (r.submit(k, lambda p, c: both.wait()) for k in ("a", "b"))  # BrokenBarrierError unless both run
    assert a.wait(WAIT) and b.wait(WAIT) and a.state == b.state == DONE


def test_old_finished_jobs_are_forgotten_but_active_ones_never():
    r = JobRunner(slots=2, keep=2)
    gate = threading.Event()
    running = r.submit("running", gated(gate))
    for k in ("a", "b", "c"):
        r.submit(k, lambda p, c, k=k: k).wait(WAIT)
    kept = {j.key for j in r.jobs()}
    assert "running" in kept and "a" not in kept and len(kept) <= 3
    gate.set()
    assert running.wait(WAIT)


def test_cancelled_is_not_an_ordinary_exception():
    assert not issubclass(Cancelled, Exception)  # `except Exception` isolating a detector must not swallow it
    jobs.check_cancelled(None)
    ev = threading.Event()
    jobs.check_cancelled(ev)
    ev.set()
    with pytest.raises(Cancelled):
        jobs.check_cancelled(ev)


@pytest.mark.parametrize("seconds, words", [(0, "a few seconds"), (7.9, "a few seconds"), (13, "about 15 s"),
                                            (52, "about 50 s"), (58, "about 1 min"), (240, "about 4 min"),
                                            (3600, "about 1 h"), (4200, "about 1 h 10 min")])
def test_durations_in_words(seconds, words):
    assert jobs.duration_words(seconds) == words


def test_estimates_add_up():
    e = Estimate(100, "trains 2 networks", trains=2) + Estimate(20, "scores 1,404 images")
    assert e.seconds == 120 and e.trains == 2 and e.words() == "about 2 min: trains 2 networks; scores 1,404 images"


def test_the_process_runner_has_the_serving_slots(monkeypatch):
    monkeypatch.setenv("OOD_EXPLORER_JOBS", "3")
    assert serving.job_slots() == 3
    monkeypatch.delenv("OOD_EXPLORER_JOBS")
    monkeypatch.setenv("OOD_EXPLORER_TRAININGS", "2")
    assert serving.job_slots() == 2
    monkeypatch.setattr(jobs, "_runner", None)
    assert jobs.runner().slots == 2 and jobs.runner() is jobs.runner()


# --- the cancellable work -------------------------------------------------------------------------------

from ood_core import Spec, TrainConfig, estimates, pipeline, protocols  # noqa: E402
from ood_core.data import build_benchmark  # noqa: E402
from ood_core.models import checkpoint, checkpoint_path, get_model  # noqa: E402

# small and quick: 8 px digits, a few epochs of a few batches
SMALL = Spec(image_size=8, training=TrainConfig(epochs=3, batch_size=256))


@pytest.fixture(autouse=True)
def fresh_memory_cache(monkeypatch):
    monkeypatch.setattr(checkpoint, "_MEMORY_CACHE", {})


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def cancel_at(ev: threading.Event, when):
    """A training progress callback that sets `ev` once `when(progress)` is true."""
    def on_epoch(p):
        if when(p):
            ev.set()
    return on_epoch


def test_a_cancelled_training_saves_no_checkpoint_and_an_unused_cancel_changes_no_weight(tmp_path):
    bench = build_benchmark(SMALL, ood_sets=())
    ev, epochs = threading.Event(), []
    with pytest.raises(Cancelled):
        get_model(SMALL, bench, lambda p: (epochs.append(p.epoch), ev.set()), cache_dir=tmp_path, cancel=ev)
    assert epochs == [1]  # stopped at the first batch after the first epoch
    path = checkpoint_path(SMALL, tmp_path)
    assert not path.exists() and not list(path.parent.glob("*.tmp")) and not checkpoint._MEMORY_CACHE
    with_event = get_model(SMALL, bench, cache_dir=tmp_path, cancel=threading.Event())  # never set
    assert path.exists() and not with_event.from_cache
    other = tmp_path / "other"
    without = get_model(SMALL, bench, cache_dir=other)
    a, b = weights(with_event.model), weights(without.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cancelled_one_class_training_stops_after_its_epoch_and_saves_nothing(tmp_path):
    spec = Spec(setting="nd", model="autoencoder", image_size=8)
    bench = build_benchmark(spec, ood_sets=())
    ev, epochs = threading.Event(), []
    with pytest.raises(Cancelled):
        get_model(spec, bench, lambda p: (epochs.append(p.epoch), ev.set() if p.epoch == 2 else None),
                  cache_dir=tmp_path, cancel=ev)
    assert epochs == [1, 2] and not checkpoint_path(spec, tmp_path).exists()


@pytest.fixture
def small_exp(tmp_path):
    return pipeline.prepare(SMALL, cache_dir=tmp_path, device="cpu", ood_sets=("gaussian",))


def test_cancelling_an_ensemble_job_keeps_no_result_and_no_checkpoint_of_the_member_it_trained(small_exp, tmp_path):
    exp = small_exp
    r = JobRunner(slots=1)
    key = "scores ensemble members=3"
    seen = []

    def work(progress, cancel):
        def spy(f, m):
            seen.append(m)
            progress(f, m)
            if m.startswith("training ensemble member 3 of 3: epoch 1/"):
                cancel.set()  # as if the user pressed Cancel while member 3 trains
        return exp.fit_and_score("ensemble", {"members": 3}, progress=spy, cancel=cancel,
                                 fit_share=estimates.fit_share(exp, "ensemble", {"members": 3}))

    est = estimates.detector(exp, "ensemble", {"members": 3})
    assert est.trains == 2 and est.words().split(": ", 1)[1].startswith("trains 2 networks (ensemble members 2, 3 of 3")
    job = r.submit(key, work, est)
    assert job.wait(WAIT)
    assert job.state == CANCELLED and r.result(key) is None
    assert "training ensemble member 2 of 3: epoch 3/3" in seen  # member 2 finished whole ...
    assert checkpoint_path(exp.member_spec(1), tmp_path).exists()  # ... and stays cached
    assert not checkpoint_path(exp.member_spec(2), tmp_path).exists()  # the interrupted one left nothing
    assert not list(checkpoint_path(exp.member_spec(2), tmp_path).parent.glob("*.tmp"))
    assert estimates.members_to_train(exp, 3) == [2]  # a new estimate counts only what is left to train


def test_an_ensemble_job_gives_the_numbers_of_a_direct_fit_and_reports_its_members(small_exp):
    exp, messages = small_exp, []
    r = JobRunner(slots=1)
    job = r.submit("ens", lambda progress, cancel: exp.fit_and_score(
        "ensemble", {"members": 2}, progress=lambda f, m: (messages.append((f, m)), progress(f, m)), cancel=cancel))
    assert job.wait(WAIT) and job.state == DONE, job.error
    direct = exp.score(exp.fit_detector("ensemble", {"members": 2}))  # member 2 is cached now: same weights
    assert set(job.result) == {"test", "gaussian"}
    for s in direct:
        np.testing.assert_array_equal(job.result[s], direct[s])
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("training ensemble member 2 of 2: epoch") for _, m in messages)
    assert estimates.detector(exp, "ensemble", {"members": 2}).trains == 0


def test_cancel_between_scored_splits_and_detectors_is_never_an_error_row(small_exp):
    exp, ev = small_exp, threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        exp.fit_and_score("mc_dropout", {"passes": 2}, cancel=ev)
    with pytest.raises(Cancelled):
        pipeline.evaluate(exp, ["msp", "energy"], cancel=ev)
    rows, _ = pipeline.evaluate(exp, ["msp"], cancel=threading.Event())
    assert rows and all(r["error"] is None for r in rows)
    same = exp.fit_and_score("mc_dropout", {"passes": 2})
    direct = exp.score(exp.fit_detector("mc_dropout", {"passes": 2}))
    assert all(np.array_equal(same[s], direct[s]) for s in direct)


def test_a_cancelled_one_vs_all_protocol_returns_no_rows(tmp_path):
    base = Spec(setting="nd", model="deep_svdd", image_size=8)
    ev, seen = threading.Event(), []

    def on_progress(f, m):
        seen.append(m)
        if m.startswith("normal class 1"):
            ev.set()

    method = [("pixels", "knn", {"k": 1})]
    with pytest.raises(Cancelled):
        protocols.run_one_class(base, "nd", classes=[0, 1, 2], methods=method, cache_dir=tmp_path,
                                on_progress=on_progress, cancel=ev)
    assert not any(m.startswith("normal class 2") for m in seen)
    full = protocols.run_one_class(base, "nd", classes=[0, 1], methods=method, cache_dir=tmp_path,
                                   cancel=threading.Event())
    again = protocols.run_one_class(base, "nd", classes=[0, 1], methods=method, cache_dir=tmp_path)
    assert [r["auroc"] for r in full.rows] == [r["auroc"] for r in again.rows]


def test_one_vs_all_estimate_counts_the_models_not_yet_cached(tmp_path):
    base = Spec(setting="nd", model="deep_svdd", image_size=8)
    methods = [("autoencoder", "model_score", {}), ("autoencoder", "knn", {"k": 1}), ("pixels", "knn", {"k": 1})]
    before = estimates.one_class(base, "nd", 0.05, [0, 1], methods, train_size=107, cache_dir=tmp_path)
    assert before.trains == 2 and before.words().endswith("trains 2 one-class models, then scores 3 methods on "
                                                          "2 normal classes")
    protocols.run_one_class(base, "nd", classes=[0], methods=methods[:1], cache_dir=tmp_path)
    after = estimates.one_class(base, "nd", 0.05, [0, 1], methods, train_size=107, cache_dir=tmp_path)
    assert after.trains == 1 and after.seconds < before.seconds


def test_mc_dropout_runs_its_passes_on_a_private_copy_of_the_shared_network(small_exp, monkeypatch):
    """A job scoring MC dropout must not put dropout hooks on the model a page (or another job) runs meanwhile."""
    from ood_core.detectors import uncertainty

    exp, seen = small_exp, []
    real = uncertainty.mc_dropout_logits

    def spy(adapter, *args, **kwargs):
        seen.append(adapter)
        assert not exp.model._forward_hooks and not any(m._forward_hooks for m in exp.model.modules())
        plain = exp.adapter.forward(exp.outputs["test"].inputs[:16])[0]  # "another thread" using the shared model
        out = real(adapter, *args, **kwargs)
        np.testing.assert_array_equal(exp.adapter.forward(exp.outputs["test"].inputs[:16])[0], plain)
        return out

    monkeypatch.setattr(uncertainty, "mc_dropout_logits", spy)
    det = exp.fit_detector("mc_dropout", {"passes": 3})
    scores = det.score(exp.outputs["test"])
    assert seen and all(a.model is not exp.model for a in seen)
    a, b = weights(seen[0].model), weights(exp.model)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights, so the same numbers
    monkeypatch.setattr(uncertainty, "mc_dropout_logits", real)
    np.testing.assert_array_equal(det.score(exp.outputs["test"]), scores)
