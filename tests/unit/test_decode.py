"""The one decoding function: formats, dynamic range, orientation, colour modes, bad inputs."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageFile

from model.decode import (
    DEFAULT_MAX_PIXELS,
    REDUCING_GAP,
    Decoded,
    DecodeError,
    area_reduce,
    decode,
    reduced_size,
)
from model.preprocess import Preset
from tests.helpers import BAD_INPUTS, sample_images
from tests.make_inputs import (
    grey_radiograph,
    png_bytes,
    png_header_only,
    shared_radiographs,
    truncated_with_end_marker,
    zeros_png,
)

# Pillow warns (and we refuse) between its own limit and twice that; the warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

TRUNCATED = sorted((BAD_INPUTS / "truncated_jpeg").glob("*.jpg"))
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return grey_radiograph()


# -- good files ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", sample_images(), ids=lambda p: p.name)
def test_shipped_radiographs_decode_as_grey_pixels_without_warning(path: Path) -> None:
    decoded = decode(path)
    with Image.open(path) as image:
        assert (decoded.width, decoded.height) == image.size
    assert decoded.format == "JPEG"
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.ndim == 2
    assert decoded.pixels.min() >= 0.0 and decoded.pixels.max() <= 1.0
    assert decoded.metadata == {}


def test_real_radiographs_are_neither_rejected_nor_flagged() -> None:
    """The truncation and quality checks have no false positives on real FracAtlas images."""
    paths = shared_radiographs(4000)[::25] or sample_images()
    outcomes = {p.name: decode(p).metadata for p in paths}
    assert all(metadata == {} for metadata in outcomes.values()), outcomes


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_keep_their_dynamic_range(fmt: str) -> None:
    # 1000…1000+4095·9: an 8-bit truncation would collapse the low byte's detail
    ramp = (1000 + (np.arange(64 * 64).reshape(64, 64) % 4096) * 9).astype(np.uint16)
    decoded = decode(encoded(Image.fromarray(ramp), fmt))
    expected = (ramp - ramp.min()) / float(ramp.max() - ramp.min())
    assert decoded.format == fmt
    assert len(np.unique(decoded.pixels)) > 1000
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)


def test_16_bit_big_endian_tiff(grey: np.ndarray) -> None:
    values = grey.astype(np.uint16) * 257
    little = decode(encoded(Image.fromarray(values), "TIFF"))
    big = decode(encoded(Image.fromarray(values.astype(">u2")), "TIFF"))
    np.testing.assert_array_equal(little.pixels, big.pixels)


def test_exif_orientation_is_honoured(grey: np.ndarray) -> None:
    image = Image.fromarray(grey)
    plain = decode(encoded(image, "JPEG", quality=95), target_size=None).pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    rotated = decode(encoded(image, "JPEG", quality=95, exif=exif.tobytes()), target_size=None)
    assert rotated.pixels.shape == plain.shape[::-1]
    np.testing.assert_array_equal(rotated.pixels, np.rot90(plain, k=-1))


def test_palette_rgb_rgba_cmyk_and_grey_normalise_the_same(grey: np.ndarray) -> None:
    expected = grey.astype(np.float32) / 255
    luminance = Image.fromarray(grey)
    palette = Image.fromarray(grey, mode="L").convert("P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.putdata(grey.reshape(-1).tolist())
    rgba = luminance.convert("RGBA")
    cmyk = Image.merge(
        "CMYK", [Image.new("L", luminance.size, 0)] * 3 + [luminance.point(lambda v: 255 - v)]
    )
    variants = {
        "L png": encoded(luminance, "PNG"),
        "P png": encoded(palette, "PNG"),
        "RGB png": encoded(luminance.convert("RGB"), "PNG"),
        "RGBA png": encoded(rgba, "PNG"),
        "LA png": encoded(luminance.convert("LA"), "PNG"),
        "CMYK tiff": encoded(cmyk, "TIFF"),
        "L tiff": encoded(luminance, "TIFF"),
        "RGB bmp": encoded(luminance.convert("RGB"), "BMP"),
        "P gif": encoded(palette, "GIF"),
        "L webp lossless": encoded(luminance, "WEBP", lossless=True),
        "L ppm": encoded(luminance, "PPM"),
    }
    for name, data in variants.items():
        decoded = decode(data)
        assert decoded.metadata == {}, name
        np.testing.assert_allclose(decoded.pixels, expected, atol=1.5 / 255, err_msg=name)


def test_transparent_pixels_become_black_background(grey: np.ndarray) -> None:
    rgba = Image.fromarray(grey).convert("RGBA")
    alpha = np.full(grey.shape, 255, dtype=np.uint8)
    alpha[:, : grey.shape[1] // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    pixels = decode(encoded(rgba, "PNG")).pixels
    assert pixels[:, : grey.shape[1] // 2].max() == 0.0
    np.testing.assert_allclose(
        pixels[:, grey.shape[1] // 2 :], grey[:, grey.shape[1] // 2 :] / 255, atol=1e-6
    )


def test_large_jpeg_decodes_at_reduced_size_but_reports_stored_size(grey: np.ndarray) -> None:
    big = Image.fromarray(grey).resize((3000, 2400))
    data = encoded(big, "JPEG", quality=90)
    reduced = decode(data, target_size=224)
    assert (reduced.width, reduced.height) == (3000, 2400)
    assert reduced.pixels.shape == (300, 375)  # 1/8 scale: the smallest still ≥ 224 per side
    full = decode(data, target_size=None)
    assert full.pixels.shape == (2400, 3000)
    preset = Preset(size=224)
    assert float((preset(reduced.pixels) - preset(full.pixels)).abs().mean()) < 0.02


def test_decoding_from_path_and_bytes_agree_and_threads_agree() -> None:
    paths = sample_images()
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(decode, paths * 3))
    for path, result in zip(paths * 3, threaded, strict=True):
        np.testing.assert_array_equal(result.pixels, decode(path.read_bytes()).pixels)


# -- input quality ----------------------------------------------------------------------------
@pytest.mark.skipif(not PHOTO.exists(), reason="matplotlib sample photo not installed")
def test_a_colour_photo_is_scored_but_flagged() -> None:
    decoded = decode(PHOTO)
    assert isinstance(decoded, Decoded)
    assert decoded.metadata["warning"].startswith("does not look like a radiograph")
    assert "coloured" in decoded.metadata["warning"]


def test_radiograph_with_a_small_coloured_marker_or_faint_tint_is_not_flagged(
    grey: np.ndarray,
) -> None:
    rgb = np.stack([grey] * 3, axis=-1).astype(np.int16)
    marked = rgb.copy()
    marked[10:40, 10:60] = (255, 0, 0)  # a red annotation box
    tinted = rgb + np.array([6, 0, -6])  # a faint warm cast from a phone photo of a film
    for array in (marked, tinted):
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        assert decode(encoded(image, "PNG")).metadata == {}


def test_a_blank_image_is_flagged() -> None:
    decoded = decode(encoded(Image.new("L", (64, 64), 90), "PNG"))
    assert "blank" in decoded.metadata["warning"]


# -- bad files: every one a DecodeError with a specific message -----------------------------
def _first_fixture() -> bytes:
    return sample_images()[0].read_bytes()


def _scrambled(data: bytes) -> bytes:
    """Same length, same header, every fifth byte after it flipped: a corrupted copy."""
    scrambled = bytearray(data)
    for index in range(200, len(data) - 200, 5):
        scrambled[index] ^= 0x5A
    return bytes(scrambled)


BAD_BYTES = {
    "zero-byte": (lambda: b"", "empty file (0 bytes)"),
    "text named .jpg": (lambda: b"patient list\n" * 40, "not a recognised image format"),
    "html named .png": (lambda: b"<!doctype html><html>404</html>" * 9, "not a recognised image"),
    "pdf named .jpg": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" * 20, "not a recognised image"),
    "eps (never run Ghostscript)": (
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 612 792\n" * 4,
        "not a recognised image format",
    ),
    "jpeg header only": (lambda: _first_fixture()[:400], "truncated image file"),
    "jpeg cut in half": (lambda: _first_fixture()[: len(_first_fixture()) // 2], "truncated"),
    "jpeg cut short then closed (decodes half grey)": (
        lambda: truncated_with_end_marker(_first_fixture()),
        "truncated JPEG: the end of the image is missing",
    ),
    "png cut in half": (lambda: png_bytes(grey_radiograph())[:20_000], "truncated"),
    "png with scrambled data": (
        lambda: _scrambled(png_bytes(grey_radiograph())),
        "corrupt image data",
    ),
    "bomb: header claims 50000x50000": (
        lambda: png_header_only(50_000, 50_000),
        "refused as a decompression bomb: 2,500,000,000 pixels",
    ),
    "bomb: header claims 100000x1000 (over the pixel cap)": (
        lambda: png_header_only(100_000, 1_000),
        "image too large: 100000×1000 = 100,000,000 pixels (limit 80,000,000)",
    ),
    "absurd: 1x5000": (lambda: png_header_only(1, 5000), "image too small to read: 1×5000"),
    "absurd: 8x8 icon": (
        lambda: encoded(Image.new("L", (8, 8)), "PNG"),
        "image too small to read: 8×8",
    ),
    "absurd: 4000x40 strip": (
        lambda: encoded(Image.new("L", (4000, 40)), "PNG"),
        "absurd dimensions: 4000×40 pixels (aspect ratio over 20:1)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BYTES), ids=list(BAD_BYTES))
def test_bad_bytes_raise_a_specific_decode_error(case: str) -> None:
    build, message = BAD_BYTES[case]
    with pytest.raises(DecodeError) as error:
        decode(build())
    assert message in str(error.value)


def test_pixel_cap_refuses_a_real_decodable_bomb_before_decoding_it() -> None:
    data = zeros_png(6000, 5000)  # 30 megapixels in ~30 kB
    assert len(data) < 100_000
    with pytest.raises(DecodeError, match=r"image too large: 6000×5000 = 30,000,000 pixels"):
        decode(data, max_pixels=20_000_000)
    assert DEFAULT_MAX_PIXELS >= 30_000_000
    assert decode(data, max_pixels=40_000_000, target_size=None).pixels.shape == (5000, 6000)


@pytest.mark.parametrize("path", TRUNCATED, ids=lambda p: p.name)
def test_real_truncated_jpegs_are_rejected(path: Path) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode(path)


@pytest.mark.parametrize("path", TRUNCATED, ids=lambda p: p.name)
def test_real_truncated_jpegs_are_rejected_even_if_pillow_is_told_to_load_them(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some library in the process may set LOAD_TRUNCATED_IMAGES; the grey fill still shows."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for target_size in (224, None):  # decoded as luma at reduced scale, and as full-size RGB
        with pytest.raises(DecodeError, match="truncated JPEG: the end of the image is missing"):
            decode(path, target_size=target_size)


def test_a_uniformly_grey_jpeg_is_blank_not_truncated() -> None:
    decoded = decode(encoded(Image.new("L", (64, 64), 128), "JPEG"))
    assert "blank" in decoded.metadata["warning"]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match=r"file not found \(deleted or moved"):
        decode(tmp_path / "gone.jpg")
    with pytest.raises(DecodeError, match=r"not a regular file \(directory\)"):
        decode(tmp_path)


def test_non_finite_float_tiff_values_do_not_reach_the_model() -> None:
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[0, :5] = [np.nan, np.inf, -np.inf, np.nan, 2.0]
    pixels = decode(encoded(Image.fromarray(values, mode="F"), "TIFF")).pixels
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


@pytest.mark.parametrize(("width", "height"), [(1200, 900), (1201, 899), (1000, 997)])
def test_area_reduction_spans_the_whole_image(width: int, height: int) -> None:
    # The mean of a ramp over an output pixel's area is the ramp at its centre: every output
    # pixel must cover the same share of the input, edges included (nothing cropped or added).
    x = np.arange(width, dtype=np.float32) + 0.5
    y = np.arange(height, dtype=np.float32) + 0.5
    ramp = x[None, :] / width + 2 * y[:, None] / height
    size = (300, 225)
    reduced = area_reduce(ramp, size)
    centres_x = (np.arange(size[0]) + 0.5) / size[0]
    centres_y = (np.arange(size[1]) + 0.5) / size[1]
    np.testing.assert_allclose(reduced, centres_x[None, :] + 2 * centres_y[:, None], atol=1e-4)


def test_large_16_bit_png_is_reduced_as_if_stretched_at_full_size() -> None:
    rng = np.random.default_rng(0)
    grey = grey_radiograph(size=(1250, 1500)).astype(np.float32)
    values = np.clip(grey * 200 + 1000 + rng.normal(0, 40, grey.shape), 0, 65535).astype(np.uint16)
    data = png_bytes(values)
    full = decode(data, target_size=None).pixels
    expected = (values - float(values.min())) / float(values.max() - values.min())
    np.testing.assert_allclose(full, expected, atol=1e-6)
    reduced = decode(data, target_size=128).pixels
    size = reduced_size(1250, 1500, 128)
    assert min(size) >= REDUCING_GAP * 128 and reduced.shape == (size[1], size[0])
    np.testing.assert_allclose(reduced, area_reduce(expected, size), atol=1e-6)
    assert decode(data, target_size=128).width == 1250  # the stored size, for boxes
