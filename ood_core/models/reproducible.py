"""Same Spec, same weights: randomness owned by the training call and a fixed thread count.

Three things made a training's result depend on things nobody chose:
- initial weights and dropout masks came from torch's *global* generator, which every thread of a server
  shares: two trainings at once interleaved their draws. Here the initialisation (`seeded_init_`) and the
  dropout masks (`SeededDropout`) draw from a `torch.Generator` that the training call owns.
- the intra-op thread count changes the order of floating-point reductions in the convolutions' backward
  pass, so OMP_NUM_THREADS=1 and =2 trained different weights. Training runs with TRAIN_THREADS threads
  (`training_threads()`), recorded in each checkpoint's provenance.
- on CUDA, cuDNN may pick non-deterministic kernels: `training_threads` also asks for deterministic ones.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Optional

import torch
from torch import nn

from ..device import is_cuda, resolve_device

# One thread: bit-identical weights whatever OMP_NUM_THREADS says or how many cores the machine has, and on a
# shared server each training takes one core (the training queue runs at most as many as there are cores).
TRAIN_THREADS = 1

_NO_PARAMS_OF_THEIR_OWN = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_DETERMINISTIC_INIT = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # ones and zeros


def seeded_init_(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Re-draw every weight with PyTorch's default initialisation, from `gen` instead of the global generator.

    Linear and convolution layers: W ~ kaiming_uniform(a=sqrt(5)), b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as their
    reset_parameters() does; normalisation layers keep their deterministic ones and zeros. A layer of any other
    kind with parameters of its own is refused, so a new architecture cannot silently fall back to global state.
    """
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            with torch.no_grad():
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
        elif own and not isinstance(m, _DETERMINISTIC_INIT + _NO_PARAMS_OF_THEIR_OWN):
            raise TypeError(f"seeded_init_ does not know how to initialise layer {name!r} ({type(m).__name__})")
    return model


class SeededDropout(nn.Dropout):
    """nn.Dropout whose masks come from `self.generator` when one is set (training, MC dropout), else global state.

    The state_dict is that of nn.Dropout (empty), so checkpoints are unchanged; the mask is drawn on the CPU,
    so one CPU generator serves any device.
    """

    generator: Optional[torch.Generator] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = torch.empty(x.shape, dtype=x.dtype).bernoulli_(keep, generator=self.generator).to(x.device)
        return x * mask / keep


def use_generator(model: nn.Module, gen: Optional[torch.Generator]) -> None:
    """Point every SeededDropout of `model` at `gen` (None: back to the global generator)."""
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = gen


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextlib.contextmanager
def training_threads(device: Optional[str] = None) -> Iterator[int]:
    """Run the body with TRAIN_THREADS intra-op threads (deterministic kernels on CUDA); yields the count.

    The count is partly per thread (OpenMP's setting belongs to the calling thread) and partly per process, so
    every training thread sets it for itself, and the last training to leave restores the count the first one
    found. Inference meanwhile may run with it too, which does not change its numbers (a forward pass does not
    depend on the thread count).
    """
    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        _threads_users += 1
        torch.set_num_threads(TRAIN_THREADS)
    if is_cuda(resolve_device(device)):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield TRAIN_THREADS
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)
