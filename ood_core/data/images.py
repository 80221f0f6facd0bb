"""A split's images kept compact (uint8 at their native size), served as normalised float32 batches on demand.

A large split (60,000 MNIST or 50,000 CIFAR training images) held as float32 at the experiment's size costs 4 bytes a
value per copy; kept as the decoded uint8 it costs one, and the float values exist only for the batch being used (the
forward pass, a training step, a detector that runs the network again). Every step from the stored values to the
network's input is computed per image and per value, so a batch gives, bit for bit, the float32 numbers the same rows
of a whole-array conversion give:

    value = (resize(min(stored / max_value, 1), side) - mean) / std        all in float32

(`max_value` absent: the stored values are already pixels in [0, 1]; `mean` absent: they are the inputs themselves.)
Bilinear resizing (datasets.resize) treats every image and channel on its own, so it too may run per batch.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

BATCH = 4096  # images converted at a time when a whole array is asked for


class Images:
    """(n, c, side, side) normalised float32 images, stored compactly; numpy-like reading along the first axis.

    `images[i]`, `images[a:b]`, `images[index_array]` and `np.asarray(images)` return float32 ndarrays (only the rows
    asked for are converted); `batches(size)` yields consecutive batches; `take(idx)` is another Images of those rows,
    still compact. Nothing is cached: the float values of the whole array exist only while a caller holds them.
    """

    def __init__(self, stored: np.ndarray, side: Optional[int] = None, max_value: Optional[float] = None,
                 mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None):
        if stored.ndim != 4:
            raise ValueError(f"images must be (n, channels, height, width), got shape {stored.shape}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.stored = stored
        self.side = int(side) if side is not None else int(stored.shape[-1])
        self.max_value = max_value
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = None if std is None else np.asarray(std, np.float32).reshape(-1, 1, 1)

    # --- numpy-like surface ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stored)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.stored), int(self.stored.shape[1]), self.side, self.side)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def is_plain(self) -> bool:
        """Whether the stored array is already the float32 inputs (nothing to convert)."""
        return (self.max_value is None and self.mean is None and self.side == self.stored.shape[-1]
                and self.stored.dtype == np.float32)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # rows first, then the other axes on the converted values
            if not key or key[0] is Ellipsis:
                return self.materialise()[key]
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, (int, np.integer)):
            return self._convert(self.stored[[int(key)]])[0]
        return self._convert(self.stored[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.materialise()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return (f"Images(shape={self.shape}, stored={self.stored.dtype}{tuple(self.stored.shape)}, "
                f"max_value={self.max_value}, normalised={'yes' if self.mean is not None else 'no'})")

    # --- reading ----------------------------------------------------------------------------------------------
    def materialise(self) -> np.ndarray:
        """The whole (n, c, side, side) float32 array, converted BATCH images at a time into one output array (the
        stored array itself when there is nothing to convert, as a plain array split always gave it)."""
        if self.is_plain:
            return self.stored
        out = np.empty(self.shape, np.float32)
        for i in range(0, len(self), BATCH):
            out[i:i + BATCH] = self._convert(self.stored[i:i + BATCH])
        return out

    def batches(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """Consecutive float32 batches of `batch_size` images (the last one shorter)."""
        for i in range(0, len(self), batch_size):
            yield self[i:i + batch_size]

    def take(self, idx) -> "Images":
        """The rows `idx` as another compact Images (the stored values copied, the conversion the same)."""
        return Images(self.stored[idx], self.side, self.max_value, self.mean, self.std)

    def _to_pixels(self, block: np.ndarray) -> np.ndarray:
        from .datasets import resize

        if self.max_value is not None:  # datasets.to_float's formula
            block = np.minimum(block.astype(np.float32) / np.float32(self.max_value), np.float32(1.0))
        return resize(block, self.side)

    def _convert(self, block: np.ndarray) -> np.ndarray:
        if self.is_plain:
            return block
        p = self._to_pixels(block)
        if self.mean is None:
            return p
        return ((p - self.mean) / self.std).astype(np.float32)
