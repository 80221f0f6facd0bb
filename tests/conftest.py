"""Shared fixtures. The model cache goes to a per-session temporary folder, never to data/cache."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# must be set before ood_core.models is imported anywhere (its default cache dir is read at import)
_CACHE = Path(tempfile.mkdtemp(prefix="ood-explorer-test-cache-"))
os.environ["OOD_EXPLORER_CACHE"] = str(_CACHE)
# training estimates from the registry's rates alone: the tests' trainings must not rescale the figures others check
os.environ["OOD_EXPLORER_RATES_ONLY"] = "1"


def tier_of(filename: str) -> str:
    """The tier a test file belongs to: browser, app (pages through AppTest) or unit (the library)."""
    if filename == "test_browser.py":
        return "browser"
    if filename == "test_app.py" or filename.startswith("test_pages_"):
        return "app"
    return "unit"


def pytest_unconfigure(config):
    """The session's model cache goes with the session: nothing is left in the temporary folder (it grew by up to
    60 MB a run)."""
    shutil.rmtree(_CACHE, ignore_errors=True)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two worker processes on two cores: one thread each (torch and BLAS), or each would run two and the four
    # threads would fight over the cores (with two each, a ResNet test took 40 s; 14 s in one process). Tests that
    # need more set it.
    # The variables reach the libraries loaded later (SciPy's BLAS, faiss) and the servers the tests start
    # (OOD_EXPLORER_THREADS: the app's own setting, ood_core.serving, which its pages apply to the process)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OOD_EXPLORER_THREADS"):
        os.environ[var] = "1"
    import numpy  # noqa: F401  (its BLAS loaded, so that threadpool_limits reaches it)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # process-wide (not as a context manager), as ood_core.serving sets it

# under `make test`'s worker processes (pytest-xdist, a file at a time, in this order: --no-loadscope-reorder), the
# longest files go first: the browser tests (about 3 minutes on one worker), then the pages, then the many short
# library files that even out the end
WORKER_ORDER = {"browser": 0, "app": 1, "unit": 2}


def pytest_collection_modifyitems(config, items):
    """Mark every test with its file's tier, so `-m unit` (make test-fast) or `-m app` selects a tier; in worker
    processes, order the files by tier (stable: a file's tests keep their order)."""
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item.path.name)))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: WORKER_ORDER[tier_of(item.path.name)])


@pytest.fixture(scope="module")
def one_thread():
    """Small arrays: one thread (torch and BLAS) is faster, and far faster on a shared, busy machine.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`; restored after the module.
    """
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _CACHE


@pytest.fixture(scope="session")
def default_experiment(cache_dir):
    """The default experiment (digits, small CNN, seed 0), trained once per test session on the CPU."""
    from ood_core import Spec, pipeline

    return pipeline.prepare(Spec(), cache_dir=cache_dir, device="cpu")


@pytest.fixture
def fresh_runner(monkeypatch):
    """A job runner (ood_core.jobs) of the test's own, so the pages see no job of another test; what is still
    running at the end is cancelled and waited for."""
    from ood_core import jobs

    runner = jobs.JobRunner(slots=2, poll_s=0.01)
    monkeypatch.setattr(jobs, "_runner", runner)
    yield runner
    for job in runner.jobs():
        job.cancel()
        job.wait(120)


@pytest.fixture
def land(fresh_runner):
    """land(at): wait until every job of the test's runner has finished, then rerun the AppTest (the page picks up
    the results)."""
    def wait_and_rerun(at, timeout: float = 300):
        for job in fresh_runner.jobs():
            assert job.wait(timeout), f"job {job.title!r} did not finish"
        return at.run()
    return wait_and_rerun


@pytest.fixture
def ready():
    """ready(at): run the AppTest; if that started jobs (the experiment's training), wait for them and run it again,
    so the page shows the prepared experiment. Returns the AppTest."""
    def run(at, timeout: float = 300):
        from ood_core import jobs

        at.run()
        pending = [j for j in jobs.runner().jobs() if j.active]
        for job in pending:
            assert job.wait(timeout), f"job {job.title!r} did not finish"
        return at.run() if pending else at
    return run
