"""Copies of a radiograph file as another site might send it: turned, mirrored, compressed
harder or at lower resolution.

Each variant works on the file's bytes and returns new file bytes, so the perturbed copy then
takes the product's own decoding and preprocessing path. Geometric and resolution variants are
saved losslessly (PNG), so the variant is the only change; `jpeg40` is the one lossy re-encoding.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageOps

from model.decode import DecodeError

JPEG_QUALITY = 40


def _rotate(degrees: int) -> Callable[[Image.Image], Image.Image]:
    transpose = {
        90: Image.Transpose.ROTATE_90,
        180: Image.Transpose.ROTATE_180,
        270: Image.Transpose.ROTATE_270,
    }[degrees]
    return lambda image: image.transpose(transpose)


def _half(image: Image.Image) -> Image.Image:
    size = (max(1, image.width // 2), max(1, image.height // 2))
    return image.resize(size, Image.Resampling.LANCZOS)


# name → (what is done to the upright image, the format it is saved in)
VARIANTS: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "rot90": (_rotate(90), "PNG"),  # counter-clockwise, as Pillow turns
    "rot180": (_rotate(180), "PNG"),
    "rot270": (_rotate(270), "PNG"),
    "hflip": (lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
    "jpeg40": (lambda image: image, "JPEG"),
    "half": (_half, "PNG"),
}


def perturb(data: bytes, variant: str) -> bytes:
    """The file `data` (any Pillow format) as `variant` of its upright image, as file bytes."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown perturbation {variant!r}; choose from {', '.join(VARIANTS)}")
    change, file_format = VARIANTS[variant]
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # A site turns the image it shows, not the orientation tag. (None comes back only
            # for in_place=True.)
            image = change(ImageOps.exif_transpose(opened) or opened)
            if file_format == "JPEG" and image.mode not in ("L", "RGB"):
                image = image.convert("RGB" if "A" in image.mode or image.mode == "P" else "L")
            buffer = io.BytesIO()
            options = {"quality": JPEG_QUALITY} if file_format == "JPEG" else {}
            image.save(buffer, file_format, **options)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"cannot make the {variant} copy: {exc}") from exc
    return buffer.getvalue()


def transform(variant: str) -> Callable[[bytes], bytes]:
    """`perturb` for one variant, as the `transform` hook of `model.data.load_images`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown perturbation {variant!r}; choose from {', '.join(VARIANTS)}")
    return lambda data: perturb(data, variant)
