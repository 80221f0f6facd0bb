"""The one forward pass, kept on disk per (model, data): a second run of the same experiment reads its outputs.

Key: the model's identity (the SHA-256 of its weights and buffers, so a retrained model is another one), the data's
fingerprint, the spec, and each split's name and size. Stored
under <cache>/outputs/<key>.npz (uncompressed, written to a temporary file and renamed, so a reader never sees half
a file): per split its logits (float32), features and the per-sample extras. Features of dimension D >= 1024 are
stored as float16 (half the disk and read time of a ResNet-50's 2048-d features; their scores then differ from a
fresh pass by float16 rounding, about 1e-3 relative); smaller ones as float32, bit-identical to a fresh pass.
The inputs are never stored: they are the benchmark's own arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .inference import Outputs

FLOAT16_FROM_DIM = 1024
VERSION = 1


def as_stored(outputs: dict[str, Outputs]) -> dict[str, Outputs]:
    """The outputs as the cache keeps them: features of D >= FLOAT16_FROM_DIM rounded to float16 values (held as
    float32), so a fresh pass and a cached one give the same numbers. Smaller features are returned unchanged."""
    out = {}
    for name, o in outputs.items():
        if o.features.ndim == 2 and o.features.shape[1] >= FLOAT16_FROM_DIM:
            o = Outputs(o.logits, o.features.astype(np.float16).astype(np.float32), o.labels, o.inputs, o.extras)
        out[name] = o
    return out


def outputs_key(model_id: str, bench) -> str:
    """The key of `bench`'s outputs under the model `model_id` (see the module's docstring)."""
    splits = [(name, len(s)) for name, s in bench.splits().items()]
    blob = json.dumps([VERSION, model_id, bench.fingerprint, bench.spec.key(), splits], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _path(cache_dir: Path | str, key: str) -> Path:
    return Path(cache_dir) / "outputs" / f"{key}.npz"


def load(cache_dir: Path | str, key: str, bench) -> Optional[dict[str, Outputs]]:
    """The stored outputs of `key` with the benchmark's inputs attached, or None (absent, unreadable, other splits)."""
    path = _path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for name, split in bench.splits().items():
                extras = {k.split("/", 2)[2]: z[k] for k in z.files if k.startswith(f"{name}/extra/")}
                o = Outputs(z[f"{name}/logits"], z[f"{name}/features"].astype(np.float32), z[f"{name}/labels"],
                            split.images, extras)
                if len(o) != len(split):
                    return None
                out[name] = o
        return out
    except (OSError, KeyError, ValueError):
        return None


def save(cache_dir: Path | str, key: str, outputs: dict[str, Outputs]) -> bool:
    """Store the outputs under `key`; False (nothing written) when the cache cannot be written."""
    path = _path(cache_dir, key)
    arrays = {}
    for name, o in outputs.items():
        small = o.features.ndim == 2 and o.features.shape[1] < FLOAT16_FROM_DIM
        arrays[f"{name}/logits"] = o.logits.astype(np.float32)
        arrays[f"{name}/features"] = o.features.astype(np.float32 if small else np.float16)
        arrays[f"{name}/labels"] = o.labels
        arrays.update({f"{name}/extra/{k}": v for k, v in o.extras.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
        return False
