"""The one decoding function: file bytes → greyscale float pixels in [0, 1], or DecodeError.

Used by training, worker, CLI and dashboard alike.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 80_000_000


class DecodeError(ValueError):
    """A file that cannot become pixels; the message is shown to users and stored."""


@dataclass
class Decoded:
    pixels: np.ndarray  # (H, W) float32 in [0, 1]
    format: str
    width: int  # of the stored image, before any reduced-size decoding
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _read(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except FileNotFoundError as exc:
        raise DecodeError("file disappeared before it could be read") from exc
    except IsADirectoryError as exc:
        raise DecodeError("path is a directory, not an image file") from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc


def decode(
    source: Path | bytes, *, target_size: int | None = 224, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode an image file; with `target_size`, large JPEGs decode at reduced scale."""
    data = _read(source)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return _decode_pillow(data, target_size=target_size, max_pixels=max_pixels)


def _decode_pillow(data: bytes, *, target_size: int | None, max_pixels: int) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image too large: {width}×{height} = {width * height:,} pixels "
                    f"(limit {max_pixels:,})"
                )
            if width < 16 or height < 16:
                raise DecodeError(f"image too small to read: {width}×{height} pixels")
            if fmt == "JPEG" and target_size:
                image.draft("L", (target_size, target_size))
            image.load()
            image = ImageOps.exif_transpose(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise DecodeError("truncated image file (incomplete or corrupt data)") from exc
        raise DecodeError(f"corrupt image data: {reason}") from exc
    return Decoded(pixels=to_grey_float(image), format=fmt, width=width, height=height)


def to_grey_float(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → (H, W) float32 in [0, 1], keeping 16-bit dynamic range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if high <= low:
            return np.zeros(array.shape, dtype=np.float32)
        return ((array - low) / (high - low)).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0
