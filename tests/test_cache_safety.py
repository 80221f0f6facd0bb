"""Verified caches and safe uploads: checksums, damaged files moved aside, the cross-process lock, an
unwritable cache, and users' checkpoints refused with complete messages before anything dangerous happens."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import multiprocessing
import os
import pickle
import struct
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from ood_core import Spec, TrainConfig, cli
from ood_core.data import build_benchmark
from ood_core.models import (ModelLoadError, build_model, cache_status, checkpoint_path, file_lock, get_model,
                             load_checkpoint, load_user_model, read_checkpoint, save_checkpoint)
from ood_core.models import checkpoint, train

# tiny: 8 px digits, one epoch of a few batches (a fraction of a second on one thread)
TINY = Spec(image_size=8, training=TrainConfig(epochs=1, batch_size=256))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    return build_benchmark(TINY, ood_sets=())


@pytest.fixture
def count_trainings(monkeypatch):
    """Replace train.train_model by a counting wrapper; returns the list of specs trained."""
    real, calls = train.train_model, []

    def counted(spec, *args, **kwargs):
        calls.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_model", counted)
    return calls


@pytest.fixture(autouse=True)
def fresh_memory_cache(monkeypatch):
    monkeypatch.setattr(checkpoint, "_MEMORY_CACHE", {})


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _buffer(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _flip_a_data_byte(path: Path) -> None:
    """Invert one byte in the middle of the largest tensor's stored data (zip entry archive/data/N)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    off = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[off + 26:off + 30])
    start = off + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _corrupt_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


# --- the checksum --------------------------------------------------------------------------------------

def test_checksum_is_sha256_of_names_dtypes_shapes_and_bytes():
    state = {"b": torch.tensor([1, 2], dtype=torch.int64), "a": torch.tensor([[0.5]], dtype=torch.float32)}
    h = hashlib.sha256()
    h.update(b"a\0torch.float32\0(1, 1)\0" + struct.pack("<f", 0.5))
    h.update(b"b\0torch.int64\0(2,)\0" + struct.pack("<qq", 1, 2))
    assert checkpoint.state_dict_sha256(state) == h.hexdigest()
    # every part counts: data, dtype, shape, name
    base = checkpoint.state_dict_sha256(state)
    for other in ({**state, "a": torch.tensor([[0.25]])}, {**state, "a": torch.tensor([[0.5]], dtype=torch.float64)},
                  {**state, "a": torch.tensor([0.5])}, {"c": state["a"], "b": state["b"]}):
        assert checkpoint.state_dict_sha256(other) != base


# --- damaged, old and foreign checkpoints ------------------------------------------------------------

def test_a_flipped_byte_is_detected_moved_aside_and_retrained(bench, tmp_path, count_trainings):
    first = get_model(TINY, bench, cache_dir=tmp_path)
    path = checkpoint_path(TINY, tmp_path)
    assert not first.from_cache and first.note == "" and len(count_trainings) == 1
    _flip_a_data_byte(path)
    damaged = path.read_bytes()
    torch.load(path, weights_only=True)  # torch itself does not notice: only the checksum does
    found = read_checkpoint(path, TINY, bench)
    assert found.status == "corrupt" and found.reason == "checksum mismatch"
    assert load_checkpoint(path, TINY, bench) is None

    again = get_model(TINY, bench, cache_dir=tmp_path)
    assert len(count_trainings) == 2 and not again.from_cache
    [aside] = _corrupt_files(path)
    assert aside.read_bytes() == damaged  # kept as it was, for inspection
    assert "damaged (checksum mismatch)" in again.note and aside.name in again.note and "retrained" in again.note
    assert _same(_weights(again.model), _weights(first.model))  # seeded: the same model again
    assert read_checkpoint(path, TINY, bench).status == "ok"  # a fresh, valid checkpoint
    third = get_model(TINY, bench, cache_dir=tmp_path)
    assert third.from_cache and third.note == "" and len(count_trainings) == 2


def test_a_truncated_checkpoint_is_moved_aside_and_retrained(bench, tmp_path, count_trainings):
    get_model(TINY, bench, cache_dir=tmp_path)
    path = checkpoint_path(TINY, tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    res = get_model(TINY, bench, cache_dir=tmp_path)
    assert len(count_trainings) == 2 and not res.from_cache
    [aside] = _corrupt_files(path)
    assert aside.read_bytes() == good[: len(good) // 3]
    assert "does not load" in res.note and aside.name in res.note
    assert read_checkpoint(path, TINY, bench).status == "ok"


def test_two_damaged_files_in_a_row_are_both_kept(bench, tmp_path):
    path = checkpoint_path(TINY, tmp_path)
    path.parent.mkdir(parents=True)
    for junk in (b"first", b"second"):
        path.write_bytes(junk)
        get_model(TINY, bench, cache_dir=tmp_path)
    assert sorted(p.read_bytes() for p in _corrupt_files(path)) == [b"first", b"second"]


def test_an_old_checkpoint_without_checksum_is_retrained_not_moved(bench, tmp_path, count_trainings):
    path = checkpoint_path(TINY, tmp_path)
    path.parent.mkdir(parents=True)
    old = build_model("small_cnn", 1, 10, 8)
    torch.save({"state_dict": old.state_dict(), "spec_key": checkpoint.trained_key(TINY), "history": [], "seconds": 1.0}, path)
    assert read_checkpoint(path, TINY, bench).status == "unverified"
    assert load_checkpoint(path, TINY, bench) is None
    res = get_model(TINY, bench, cache_dir=tmp_path)
    assert len(count_trainings) == 1 and not res.from_cache
    assert "could not be verified" in res.note and "no checksum" in res.note
    assert _corrupt_files(path) == []
    assert "sha256" in torch.load(path, weights_only=True)


def test_another_specs_or_wrong_shaped_checkpoint_is_replaced_silently(bench, tmp_path, count_trainings):
    path = checkpoint_path(TINY, tmp_path)
    save_checkpoint(path, build_model("small_cnn", 1, 4, 8), TINY, [], 0.0)  # right key, wrong class count
    assert read_checkpoint(path, TINY, bench).status == "other"
    res = get_model(TINY, bench, cache_dir=tmp_path)
    assert res.note == "" and _corrupt_files(path) == [] and len(count_trainings) == 1
    save_checkpoint(path, res.model, TINY.with_seed(5), [], 0.0)  # another spec's key
    assert read_checkpoint(path, TINY, bench).status == "other"
    res = get_model(TINY, bench, cache_dir=tmp_path)
    assert res.note == "" and _corrupt_files(path) == [] and len(count_trainings) == 2


def test_provenance_is_recorded_and_returned(bench, tmp_path):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    res = get_model(TINY, bench, cache_dir=tmp_path)
    prov = res.provenance
    assert prov["torch"] == str(torch.__version__) and prov["threads"] == torch.get_num_threads() == 1
    assert prov["device"] == "cpu" and prov["train_seconds"] == pytest.approx(res.seconds)
    written = datetime.fromisoformat(prov["written_utc"])
    assert written.tzinfo is not None and before <= written <= datetime.now(timezone.utc)
    again = get_model(TINY, bench, cache_dir=tmp_path)
    assert again.from_cache and again.provenance == prov
    assert torch.load(checkpoint_path(TINY, tmp_path), weights_only=True)["provenance"] == prov


# --- the lock ------------------------------------------------------------------------------------------

def test_orphan_temp_files_are_removed_under_the_lock(bench, tmp_path, monkeypatch):
    path = checkpoint_path(TINY, tmp_path)
    path.parent.mkdir(parents=True)
    orphan = path.parent / (path.name + "k3j2_x.tmp")
    orphan.write_bytes(b"half a checkpoint")
    stranger = path.parent / "small_cnn-0123456789ab.ptq1.tmp"  # another model's write in progress
    stranger.write_bytes(b"not ours")
    seen = {}
    real = train.train_model

    def probing(spec, *args, **kwargs):
        seen["orphan_gone"] = not orphan.exists()
        fd = os.open(f"{path}.lock", os.O_RDWR)
        try:  # the lock is held by get_model while it trains: a non-blocking attempt must fail
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen["locked"] = True
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_model", probing)
    get_model(TINY, bench, cache_dir=tmp_path)
    assert seen == {"orphan_gone": True, "locked": True}
    assert stranger.exists()  # only this checkpoint's prefix is cleaned
    assert not list(path.parent.glob(path.name + "*.tmp"))


def test_file_lock_excludes_a_second_holder(tmp_path):
    path = tmp_path / "x.pt"
    order = []

    def second():
        with file_lock(path):
            order.append("second")

    with file_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]


def test_two_threads_train_once(bench, tmp_path, monkeypatch):
    real, calls = train.train_model, []

    def slow(spec, *args, **kwargs):
        calls.append(spec)
        time.sleep(0.5)  # the other thread arrives while this one trains
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_model", slow)
    results = [None, None]

    def worker(i):
        results[i] = get_model(TINY, bench, cache_dir=tmp_path)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    assert sorted(r.from_cache for r in results) == [False, True]
    assert _same(_weights(results[0].model), _weights(results[1].model))


def _child(cache_dir: str, log: str, start) -> None:
    """In a spawned process: count trainings in `log`, then get TINY's model from the shared cache."""
    torch.set_num_threads(1)
    real = train.train_model

    def logged(spec, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return real(spec, *args, **kwargs)

    train.train_model = logged
    bench = build_benchmark(TINY, ood_sets=())
    start.wait(120)
    res = get_model(TINY, bench, cache_dir=cache_dir)
    with open(log + ".done", "a") as f:
        f.write(f"{int(res.from_cache)} {checkpoint.state_dict_sha256(res.model.state_dict())}\n")


@pytest.mark.slow  # two fresh Python processes importing torch
def test_two_processes_train_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    log = str(tmp_path / "trainings.log")
    procs = [ctx.Process(target=_child, args=(str(tmp_path / "cache"), log, start)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()  # both wait at the event: (once imported) they ask at about the same time
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(Path(log).read_text().split()) == 1
    done = [line.split() for line in Path(log + ".done").read_text().splitlines()]
    assert sorted(d[0] for d in done) == ["0", "1"] and done[0][1] == done[1][1]


# --- an unwritable or full cache ---------------------------------------------------------------------

@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A cache folder that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file" / "cache"


def test_cache_status(tmp_path, unwritable):
    assert cache_status(tmp_path / "new" / "cache") == (True, "ok")
    assert (tmp_path / "new" / "cache" / "models").is_dir()
    assert list((tmp_path / "new" / "cache" / "models").iterdir()) == []  # the probe is gone
    assert cache_status(unwritable) == (False, "Not a directory")


def test_cache_status_reports_a_full_disk(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    assert cache_status(tmp_path) == (False, "No space left on device")
    assert list((tmp_path / "models").iterdir()) == []


def test_an_unwritable_cache_keeps_the_model_in_memory(bench, unwritable, count_trainings):
    first = get_model(TINY, bench, cache_dir=unwritable)
    assert len(count_trainings) == 1 and not first.from_cache
    assert "not writable (Not a directory)" in first.note and "in memory" in first.note
    assert first.provenance["written_utc"] is None and first.provenance["device"] == "cpu"
    second = get_model(TINY, bench, cache_dir=unwritable)  # no retraining
    assert len(count_trainings) == 1 and "in memory" in second.note
    assert _same(_weights(first.model), _weights(second.model))
    assert checkpoint.is_cached(TINY, unwritable)
    get_model(TINY, bench, cache_dir=unwritable, retrain=True)
    assert len(count_trainings) == 2


def test_a_failed_save_keeps_the_work(bench, tmp_path, monkeypatch, count_trainings):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_checkpoint", disk_full)
    res = get_model(TINY, bench, cache_dir=tmp_path)
    assert res.model is not None and "could not be saved" in res.note and "No space left" in res.note
    assert checkpoint.trained_key(TINY) in checkpoint._MEMORY_CACHE


def test_cli_refuses_an_unwritable_cache_before_any_work(unwritable, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        pytest.fail("the CLI trained although the cache is not writable")

    monkeypatch.setattr(train, "train_model", no_training)
    code = cli.main(["run", "--epochs", "1", "--detectors", "msp", "--cache-dir", str(unwritable), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"error: the model cache {unwritable} is not writable (Not a directory); "
                   "pass --cache-dir to a writable folder\n")


# --- users' checkpoints ----------------------------------------------------------------------------------

def _tiny_state() -> dict:
    return build_model("small_cnn", 1, 10, 8).state_dict()


def _refuse_torch_load(monkeypatch):
    def no_load(*args, **kwargs):
        pytest.fail("torch.load was called on a file that should be refused before loading")

    monkeypatch.setattr(torch, "load", no_load)


def test_a_zip_bomb_is_refused_before_loading(bench, monkeypatch):
    raw = _buffer({"w": torch.zeros(4_000_000)}).getvalue()  # 16 MB of zeros, stored uncompressed
    packed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert len(packed.getvalue()) < 200_000  # small on disk, 16 MB unpacked
    model_bytes = sum(t.numel() * t.element_size() for t in _tiny_state().values())
    _refuse_torch_load(monkeypatch)
    with pytest.raises(ModelLoadError) as e:
        load_user_model(io.BytesIO(packed.getvalue()), TINY, bench)
    msg = str(e.value)
    assert "unpack to 15.3 MiB" in msg and f"{model_bytes / 2**20:.1f} MiB of weights" in msg
    assert msg.endswith("it was not loaded.")


def test_an_archive_of_too_many_entries_is_refused(bench, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(10_001):
            z.writestr(f"archive/x{i}", b"")
    buf.seek(0)
    _refuse_torch_load(monkeypatch)
    with pytest.raises(ModelLoadError, match="10,001 entries, more than the 10,000"):
        load_user_model(buf, TINY, bench)


def test_an_ordinary_checkpoint_passes_the_size_check(bench, tmp_path):
    state = _tiny_state()
    m = load_user_model(_buffer(state), TINY, bench)
    assert _same(m.state_dict(), state)
    save_checkpoint(tmp_path / "c.pt", m, TINY, [], 0.0)  # our cache format, by path
    assert _same(load_user_model(tmp_path / "c.pt", TINY, bench).state_dict(), state)


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), "infinite values")])
def test_non_finite_weights_are_refused_by_name(bench, bad, kind):
    state = _tiny_state()
    names = list(state)
    state[names[2]][0] = bad
    state[names[4]][0] = bad
    with pytest.raises(ModelLoadError) as e:
        load_user_model(_buffer(state), TINY, bench)
    assert str(e.value) == f"The checkpoint's weights are not all finite: tensor {names[2]!r} holds {kind}."


def test_missing_and_unexpected_keys_are_all_named(bench):
    state = _tiny_state()
    missing = list(state)[:3]
    for k in missing:
        del state[k]
    extra = [f"extra.layer{i}.weight" for i in range(25)]
    state.update({k: torch.zeros(1) for k in extra})
    with pytest.raises(ModelLoadError) as e:
        load_user_model(_buffer(state), TINY, bench)
    msg = str(e.value)
    assert msg.startswith("The checkpoint does not match model 'small_cnn' with 1 input channel(s) and 10 classes.")
    assert f"Missing keys (3): {', '.join(missing)}." in msg
    assert f"Unexpected keys (25): {', '.join(extra[:20])} and 5 more." in msg
    assert extra[20] not in msg and msg.endswith(".")


def test_shape_mismatches_are_listed(bench):
    own = _tiny_state()
    other = build_model("small_cnn", 3, 4, 8).state_dict()  # 3 channels, 4 classes
    diffs = [k for k in own if own[k].shape != other[k].shape]
    with pytest.raises(ModelLoadError) as e:
        load_user_model(_buffer(other), TINY, bench)
    msg = str(e.value)
    for k in diffs[:5]:
        a, b = tuple(other[k].shape), tuple(own[k].shape)
        assert f"{k}: checkpoint ({', '.join(map(str, a))}) vs model ({', '.join(map(str, b))})" in msg
    assert f"Shape mismatches ({len(diffs)}):" in msg and "Missing keys" not in msg
    assert ("more" in msg) == (len(diffs) > 5)


class _Touch:
    """Unpickling this would create a file (what a malicious checkpoint could do, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused(bench, tmp_path, fmt):
    marker = tmp_path / "marker"
    obj = {"weight": torch.zeros(2), "payload": _Touch(marker)}
    data = _buffer(obj).getvalue() if fmt == "torch.save" else pickle.dumps(obj, protocol=2)
    with pytest.raises(ModelLoadError) as e:
        load_user_model(io.BytesIO(data), TINY, bench)
    msg = str(e.value)
    assert msg.startswith("The file holds Python code or objects, not only tensors")
    assert "weights_only=True refuses" in msg and msg.endswith(".")
    assert not marker.exists()


def test_the_app_shows_the_loaders_message_whole(monkeypatch):
    from pages import _support as ui

    state = {"session": {}}
    monkeypatch.setattr(ui.st, "session_state", state["session"])
    monkeypatch.setattr(ui, "current_spec", lambda: TINY)
    sd = _tiny_state()
    sd.update({f"extra.layer{i}.weight": torch.zeros(1) for i in range(25)})
    message = ui.use_uploaded_model("mine.pt", _buffer(sd).getvalue())
    assert message.startswith("Could not use mine.pt: The checkpoint does not match")
    assert "extra.layer19.weight and 5 more." in message and len(message) > 240  # longer than brief() keeps


def test_the_app_warns_once_when_the_cache_is_not_writable(unwritable, monkeypatch, ready):
    from streamlit.testing.v1 import AppTest
    from pages import _support as ui

    monkeypatch.setattr(checkpoint, "DEFAULT_CACHE_DIR", unwritable)
    monkeypatch.setattr(ui, "DEFAULT_CACHE_DIR", unwritable)
    ui._cache_status.clear()
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
        at.session_state[ui.SPEC_KEY] = TINY
        ready(at)  # the model trains as a job, then the page draws it
        assert not at.exception, [e.value for e in at.exception]
        warnings = [w.value for w in at.warning]
        assert warnings == [f"The model cache {unwritable} is not writable (Not a directory): models are kept "
                            "in memory for this server only."]
        assert at.metric, "the page was not drawn"
        at.switch_page("pages/scores.py").run()  # and the Scores page draws too, with the same one warning
        assert not at.exception, [e.value for e in at.exception]
        assert [w.value for w in at.warning] == warnings
        assert len(at.get("plotly_chart")) >= 3 and at.dataframe, "the Scores page was not drawn"
    finally:
        ui._cache_status.clear()


def test_the_app_says_when_a_damaged_checkpoint_was_replaced(cache_dir):
    from streamlit.testing.v1 import AppTest
    from pages import _support as ui

    spec = TINY.with_seed(7)  # a spec no other test prepares in this server process
    path = checkpoint_path(spec, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"damaged")
    ui._cache_status.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state[ui.SPEC_KEY] = spec
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [aside] = _corrupt_files(path)
    assert [w.value for w in at.warning] == [
        f"The cached checkpoint {path.name} was damaged (it does not load: UnpicklingError); it was moved to "
        f"{aside.name} and the model retrained."]
    at.run()  # shown once per session
    assert not at.warning
