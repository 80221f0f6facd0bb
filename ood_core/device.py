"""Where tensors go: the device is chosen once, here, and every placement in ood_core asks for it.

CUDA when this machine has a usable GPU, the CPU otherwise; the environment variable OOD_DEVICE (cpu, cuda or
cuda:N) forces one. Mixed precision (torch.autocast) is for training on CUDA only: on the CPU a training runs in
float32 exactly as before, so CPU weights do not depend on whether a GPU exists elsewhere.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

ENV_VAR = "OOD_DEVICE"


def check_device(device: str, origin: str = "--device") -> str:
    """'cpu', 'cuda' or 'cuda:N' that this machine has, lower-cased; a ValueError in one sentence otherwise.

    `origin` is where the value came from: a CLI flag ("--device") or the environment variable (ENV_VAR).
    """
    shown = f"{origin}={device}" if origin == ENV_VAR else f"{origin} {device}"
    fix = f"set {ENV_VAR}=cpu or unset it" if origin == ENV_VAR else f"use {origin} cpu"
    d = str(device).strip().lower()
    if d == "cpu":
        return d
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"{shown}: this machine has no usable CUDA device; {fix}")
        index = int(d[5:]) if ":" in d else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{shown}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return d
    raise ValueError(f"{origin} must be cpu, cuda or cuda:N, got {device!r}")


def default_device() -> str:
    """The device of this process: $OOD_DEVICE when set (checked), else "cuda" when available, else "cpu"."""
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        return check_device(forced, ENV_VAR)
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: Optional[str | torch.device] = None) -> str:
    """`device` as a string, or the default device when it is None: what every `device=None` parameter means."""
    return default_device() if device is None else str(device)


def is_cuda(device: Optional[str | torch.device]) -> bool:
    return str(device).startswith("cuda")


def amp_dtype() -> torch.dtype:
    """The autocast dtype on CUDA: bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def training_autocast(device: Optional[str | torch.device]) -> Iterator[None]:
    """Mixed precision for a training step's forward pass and loss on CUDA; nothing at all on the CPU."""
    if is_cuda(device):
        with torch.autocast("cuda", dtype=amp_dtype()):
            yield
    else:
        yield


def grad_scaler(device: Optional[str | torch.device]) -> torch.amp.GradScaler:
    """The loss scaler a float16 training on CUDA needs; disabled (a plain backward and step) everywhere else."""
    return torch.amp.GradScaler("cuda", enabled=is_cuda(device) and amp_dtype() == torch.float16)


def describe_device(device: Optional[str | torch.device] = None) -> str:
    """One line for people: "CUDA 0: NVIDIA H200 (mixed precision in training)" or "CPU (2 threads)"."""
    d = resolve_device(device)
    if is_cuda(d):
        index = int(d[5:]) if ":" in d else torch.cuda.current_device()
        return f"CUDA {index}: {torch.cuda.get_device_name(index)} (mixed precision in training)"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'' if n == 1 else 's'})"
