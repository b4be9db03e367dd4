"""Fuzz: mutated image and DICOM bytes only ever give pixels or the project's own DecodeError.

Anything else (another exception type, a Rust panic, NaN pixels, a 3-D array) would fail a whole
worker batch, so the contract is checked on the decoder's output as the worker uses it.
Bounded: a few thousand small inputs, well under 30 s on two shared cores.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from model.decode import Decoded, DecodeError, decode
from tests.make_inputs import dicom_bytes, grey_radiograph

pytestmark = pytest.mark.filterwarnings("ignore")  # parsers warn loudly about broken input


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@cache
def seeds() -> dict[str, bytes]:
    """Small valid files of every supported kind: the starting points for mutation."""
    grey = grey_radiograph(size=(40, 48))
    image = Image.fromarray(grey)
    files: dict[str, bytes] = {}
    for fmt in ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP", "JPEG2000", "PPM"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        files[fmt] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, "PNG")
    files["PNG16"] = buffer.getvalue()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", progressive=True, exif=_exif_rotated())
    files["JPEG progressive + EXIF"] = buffer.getvalue()
    for syntax in ("explicit", "rle", "j2k-lossless", "jpeg-lossless", "jpeg-baseline"):
        bits = 8 if syntax == "jpeg-baseline" else 12
        photometric = "MONOCHROME1" if syntax in ("rle", "jpeg-lossless") else "MONOCHROME2"
        files[f"DICOM {syntax}"] = dicom_bytes(
            grey, bits=bits, photometric=photometric, syntax=syntax
        )
    files["DICOM multi-frame"] = dicom_bytes(grey, frames=2, syntax="rle")
    files["DICOM bare dataset"] = dicom_bytes(grey, preamble=False)
    # Large enough to be reduced for a 64 px model (the table route, JPEG 2000 at 1/2).
    large = grey_radiograph(size=(400, 480))
    files["DICOM reduced"] = dicom_bytes(large, bits=12, photometric="MONOCHROME1")
    files["DICOM reduced j2k"] = dicom_bytes(large, bits=12, syntax="j2k-lossless")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey, bits=12)))
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    files["DICOM JPEG-LS"] = buffer.getvalue()
    return files


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return exif.tobytes()


def assert_contract(data: bytes) -> None:
    try:
        result = decode(data, target_size=64)
    except DecodeError as error:
        message = str(error)
        assert message and message.isprintable() and len(message) <= 300, repr(message)
        return
    assert isinstance(result, Decoded)
    pixels = result.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2 and min(pixels.shape) >= 1
    assert np.isfinite(pixels).all()
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert result.width >= 16 and result.height >= 16


INTERESTING = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]
mutation = st.one_of(
    st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 256)),
    # headers live in the first few hundred bytes: hit sizes and lengths there often
    st.tuples(st.just("header"), st.integers(0, 400), st.sampled_from(INTERESTING)),
)


def mutate(data: bytes, operations: list[tuple]) -> bytes:
    buffer = bytearray(data)
    for operation in operations:
        kind, where = operation[0], operation[1]
        at = where if isinstance(where, int) else int(where * len(buffer))
        at = min(at, max(len(buffer) - 1, 0))
        if kind == "set" and buffer:
            buffer[at] = operation[2]
        elif kind == "cut":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = operation[2]
        elif kind == "delete":
            del buffer[at : at + operation[2]]
        elif kind == "header":
            buffer[at : at + 4] = operation[2]
    return bytes(buffer)


@fuzz(2000)
@given(name=st.sampled_from(sorted(seeds())), operations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_files_give_pixels_or_decode_error(name: str, operations: list[tuple]) -> None:
    assert_contract(mutate(seeds()[name], operations))


@fuzz(300)
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x00" * 128 + b"DICM", b"\xff\xd8\xff"]))
def test_random_bytes_give_decode_error_or_pixels(data: bytes, prefix: bytes) -> None:
    assert_contract(prefix + data)


SYNTAX_UIDS = [
    ExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
]
numbers = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]),
    st.floats(-70000, 70000, allow_nan=False),
)


@st.composite
def dicom_headers(draw: st.DrawFn) -> bytes:
    """Well-formed DICOM files whose image attributes and pixel data are hostile."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(SYNTAX_UIDS))
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = draw(st.sampled_from([0, 16, 17, 32, 33, 40, 65535]))
    ds.Columns = draw(st.sampled_from([1, 16, 32, 40, 41]))
    ds.SamplesPerPixel = draw(st.sampled_from([1, 1, 3, 0, 4]))
    ds.PhotometricInterpretation = draw(
        st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "X", ""])
    )
    ds.BitsAllocated = draw(st.sampled_from([1, 8, 16, 32, 0, 12]))
    ds.BitsStored = draw(st.sampled_from([1, 8, 10, 12, 16, 17, 0]))
    ds.HighBit = max(ds.BitsStored - 1, 0)
    ds.PixelRepresentation = draw(st.sampled_from([0, 1, 2]))
    if draw(st.booleans()):
        ds.NumberOfFrames = draw(st.sampled_from([0, 1, 2, 10**6]))
    if draw(st.booleans()):
        ds.WindowCenter, ds.WindowWidth = draw(numbers), draw(numbers)
        ds.VOILUTFunction = draw(st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS"]))
    if draw(st.booleans()):
        ds.RescaleSlope, ds.RescaleIntercept = draw(numbers), draw(numbers)
    if draw(st.booleans()):
        lut = Dataset()
        lut.add_new(0x00283002, "US", draw(st.lists(st.integers(0, 65535), max_size=3)))
        lut.add_new(0x00283006, "US", draw(st.lists(st.integers(0, 65535), max_size=300)))
        ds.VOILUTSequence = [lut]
    if draw(st.booleans()):
        ds.add_new(0x00280120, "US", draw(st.integers(0, 65535)))  # Pixel Padding Value
    pixels = draw(st.binary(min_size=2, max_size=8192))
    pixels += b"\x00" * (len(pixels) % 2)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([pixels])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@fuzz(600)
@given(dicom_headers())
def test_hostile_dicom_attributes_give_pixels_or_decode_error(data: bytes) -> None:
    assert_contract(data)


def test_every_seed_decodes() -> None:
    for name, data in seeds().items():
        assert isinstance(decode(data), Decoded), name
