"""The one decoding function: file bytes → greyscale float pixels in [0, 1], or DecodeError.

Used by training, worker, CLI and dashboard alike. DICOM goes through `model.dicom`, every
other format through Pillow; both end in the same input-quality check (`model.quality`).
With a `target_size` (the model's input side), large images come back reduced by an integer
factor (JPEG: DCT scaling; DICOM, 16-bit PNG/TIFF and the rest: area averaging) while both
sides stay at least `REDUCING_GAP` × `target_size`; without one, at full resolution.
What is accepted and what is refused, and why, is in docs/FORMATS.md.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model import quality
from model.errors import DecodeError
from model.files import read_file

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 80_000_000
MIN_SIDE = 16  # smaller than this is an icon or a broken header, not a radiograph
MAX_ASPECT = 20  # longer than 20:1 is a strip, not a radiograph (long-leg stitches are ~1:4)
# Formats with a reliable signature only: magic-less ones (TGA, …) would "decode" random bytes,
# and EPS would start Ghostscript on untrusted input. (JPEG also yields MPO, phones' JPEGs.)
PILLOW_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP", "JPEG2000", "PPM")
SUPPORTED = "DICOM, JPEG, PNG, TIFF, BMP, GIF, WebP, JPEG 2000 or PPM"
# libjpeg fills the blocks after a premature end of data with this value in every channel.
JPEG_FILL_VALUE = 128
# An image is area-reduced only while both sides stay at least this many times the model's input
# side, so the preset's antialiased resize still averages over three or more pixels per output
# pixel (the idea of Pillow's `reducing_gap`); docs/FORMATS.md has what it changes and by how much.
REDUCING_GAP = 3

Image.init()  # register every plugin now: `Image.open(formats=…)` only looks at loaded ones


@dataclass
class Decoded:
    pixels: np.ndarray  # (H, W) float32 in [0, 1]; reduced in size when decoded for a model
    format: str
    width: int  # of the stored image, before any reduced-size decoding
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)
    transposed: bool = False  # EXIF orientation swapped width and height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the full-resolution image as it is shown, after EXIF rotation."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)


def decode(
    source: Path | bytes,
    *,
    target_size: int | None = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    patient_salt: str | None = None,
) -> Decoded:
    """Decode an image or DICOM file; with `target_size`, large ones come back reduced in size.

    `target_size`: the model's input side. The pixels keep the image's aspect ratio and stay at
    least `target_size` (JPEG) or `REDUCING_GAP` × `target_size` (other formats) on each side;
    `None` gives the full resolution (for rendering).

    `patient_salt`: when given, a DICOM file's patient ID is kept only as a salted hash in
    `metadata["patient_hash"]`; without it no patient-derived value is computed at all.
    Raises DecodeError, and nothing else, for any file that cannot be scored.
    """
    data = source if isinstance(source, bytes) else read_file(source)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        from model import dicom

        if dicom.is_dicom(data):
            decoded = dicom.decode_dicom(
                data, max_pixels=max_pixels, patient_salt=patient_salt, target_size=target_size
            )
        else:
            decoded = _decode_pillow(data, target_size=target_size, max_pixels=max_pixels)
    except DecodeError as exc:
        # Parsers quote the bytes they choked on; the message is stored and shown: one tidy line.
        message = _one_line(str(exc))
        if message == str(exc):
            raise
        raise DecodeError(message) from exc
    except MemoryError as exc:
        raise DecodeError("not enough memory to decode this image") from exc
    except Exception as exc:
        # A hostile file can trip any parser bug; one file must never stop a batch.
        log.warning("unexpected %s while decoding", type(exc).__name__, exc_info=True)
        raise DecodeError(f"corrupt or unsupported file ({_reason(exc)})") from exc
    except BaseException as exc:
        # Rust decoders (PyO3) turn a panic into PanicException, a BaseException.
        if type(exc).__name__ != "PanicException":
            raise
        log.warning("decoder panic while decoding", exc_info=True)
        raise DecodeError(f"corrupt or unsupported file (decoder failure: {_reason(exc)})") from exc
    if decoded.pixels.ndim != 2 or min(decoded.pixels.shape) < 1:
        raise DecodeError(f"unexpected pixel layout {decoded.pixels.shape}: cannot score it")
    if not np.isfinite(decoded.pixels).all():
        raise DecodeError("pixel values are not finite numbers (NaN or infinity)")
    return decoded


def check_dimensions(width: int, height: int, max_pixels: int) -> None:
    """Refuse sizes no radiograph has, before any pixel memory is allocated."""
    if width * height > max_pixels:
        raise DecodeError(
            f"image too large: {width}×{height} = {width * height:,} pixels (limit {max_pixels:,})"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise DecodeError(
            f"image too small to read: {width}×{height} pixels (minimum {MIN_SIDE} per side)"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DecodeError(
            f"absurd dimensions: {width}×{height} pixels (aspect ratio over {MAX_ASPECT}:1)"
        )


def reduced_size(width: int, height: int, target_size: int | None) -> tuple[int, int]:
    """(width, height) to area-reduce a decoded image to for `target_size`: an integer factor
    smaller (the largest dividing both sides, else about the largest) with both sides at least
    `REDUCING_GAP` × `target_size`; else its own size.

    The short side keeps the image's proportions and is rounded so that a letterbox preset of
    `target_size` gives the same inner size as from the full image (the placement is what a
    model notices most: one column cropped off a 2,465 px radiograph moved the shipped model's
    probability by up to 0.013).
    """
    if not target_size or target_size < 1:
        return width, height
    factor = min(width, height) // (REDUCING_GAP * target_size)
    if factor < 2:
        return width, height
    inner = round(min(width, height) * (target_size / max(width, height)))
    for divisor in range(factor, 1, -1):
        # A factor that divides both sides takes OpenCV's fast path (a third of the time) and
        # keeps more detail; only when there is none, the largest factor in general.
        if width % divisor == 0 and height % divisor == 0:
            short, long = min(width, height) // divisor, max(width, height) // divisor
            if round(short * (target_size / long)) == inner:
                return width // divisor, height // divisor
    long_side, short_side = max(width, height), min(width, height)
    new_long = round(long_side / factor)
    exact = short_side * new_long / long_side
    candidates = sorted({math.floor(exact), math.ceil(exact)}, key=lambda side: abs(side - exact))
    new_short = next(
        (side for side in candidates if round(side * (target_size / new_long)) == inner),
        candidates[0],
    )
    return (new_long, new_short) if width >= height else (new_short, new_long)


def area_reduce(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) pixels averaged over the area each of `size` = (width, height) output pixels
    covers, as float32; the output spans exactly the input (no edge cropped or added).

    Area averaging is linear, so it commutes with any linear grey mapping applied before or
    after it. Sides that divide exactly take OpenCV's integer-factor path (about 3 ms for
    3000×2400 on one core, GIL released); the others its general one (3–4× that).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    height, width = pixels.shape[:2]
    new_width, new_height = size
    if (new_width, new_height) == (width, height):
        return pixels
    if height % new_height and not width % new_width:
        pixels = _area(pixels, (new_width, height))  # the integer factor first, on the big image
    elif width % new_width and not height % new_height:
        pixels = _area(pixels, (width, new_height))
    return _area(pixels, (new_width, new_height))


def _area(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    reduced = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return reduced.reshape(size[1], size[0], *pixels.shape[2:])


def _one_line(text: str, limit: int = 300) -> str:
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    text = _one_line(str(exc), 200)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode_pillow(data: bytes, *, target_size: int | None, max_pixels: int) -> Decoded:
    try:
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        fmt = image.format or "unknown"
        width, height = image.size
        check_dimensions(width, height, max_pixels)
        jpeg, stored_mode = fmt in ("JPEG", "MPO"), image.mode
        if jpeg and target_size:
            # libjpeg scales the DCT and, for colour files, outputs luma directly: fast.
            image.draft("L" if stored_mode == "RGB" else stored_mode, (target_size, target_size))
        image.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_message(exc, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not a recognised image format (expected {SUPPORTED})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise DecodeError(
                "truncated image file (incomplete or corrupt data): not scored"
            ) from exc
        raise DecodeError(f"corrupt image data: {reason}") from exc
    if jpeg and _grey_filled_tail(image):
        raise DecodeError(
            "truncated JPEG: the end of the image is missing (decoded as flat grey): not scored"
        )
    upright = _exif_transpose(image)
    transposed = upright.size != image.size
    pixels = to_grey_float(upright, reduced_size(*upright.size, target_size))
    if jpeg and stored_mode == "RGB" and image.mode == "L":
        rgb = _jpeg_colour_preview(data)
    else:
        rgb = _rgb_preview(upright)
    warning = quality.assess(pixels, rgb)
    metadata: dict[str, Any] = {"warning": warning} if warning else {}
    return Decoded(
        pixels=pixels,
        format=fmt,
        width=width,
        height=height,
        metadata=metadata,
        transposed=transposed,
    )


def _bomb_message(exc: Exception, max_pixels: int) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) >= 2:
        return (
            f"refused as a decompression bomb: {numbers[0]:,} pixels "
            f"(limit {min(numbers[1], max_pixels):,})"
        )
    return f"refused as a decompression bomb: {exc}"


def _grey_filled_tail(image: Image.Image) -> bool:
    """True if the image ends in the flat fill libjpeg writes after a premature end of data.

    Pillow refuses most truncated JPEGs, but not one whose data stops early and is followed by
    an end-of-image marker, nor any when `ImageFile.LOAD_TRUNCATED_IMAGES` is set somewhere in
    the process: those decode "successfully" with the missing blocks flat grey.
    """
    if image.mode not in ("L", "RGB") or image.getpixel((image.width - 1, image.height - 1)) != (
        JPEG_FILL_VALUE if image.mode == "L" else (JPEG_FILL_VALUE,) * 3
    ):
        return False  # the last block is always missing from a cut stream
    grey = np.asarray(image if image.mode == "L" else image.convert("L"))
    flat = grey.reshape(-1)
    differs = np.flatnonzero(flat[::-1] != JPEG_FILL_VALUE)
    if differs.size == 0:  # a uniformly grey picture is blank, not truncated
        return False
    tail = int(differs[0])  # trailing pixels, in raster order, exactly at the fill value
    return tail >= max(64, grey.shape[1] // 8)


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Honour EXIF orientation; a malformed EXIF block is metadata damage, not pixel damage."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError) as exc:
        log.info("ignoring unreadable EXIF orientation: %s", _reason(exc))
        return image


def _rgb_preview(image: Image.Image) -> np.ndarray | None:
    """A small (h, w, 3) float copy of a colour image for the quality check; None if grey."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return None
    if image.mode == "P" and not _palette_has_colour(image):
        return None
    preview = _composited(image).convert("RGB")
    preview.thumbnail((128, 128), Image.Resampling.BOX)
    return np.asarray(preview, dtype=np.float32) / 255.0


def _jpeg_colour_preview(data: bytes) -> np.ndarray | None:
    """The colour check's input for a JPEG decoded as luma: a 1/8-scale colour decode (cheap)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as small:
            small.draft("RGB", (max(1, small.width // 8), max(1, small.height // 8)))
            preview = small.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        log.info("no colour preview: %s", _reason(exc))
        return None
    preview.thumbnail((128, 128), Image.Resampling.BOX)
    return np.asarray(preview, dtype=np.float32) / 255.0


def _palette_has_colour(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    entries = np.asarray(palette[: len(palette) // 3 * 3], dtype=np.int16).reshape(-1, 3)
    return bool((entries.max(axis=1) - entries.min(axis=1) > 8).any())


def _composited(image: Image.Image) -> Image.Image:
    """Transparent pixels become black, as on a radiograph's background."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA"))
    return image


def to_grey_float(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """Any Pillow mode → (H, W) float32 in [0, 1], keeping 16-bit dynamic range.

    `size` (width, height): area-reduce the result to it (see `area_reduce`). 16- and 32-bit
    images are
    stretched from their own minimum to maximum over every pixel, then reduced: the same as
    reducing the stretched full-size image, because the stretch is linear.
    """
    size = size or image.size
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode == "F":
            array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(array.min()), float(array.max())
        if high <= low:
            return np.zeros((size[1], size[0]), dtype=np.float32)
        reduced = area_reduce(array, size)
        return ((reduced - np.float32(low)) * np.float32(1.0 / (high - low))).astype(np.float32)
    image = _composited(image)
    if image.mode != "L":
        image = image.convert("L")
    if size != image.size:
        return area_reduce(np.asarray(image), size) * np.float32(1 / 255.0)
    return np.asarray(image, dtype=np.float32) / 255.0
