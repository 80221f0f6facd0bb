"""One machine, many sessions: torch threads set once per server, a bounded training queue, and "shared" mode.

Shared (classroom) mode is switched on by the environment variable OOD_EXPLORER_SHARED=1. It caps what one
visitor may start (epochs, batch size, ensemble members), so nobody starts twenty CPU-minutes with one click,
and runs every request on one torch/BLAS thread, so twenty sessions share the cores instead of fighting for them.

    OOD_EXPLORER_SHARED=1        classroom limits (SHARED_LIMITS) and one thread per request
    OOD_EXPLORER_THREADS=N       torch and BLAS threads per request (default: 1 when shared, else every core)
    OOD_EXPLORER_TRAININGS=N     trainings at once (default: the number of cores); the others wait in line
    OOD_EXPLORER_JOBS=N          background jobs at once (ood_core.jobs; default: as many as trainings)
    OOD_EXPLORER_CACHE_MB=N      cap on the model cache; least recently used checkpoints go first (default: none)
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

_TRUE = ("1", "true", "yes", "on")


def shared_mode() -> bool:
    """Whether the server runs in shared (classroom) mode: OOD_EXPLORER_SHARED=1."""
    return os.environ.get("OOD_EXPLORER_SHARED", "").strip().lower() in _TRUE


def rates_only() -> bool:
    """Whether training estimates use the registry's rates alone, not corrected by the trainings timed on this
    machine (ood_core/timings.py): OOD_EXPLORER_RATES_ONLY=1 (the tests set it, for exact figures)."""
    return os.environ.get("OOD_EXPLORER_RATES_ONLY", "").strip().lower() in _TRUE


def _env_int(name: str, default: int, low: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def cores() -> int:
    return os.cpu_count() or 1


def request_threads() -> int:
    """torch/BLAS threads each request runs with: OOD_EXPLORER_THREADS, else 1 in shared mode, else every core."""
    return _env_int("OOD_EXPLORER_THREADS", 1 if shared_mode() else cores())


def training_slots() -> int:
    """How many trainings may run at once: OOD_EXPLORER_TRAININGS, else the number of cores."""
    return _env_int("OOD_EXPLORER_TRAININGS", cores())


def job_slots() -> int:
    """How many background jobs (ood_core.jobs: trainings, ensembles, protocols) run at once: OOD_EXPLORER_JOBS,
    else training_slots(). A job's own trainings still wait for the training queue."""
    return _env_int("OOD_EXPLORER_JOBS", training_slots())


def cache_cap_bytes() -> Optional[int]:
    """The model cache's size cap in bytes (OOD_EXPLORER_CACHE_MB), or None for no cap."""
    mb = _env_int("OOD_EXPLORER_CACHE_MB", 0, low=0)
    return mb * 2**20 if mb else None


@dataclass(frozen=True)
class SharedLimits:
    """What one visitor may ask for in shared mode (a 500-epoch, batch-1 training is about 20 CPU-minutes)."""

    max_epochs: int = 60
    min_batch_size: int = 16
    max_members: int = 5  # deep-ensemble members (each a full training)

    def check_training(self, epochs: int, batch_size: int) -> None:
        """ValueError with a message for the user when a training exceeds the limits."""
        if epochs > self.max_epochs:
            raise ValueError(f"this server is in shared (classroom) mode: at most {self.max_epochs} epochs per "
                             f"training, you asked for {epochs}")
        if batch_size < self.min_batch_size:
            raise ValueError(f"this server is in shared (classroom) mode: batch size at least {self.min_batch_size}, "
                             f"you asked for {batch_size}")


SHARED_LIMITS = SharedLimits()


def check_training_allowed(epochs: int, batch_size: int) -> None:
    """In shared mode, refuse a training beyond SHARED_LIMITS (ValueError); anything goes otherwise."""
    if shared_mode():
        SHARED_LIMITS.check_training(int(epochs), int(batch_size))


def check_detector_allowed(name: str, params: dict) -> None:
    """In shared mode, refuse a deep ensemble of more than SHARED_LIMITS.max_members members (each one a training)."""
    members = params.get("members")
    if shared_mode() and name == "ensemble" and members is not None and int(members) > SHARED_LIMITS.max_members:
        raise ValueError(f"this server is in shared (classroom) mode: at most {SHARED_LIMITS.max_members} ensemble "
                         f"members (each one is a full training), you asked for {members}")


_configured = False
_configure_lock = threading.Lock()


def configure_process() -> int:
    """Once per process: torch's intra-op threads and the BLAS pools set to request_threads(); returns that count.

    Threads started afterwards (each Streamlit script run is one) inherit torch's setting. Trainings still run
    with their own fixed count (models.reproducible.TRAIN_THREADS), so this never changes a number.
    """
    global _configured
    with _configure_lock:
        n = request_threads()
        if not _configured:
            import torch
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(n)
            threadpool_limits(limits=n)  # process-wide (not as a context manager): numpy's BLAS for the detectors
            _configured = True
        return n


class TrainingQueue:
    """At most `slots` trainings at once; the others wait in arrival order and can show their place in line."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"a training queue needs at least one slot, got {slots}")
        self.slots = slots
        self._cond = threading.Condition()
        self._running = 0
        self._line: list[object] = []

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._line)

    @contextlib.contextmanager
    def slot(self, on_wait: Optional[Callable[[int], None]] = None, poll_s: float = 0.5) -> Iterator[None]:
        """Hold a training slot for the body; while waiting, on_wait(place) is called (place 1 = next in line)."""
        ticket = object()
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._line[0] is ticket and self._running < self.slots:
                        self._line.pop(0)
                        self._running += 1
                        self._cond.notify_all()
                        break
                    place = self._line.index(ticket) + 1
                if on_wait is not None:
                    on_wait(place)  # outside the lock: it may draw on a page
                with self._cond:
                    self._cond.wait(timeout=poll_s)
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


_queue: Optional[TrainingQueue] = None


def training_queue() -> TrainingQueue:
    """The process's training queue (training_slots() slots), made on first use."""
    global _queue
    with _configure_lock:
        if _queue is None:
            _queue = TrainingQueue(training_slots())
        return _queue
