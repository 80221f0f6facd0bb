"""How long trainings took on this machine, against what the rates said: the training estimates' correction.

estimates' training rates were measured on one 2-core machine; another machine (more cores, a faster CPU, or one
busy with other work) trains at another speed. So every training that the model cache runs on the CPU
(models.checkpoint.get_model) appends a record to TIMES_FILE in the cache folder: the model, the seconds the
registry's rates gave for it (estimates.reference_training, not corrected) and the seconds it took.

speed_factor(model) is the median of measured / estimated over that model's last RECENT records, or, for a model
not trained here yet, over the last RECENT records of every model (the machine's speed is most of the difference);
1 with no record. The median of a few keeps one training that ran beside other work from moving the factor much.
Trainings shorter than MIN_SECONDS are not recorded: their time is mostly start-up, not training.
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
MIN_SECONDS = 2.0  # shorter trainings (measured or estimated) are not recorded
BOUNDS = (0.05, 20.0)  # a factor outside these is clipped: a clock jump or a suspended laptop is not a speed

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


def records(cache_dir: Path | str) -> list[dict]:
    """The recorded trainings, oldest first: {model, estimated_s, measured_s, utc}."""
    return list(_read(_path(cache_dir)))


def record(cache_dir: Path | str, model: str, estimated_s: float, measured_s: float) -> bool:
    """Append one training's times to the cache folder's file; False when not recorded (too short to say much,
    or the folder cannot be written)."""
    if not (estimated_s >= MIN_SECONDS and measured_s >= MIN_SECONDS):
        return False
    path = _path(cache_dir)
    row = {"model": model, "estimated_s": round(float(estimated_s), 3), "measured_s": round(float(measured_s), 3),
           "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
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


def speed_factor(model: str, cache_dir: Optional[Path | str]) -> tuple[float, int, bool]:
    """(factor, trainings it rests on, whether they are this model's own): what to multiply the rates' estimate
    of training `model` by on this machine; (1.0, 0, False) with no record."""
    if cache_dir is None:
        return 1.0, 0, False
    rows = _read(_path(cache_dir))
    own = [r for r in rows if r["model"] == model][-RECENT:]
    used = own or rows[-RECENT:]
    if not used:
        return 1.0, 0, False
    ratio = statistics.median(float(r["measured_s"]) / float(r["estimated_s"]) for r in used)
    return float(min(max(ratio, BOUNDS[0]), BOUNDS[1])), len(used), bool(own)
