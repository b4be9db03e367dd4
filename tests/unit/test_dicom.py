"""DICOM: real files built with pydicom from real radiographs, read the way a viewer shows them.

Encoders found in this environment (pinned dependencies): RLE Lossless (pydicom, pylibjpeg-rle)
and JPEG 2000 lossless/lossy (pylibjpeg-openjpeg) through `Dataset.compress`; JPEG baseline is a
Pillow JPEG stream encapsulated as-is; nothing installed writes JPEG lossless (process 14 SV1),
so `tests.make_inputs.jpeg_lossless` builds it. Decoding goes through pylibjpeg-libjpeg,
pylibjpeg-openjpeg and pydicom's RLE decoder, as in production.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from model import dicom
from model.decode import REDUCING_GAP, DecodeError, area_reduce, decode, reduced_size
from model.preprocess import Preset
from tests.helpers import sample_images
from tests.make_inputs import (
    PATIENT_ID,
    PATIENT_NAME,
    SYNTAXES,
    dicom_bytes,
    dicom_without_pixels,
    grey_radiograph,
    png_bytes,
    shared_radiographs,
    stored_values,
)

PRESET = Preset(size=224)
LOSSY = {"j2k", "jpeg-baseline"}
CASES = [
    (syntax, bits, photometric)
    for syntax in SYNTAXES
    for bits in (8, 12, 16)
    for photometric in ("MONOCHROME2", "MONOCHROME1")
    if not (syntax == "jpeg-baseline" and bits != 8)
    # implicit VR and lossy JPEG 2000 differ from their siblings only in the container
    and not (syntax in ("implicit", "j2k") and bits != 16)
]


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return grey_radiograph()


def model_input(data: bytes) -> torch.Tensor:
    """What the model sees: decode, then the preprocessing preset."""
    return PRESET(decode(data).pixels)


def assert_same_model_input(dicom: bytes, reference: bytes, *, lossy: bool = False) -> None:
    seen, expected = model_input(dicom), model_input(reference)
    difference = (seen - expected).abs()
    if lossy:
        # normalised units (÷ std ≈ 0.225): 0.05 is about 1/90 of the grey range on average
        assert float(difference.mean()) < 0.05 and float(difference.max()) < 1.0
    else:
        assert float(difference.max()) < 1e-4


def test_every_transfer_syntax_used_here_can_be_decoded() -> None:
    for uid in {JPEGBaseline8Bit, JPEGLosslessSV1} | {SYNTAXES[s] for s in SYNTAXES}:
        assert get_decoder(uid).is_available, f"no decoder plugin for {uid.name}"


@pytest.mark.parametrize(("syntax", "bits", "photometric"), CASES, ids=lambda v: str(v))
def test_model_sees_the_same_pixels_as_from_a_png(
    grey: np.ndarray, syntax: str, bits: int, photometric: str
) -> None:
    data = dicom_bytes(grey, bits=bits, photometric=photometric, syntax=syntax)
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    assert ds.BitsStored == bits and ds.PhotometricInterpretation == photometric
    assert_same_model_input(data, png_bytes(grey), lossy=syntax in LOSSY)


@pytest.mark.parametrize("path", shared_radiographs(300)[::100], ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("syntax", "bits", "photometric"),
    [
        ("j2k-lossless", 12, "MONOCHROME1"),
        ("rle", 16, "MONOCHROME2"),
        ("jpeg-lossless", 16, "MONOCHROME1"),
    ],
    ids=lambda v: str(v),
)
def test_shared_fracatlas_radiographs_through_dicom(
    path: Path, syntax: str, bits: int, photometric: str
) -> None:
    grey = grey_radiograph(path)
    data = dicom_bytes(grey, bits=bits, photometric=photometric, syntax=syntax)
    assert_same_model_input(data, png_bytes(grey))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("syntax", ["explicit", "rle", "j2k-lossless"])
def test_without_a_window_the_range_is_stretched_like_a_16_bit_png(
    grey: np.ndarray, photometric: str, syntax: str
) -> None:
    data = dicom_bytes(grey, bits=12, photometric=photometric, syntax=syntax, window=False)
    sixteen_bit_png = png_bytes(stored_values(grey, 12).astype(np.uint16))
    assert_same_model_input(data, sixteen_bit_png)
    pixels = decode(data).pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0


@pytest.mark.parametrize("rescale", [(1.0, 12000.0), (2.0, 12000.0), (1.0, -1024.0)])
def test_modality_lut_is_applied_before_the_window(
    grey: np.ndarray, rescale: tuple[float, float]
) -> None:
    data = dicom_bytes(grey, bits=16, rescale=rescale, syntax="rle")
    assert pydicom.dcmread(io.BytesIO(data)).PixelRepresentation == 1
    assert_same_model_input(data, png_bytes(grey))


def test_voi_lut_sequence_is_preferred_to_the_window(grey: np.ndarray) -> None:
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor: entries, first value, bits
    lut.add_new(0x00283006, "US", [value // 16 for value in range(4096)])  # g·16 → g
    # the window alone would show a nearly black image
    data = dicom_bytes(grey, bits=12, WindowCenter=4000, WindowWidth=10, VOILUTSequence=[lut])
    assert_same_model_input(data, png_bytes(grey))


def test_window_from_enhanced_functional_groups(grey: np.ndarray) -> None:
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 2040.0, 4080.0, "LINEAR_EXACT"
    shared = Dataset()
    shared.FrameVOILUTSequence = [voi]
    wrong = Dataset()
    wrong.WindowCenter, wrong.WindowWidth = 100.0, 10.0  # overridden by the per-frame group
    per_frame = Dataset()
    per_frame.FrameVOILUTSequence = [voi]
    shared_wrong = Dataset()
    shared_wrong.FrameVOILUTSequence = [wrong]
    data = dicom_bytes(
        grey, bits=12, window=False,
        SharedFunctionalGroupsSequence=[shared_wrong], PerFrameFunctionalGroupsSequence=[per_frame],
    )  # fmt: skip
    assert_same_model_input(data, png_bytes(grey))


def test_multi_frame_scores_the_first_frame_and_says_so(grey: np.ndarray) -> None:
    for syntax in ("explicit", "rle", "j2k-lossless", "jpeg-lossless"):
        data = dicom_bytes(grey, bits=12, frames=3, syntax=syntax)
        assert_same_model_input(data, png_bytes(grey))
        warning = decode(data).metadata["warning"]
        assert "multi-frame DICOM (3 frames): only the first frame was scored" in warning


def test_bare_dataset_without_preamble_or_extension(grey: np.ndarray, tmp_path: Path) -> None:
    data = dicom_bytes(grey, bits=16, preamble=False)
    assert data[128:132] != b"DICM"
    path = tmp_path / "IM000001"
    path.write_bytes(data)
    assert decode(path).format == "DICOM"
    assert_same_model_input(data, png_bytes(grey))


def test_extensionless_part10_file_is_recognised_by_its_marker(
    grey: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "1.2.826.0.1.3680043.8.498.1"  # PACS exports name files by UID
    path.write_bytes(dicom_bytes(grey, syntax="rle"))
    assert decode(path).format == "DICOM"


def test_pixel_padding_is_background_and_not_part_of_the_range(grey: np.ndarray) -> None:
    values = stored_values(grey, 12).astype(np.uint16)
    padded = values.copy()
    padded[:, :40] = 65535  # collimator area marked with the padding value
    reference = values.astype(np.float32)
    reference[:, :40] = reference[:, 40:].min()
    data = dicom_bytes(grey, bits=16, window=False, PixelPaddingValue=65535)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = padded.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    pixels = decode(buffer.getvalue()).pixels
    assert pixels[:, :40].max() == 0.0
    body = reference[:, 40:]
    expected = (body - body.min()) / (body.max() - body.min())
    np.testing.assert_allclose(pixels[:, 40:], expected, atol=1e-6)


def test_colour_dicom_is_grey_scored_and_a_colour_photo_is_flagged(grey: np.ndarray) -> None:
    rgb_radiograph = np.stack([grey] * 3, axis=-1)
    photo_path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(photo_path) as photo:
        rgb_photo = np.asarray(photo.convert("RGB"))
    for array, flagged in ((rgb_radiograph, False), (rgb_photo, True)):
        data = _secondary_capture_rgb(array)
        decoded = decode(data)
        assert decoded.format == "DICOM" and decoded.pixels.shape == array.shape[:2]
        assert ("warning" in decoded.metadata) is flagged
    np.testing.assert_allclose(
        decode(_secondary_capture_rgb(rgb_radiograph)).pixels, grey / 255, atol=1 / 255
    )


def _secondary_capture_rgb(array: np.ndarray) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey_radiograph(size=(32, 32)), bits=8)))
    ds.Modality = "OT"
    ds.Rows, ds.Columns = array.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB"
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction", "PresentationLUTShape"):
        del ds[keyword]
    ds.PixelData = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


# -- metadata and privacy ---------------------------------------------------------------------
def test_metadata_is_recorded_without_patient_identity(grey: np.ndarray) -> None:
    decoded = decode(dicom_bytes(grey, bits=12, photometric="MONOCHROME1", syntax="rle"))
    assert decoded.width == grey.shape[1] and decoded.height == grey.shape[0]
    metadata = decoded.metadata
    assert {k: metadata[k] for k in ("modality", "body_part", "view_position", "study_date")} == {
        "modality": "DX",
        "body_part": "HAND",
        "view_position": "PA",
        "study_date": "20240131",
    }
    assert metadata["photometric"] == "MONOCHROME1" and metadata["bits_stored"] == 12
    assert "patient_hash" not in metadata  # no salt given: nothing patient-derived at all
    _assert_no_identity(metadata)


def test_patient_hash_is_a_salted_hmac_that_groups_studies(grey: np.ndarray) -> None:
    first = decode(dicom_bytes(grey), patient_salt="site-secret").metadata
    second = decode(dicom_bytes(grey[::-1].copy()), patient_salt="site-secret").metadata
    other_salt = decode(dicom_bytes(grey), patient_salt="another-site").metadata
    expected = hmac.new(b"site-secret", f"\x00{PATIENT_ID}".encode(), hashlib.sha256).hexdigest()
    assert first["patient_hash"] == second["patient_hash"] == expected
    assert other_salt["patient_hash"] != expected
    assert hashlib.sha256(PATIENT_ID.encode()).hexdigest() != expected  # not a bare hash
    _assert_no_identity(first)
    anonymous = decode(dicom_bytes(grey, patient=False), patient_salt="site-secret").metadata
    assert "patient_hash" not in anonymous


def _assert_no_identity(metadata: dict[str, object]) -> None:
    text = repr(metadata)
    for secret in (PATIENT_ID, "0042", *PATIENT_NAME.split("^")):
        assert secret not in text


def test_error_messages_never_quote_the_patient(grey: np.ndarray) -> None:
    """Decoder messages quote element values; one that holds a name is redacted."""
    surname = PATIENT_NAME.split("^")[0]
    with pytest.raises(DecodeError) as error:
        decode(dicom_bytes(grey, PhotometricInterpretation=surname))
    assert "[redacted]" in str(error.value)
    assert surname.lower() not in str(error.value).lower()


def test_hostile_metadata_values_are_cleaned_to_fit_their_columns(grey: np.ndarray) -> None:
    data = dicom_bytes(
        grey, BodyPartExamined="HAND" * 80, StudyDate="2024-01-31", Modality="D\x00X\x07",
        ViewPosition="AP\\LAT",
    )  # fmt: skip
    metadata = decode(data).metadata
    assert metadata["modality"] == "DX"
    assert len(metadata["body_part"]) == 64
    assert "study_date" not in metadata  # not YYYYMMDD: dropped rather than stored wrong
    assert metadata["view_position"] == "AP\\LAT"


def test_non_radiograph_modality_is_flagged(grey: np.ndarray) -> None:
    warning = decode(dicom_bytes(grey, Modality="CT")).metadata["warning"]
    assert warning.startswith("does not look like a radiograph: DICOM modality is CT")
    assert "warning" not in decode(dicom_bytes(grey, Modality="CR")).metadata


# -- bad DICOM files --------------------------------------------------------------------------
def _without_pixel_data(grey: np.ndarray) -> bytes:
    data = dicom_bytes(grey)
    return data[: data.index(b"\xe0\x7f\x10\x00")]  # cut just before the (7FE0,0010) tag


def _with_syntax(data: bytes, uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID(uid)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _scramble_tail(data: bytes) -> bytes:
    scrambled = bytearray(data)
    for index in range(len(data) - 4000, len(data) - 20, 3):
        scrambled[index] ^= 0xA5
    return bytes(scrambled)


BAD_DICOM = {
    "report without pixel data": (
        lambda g: dicom_without_pixels(),
        "DICOM file has no pixel data (for example a report",
    ),
    "image header, file cut before the pixels": (
        _without_pixel_data,
        "DICOM file is cut short: image header without complete pixel data",
    ),
    "pixel data cut short (native)": (
        lambda g: (d := dicom_bytes(g))[: len(d) * 2 // 3],
        "DICOM pixel data is incomplete (Explicit VR Little Endian)",
    ),
    "pixel data cut short (JPEG 2000)": (
        lambda g: (d := dicom_bytes(g, syntax="j2k-lossless"))[: len(d) * 2 // 3],
        "DICOM file is cut short",
    ),
    "corrupt compressed stream (JPEG lossless)": (
        lambda g: _scramble_tail(dicom_bytes(g, syntax="jpeg-lossless")),
        "cannot decode DICOM pixel data (JPEG Lossless",
    ),
    "DICM marker then garbage": (
        lambda g: b"\x00" * 128 + b"DICM" + bytes(range(256)) * 8,
        "DICOM",
    ),
    "over the pixel cap": (
        lambda g: dicom_bytes(g, Rows=60000, Columns=60000),
        "image too large: 60000×60000 = 3,600,000,000 pixels",
    ),
    "zero rows": (lambda g: dicom_bytes(g, Rows=0), "image too small to read: 373×0"),
    "unsupported transfer syntax (MPEG-2)": (
        lambda g: _with_syntax(dicom_bytes(g, syntax="rle"), "1.2.840.10008.1.2.4.100"),
        "DICOM transfer syntax not supported: MPEG2 Main Profile",
    ),
    "unsupported photometric interpretation": (
        lambda g: dicom_bytes(g, PhotometricInterpretation="HSV"),
        "DICOM",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DICOM), ids=list(BAD_DICOM))
def test_bad_dicom_raises_a_specific_decode_error(grey: np.ndarray, case: str) -> None:
    build, message = BAD_DICOM[case]
    with pytest.raises(DecodeError) as error:
        decode(build(grey))
    assert message in str(error.value)
    _assert_no_identity({"error": str(error.value)})


def test_fixture_images_all_survive_the_dicom_route() -> None:
    for path in sample_images():
        grey = grey_radiograph(path)
        data = dicom_bytes(grey, bits=12, photometric="MONOCHROME1", syntax="j2k-lossless")
        assert_same_model_input(data, png_bytes(grey))


# -- large files: reduced before display, the same as displaying at full size then reducing ----
def _hospital_size(grey: np.ndarray, width: int = 1300, height: int = 1580) -> np.ndarray:
    """A sample radiograph at (height, width), 12-bit with noise: low bits that carry something."""
    big = np.asarray(
        Image.fromarray(grey.astype(np.float32) * 16, mode="F").resize(
            (width, height), Image.Resampling.BICUBIC
        )
    )
    noise = np.random.default_rng(0).normal(0.0, 6.0, big.shape)
    return np.clip(np.rint(big + noise), 0, 4095).astype(np.uint16)


def _with_values(data: bytes, values: np.ndarray, **elements: object) -> bytes:
    """`data` (native syntax) with its pixels replaced by `values`; elements set or deleted."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = values.shape
    ds.PixelData = values.astype(np.int16 if ds.PixelRepresentation else np.uint16).tobytes()
    for keyword, value in elements.items():
        if value is None:
            del ds[keyword]
        elif keyword == "PixelPaddingValue":
            ds.add_new(0x00280120, "US", value)  # US or SS: say which
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _reference(data: bytes) -> np.ndarray:
    """The display pipeline run on every full-size pixel in float64, as before reduction."""
    ds = pydicom.dcmread(io.BytesIO(data))
    view = dicom._frame_view(ds)
    return dicom._monochrome_full(pixel_array(ds), view, str(ds.PhotometricInterpretation))


def _sqrt_voi_lut() -> Dataset:
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 16])
    curve = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(int)  # brightens the shadows
    lut.add_new(0x00283006, "US", curve.tolist())
    return lut


REDUCED_CASES = {
    "window over the whole range": {},
    "min-max, no window": {"WindowCenter": None, "WindowWidth": None, "VOILUTFunction": None},
    "window that clips": {"WindowCenter": 1500.0, "WindowWidth": 1200.0, "VOILUTFunction": None},
    "MONOCHROME1 clipping window": {
        "PhotometricInterpretation": "MONOCHROME1", "WindowCenter": 2600.0, "WindowWidth": 900.0,
    },
    "pixel padding, no window": {
        "PixelPaddingValue": 0, "WindowCenter": None, "WindowWidth": None, "VOILUTFunction": None,
    },
    "sigmoid": {"WindowCenter": 2000.0, "WindowWidth": 1500.0, "VOILUTFunction": "SIGMOID"},
    "VOI LUT sequence": {"VOILUTSequence": [_sqrt_voi_lut()]},
}  # fmt: skip


# (width, height): both sides divisible by the factor (2); rows by 3 in bands, columns not;
# neither (OpenCV's general area path on the whole image)
SIZES = {"1300×1580": (1300, 1580, (650, 790)), "1301×1581": (1301, 1581, (434, 527)),
         "1301×1579": (1301, 1579, (433, 526))}  # fmt: skip


@pytest.mark.parametrize("shape", list(SIZES))
@pytest.mark.parametrize("case", list(REDUCED_CASES), ids=list(REDUCED_CASES))
def test_large_dicom_is_reduced_before_display_with_the_same_result(
    grey: np.ndarray, case: str, shape: str
) -> None:
    width, height, expected_size = SIZES[shape]
    values = _hospital_size(grey, width, height)
    if case.startswith("pixel padding"):
        values[:, :100] = 0  # a collimated border
        values[:, 100:] = np.maximum(values[:, 100:], 1)
    data = _with_values(dicom_bytes(grey, bits=12), values, **REDUCED_CASES[case])
    reference = _reference(data)
    full = decode(data, target_size=None).pixels
    assert full.shape == (height, width) and full.dtype == np.float32
    np.testing.assert_allclose(full, reference, atol=2e-6)
    reduced = decode(data, target_size=128).pixels
    assert reduced_size(width, height, 128) == expected_size
    assert reduced.shape == (expected_size[1], expected_size[0])
    np.testing.assert_allclose(reduced, area_reduce(reference, expected_size), atol=2e-6)


def test_signed_rescaled_dicom_is_reduced_with_the_same_result(grey: np.ndarray) -> None:
    data = dicom_bytes(grey, bits=16, rescale=(2.0, -3000.0))
    values = (_hospital_size(grey).astype(np.int64) * 100 // 16 + 3000) // 2  # v = 2s − 3000
    data = _with_values(data, values.astype(np.int16))
    reference = _reference(data)
    reduced = decode(data, target_size=128).pixels
    np.testing.assert_allclose(reduced, area_reduce(reference, (650, 790)), atol=2e-6)


def test_unused_high_bits_are_ignored_as_pydicom_does(grey: np.ndarray) -> None:
    values = _hospital_size(grey)
    clean = _with_values(dicom_bytes(grey, bits=12), values)
    overlay = _with_values(clean, values | np.uint16(0x8000) * (np.arange(values.shape[1]) % 2))
    np.testing.assert_array_equal(decode(overlay).pixels, decode(clean).pixels)


@pytest.mark.parametrize(
    ("width", "height"), [(1300, 1580), (2464, 3000), (3000, 2465), (999, 2000)]
)
def test_reduced_size_keeps_the_letterbox_of_the_full_image(width: int, height: int) -> None:
    preset = Preset(size=256, letterbox=True)
    new_width, new_height = reduced_size(width, height, 256)
    assert min(new_width, new_height) >= REDUCING_GAP * 256 or (new_width, new_height) == (
        width,
        height,
    )
    full, reduced = preset.geometry(height, width), preset.geometry(new_height, new_width)
    assert round(width * full[0]) == round(new_width * reduced[0])
    assert round(height * full[1]) == round(new_height * reduced[1])


def test_target_size_none_keeps_full_resolution(grey: np.ndarray) -> None:
    data = _with_values(dicom_bytes(grey, bits=12), _hospital_size(grey))
    assert decode(data, target_size=None).pixels.shape == (1580, 1300)
    decoded = decode(data, target_size=128)
    assert (decoded.width, decoded.height) == (1300, 1580)  # the stored size, for boxes


def test_jpeg_2000_decodes_at_reduced_resolution_unless_the_window_clips(
    grey: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _hospital_size(grey, 1304, 1584)  # even sides: OpenJPEG and Pillow agree on 1/2
    source = _with_values(dicom_bytes(grey, bits=12), values)
    j2k = _recompress(source)
    calls: list[str] = []
    first_frame = dicom._first_frame
    monkeypatch.setattr(dicom, "_first_frame", lambda *a: calls.append("full") or first_frame(*a))
    reduced = decode(j2k, target_size=128).pixels
    assert calls == []  # decoded at 1/2 by OpenJPEG, not in full
    assert reduced.shape == decode(source, target_size=128).pixels.shape
    seen, expected = PRESET(reduced), PRESET(decode(source, target_size=128).pixels)
    assert float((seen - expected).abs().mean()) < 0.01  # normalised units

    clipping = _recompress(_with_values(source, values, WindowCenter=1500.0, WindowWidth=900.0))
    calls.clear()
    pixels = decode(clipping, target_size=128).pixels
    assert calls == ["full"]
    size = reduced_size(1304, 1584, 128)
    np.testing.assert_allclose(pixels, area_reduce(_reference(clipping), size), atol=2e-6)


def _recompress(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("columns", [1537, 1538, 1539, 1541])
def test_jpeg_2000_of_any_width_decodes(grey: np.ndarray, columns: int) -> None:
    # Pillow 13 rounds a reduced side to nearest where OpenJPEG rounds up: odd widths fall back.
    source = _with_values(dicom_bytes(grey, bits=12), _hospital_size(grey, columns, 1600))
    reduced = decode(_recompress(source), target_size=96).pixels
    assert reduced.shape == decode(source, target_size=96).pixels.shape


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEGLSNearLossless])
def test_jpeg_ls_decodes(grey: np.ndarray, syntax: str) -> None:
    source = dicom_bytes(grey, bits=12)
    ds = pydicom.dcmread(io.BytesIO(source))
    near = syntax == JPEGLSNearLossless
    ds.compress(syntax, generate_instance_uid=False, **({"jls_error": 2} if near else {}))
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert_same_model_input(buffer.getvalue(), source, lossy=near)


def test_12_bit_jpeg_extended_with_an_out_of_spec_scan_header_fails_with_a_reason() -> None:
    # pydicom's JPEG-lossy.dcm: libjpeg refuses its scan header. GDCM would read it, but aborts
    # the process on corrupted streams of this kind, so it is not used: a clear failure instead.
    with pytest.raises(DecodeError, match=r"cannot decode DICOM pixel data \(JPEG Extended"):
        decode(Path(get_testdata_file("JPEG-lossy.dcm")), target_size=None)
    fixed = decode(Path(get_testdata_file("JPGExtended.dcm")), target_size=None).pixels
    assert fixed.shape == (1024, 256)


def test_every_pydicom_test_file_decodes_or_fails_with_a_specific_reason() -> None:
    decoded, refused = [], {}
    for path in sorted(get_testdata_files("*.dcm")):
        try:
            decode(Path(path))
            decoded.append(Path(path).name)
        except DecodeError as error:
            refused[Path(path).name] = str(error)
    # The catch-all ("corrupt or unsupported file (<exception>)") means an unforeseen error.
    assert not [name for name, why in refused.items() if why.startswith("corrupt or unsupported")]
    assert "MR_small_jpeg_ls_lossless.dcm" in decoded and "JPEG-lossy.dcm" in refused
    assert len(decoded) >= 47, sorted(refused.items())
