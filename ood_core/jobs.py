"""Long work as jobs: run in a background thread, report progress, stop when cancelled, keep the result by key.

A job is a key (a string naming the computation), a function `fn(progress, cancel)` and an estimate. The function
reports `progress(fraction, message)` and checks `cancel` (a threading.Event) between units of work (training
epochs and batches, ensemble members, protocol splits and classes, scored splits) with `check_cancelled`, which
raises `Cancelled`. States: queued -> running -> done | failed | cancelled. The result of a done job is kept by
its key, so asking again returns it instead of computing it twice; a cancelled job keeps nothing (the work it
interrupted saved nothing either: a training that stops between epochs writes no checkpoint). At most `slots`
jobs run at once (serving.job_slots()); the others wait in arrival order, and a queued job can be cancelled too.

No Streamlit here: a page polls a job (pages/_support.py draws its progress bar and Cancel button); the CLI or a
notebook can run the same work directly, passing their own `cancel` event or none.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import serving

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

ProgressFn = Callable[[float, str], None]


class Cancelled(BaseException):
    """The work stopped because its job was cancelled.

    A BaseException (like KeyboardInterrupt), so the `except Exception` that isolates one failing detector from
    the others never mistakes a cancellation for a detector's error and carries on.
    """


def check_cancelled(cancel: Any) -> None:
    """Raise Cancelled when `cancel` (a threading.Event, or None for work that cannot be cancelled) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def duration_words(seconds: float) -> str:
    """A duration as people say it before waiting: 'a few seconds', 'about 15 s', 'about 4 min', 'about 1 h 10 min'."""
    s = max(0.0, float(seconds))
    if s < 8:
        return "a few seconds"
    if s < 55:
        return f"about {int(5 * round(s / 5))} s"
    if s < 3570:
        return f"about {max(1, int(round(s / 60)))} min"
    h, m = divmod(int(round(s / 60)), 60)
    return f"about {h} h" + (f" {m} min" if m else "")


@dataclass(frozen=True)
class Estimate:
    """How long a job will take and what it does, said before it starts: 'about 4 min: trains 5 networks'."""

    seconds: float
    what: str = ""
    trains: int = 0  # networks it trains (each then cached on disk)

    def words(self) -> str:
        return duration_words(self.seconds) + (f": {self.what}" if self.what else "")

    def __add__(self, other: "Estimate") -> "Estimate":
        what = "; ".join(w for w in (self.what, other.what) if w)
        return Estimate(self.seconds + other.seconds, what, self.trains + other.trains)


@dataclass(eq=False)
class Job:
    """One piece of long work and where it stands; read its fields from any thread."""

    key: str
    fn: Callable[[ProgressFn, threading.Event], Any] = field(repr=False)
    estimate: Estimate = field(default_factory=lambda: Estimate(0.0))
    title: str = ""
    state: str = QUEUED
    progress: float = 0.0  # 0..1, never moves back
    message: str = ""
    place: Optional[int] = None  # place in line while queued (1 = next)
    result: Any = field(default=None, repr=False)
    error: str = ""  # the failure, "Type: message", when state is failed
    submitted: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished_at: Optional[float] = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def report(self, fraction: float, message: str = "") -> None:
        """The work's progress callback: fraction done (clamped to [0, 1], never backwards) and what it does now."""
        if fraction is not None:
            self.progress = min(1.0, max(self.progress, float(fraction)))
        if message:
            self.message = message

    def cancel(self) -> None:
        """Ask the work to stop at its next check; a queued job never starts."""
        self._cancel.set()

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    @property
    def cancelling(self) -> bool:
        """Cancel was asked and the work has not stopped yet."""
        return self._cancel.is_set() and not self.finished

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def active(self) -> bool:
        return not self.finished

    def elapsed(self) -> float:
        """Seconds since it started running (0 while queued), up to when it finished."""
        if self.started is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job has finished (any final state); False if `timeout` passed first."""
        return self._done.wait(timeout)


class JobRunner:
    """Runs jobs in background threads, at most `slots` at once, and keeps finished jobs by key (the newest `keep`)."""

    def __init__(self, slots: int = 1, keep: int = 64, poll_s: float = 0.2):
        self.queue = serving.TrainingQueue(slots)  # first come, first served; a waiter knows its place
        self.keep = keep
        self.poll_s = poll_s
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self.queue.slots

    def submit(self, key: str, fn: Callable[[ProgressFn, threading.Event], Any],
               estimate: Optional[Estimate] = None, title: str = "") -> Job:
        """Start `fn` as the job `key`, or return the job already there: queued, running or done (its result is
        kept, never recomputed). A failed or cancelled job under the key is replaced by a fresh run."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state in (QUEUED, RUNNING, DONE):
                self._jobs.move_to_end(key)
                return job
            job = Job(key, fn, estimate or Estimate(0.0), title)
            self._jobs[key] = job
            self._trim()
        threading.Thread(target=self._run, args=(job,), name=f"job {title or key[:40]}", daemon=True).start()
        return job

    def _run(self, job: Job) -> None:
        def on_wait(place: int) -> None:
            job.place = place
            check_cancelled(job._cancel)  # a queued job can be cancelled: it leaves the line

        try:
            with self.queue.slot(on_wait, poll_s=self.poll_s):
                check_cancelled(job._cancel)
                job.place, job.started, job.state = None, time.time(), RUNNING
                result = job.fn(job.report, job._cancel)
            job.result, job.progress, job.state = result, 1.0, DONE
        except Cancelled:
            job.result, job.state = None, CANCELLED
        except Exception as e:  # the message is kept for the page; the traceback's frames are freed
            job.result, job.error, job.state = None, f"{type(e).__name__}: {e}", FAILED
            traceback.clear_frames(e.__traceback__)
        finally:
            job.place = None
            job.finished_at = time.time()
            if job.started is None:
                job.started = job.finished_at
            job._done.set()

    def _trim(self) -> None:
        """Forget the oldest finished jobs beyond `keep` (never an active one); call with the lock held."""
        extra = len(self._jobs) - self.keep
        for key in [k for k, j in self._jobs.items() if j.finished][:max(0, extra)]:
            del self._jobs[key]

    def get(self, key: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(key)

    def result(self, key: str) -> Any:
        """The result of the done job `key`, else None (unknown, still running, failed or cancelled)."""
        job = self.get(key)
        return job.result if job is not None and job.state == DONE else None

    def cancel(self, key: str) -> Optional[Job]:
        job = self.get(key)
        if job is not None:
            job.cancel()
        return job

    def forget(self, key: str) -> None:
        """Drop a finished job (and its result); an active one is cancelled first."""
        with self._lock:
            job = self._jobs.pop(key, None)
        if job is not None and job.active:
            job.cancel()

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    @property
    def running(self) -> int:
        return sum(j.state == RUNNING for j in self.jobs())

    @property
    def queued(self) -> int:
        return sum(j.state == QUEUED for j in self.jobs())


_runner: Optional[JobRunner] = None
_runner_lock = threading.Lock()


def runner() -> JobRunner:
    """The process's job runner (serving.job_slots() jobs at once), made on first use."""
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = JobRunner(serving.job_slots())
        return _runner
