"""Uploaded images made model inputs: decoded safely (size limits, damaged files, transparency, 16-bit greys),
converted to the benchmark's channels and size, normalised like the ID data. Refusals are UploadError, with a
message for the user."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

MIN_SIDE, MAX_SIDE = 4, 4096  # pixels per side; PIL's own decompression-bomb check guards the pixel count


class UploadError(ValueError):
    """An upload that cannot be used; the message is meant for the user."""


@dataclass
class Upload:
    """A decoded upload: `x` normalised (1, C, H, W) float32 for the model, `pixels` (C, H, W) in [0, 1]."""

    x: np.ndarray
    pixels: np.ndarray
    inverted: bool
    original_size: tuple[int, int]  # (width, height)
    original_mode: str


def _read_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "getvalue"):
        return data.getvalue()
    if hasattr(data, "read"):
        return data.read()
    raise UploadError(f"expected the uploaded file's bytes, got {type(data).__name__}")


def preprocess_upload(image_bytes, bench, invert="auto") -> Upload:
    """Decode an uploaded image and make it a model input like the benchmark's.

    Steps: decode with PIL; reject sides < 4 or > 4096 px; flatten transparency onto white; convert to the
    benchmark's channels ("L" for 1 channel, else RGB); resize to its image size (bilinear); map to [0, 1];
    invert when asked, or with invert="auto" when the background (median of the border pixels) is bright,
    because the digits are light strokes on a dark background; normalise with bench.normalise.
    Any unreadable, truncated or out-of-range file raises ValueError with a message for the user.
    """
    from PIL import Image, UnidentifiedImageError

    if invert not in ("auto", True, False):
        raise UploadError(f"invert must be 'auto', True or False, got {invert!r}")
    data = _read_bytes(image_bytes)
    if not data:
        raise UploadError("the uploaded file is empty")
    c, h, w = bench.input_shape
    try:
        with Image.open(io.BytesIO(data)) as im:
            ow, oh = im.size
            if ow < MIN_SIDE or oh < MIN_SIDE:
                raise UploadError(f"the image is {ow}x{oh} px; it must be at least {MIN_SIDE}x{MIN_SIDE}")
            if ow > MAX_SIDE or oh > MAX_SIDE:
                raise UploadError(f"the image is {ow}x{oh} px; it must be at most {MAX_SIDE}x{MAX_SIDE}")
            mode = im.mode
            im.load()  # decode now, so truncated files fail here
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greys: scale to 8 bits
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
                im2 = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8))
            elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im2 = Image.alpha_composite(bg, rgba)
            else:
                im2 = im
            im2 = im2.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
    except UploadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise UploadError(f"could not read the upload as an image (PNG, JPEG, BMP, ...): {e}") from None
    except (OSError, SyntaxError, EOFError, ValueError, TypeError) as e:
        raise UploadError(f"the image file is damaged or truncated and could not be decoded: {e}") from None
    arr = np.asarray(im2, dtype=np.float64) / 255.0
    pixels = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if c == 3 and pixels.shape[0] != 3:
        pixels = np.repeat(pixels[:1], 3, axis=0)
    if invert == "auto":
        grey = pixels.mean(axis=0)
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        do_invert = bool(np.median(border) > 0.5)
    else:
        do_invert = bool(invert)
    if do_invert:
        pixels = 1.0 - pixels
    pixels = pixels.astype(np.float32)
    x = np.asarray(bench.normalise(pixels[None]), dtype=np.float32)
    return Upload(x, pixels, do_invert, (ow, oh), mode)
