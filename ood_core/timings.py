"""How long trainings took on this machine, against what the rates said: the training estimates' correction.

estimates' training rates were measured on one 2-core machine; another machine (more cores, a faster CPU, one
busy with other work, or a GPU) trains at another speed. So every training that the model cache runs
(models.checkpoint.get_model) appends a record to TIMES_FILE in the cache folder: the model, the device it ran on
(device_kind: "cpu", or "cuda" and the GPU's name), the seconds the registry's rates gave for it
(estimates.reference_training, not corrected) and the seconds it took.

speed_factor(model, kind) is the median of measured / estimated over that model's last RECENT records on devices
of that kind, or, for a model not trained there yet, over the last RECENT records of every model there (the device's
speed is most of the difference); 1 with no record. Records of one device never correct another's estimates (an H200
trained the issue-15 models 2 to 17 times faster than 2 CPU cores: README). The median of a few keeps one training
that ran beside other work from moving the factor much.
Trainings the rates put under MIN_SECONDS are not recorded, nor CPU trainings that took less: their time is mostly
start-up, not training. A GPU's are recorded from MIN_GPU_SECONDS: being short is what a GPU is for.
The file is small JSON, rewritten atomically under a lock, at most KEEP records; a damaged one is ignored and
replaced by the next record; a cache folder that cannot be written records nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

TIMES_FILE = "training_times.json"
KEEP = 200  # records kept in the file, the newest
RECENT = 10  # records a factor is the median of
CPU = "cpu"  # the device kind of every CPU (and of the records written before devices were told apart)
MIN_SECONDS = 2.0  # shorter trainings (estimated, or measured on the CPU) are not recorded
MIN_GPU_SECONDS = 0.2  # a GPU training measured shorter than this is not recorded
# a factor outside these is clipped: a clock jump or a suspended laptop is not a speed. A GPU's lower bound is lower:
# the CIFAR ResNet-18 trains an epoch in 5.2 s on an H200 (docs/bench/gpu.json), hundreds of times the 2 cores' pace
BOUNDS = (0.05, 20.0)
GPU_BOUNDS = (0.001, 20.0)

_memo: dict[str, tuple[tuple[int, int], list[dict]]] = {}  # path -> ((mtime_ns, size), records)


def _path(cache_dir: Path | str) -> Path:
    return Path(cache_dir) / TIMES_FILE


def _read(path: Path) -> list[dict]:
    """The valid records of the file (none when it is absent or damaged), memoised by its mtime and size."""
    try:
        st = path.stat()
    except OSError:
        return []
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _memo.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        data = json.loads(path.read_text())
        rows = [r for r in data.get("trainings", []) if isinstance(r, dict) and isinstance(r.get("model"), str)
                and float(r.get("estimated_s", 0)) > 0 and float(r.get("measured_s", 0)) > 0]
    except (OSError, ValueError, TypeError, AttributeError):
        rows = []
    _memo[str(path)] = (stamp, rows)
    return rows


def device_kind(device: Optional[str] = None) -> str:
    """What a record's speed belongs to: "cpu", or "cuda " and the GPU's name ("cuda NVIDIA H200"), so that two
    GPUs sharing a cache folder keep apart; `device` as the library takes it (None: the default device)."""
    from .device import is_cuda, resolve_device

    d = resolve_device(device)
    if not is_cuda(d):
        return CPU
    name = _gpu_names.get(d)
    if name is None:
        import torch

        index = int(d[5:]) if ":" in d else torch.cuda.current_device()
        name = _gpu_names[d] = torch.cuda.get_device_name(index)
    return f"cuda {name}"


_gpu_names: dict[str, str] = {}


def _on(row: dict) -> str:
    """The device kind of a record; the records written before devices were told apart are the CPU's."""
    return str(row.get("device", CPU))


def records(cache_dir: Path | str) -> list[dict]:
    """The recorded trainings, oldest first: {model, device, estimated_s, measured_s, utc}."""
    return list(_read(_path(cache_dir)))


def record(cache_dir: Path | str, model: str, estimated_s: float, measured_s: float, kind: str = CPU) -> bool:
    """Append one training's times on a device of `kind` (device_kind) to the cache folder's file; False when not
    recorded (too short to say much, or the folder cannot be written)."""
    floor = MIN_SECONDS if kind == CPU else MIN_GPU_SECONDS
    if not (estimated_s >= MIN_SECONDS and measured_s >= floor):
        return False
    path = _path(cache_dir)
    row = {"model": model, "device": kind, "estimated_s": round(float(estimated_s), 3),
           "measured_s": round(float(measured_s), 3), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two processes recording at once keep both records
            rows = (_read(path) + [row])[-KEEP:]
            handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
            with os.fdopen(handle, "w") as f:
                json.dump({"about": "trainings timed on this machine, for the estimates (ood_core/timings.py)",
                           "trainings": rows}, f, indent=0)
            os.replace(tmp, path)
            tmp = None
        finally:
            os.close(fd)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


def speed_factor(model: str, cache_dir: Optional[Path | str], kind: str = CPU) -> tuple[float, int, bool]:
    """(factor, trainings it rests on, whether they are this model's own): what to multiply the rates' estimate
    of training `model` on a device of `kind` (device_kind) by; (1.0, 0, False) with no record of that kind."""
    if cache_dir is None:
        return 1.0, 0, False
    rows = [r for r in _read(_path(cache_dir)) if _on(r) == kind]
    own = [r for r in rows if r["model"] == model][-RECENT:]
    used = own or rows[-RECENT:]
    if not used:
        return 1.0, 0, False
    ratio = statistics.median(float(r["measured_s"]) / float(r["estimated_s"]) for r in used)
    low, high = BOUNDS if kind == CPU else GPU_BOUNDS
    return float(min(max(ratio, low), high)), len(used), bool(own)
