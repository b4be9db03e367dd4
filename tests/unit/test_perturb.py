"""Perturbed copies for `fracture evaluate --perturb`: each variant makes the image it names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import load_images, scan
from model.perturb import VARIANTS, perturb, transform
from tests.helpers import sample_images

WIDTH, HEIGHT = 40, 30


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def original() -> np.ndarray:
    """A non-square greyscale image with every pixel different (up to 8 bits)."""
    return (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 251).astype(np.uint8)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("rot90", lambda a: np.rot90(a, 1)),  # counter-clockwise
        ("rot180", lambda a: np.rot90(a, 2)),
        ("rot270", lambda a: np.rot90(a, 3)),
        ("hflip", lambda a: a[:, ::-1]),
    ],
)
def test_geometric_variants_move_every_pixel_losslessly(
    original: np.ndarray, variant: str, expected: object
) -> None:
    out = perturb(png(original), variant)
    assert Image.open(io.BytesIO(out)).format == "PNG"
    np.testing.assert_array_equal(pixels(out), expected(original))  # type: ignore[operator]


def test_rot90_of_a_non_square_image_swaps_width_and_height(original: np.ndarray) -> None:
    assert Image.open(io.BytesIO(perturb(png(original), "rot90"))).size == (HEIGHT, WIDTH)


def test_half_is_half_the_size_losslessly_saved(original: np.ndarray) -> None:
    out = Image.open(io.BytesIO(perturb(png(original), "half")))
    assert (out.format, out.size) == ("PNG", (WIDTH // 2, HEIGHT // 2))


def test_jpeg40_is_a_new_jpeg_of_the_same_size() -> None:
    source = sample_images()[0].read_bytes()
    out = perturb(source, "jpeg40")
    image = Image.open(io.BytesIO(out))
    assert (image.format, image.size) == ("JPEG", Image.open(io.BytesIO(source)).size)
    assert out != source
    assert len(out) < len(source)


def test_variants_start_from_the_upright_image() -> None:
    # Orientation 6: stored 40×30, shown 30×40. The copy is of what is shown, with no tag left.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("L", (WIDTH, HEIGHT), 128).save(buffer, "JPEG", exif=exif.tobytes())
    out = Image.open(io.BytesIO(perturb(buffer.getvalue(), "hflip")))
    assert out.size == (HEIGHT, WIDTH)
    assert out.getexif().get(0x0112) is None


def test_the_variant_names_are_the_ones_the_report_promises() -> None:
    assert list(VARIANTS) == ["rot90", "rot180", "rot270", "hflip", "jpeg40", "half"]
    with pytest.raises(ValueError, match="rot90, rot180"):
        transform("rot45")


def test_load_images_decodes_the_transformed_bytes(tmp_path: Path) -> None:
    for image in (sample_images()[0], sample_images()[-1]):
        folder = tmp_path / ("fractured" if image.name.startswith("fractured") else "not_fractured")
        folder.mkdir()
        (folder / image.name).write_bytes(image.read_bytes())
    samples = scan(tmp_path)
    plain = load_images(samples, size=32, exact=True, letterbox=True)
    turned = load_images(samples, size=32, exact=True, letterbox=True, transform=transform("rot90"))
    assert turned.upright_sizes == [(h, w) for w, h in plain.upright_sizes]
    # The turned file (a PNG, decoded at reduced size) is as tall as the original was wide.
    for (rows, columns), (width, height) in zip(
        turned.pixel_shapes, plain.upright_sizes, strict=True
    ):
        assert rows / columns == pytest.approx(width / height, rel=0.02)
    assert not torch.equal(plain.images, turned.images)
