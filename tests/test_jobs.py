"""Long work as jobs (ood_core.jobs): states, the result kept by key, cancellation that keeps nothing, the bound on
jobs at once; and the cancellable work itself (training, the deep ensemble's members, the protocols)."""
from __future__ import annotations

import threading

import numpy as np
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
