"""Real test inputs built from the shipped radiographs: DICOM files (pydicom) and hostile files.

A DICOM built here from an 8-bit grey radiograph `g` carries stored values and, with
`window=True`, a window chosen so that the displayed value is exactly g / 255 — the value the
PNG route gives for the same picture. That makes "what the model sees" comparable across routes.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from tests.helpers import BAD_INPUTS, FRACATLAS, sample_images

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042-7731"

# Compressed transfer syntaxes this environment can write (checked in test_dicom):
# RLE (pydicom / pylibjpeg-rle), JPEG 2000 (pylibjpeg-openjpeg), JPEG baseline (a Pillow JPEG
# stream encapsulated as-is) and JPEG lossless SV1 (the small encoder below: no package writes it).
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-baseline": JPEGBaseline8Bit,
}


def grey_radiograph(path: Path | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit (H, W) radiograph from the shipped fixtures (or `path`)."""
    with Image.open(path or sample_images()[0]) as image:
        grey = ImageOps.grayscale(image)
        if size:
            grey = grey.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(grey, dtype=np.uint8).copy()


def shared_radiographs(count: int) -> list[Path]:
    """Up to `count` FracAtlas images from the shared data, if it is present."""
    return sorted(FRACATLAS.glob("*/*/*.jpg"))[:count] if FRACATLAS.is_dir() else []


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# -- DICOM ------------------------------------------------------------------------------------
TOP = {8: 255, 12: 4080, 16: 65535}  # largest stored value of g·k


def stored_values(grey: np.ndarray, bits: int) -> np.ndarray:
    """8-bit grey → stored values spanning `bits` bits (g·16 for 12-bit, g·257 for 16-bit)."""
    g = grey.astype(np.int64)
    if bits == 8:
        return g
    if bits == 12:
        return g * 16
    if bits == 16:
        return g * 257
    raise ValueError(f"bits must be 8, 12 or 16, not {bits}")


def identity_window(bits: int) -> tuple[float, float, str]:
    """(centre, width, function) that displays stored g·k as exactly g / 255."""
    top = TOP[bits]
    if bits == 12:
        return top / 2, top, "LINEAR_EXACT"  # (x − c) / w + ½
    return top / 2 + 0.5, top + 1, "LINEAR"  # (x − (c − ½)) / (w − 1) + ½


def dicom_bytes(
    grey: np.ndarray,
    *,
    bits: int = 16,
    photometric: str = "MONOCHROME2",
    syntax: str = "explicit",
    window: bool = True,
    rescale: tuple[float, float] | None = None,
    frames: int = 1,
    patient: bool = True,
    preamble: bool = True,
    **elements: object,
) -> bytes:
    """A DX DICOM file of an 8-bit radiograph, displayed (with `window`) as exactly g / 255.

    `rescale=(slope, intercept)`: store signed values that the modality LUT maps back.
    Extra keyword arguments become DICOM elements (None deletes one).
    """
    values = stored_values(grey, bits)
    top = TOP[bits]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.StudyDate = "20240131"
    if patient:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if photometric == "MONOCHROME1":
        values = top - values
        ds.PresentationLUTShape = "INVERSE"
    else:
        ds.PresentationLUTShape = "IDENTITY"
    centre, width, function = identity_window(bits)  # symmetric: MONOCHROME1 inverts onto it
    if rescale is not None:
        if bits != 16:
            raise ValueError("rescale examples use 16-bit signed storage")
        slope, intercept = rescale
        # modality value v = g·100 (0…25 500) stored as (v − intercept) / slope, signed
        modality = grey.astype(np.int64) * 100
        values = np.rint((modality - intercept) / slope).astype(np.int64)
        if photometric == "MONOCHROME1":
            raise ValueError("rescale examples are MONOCHROME2")
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
        centre, width, function = 12750.0, 25500.0, "LINEAR_EXACT"
    if window:
        ds.WindowCenter = centre
        ds.WindowWidth = width
        ds.VOILUTFunction = function
    dtype = np.uint8 if bits == 8 else (np.int16 if ds.PixelRepresentation else np.uint16)
    array = values.astype(dtype)
    if frames > 1:
        ds.NumberOfFrames = frames
        # later frames differ (inverted), so scoring the wrong frame would show
        array = np.stack([array] + [array.max() - array] * (frames - 1))
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                del ds[keyword]
        else:
            setattr(ds, keyword, value)
    _set_pixels(ds, array, syntax)
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.preamble = None
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def _set_pixels(ds: Dataset, array: np.ndarray, syntax: str) -> None:
    uid = SYNTAXES[syntax]
    if syntax in ("explicit", "implicit"):
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = array.tobytes()
        return
    if syntax in ("rle", "j2k-lossless"):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(uid, array, generate_instance_uid=False)
        return
    if syntax == "j2k":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(uid, array, j2k_cr=[5], generate_instance_uid=False)
        return
    frames = array if array.ndim == 3 else array[None]
    if syntax == "jpeg-lossless":
        encoded = [jpeg_lossless(frame, precision=int(ds.BitsStored)) for frame in frames]
    elif syntax == "jpeg-baseline":
        if array.dtype != np.uint8:
            raise ValueError("JPEG baseline holds 8-bit samples only")
        encoded = [_pillow_jpeg(frame) for frame in frames]
    else:
        raise ValueError(f"syntax must be one of {sorted(SYNTAXES)}, not {syntax!r}")
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _pillow_jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def jpeg_lossless(frame: np.ndarray, *, precision: int) -> bytes:
    """A JPEG lossless (process 14, selection value 1) stream of one greyscale frame.

    No installed package writes this syntax, and it is common in PACS archives, so the test
    builds it: predictor Ra (left; above for the first column), one Huffman table in which
    every difference category 0…16 has a 5-bit code.
    """
    x = frame.astype(np.int64)
    rows, cols = x.shape
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]
    prediction[1:, 0] = x[:-1, 0]
    prediction[1:, 1:] = x[1:, :-1]
    diff = (x - prediction).reshape(-1) % 65536
    diff[diff > 32768] -= 65536
    magnitude = np.abs(diff)
    category = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    extra_bits = np.where(category == 16, 0, category)
    extra = np.where(diff >= 0, diff, diff + (1 << extra_bits) - 1) & ((1 << extra_bits) - 1)
    code = (category << extra_bits) | extra
    length = 5 + extra_bits
    shifts = np.arange(31, -1, -1)
    bit_matrix = (code[:, None] >> shifts) & 1
    keep = shifts[None, :] < length[:, None]
    bits = bit_matrix[keep].astype(np.uint8)
    bits = np.concatenate([bits, np.ones((-bits.size) % 8, dtype=np.uint8)])
    entropy = np.packbits(bits).tobytes().replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    sof3 = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + counts + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, Ss=1 (predictor), Se=0, Al=0
    return (
        b"\xff\xd8"
        + segment(0xFFC3, sof3)
        + segment(0xFFC4, dht)
        + segment(0xFFDA, sos)
        + entropy
        + b"\xff\xd9"
    )


def dicom_without_pixels() -> bytes:
    """A structured-report-like DICOM file: a valid header and no image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- hostile files ----------------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`×`height` with almost no data: Pillow's bomb check fires."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def zeros_png(width: int, height: int) -> bytes:
    """A real, fully decodable black PNG: tiny on disk, `width`×`height` in memory."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def truncated_with_end_marker(jpeg: bytes, keep: float = 0.5) -> bytes:
    """A JPEG cut short and closed with an end-of-image marker: Pillow decodes it half grey."""
    return jpeg[: int(len(jpeg) * keep)] + b"\xff\xd9"


# -- a hostile inbox: every format and every bad case, with what each must end as -------------
@dataclass(frozen=True)
class Expected:
    status: str  # "done" or "failed"
    text: str | None = None  # part of the error (failed) or of the warning (done); None: none


PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
HOSTILE_MAX_PIXELS = 20_000_000  # run the pipeline with this cap so `huge.png` trips it


def _variant(index: int) -> np.ndarray:
    """A distinct real radiograph per index (distinct bytes: duplicates are not re-scored)."""
    paths = sample_images()
    grey = grey_radiograph(paths[index % len(paths)])
    return np.ascontiguousarray(grey[:, ::-1] if (index // len(paths)) % 2 else grey)


def _jpeg(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def hostile_set(directory: Path) -> dict[str, Expected]:
    """Write one of each good and bad file under `directory`; name (relative) → expectation."""
    # A real copy cut off in transfer where ../shared is present; else one made the same way.
    real_cuts = sorted((BAD_INPUTS / "truncated_jpeg").glob("*.jpg"))
    cut_name, cut_bytes = (
        (real_cuts[0].name, real_cuts[0].read_bytes())
        if real_cuts
        else ("cut off in transfer.jpg", _jpeg(_variant(15))[:6_000])
    )
    cut_dicom = dicom_bytes(_variant(9), syntax="rle")
    files: dict[str, tuple[bytes, Expected]] = {
        # good: DICOM both photometrics, compressed and not, 16-bit PNG, JPEG, odd names
        "xray.jpg": (_jpeg(_variant(0)), Expected("done")),
        "xray 16-bit.png": (
            png_bytes((stored_values(_variant(1), 16) + 7).astype(np.uint16)),
            Expected("done"),
        ),
        "hand MONOCHROME1 12-bit RLE.dcm": (
            dicom_bytes(_variant(2), bits=12, photometric="MONOCHROME1", syntax="rle"),
            Expected("done"),
        ),
        "hand MONOCHROME2 16-bit.dcm": (dicom_bytes(_variant(3), bits=16), Expected("done")),
        "IM000004": (  # extensionless, as PACS exports are
            dicom_bytes(_variant(4), bits=12, syntax="j2k-lossless"),
            Expected("done"),
        ),
        "ward 3/knee MONOCHROME1 JPEG lossless.dcm": (
            dicom_bytes(_variant(5), bits=16, photometric="MONOCHROME1", syntax="jpeg-lossless"),
            Expected("done"),
        ),
        "ward 3/wrist JPEG baseline.dcm": (
            dicom_bytes(_variant(6), bits=8, syntax="jpeg-baseline"),
            Expected("done"),
        ),
        "bône ü 名前 épaule.jpg": (_jpeg(_variant(7)), Expected("done")),
        "x ray $(rm -rf ~) ; `id` & 'q' \"z\" *.jpg": (_jpeg(_variant(8)), Expected("done")),
        "-rf --help.png": (png_bytes(_variant(10)), Expected("done")),
        "new\nline\ttab \x1b[31mterminal escape.png": (png_bytes(_variant(14)), Expected("done")),
        # scored but flagged
        "holiday photo.jpg": (
            PHOTO.read_bytes(),
            Expected("done", "does not look like a radiograph"),
        ),
        "cine 3 frames.dcm": (
            dicom_bytes(_variant(11), bits=12, frames=3, syntax="rle"),
            Expected("done", "multi-frame DICOM (3 frames): only the first frame was scored"),
        ),
        # bad: each failed with a readable reason
        "empty.jpg": (b"", Expected("failed", "empty file (0 bytes)")),
        cut_name: (cut_bytes, Expected("failed", "truncated")),
        "cut short then closed.jpg": (
            truncated_with_end_marker(_jpeg(_variant(12))),
            Expected("failed", "truncated JPEG: the end of the image is missing"),
        ),
        "notes.jpg": (b"not an image, just notes\n" * 50, Expected("failed", "not a recognised")),
        "bomb.png": (png_header_only(50_000, 50_000), Expected("failed", "decompression bomb")),
        "huge.png": (zeros_png(6000, 5000), Expected("failed", "image too large: 6000×5000")),
        "strip.png": (
            png_bytes(np.zeros((40, 4000), dtype=np.uint8)),
            Expected("failed", "absurd dimensions"),
        ),
        "report.dcm": (dicom_without_pixels(), Expected("failed", "DICOM file has no pixel data")),
        "half copied.dcm": (
            cut_dicom[: len(cut_dicom) // 2],
            Expected("failed", "DICOM file is cut short"),
        ),
    }
    for name, (data, _) in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def replacement_image() -> bytes:
    """Valid, and different from everything in `hostile_set`."""
    return _jpeg(_variant(13))
