"""The on-disk model cache and users' checkpoints: verified, locked, and safe to load.

A cached checkpoint is a torch.save of {state_dict, spec_key, history, seconds, sha256, provenance}, written
atomically (temp file, fsync, os.replace) under an exclusive lock on `<path>.lock`. `sha256` is the hash of the
state_dict's tensors (names, dtypes, shapes and bytes, keys sorted) and is checked on every load; a file that
does not load or fails the check is moved aside to `<name>.corrupt-<UTC time>`, never overwritten, and the
model is retrained. When the cache folder cannot be written, models are kept in this process's memory.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import io
import os
import re
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from .. import serving
from ..device import resolve_device
from ..data import Benchmark
from ..spec import SETTING_TITLES, Spec
from .registry import build_model, get_entry
from .train import Progress, TrainResult

DEFAULT_CACHE_DIR = Path(os.environ.get("OOD_EXPLORER_CACHE", Path(__file__).resolve().parents[2] / "data" / "cache"))

# model_key -> torch.save bytes of a checkpoint payload: models trained while the cache could not be written
_MEMORY_CACHE: dict[str, bytes] = {}
_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()


class ModelLoadError(ValueError):
    """A user's checkpoint that cannot be used; the message is complete and meant to be shown whole."""


# --- paths, hashes, locks ------------------------------------------------------------------------------

def trained_key(spec: Spec) -> str:
    """The key of a trained model: the spec's model key and the fingerprint of the data it trains on, so another
    file (or loader) under the same dataset name never reuses a model trained on other data."""
    from ..data.datasets import load_dataset

    data = load_dataset(spec.dataset, spec.image_size).fingerprint
    return hashlib.sha256(f"{spec.model_key()}:{data}".encode()).hexdigest()[:16]


def checkpoint_path(spec: Spec, cache_dir: Path | str | None = None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / "models" / f"{spec.model}-{trained_key(spec)}.pt"


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes of any dtype, bfloat16 included
    return h.hexdigest()


@contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive fcntl.flock on `<path>.lock` (other processes and threads wait); creates the folder."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _memory_lock(key: str) -> threading.Lock:
    with _MEMORY_LOCKS_GUARD:
        return _MEMORY_LOCKS.setdefault(key, threading.Lock())


def cache_status(cache_dir: Path | str | None = None) -> tuple[bool, str]:
    """(writable, message): can the cache folder be created and a file written, fsynced and deleted there?

    The message is "ok" or the reason in plain words (e.g. "Not a directory", "No space left on device").
    """
    folder = Path(cache_dir or DEFAULT_CACHE_DIR) / "models"
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
        return True, "ok"
    except OSError as e:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)
        return False, e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)


def is_cached(spec: Spec, cache_dir: Path | str | None = None) -> bool:
    """Whether a checkpoint file (maybe still to be verified) or an in-memory model exists for `spec`."""
    return trained_key(spec) in _MEMORY_CACHE or checkpoint_path(spec, cache_dir).exists()


# --- writing and reading ------------------------------------------------------------------------------

def _provenance(model: nn.Module, seconds: float, device: Optional[str], written: bool) -> dict:
    if device is None:
        t = next(iter(model.state_dict().values()), None)
        device = str(t.device) if t is not None else "cpu"
    from .reproducible import TRAIN_THREADS  # the count every training runs with (models.reproducible)

    return {"torch": str(torch.__version__), "threads": TRAIN_THREADS, "device": str(device),
            "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds") if written else None,
            "train_seconds": float(seconds)}


def _payload(model: nn.Module, spec: Spec, history: list[dict], seconds: float, device: Optional[str],
             written: bool) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": state, "spec_key": trained_key(spec), "history": history, "seconds": float(seconds),
            "sha256": state_dict_sha256(state), "provenance": _provenance(model, seconds, device, written)}


def save_checkpoint(path: Path, model: nn.Module, spec: Spec, history: list[dict], seconds: float,
                    device: Optional[str] = None) -> dict:
    """Write atomically (a temp file in the same folder, fsync, os.replace), with the state_dict's SHA-256
    and provenance; returns the provenance written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _payload(model, spec, history, seconds, device, written=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return payload["provenance"]


@dataclass
class CheckpointRead:
    """What reading a cached checkpoint found. status: ok | missing | corrupt | unverified | other."""

    status: str
    result: Optional[TrainResult] = None
    reason: str = ""


def read_checkpoint(source, spec: Spec, bench: Benchmark) -> CheckpointRead:
    """Read and verify a cached checkpoint (a path, or bytes of one); no side effects.

    corrupt: it does not load, or its tensors do not match the stored SHA-256. unverified: an older file with
    no SHA-256. other: a valid file for another spec key, or of shapes this spec's model does not have.
    """
    if isinstance(source, (str, Path)) and not Path(source).exists():
        return CheckpointRead("missing")
    try:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        payload = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as e:
        return CheckpointRead("corrupt", reason=f"it does not load: {type(e).__name__}")
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        return CheckpointRead("corrupt", reason="it holds no state_dict")
    state = payload["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return CheckpointRead("corrupt", reason="its state_dict holds something other than tensors")
    stored = payload.get("sha256")
    if stored is not None and stored != state_dict_sha256(state):
        return CheckpointRead("corrupt", reason="checksum mismatch")
    if payload.get("spec_key") != trained_key(spec):
        return CheckpointRead("other", reason="it was written for another spec")
    if stored is None:
        return CheckpointRead("unverified", reason="it has no checksum (written by an older version)")
    model = build_model(spec.model, bench.input_shape[0], bench.num_classes, bench.input_shape[-1])
    try:
        model.load_state_dict(state)
    except Exception:
        return CheckpointRead("other", reason="its shapes do not fit this spec's model")
    model.eval()
    result = TrainResult(model, list(payload.get("history", [])), float(payload.get("seconds", 0.0)), True,
                         provenance=dict(payload.get("provenance") or {}))
    return CheckpointRead("ok", result)


def load_checkpoint(path: Path, spec: Spec, bench: Benchmark) -> Optional[TrainResult]:
    """A verified cached model, or None if the file is missing, corrupt, unverified or for another spec."""
    return read_checkpoint(path, spec, bench).result


def move_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt-<UTC time>` (never over an earlier one); returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def remove_orphan_temp_files(path: Path) -> list[Path]:
    """Delete `<name>*.tmp` left in the folder by killed writes of this checkpoint; call with its lock held."""
    removed = []
    for p in glob.glob(os.path.join(glob.escape(str(path.parent)), glob.escape(path.name) + "*.tmp")):
        try:
            os.unlink(p)
            removed.append(Path(p))
        except FileNotFoundError:
            pass
    return removed


# --- the cache ------------------------------------------------------------------------------------------

def get_model(spec: Spec, bench: Benchmark, progress: Optional[Callable[[Progress], None]] = None,
              cache_dir: Path | str | None = None, device: Optional[str] = None, retrain: bool = False,
              on_wait: Optional[Callable[[int], None]] = None, cancel=None) -> TrainResult:
    """The trained model for `spec`: from the checkpoint cache when valid, else trained and cached.

    Holds the checkpoint's file lock throughout, so two processes asking for one spec train it once. A damaged
    checkpoint is moved aside and the model retrained; `note` on the result says what happened. When the
    cache cannot be written the model is kept in memory for this process instead (and `note` says so).
    A training waits for a slot of the process's training queue (serving.training_queue: at most as many
    trainings as cores); on_wait(place) is called meanwhile. With a cache cap (OOD_EXPLORER_CACHE_MB) the least
    recently used checkpoints are removed after a save.
    `cancel` (a threading.Event): when set, waiting for a slot or training stops with jobs.Cancelled, and nothing
    is saved — no checkpoint, no temp file, nothing in memory. `device`: where a training runs (default:
    device.default_device()); a loaded model stays on the CPU until the caller moves it.
    """
    entry = get_entry(spec.model)
    if spec.setting not in entry.settings:  # e.g. a classifier asked to be a one-class model by a hand-made link
        raise ValueError(f"{entry.title} is a {entry.kind.replace('_', '-')} model: it serves "
                         f"{' and '.join(SETTING_TITLES[s].lower() for s in entry.settings)}, not "
                         f"{SETTING_TITLES[spec.setting].lower()}; "
                         "pick a model made for that setting")
    device = resolve_device(device)
    from ..jobs import check_cancelled
    from . import train  # at call time: tests and tools may replace train.train_model

    def waiting(place: int) -> None:
        if on_wait is not None:
            on_wait(place)
        check_cancelled(cancel)

    def queued_training():
        with serving.training_queue().slot(waiting if cancel is not None else on_wait):
            if cancel is None:
                return train.train_model(spec, bench, progress, device)
            return train.train_model(spec, bench, progress, device, cancel=cancel)

    path = checkpoint_path(spec, cache_dir)
    writable, reason = cache_status(cache_dir)
    if not writable:
        return _get_model_in_memory(spec, bench, progress, path, reason, device, retrain,
                                    lambda *_: queued_training())
    with file_lock(path):
        remove_orphan_temp_files(path)
        note = ""
        if not retrain:
            found = read_checkpoint(path, spec, bench)
            if found.status == "ok":
                _touch(path)
                return found.result
            if found.status == "corrupt":
                aside = move_aside(path)
                note = (f"The cached checkpoint {path.name} was damaged ({found.reason}); it was moved to "
                        f"{aside.name} and the model retrained.")
            elif found.status == "unverified":
                note = (f"The cached checkpoint {path.name} could not be verified ({found.reason}); "
                        "the model was retrained and the checkpoint replaced.")
        result = queued_training()
        _record_time(spec, bench, result, device, Path(cache_dir or DEFAULT_CACHE_DIR))
        try:
            result.provenance = save_checkpoint(path, result.model, spec, result.history, result.seconds, device)
            enforce_cache_cap(path.parent, serving.cache_cap_bytes(), keep=path)
        except OSError as e:  # the disk filled up or went read-only since the check: keep the work
            _MEMORY_CACHE[trained_key(spec)] = _memory_bytes(result, spec, device)
            result.provenance = _provenance(result.model, result.seconds, device, written=False)
            note = " ".join(filter(None, [note, f"The model could not be saved to {path.parent} "
                                                f"({e.strerror or type(e).__name__}); it is kept in memory for "
                                                "this process only."]))
        result.from_cache = False
        result.note = note
        return result


def _record_time(spec: Spec, bench: Benchmark, result: TrainResult, device: str, folder: Path) -> None:
    """Note what a training took on its device beside what the rates estimated (timings.py: the estimates'
    correction, kept apart per device)."""
    if result.seconds <= 0:
        return
    from .. import estimates, timings

    timings.record(folder, spec.model, estimates.reference_training(spec, len(bench.train)).seconds, result.seconds,
                   timings.device_kind(device))


def _touch(path: Path) -> None:
    """Mark a checkpoint as just used (its mtime), for the least-recently-used cache cap."""
    with contextlib.suppress(OSError):
        os.utime(path)


def enforce_cache_cap(folder: Path, cap_bytes: Optional[int], keep: Optional[Path] = None) -> list[Path]:
    """Remove the least recently used checkpoints (oldest mtime first) of `folder` until its *.pt files fit in
    `cap_bytes`; `keep` (the one just written) is never removed. Returns the removed paths."""
    if not cap_bytes:
        return []
    files = []
    for f in folder.glob("*.pt"):
        with contextlib.suppress(OSError):
            st = f.stat()
            files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, f in sorted(files, key=lambda t: t[0]):
        if total <= cap_bytes:
            break
        if keep is not None and f == keep:
            continue
        with contextlib.suppress(OSError):
            f.unlink()
            total -= size
            removed.append(f)
    return removed


def _memory_bytes(result: TrainResult, spec: Spec, device: str) -> bytes:
    buf = io.BytesIO()
    torch.save(_payload(result.model, spec, result.history, result.seconds, device, written=False), buf)
    return buf.getvalue()


def _get_model_in_memory(spec: Spec, bench: Benchmark, progress, path: Path, reason: str, device: str,
                         retrain: bool, train_model) -> TrainResult:
    """get_model when the cache folder cannot be written: train once per process, keep the weights in memory."""
    key = trained_key(spec)
    note = (f"The model cache {path.parent.parent} is not writable ({reason}): the model is kept in memory "
            "for this process only and was not saved.")
    with _memory_lock(key):
        if not retrain and key in _MEMORY_CACHE:
            found = read_checkpoint(_MEMORY_CACHE[key], spec, bench)
            if found.status == "ok":
                found.result.note = note
                return found.result
        result = train_model(spec, bench, progress, device)
        _MEMORY_CACHE[key] = _memory_bytes(result, spec, device)
        result.provenance = _provenance(result.model, result.seconds, device, written=False)
        result.from_cache = False
        result.note = note
        return result


# --- users' checkpoints ---------------------------------------------------------------------------------

MAX_ZIP_ENTRIES = 10_000
LIST_LIMIT = 20  # keys named in a mismatch message before "and N more"
SHAPE_LIMIT = 5


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_archive(path_or_file, model: nn.Module, model_name: str) -> None:
    """Refuse a torch zip archive whose tensors would unpack far beyond the model's size, before loading it."""
    if hasattr(path_or_file, "seek"):
        start = path_or_file.tell()
        try:
            if not zipfile.is_zipfile(path_or_file):
                return
            path_or_file.seek(start)
            with zipfile.ZipFile(path_or_file) as z:
                infos = z.infolist()
        except zipfile.BadZipFile:
            return  # torch.load reports it
        finally:
            path_or_file.seek(start)
    else:
        if not zipfile.is_zipfile(path_or_file):
            return
        try:
            with zipfile.ZipFile(path_or_file) as z:
                infos = z.infolist()
        except zipfile.BadZipFile:
            return
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ModelLoadError(f"The file is an archive of {len(infos):,} entries, more than the {MAX_ZIP_ENTRIES:,} "
                             "a model checkpoint could need; it was not loaded.")
    total = sum(i.file_size for i in infos if re.search(r"(^|/)data/", i.filename))
    need = _state_bytes(model)
    limit = 4 * need + 2**20
    if total > limit:
        raise ModelLoadError(f"The file's tensors unpack to {_mib(total)}, but model {model_name!r} has "
                             f"{_mib(need)} of weights (at most 4 × that + 1 MiB = {_mib(limit)} is accepted); "
                             "it was not loaded.")


def _load_error(e: Exception) -> ModelLoadError:
    """torch.load's error, in one complete sentence (its own text runs to paragraphs of advice)."""
    text = str(e)
    if "Weights only load failed" in text:
        m = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if m or "global" in text.lower():
            what = f" (it asks for {m.group(1)})" if m else ""
            return ModelLoadError("The file holds Python code or objects, not only tensors" + what + ", and loading "
                                  "with weights_only=True refuses such files for safety; save the model's "
                                  "state_dict instead: torch.save(model.state_dict(), path).")
        m = re.search(r"WeightsUnpickler error:\s*\n\s*(.+)", text)
        detail = f": {m.group(1).strip().rstrip('.')}" if m and len(m.group(1)) <= 120 else ""
        return ModelLoadError(f"The file is not a loadable PyTorch checkpoint ({type(e).__name__}{detail}).")
    first = (text.strip().splitlines() or [""])[0].strip().rstrip(".")
    detail = f": {first}" if first and len(first) <= 120 else ""
    return ModelLoadError(f"The file is not a loadable PyTorch checkpoint ({type(e).__name__}{detail}).")


def _listed(keys: list[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(s) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def read_state_dict(path_or_file, model: nn.Module, model_name: str) -> dict[str, torch.Tensor]:
    """A user's state_dict (weights only: torch.load(weights_only=True)), from a file of tensors for `model` or a
    checkpoint dict holding one under "state_dict"; ModelLoadError with a complete message when the file is too
    large for the model, holds code, is not a checkpoint or has NaN/Inf weights."""
    _check_archive(path_or_file, model, model_name)
    try:
        payload = torch.load(path_or_file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(e) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError("The checkpoint holds no state_dict of tensors (a dict from parameter names to "
                             "tensors, as model.state_dict() gives).")
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite values"
            raise ModelLoadError(f"The checkpoint's weights are not all finite: tensor {name!r} holds {kind}.")
    return state


def state_dict_mismatches(state: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """The differences between a state_dict and a model's, as sentences: missing keys, unexpected keys, shape
    mismatches (the first few listed); empty when the state_dict fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if shapes:
        listed = "; ".join(f"{k}: checkpoint {_shape(state[k].shape)} vs model {_shape(own[k].shape)}"
                           for k in shapes[:SHAPE_LIMIT])
        more = f"; and {len(shapes) - SHAPE_LIMIT} more" if len(shapes) > SHAPE_LIMIT else ""
        parts.append(f"shape mismatches ({len(shapes)}): {listed}{more}")
    return [p[0].upper() + p[1:] for p in parts]


def copy_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> nn.Module:
    """Load a state_dict that fits into `model` (described by `what`); ModelLoadError naming the cause otherwise."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied: name it, complete
        first = (str(e).strip().splitlines() or [""])[0].strip().rstrip(".")
        raise ModelLoadError(f"The checkpoint's weights could not be copied into {what} ({first}).") from None
    return model.eval()


def load_user_model(path_or_file, spec: Spec, bench: Benchmark) -> nn.Module:
    """Load a user's state_dict (weights only) into spec.model; ModelLoadError (a ValueError) with a complete
    message when the file is too large for the model, holds code, is not a checkpoint, has NaN/Inf weights
    or does not match the architecture."""
    model = build_model(spec.model, bench.input_shape[0], bench.num_classes, bench.input_shape[-1])
    state = read_state_dict(path_or_file, model, spec.model)
    problems = state_dict_mismatches(state, model)
    if problems:
        raise ModelLoadError(f"The checkpoint does not match model {spec.model!r} with {bench.input_shape[0]} "
                             f"input channel(s) and {bench.num_classes} classes. " + ". ".join(problems) + ".")
    return copy_state_dict(state, model, f"model {spec.model!r}")


__all__ = ["DEFAULT_CACHE_DIR", "CheckpointRead", "ModelLoadError", "cache_status", "checkpoint_path", "file_lock",
           "copy_state_dict", "get_model", "is_cached", "load_checkpoint", "load_user_model", "move_aside",
           "read_checkpoint", "read_state_dict", "state_dict_mismatches",
           "remove_orphan_temp_files", "save_checkpoint", "state_dict_sha256"]
