"""DICOM → greyscale pixels in [0, 1] as a reader would see them, plus non-identifying metadata.

Display pipeline, in the standard's order (PS3.4 N.2): stored values → modality LUT (Rescale
Slope/Intercept or Modality LUT Sequence) → VOI (VOI LUT Sequence, else the first Window
Center/Width with its VOI LUT Function, else the image's own min–max) → MONOCHROME1 (or a
Presentation LUT Shape of INVERSE) inverted so that bone is bright. Multi-frame files: the
first frame is scored and the row is flagged. Patient identity never leaves this module except
as a salted hash, and is redacted from error messages. See docs/FORMATS.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import struct
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_windowing,
    pixel_array,
)
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from model import quality
from model.decode import Decoded, DecodeError, check_dimensions

log = logging.getLogger(__name__)

# Value validation on read would warn with element values (names included) into the logs, and
# a hostile header must not flood them; the values we keep are checked below instead.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Projection radiography and close relatives; anything else is flagged as not a radiograph.
# (OT other and SC secondary capture: often a scanned or exported film.)
RADIOGRAPH_MODALITIES = frozenset(
    {"CR", "DX", "DR", "RG", "RF", "XA", "PX", "IO", "MG", "OT", "SC"}
)
# Elements the LUT functions read, copied into a per-frame view of the dataset.
LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    "PixelPaddingValue",
)
# What converting one malformed raw element can raise (pydicom, struct, codecs).
ELEMENT_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    NotImplementedError,
    OverflowError,
    struct.error,
    BytesLengthException,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_dicom(data: bytes) -> bool:
    """`DICM` at byte 128 (Part 10 file), or a bare dataset starting with group 0002/0008."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    # No other supported format starts with these bytes (JPEG FFD8, PNG 89 50, TIFF II/MM, …).
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"


def decode_dicom(data: bytes, *, max_pixels: int, patient_salt: str | None = None) -> Decoded:
    ds = _read_dataset(data)
    try:
        return _decode_dataset(ds, data, max_pixels=max_pixels, patient_salt=patient_salt)
    except DecodeError as exc:
        # Decoder messages may quote element values: never let a patient's identity through.
        message = _redact(str(exc), ds)
        if message == str(exc):
            raise
        raise DecodeError(message) from exc


def _decode_dataset(
    ds: Dataset, data: bytes, *, max_pixels: int, patient_salt: str | None
) -> Decoded:
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        # pydicom drops an element (or everything) that the end of the file cuts through.
        if len(ds) == 0 or "Rows" in ds or "BitsAllocated" in ds or PIXEL_DATA_TAG in data:
            raise DecodeError(
                "DICOM file is cut short: image header without complete pixel data "
                "(probably an incomplete copy): not scored"
            )
        raise DecodeError(
            "DICOM file has no pixel data (for example a report, a presentation state or a "
            "DICOMDIR): nothing to score"
        )
    if "PixelData" not in ds:
        raise DecodeError("DICOM float pixel data (parametric maps) is not supported")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or columns is None:
        raise DecodeError("DICOM image has no valid Rows/Columns: cannot read its pixels")
    check_dimensions(columns, rows, max_pixels)
    frames = _int(ds, "NumberOfFrames") or 1
    samples = _int(ds, "SamplesPerPixel") or 1
    photometric = (_text(ds, "PhotometricInterpretation", 32) or "").upper()

    stored = _first_frame(ds, frames)
    try:
        pixels, rgb = _display(ds, stored, photometric, samples)
    except DecodeError:
        raise
    except ELEMENT_ERRORS as exc:
        raise DecodeError(f"invalid DICOM display settings (LUT, rescale): {_short(exc)}") from exc
    metadata = _metadata(ds, frames=frames, patient_salt=patient_salt)
    warnings = [w for w in (_modality_warning(metadata), quality.assess(pixels, rgb)) if w]
    if frames > 1:
        warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was scored")
    if warnings:
        metadata["warning"] = "; ".join(warnings)
    pixels = pixels.astype(np.float32)
    return Decoded(pixels=pixels, format="DICOM", width=columns, height=rows, metadata=metadata)


def _display(
    ds: Dataset, stored: np.ndarray, photometric: str, samples: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey pixels in [0, 1], colour pixels for the quality check or None)."""
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        return _monochrome(stored, _frame_view(ds), photometric), None
    if photometric == "PALETTE COLOR" and stored.ndim == 2:
        rgb = _unit(apply_color_lut(stored, ds))
        return _luma(rgb), rgb
    if samples == 3 and stored.ndim == 3 and stored.shape[-1] == 3:
        rgb = _unit(stored, bits=_int(ds, "BitsStored"))
        return _luma(rgb), rgb
    raise DecodeError(
        f"unsupported DICOM photometric interpretation {photometric or 'none'!r} "
        f"with {samples} sample(s) per pixel (pixel array shape {stored.shape})"
    )


def _read_dataset(data: bytes) -> Dataset:
    preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
        ds.get("PixelData")  # parse the whole header now: a truncated file fails here
    except InvalidDicomError as exc:
        raise DecodeError(f"not a valid DICOM file: {_short(exc)}") from exc
    except (EOFError, OSError) as exc:
        raise DecodeError("truncated DICOM file (incomplete data): not scored") from exc
    except Exception as exc:
        # pydicom parses arbitrary headers; any parse failure means this file is unreadable.
        raise DecodeError(f"corrupt DICOM header: {_short(exc)}") from exc
    meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        # A bare dataset (no Part 10 header) is native; pydicom has worked out its encoding.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit is not False
            else ExplicitVRLittleEndian
            if little is not False
            else ExplicitVRBigEndian
        )
        ds.file_meta = meta
    return ds


def _first_frame(ds: Dataset, frames: int) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    # pylibjpeg-rle panics (a BaseException) on some corrupt streams; pydicom's own RLE decoder
    # raises ordinary errors and is fast enough for one frame.
    plugin = "pydicom" if ds.file_meta.get("TransferSyntaxUID") == RLELossless else ""
    try:
        return pixel_array(ds, index=0 if frames > 1 else None, decoding_plugin=plugin)
    except MemoryError:
        raise
    except Exception as exc:
        # Decoder plugins raise ValueError, RuntimeError and more for broken pixel data.
        message = _short(exc)
        lowered = message.lower()
        if isinstance(exc, NotImplementedError) and "not supported" in lowered:
            raise DecodeError(f"DICOM transfer syntax not supported: {syntax}") from exc
        if any(word in lowered for word in ("less than expected", "truncat", "end of")):
            raise DecodeError(f"DICOM pixel data is incomplete ({syntax}): {message}") from exc
        raise DecodeError(f"cannot decode DICOM pixel data ({syntax}): {message}") from exc


def _frame_view(ds: Dataset) -> Dataset:
    """The LUT-relevant elements for frame 1, functional groups (enhanced IODs) included."""
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    view.set_original_encoding(*ds.original_encoding)
    for keyword in LUT_KEYWORDS:
        element = _element(ds, keyword)
        if element is not None:
            view[element.tag] = element
    groups = [
        ds[keyword].value[0]
        for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
        if keyword in ds and ds[keyword].value
    ]
    for group in groups:  # per-frame values override shared ones
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if sequence in group and group[sequence].value:
                for element in group[sequence].value[0]:
                    if element.keyword in LUT_KEYWORDS:
                        view[element.tag] = element
    return view


def _monochrome(stored: np.ndarray, view: Dataset, photometric: str) -> np.ndarray:
    if stored.ndim != 2:
        raise DecodeError(f"unexpected DICOM pixel array shape {stored.shape} for greyscale")
    padding = _padding_mask(stored, view)
    values = np.asarray(apply_modality_lut(stored, view), dtype=np.float64)
    with np.errstate(all="ignore"):
        grey = _voi(values, view)
        if grey is None:
            grey = _min_max(values, padding)
    grey = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 1.0)
    shape = str(view.get("PresentationLUTShape", "") or "").upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        grey = 1.0 - grey
    if padding is not None:
        grey[padding] = 0.0  # padding (collimator area) shows as background
    return grey


def _voi(values: np.ndarray, view: Dataset) -> np.ndarray | None:
    """VOI LUT or window applied and mapped to [0, 1]; None when the file has no usable VOI."""
    try:
        if view.get("VOILUTSequence"):
            out, low, high = _voi_lut(values, view)
        elif "WindowCenter" in view and "WindowWidth" in view:
            out = apply_windowing(values.copy(), view, index=0)
            low, high = apply_windowing(np.array([-1e300, 1e300]), view, index=0).tolist()
        else:
            return None
    except (ValueError, TypeError, LookupError, AttributeError, NotImplementedError) as exc:
        log.info("ignoring unusable DICOM VOI (window or LUT): %s", _short(exc))
        return None
    if not (np.isfinite(low) and np.isfinite(high)) or high == low:
        return None
    return (np.asarray(out, dtype=np.float64) - low) / (high - low)


def _voi_lut(values: np.ndarray, view: Dataset) -> tuple[np.ndarray, float, float]:
    """The first VOI LUT applied: (output, lowest and highest LUT entry).

    Not pydicom's `apply_voi`: it indexes through an array of the LUT's own dtype, so an 8-bit
    LUT with more than 256 entries (a 12-bit input range, common) wraps around.
    """
    item = view.VOILUTSequence[0]
    entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
    raw = item.LUTData
    if isinstance(raw, bytes):
        big_endian = view.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian
        lut = np.frombuffer(raw[: len(raw) // 2 * 2], dtype=">u2" if big_endian else "<u2")
    else:
        lut = np.asarray(raw if isinstance(raw, list | tuple | MultiValue) else [raw], dtype=float)
    lut = lut[:entries].astype(np.float64)
    if lut.size == 0:
        raise ValueError("empty VOI LUT")
    index = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.int64)
    return lut[index], float(lut.min()), float(lut.max())


def _padding_mask(stored: np.ndarray, view: Dataset) -> np.ndarray | None:
    value = view.get("PixelPaddingValue")
    if not isinstance(value, int):
        return None
    mask = stored == value
    return mask if mask.any() and not mask.all() else None


def _min_max(values: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    sample = values[~padding] if padding is not None else values
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.zeros(values.shape)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape)
    return (values - low) / (high - low)


def _unit(rgb: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Colour samples → float (h, w, 3) in [0, 1]."""
    if np.issubdtype(rgb.dtype, np.integer):
        top = 2 ** min(bits, 16) - 1 if bits and bits > 0 else np.iinfo(rgb.dtype).max
        if rgb.max(initial=0) > top:  # a palette LUT whose descriptor understates its depth
            top = np.iinfo(rgb.dtype).max
        return np.clip(rgb.astype(np.float32) / top, 0.0, 1.0)
    return np.clip(np.nan_to_num(rgb.astype(np.float32)), 0.0, 1.0)


def _luma(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601, as Pillow converts RGB to L, so colour DICOM and colour JPEG agree.
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 0.0, 1.0)


# -- metadata -----------------------------------------------------------------------------
def _metadata(ds: Dataset, *, frames: int, patient_salt: str | None) -> dict[str, Any]:
    bits = _int(ds, "BitsStored")
    metadata: dict[str, Any] = {
        "modality": _text(ds, "Modality", 16),
        "body_part": _text(ds, "BodyPartExamined", 64),
        "view_position": _text(ds, "ViewPosition", 16),
        "study_date": _date(ds, "StudyDate"),
        "photometric": _text(ds, "PhotometricInterpretation", 32),
        "bits_stored": bits if bits is not None and 1 <= bits <= 32 else None,
        "frames": frames,
        "transfer_syntax": _transfer_syntax(ds),
    }
    if patient_salt:
        metadata["patient_hash"] = patient_hash(ds, patient_salt)
    return {key: value for key, value in metadata.items() if value is not None}


def patient_hash(ds: Dataset, salt: str) -> str | None:
    """HMAC-SHA256 of the issuer and patient ID under `salt`: groups studies, names no one."""
    patient_id = _text(ds, "PatientID", 64)
    if not patient_id:
        return None
    issuer = _text(ds, "IssuerOfPatientID", 64) or ""
    message = f"{issuer}\x00{patient_id}".encode()
    return hmac.new(salt.encode(), message, hashlib.sha256).hexdigest()


def _modality_warning(metadata: dict[str, Any]) -> str | None:
    modality = str(metadata.get("modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return (
            f"{quality.NOT_A_RADIOGRAPH}: DICOM modality is {modality} "
            "(this model reads plain X-rays: CR, DX)"
        )
    return None


def _redact(message: str, ds: Dataset) -> str:
    secrets = {_text(ds, keyword, 200) or "" for keyword in ("PatientID", "OtherPatientIDs")}
    name = _text(ds, "PatientName", 200) or ""
    secrets |= {name, *re.split(r"[\^=\s]+", name)}
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        message = re.sub(re.escape(secret), "[redacted]", message, flags=re.IGNORECASE)
    return message


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    if keyword not in ds:
        return None
    try:
        return ds[keyword]  # the element (`ds.get` would give its value)
    except ELEMENT_ERRORS as exc:
        # Elements are converted lazily; a malformed one must not take the whole file down.
        # (Only the type is logged: the message could quote the value.)
        log.debug("unreadable DICOM element %s: %s", keyword, type(exc).__name__)
        return None


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except ELEMENT_ERRORS as exc:
        # Values are converted lazily; a malformed one must not take the whole file down.
        log.debug("unreadable DICOM element %s: %s", keyword, type(exc).__name__)
        return None


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    text = _CONTROL.sub("", str(value)).strip()
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError, OverflowError):
        return None


def _date(ds: Dataset, keyword: str) -> str | None:
    text = _text(ds, keyword, 64)
    return text if text and re.fullmatch(r"\d{8}", text) else None


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "implicit VR little endian (no file meta)"
    return _printable(str(getattr(uid, "name", uid)))[:80]


def _printable(text: str) -> str:
    """Hostile headers put any bytes into messages; keep them readable and on one line."""
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in " ".join(text.split()))


def _short(exc: BaseException) -> str:
    text = _printable(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
