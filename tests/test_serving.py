"""Sharing one machine: the bounded training queue, shared-mode limits, thread settings, the cache's size cap."""
from __future__ import annotations

import os
import threading
import time

import pytest

from ood_core import serving
from ood_core.models.checkpoint import enforce_cache_cap


def test_the_queue_runs_at_most_its_slots_and_shows_each_waiter_its_place():
    q = serving.TrainingQueue(1)
    running, peak, places, order = [0], [0], {}, []
    lock = threading.Lock()
    first_in = threading.Event()

    def job(i):
        def on_wait(place):
            places.setdefault(i, []).append(place)

        with q.slot(on_wait, poll_s=0.01):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                order.append(i)
            first_in.set()
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=job, args=(0,))]
    threads[0].start()
    first_in.wait(5)
    for i in (1, 2):  # join the line in this order, while job 0 holds the only slot
        threads.append(threading.Thread(target=job, args=(i,)))
        threads[-1].start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert peak[0] == 1 and order == [0, 1, 2]  # one at a time, first come first served
    assert places[1][0] == 1 and places[2][0] == 2  # job 2 saw itself second in line
    assert q.running == 0 and q.waiting == 0


def test_two_slots_run_two_at_once():
    q = serving.TrainingQueue(2)
    both = threading.Barrier(2, timeout=5)

    def job():
        with q.slot(poll_s=0.01):
            both.wait()  # raises BrokenBarrierError unless two jobs are inside together

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not both.broken


def test_a_waiter_that_gives_up_leaves_the_line():
    q = serving.TrainingQueue(1)

    def give_up(place):
        raise KeyboardInterrupt

    with q.slot():
        with pytest.raises(KeyboardInterrupt):
            with q.slot(give_up):
                pass
        assert q.waiting == 0
    with q.slot():  # the line is free again
        pass
    with pytest.raises(ValueError, match="at least one slot"):
        serving.TrainingQueue(0)


def test_shared_mode_limits_and_environment(monkeypatch):
    monkeypatch.delenv("OOD_EXPLORER_SHARED", raising=False)
    monkeypatch.delenv("OOD_EXPLORER_THREADS", raising=False)
    assert not serving.shared_mode()
    serving.check_training_allowed(500, 1)  # anything goes on a private server
    assert serving.request_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("OOD_EXPLORER_SHARED", "1")
    assert serving.shared_mode() and serving.request_threads() == 1
    with pytest.raises(ValueError, match="at most 60 epochs per training, you asked for 500"):
        serving.check_training_allowed(500, 64)
    with pytest.raises(ValueError, match="batch size at least 16, you asked for 1"):
        serving.check_training_allowed(30, 1)
    serving.check_training_allowed(60, 16)
    monkeypatch.setenv("OOD_EXPLORER_THREADS", "two")
    with pytest.raises(ValueError, match="OOD_EXPLORER_THREADS must be an integer"):
        serving.request_threads()
    monkeypatch.setenv("OOD_EXPLORER_TRAININGS", "0")
    with pytest.raises(ValueError, match="at least 1"):
        serving.training_slots()
    monkeypatch.setenv("OOD_EXPLORER_CACHE_MB", "3")
    assert serving.cache_cap_bytes() == 3 * 2**20


def test_the_cache_cap_removes_the_least_recently_used_checkpoints(tmp_path):
    now = time.time()
    for i, name in enumerate(["old.pt", "mid.pt", "new.pt", "just-written.pt"]):
        f = tmp_path / name
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - 100 + i, now - 100 + i))
    (tmp_path / "notes.txt").write_bytes(b"y" * 5000)  # not a checkpoint: never counted or removed
    os.utime(tmp_path / "just-written.pt", (now - 1000, now - 1000))  # oldest, but the one to keep
    removed = enforce_cache_cap(tmp_path, 2500, keep=tmp_path / "just-written.pt")
    assert sorted(p.name for p in removed) == ["mid.pt", "old.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["just-written.pt", "new.pt", "notes.txt"]
    assert enforce_cache_cap(tmp_path, None) == []


def test_get_model_waits_in_the_queue_and_keeps_the_cache_under_its_cap(tmp_path, monkeypatch):
    from ood_core import Spec
    from ood_core.data import build_benchmark
    from ood_core.models import checkpoint_path, get_model
    from ood_core.models.reproducible import TRAIN_THREADS

    specs = [Spec(setting="nd", model="pixels", image_size=8, normal_class=c) for c in (0, 1)]
    queue = serving.TrainingQueue(1)
    monkeypatch.setattr(serving, "_queue", queue)
    monkeypatch.setenv("OOD_EXPLORER_CACHE_MB", "0")
    places = []
    result = {}

    def train_second():
        result["r"] = get_model(specs[1], build_benchmark(specs[1], ()), cache_dir=tmp_path, on_wait=places.append)

    with queue.slot():  # another training holds the only slot
        t = threading.Thread(target=train_second)
        t.start()
        deadline = time.time() + 10
        while not places and time.time() < deadline:
            time.sleep(0.01)
        assert places and places[0] == 1 and "r" not in result  # waiting, first in line
    t.join(30)
    assert result["r"].provenance["threads"] == TRAIN_THREADS
    first = get_model(specs[0], build_benchmark(specs[0], ()), cache_dir=tmp_path)
    assert checkpoint_path(specs[0], tmp_path).exists() and checkpoint_path(specs[1], tmp_path).exists()
    size = checkpoint_path(specs[0], tmp_path).stat().st_size
    monkeypatch.setattr(serving, "cache_cap_bytes", lambda: size)  # room for one checkpoint
    os.utime(checkpoint_path(specs[1], tmp_path), (time.time() - 60, time.time() - 60))
    get_model(specs[0], build_benchmark(specs[0], ()), cache_dir=tmp_path, retrain=True)
    assert checkpoint_path(specs[0], tmp_path).exists() and not checkpoint_path(specs[1], tmp_path).exists()
    assert first.provenance["threads"] == TRAIN_THREADS


def test_shared_mode_refuses_a_large_ensemble_before_any_training(monkeypatch, tmp_path):
    from ood_core import Spec, TrainConfig, pipeline

    exp = pipeline.prepare(Spec(image_size=8, training=TrainConfig(epochs=1, batch_size=256)), cache_dir=tmp_path,
                           device="cpu", ood_sets=())
    monkeypatch.setenv("OOD_EXPLORER_SHARED", "1")
    monkeypatch.setattr(exp, "member_adapter", lambda i: pytest.fail("no member may be trained"))
    with pytest.raises(ValueError, match="at most 5 ensemble members .* you asked for 8"):
        exp.fit_detector("ensemble", {"members": 8})
    monkeypatch.delenv("OOD_EXPLORER_SHARED")
    assert exp.fit_detector("msp") is not None  # other detectors, and private servers, are unaffected
