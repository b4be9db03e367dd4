"""DICOM → greyscale pixels in [0, 1] as a reader would see them, plus non-identifying metadata.

Display pipeline, in the standard's order (PS3.4 N.2): stored values → modality LUT (Rescale
Slope/Intercept or Modality LUT Sequence) → VOI (VOI LUT Sequence, else the first Window
Center/Width with its VOI LUT Function, else the image's own min–max) → MONOCHROME1 (or a
Presentation LUT Shape of INVERSE) inverted so that bone is bright. Multi-frame files: the
first frame is scored and the row is flagged. Patient identity never leaves this module except
as a salted hash, and is redacted from error messages. See docs/FORMATS.md.

For a model (`target_size`), a large image is reduced by area averaging before anything costs
a pass over its full-size floats: the display pipeline is evaluated once per stored value that
can occur (a table), and where that table is a clipped straight line (rescale, LINEAR windows,
min–max: nearly every radiograph) it is applied after the reduction, which gives the same
result because averaging is linear; otherwise the table is applied to the pixels first. JPEG
2000 frames decode at reduced resolution outright (OpenJPEG through Pillow).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from model import quality
from model.decode import (
    Decoded,
    DecodeError,
    area_reduce,
    check_dimensions,
    reduced_size,
)

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
# pydicom's decoder plugins, tried in this order (then any other available one). GDCM is not
# used even where installed: fed corrupted 12-bit JPEG it aborts the whole process (SIGABRT, seen
# in the fuzz test), which would take a worker down. pylibjpeg-rle is 5× faster than
# pydicom's own RLE decoder, which stays behind it for the corrupt streams that make the Rust
# decoder panic.
PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    RLELossless: ("pylibjpeg", "pydicom"),
    JPEGLSLossless: ("pyjpegls", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "pylibjpeg"),
}
EXCLUDED_PLUGINS = frozenset({"gdcm"})
J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
# The largest display table (one entry per stored value from the image's minimum to maximum).
MAX_TABLE = 1 << 16
# Rows of full-size pixels converted to float at a time (3,000 columns: about 1 MB).
STRIP_ROWS = 96


def is_dicom(data: bytes) -> bool:
    """`DICM` at byte 128 (Part 10 file), or a bare dataset starting with group 0002/0008."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    # No other supported format starts with these bytes (JPEG FFD8, PNG 89 50, TIFF II/MM, …).
    little = data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"
    big = data[:2] in (b"\x00\x02", b"\x00\x08") and data[2:3] == b"\x00"
    return len(data) >= 8 and (little or big)


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    patient_salt: str | None = None,
    target_size: int | None = None,
) -> Decoded:
    """`target_size`: the model's input side, to reduce large images for (None: full size)."""
    ds = _read_dataset(data)
    try:
        return _decode_dataset(
            ds, data, max_pixels=max_pixels, patient_salt=patient_salt, target_size=target_size
        )
    except DecodeError as exc:
        # Decoder messages may quote element values: never let a patient's identity through.
        message = _redact(str(exc), ds)
        if message == str(exc):
            raise
        raise DecodeError(message) from exc


def _decode_dataset(
    ds: Dataset, data: bytes, *, max_pixels: int, patient_salt: str | None, target_size: int | None
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

    stored = None
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        stored = _j2k_reduced(ds, frames, reduced_size(columns, rows, target_size))
        if stored is not None:
            table = _display_table(stored, _frame_view(ds), photometric)
            if table is None or table.clips:
                # Averaging before a window that cuts values off is not averaging after it,
                # and the difference showed in the model's answers: decode in full instead.
                stored = None
    if stored is None:
        stored = _first_frame(ds, frames)
    # Reduced sizes follow from the stored image's, so every route gives the same shape.
    size = reduced_size(columns, rows, target_size) if stored.ndim > 1 else (columns, rows)
    try:
        pixels, rgb = _display(ds, stored, photometric, samples, size)
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
    pixels = np.asarray(pixels, dtype=np.float32)
    return Decoded(pixels=pixels, format="DICOM", width=columns, height=rows, metadata=metadata)


def _display(
    ds: Dataset, stored: np.ndarray, photometric: str, samples: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey pixels in [0, 1], colour pixels for the quality check or None), area-reduced to
    `size` (colour before the luma, which is linear)."""
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        return _monochrome(stored, _frame_view(ds), photometric, size), None
    if photometric == "PALETTE COLOR" and stored.ndim == 2:
        rgb = area_reduce(_unit(apply_color_lut(stored, ds)), size)
        return _luma(rgb), rgb
    if samples == 3 and stored.ndim == 3 and stored.shape[-1] == 3:
        rgb = area_reduce(_unit(stored, bits=_int(ds, "BitsStored")), size)
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
    uid = ds.file_meta.get("TransferSyntaxUID")
    index = 0 if frames > 1 else None
    errors: list[tuple[str, BaseException]] = []
    for plugin in _decoding_plugins(uid):
        try:
            # A view on the file's own bytes where the syntax allows (native), read-only: the
            # unused high bits are cleared below, only when some are set (a copy each, else).
            array = pixel_array(
                ds,
                index=index,
                decoding_plugin=plugin,
                correct_unused_bits=False,
                view_only=True,
            )
            return _without_unused_bits(array, _int(ds, "BitsStored"))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 (raised below as a DecodeError, with the rest)
            # Decoder plugins raise ValueError, RuntimeError and more for broken pixel data.
            errors.append((plugin, exc))
        except BaseException as exc:
            # pylibjpeg-rle panics (PanicException, a BaseException) on some corrupt streams.
            if type(exc).__name__ != "PanicException":
                raise
            errors.append((plugin, exc))
    first = errors[0][1]
    if len(errors) == 1:
        message = _short(first)
    else:
        message = "; ".join(f"{plugin}: {_short(exc)}" for plugin, exc in errors)
    lowered = message.lower()
    if isinstance(first, NotImplementedError) and "not supported" in lowered:
        raise DecodeError(f"DICOM transfer syntax not supported: {syntax}") from first
    if any(word in lowered for word in ("less than expected", "truncat", "end of")):
        raise DecodeError(f"DICOM pixel data is incomplete ({syntax}): {message}") from first
    raise DecodeError(f"cannot decode DICOM pixel data ({syntax}): {message}") from first


def _without_unused_bits(array: np.ndarray, bits: int | None) -> np.ndarray:
    """Integer samples with the bits above Bits Stored cleared (unsigned) or sign-extended
    (signed), as pydicom's `correct_unused_bits` does, but only copied when any needs it."""
    allocated = 8 * array.dtype.itemsize
    if array.dtype.kind not in "iu" or not bits or not 0 < bits < allocated or not array.size:
        return array
    signed = array.dtype.kind == "i"
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    low, high = _extremes(array)
    if high <= top and low >= (-top - 1 if signed else 0):
        return array  # already what the correction would give
    shift = allocated - bits
    return np.right_shift(np.left_shift(array, shift), shift)


def _extremes(array: np.ndarray) -> tuple[int, int]:
    """(minimum, maximum) of integer samples; OpenCV's single pass where it takes the type."""
    if array.ndim == 2 and array.dtype.itemsize <= 2 and array.dtype.isnative:
        low, high, _, _ = cv2.minMaxLoc(array)
        return int(low), int(high)
    return int(array.min()), int(array.max())


def _decoding_plugins(uid: str | None) -> list[str]:
    """pydicom decoder plugins to try for a transfer syntax, in order ("": pydicom's choice,
    for native syntaxes, which need none, and for syntaxes nothing decodes)."""
    try:
        available = list(get_decoder(UID(str(uid))).available_plugins) if uid else []
    except (NotImplementedError, ValueError, TypeError):
        return [""]
    available = [name for name in available if name not in EXCLUDED_PLUGINS]
    preferred = [name for name in PREFERRED_PLUGINS.get(str(uid), ()) if name in available]
    return preferred + [name for name in available if name not in preferred] or [""]


def _j2k_reduced(ds: Dataset, frames: int, size: tuple[int, int]) -> np.ndarray | None:
    """The first frame of a greyscale JPEG 2000 file decoded at 1/2, 1/4, … of its size, or None.

    A JPEG 2000 stream holds its image at every power-of-two resolution; OpenJPEG (through
    Pillow, which exposes its `reduce`) then skips the finer wavelet levels, most of the decoding
    work. None when the file does not qualify (or fails here): the caller decodes it in full.
    """
    factor = min(_int(ds, "Columns") or 0, _int(ds, "Rows") or 0) // min(size)
    if factor < 2 or ds.file_meta.get("TransferSyntaxUID") not in J2K_SYNTAXES:
        return None
    if _int(ds, "PixelRepresentation") != 0:
        return None  # Pillow offsets signed samples; the full decode keeps them exact
    try:
        stream = get_frame(ds.PixelData, 0, number_of_frames=frames)
        header = _j2k_header(stream)
        if header is None:
            return None
        columns, rows, precision, levels = header
        if (columns, rows) != (_int(ds, "Columns"), _int(ds, "Rows")):
            return None
        if precision != _int(ds, "BitsStored") or precision > 16:
            return None
        level = min(factor.bit_length() - 1, levels)
        while level > 0 and not (_pillow_size_ok(columns, level) and _pillow_size_ok(rows, level)):
            level -= 1
        if level == 0:
            return None
        from PIL import Image

        with Image.open(io.BytesIO(stream), formats=("JPEG2000",)) as image:
            image.reduce = level  # type: ignore[method-assign,assignment]  # a property here
            image.load()
            expected = (-(-columns >> level), -(-rows >> level))
            if image.mode not in ("L", "I;16") or image.size != expected:
                return None
            array = np.asarray(image)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 (the full decode then gives the file's real error)
        log.debug("JPEG 2000 reduced decode not used: %s", _short(exc))
        return None
    shift = (8 if precision <= 8 else 16) - precision  # Pillow scales samples up to 8 or 16 bits
    return _centred(array >> shift if shift > 0 else array, level)


def _centred(low_pass: np.ndarray, level: int) -> np.ndarray:
    """A wavelet low-pass image moved to where an area average of its blocks would be.

    Sample i of the level-r low band is centred on full-size pixel 2^r·i, a block average of
    pixels 2^r·i … 2^r·(i+1) − 1 on their middle: (2^r − 1) / 2 pixels further on, which is
    (2^r − 1) / 2^(r+1) of a sample (¼ at r = 1). Linear interpolation moves it there.
    """
    fraction = np.float32((2**level - 1) / 2 ** (level + 1))
    values = low_pass.astype(np.float32)
    for axis in (0, 1):
        following = np.concatenate(
            [np.delete(values, 0, axis=axis), np.take(values, [-1], axis=axis)], axis=axis
        )
        values += fraction * (following - values)
    return np.rint(values).astype(low_pass.dtype)


def _j2k_header(stream: bytes) -> tuple[int, int, int, int] | None:
    """(columns, rows, precision, decomposition levels) of a one-component, unsigned JPEG 2000
    codestream with its image at the origin; None for anything else (JP2 box wrappers too)."""
    if stream[:4] != b"\xff\x4f\xff\x51" or len(stream) < 46:
        return None
    (length,) = struct.unpack(">H", stream[4:6])
    x_size, y_size, x_origin, y_origin = struct.unpack(">IIII", stream[8:24])
    (components,) = struct.unpack(">H", stream[40:42])
    if components != 1 or x_origin or y_origin or stream[42] & 0x80:
        return None
    precision = (stream[42] & 0x7F) + 1
    levels, offset = None, 4 + length
    while offset + 10 <= len(stream):
        marker, size = struct.unpack(">HH", stream[offset : offset + 4])
        if marker == 0xFF90:  # SOT: the main header ends
            break
        if marker == 0xFF53:  # COC: per-component coding style, not followed here
            return None
        if marker == 0xFF52:  # COD: Scod, progression, layers (2), MCT, then the levels
            levels = stream[offset + 9]
        offset += 2 + size
    if levels is None:
        return None
    return x_size, y_size, precision, levels


def _pillow_size_ok(side: int, level: int) -> bool:
    """Pillow 13 rounds a reduced side to nearest, OpenJPEG up; they must agree to decode."""
    power = 1 << level
    return (side + (power >> 1)) // power == -(-side // power)


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


def _monochrome(
    stored: np.ndarray, view: Dataset, photometric: str, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Grey pixels in [0, 1] as a viewer shows them, area-reduced to `size` (width, height)."""
    size = size or (stored.shape[-1], stored.shape[0])
    if stored.ndim != 2:
        raise DecodeError(f"unexpected DICOM pixel array shape {stored.shape} for greyscale")
    table = _display_table(stored, view, photometric)
    if table is not None:
        return table.apply(stored, size)
    return area_reduce(_monochrome_full(stored, view, photometric), size)


def _monochrome_full(stored: np.ndarray, view: Dataset, photometric: str) -> np.ndarray:
    """The display pipeline on every pixel, in float64 (32-bit samples, non-monotonic
    modality LUTs without a window): the reference `DisplayTable` reproduces."""
    padding = _padding_mask(stored, view)
    values = np.asarray(apply_modality_lut(stored, view), dtype=np.float64)
    with np.errstate(all="ignore"):
        grey = _voi(values, view)
        if grey is None:
            grey = _min_max(values, padding)
    grey = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 1.0)
    if _inverted(view, photometric):
        grey = 1.0 - grey
    if padding is not None:
        grey[padding] = 0.0  # padding (collimator area) shows as background
    return grey


def _inverted(view: Dataset, photometric: str) -> bool:
    shape = str(view.get("PresentationLUTShape", "") or "").upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


@dataclass
class DisplayTable:
    """The display pipeline evaluated once per stored value from the image's minimum to its
    maximum (at most 65,536): `grey[v - low]` is what `_monochrome_full` shows for value v.

    When those greys lie on a line clipped to [0, 1] (`line`: rescale slope/intercept with a
    LINEAR or LINEAR_EXACT window or the min–max stretch, either polarity), `apply` clips the
    pixels to the window in stored units, reduces, then scales: equal to scaling, then
    reducing, as averaging is linear. Any other table (VOI LUT, SIGMOID, modality LUT) is
    looked up pixel by pixel, then reduced.
    """

    low: int
    high: int
    grey: np.ndarray  # float64, one entry per value in low…high, padding not yet applied
    padding: np.ndarray | None  # mask of padding pixels (shown black), if any
    padding_value: int | None
    line: tuple[float, float] | None  # (black, span): grey = clip((v − black) / span, 0, 1)

    @property
    def clips(self) -> bool:
        """True when the window cuts off some of the image's values (or the table is no line)."""
        if self.line is None:
            return True
        low, high, black = *self._window(), self.line[0]
        margin = 1e-6 * (high - low)  # rounding in `black` is no reason for a pass
        return self.low - black < low - margin or self.high - black > high + margin

    def _window(self) -> tuple[float, float]:
        """The pixels' range after subtracting black, from black to white."""
        assert self.line is not None
        low, high = sorted((0.0, self.line[1]))
        return low, high

    def apply(self, stored: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.line is None:
            table = self.grey.astype(np.float32)
            if self.padding_value is not None:
                table[self.padding_value - self.low] = 0.0
            return area_reduce(_look_up(stored, table, self.low), size)
        width, height = size
        rows = stored.shape[0]
        if rows % height or rows == height:
            reduced = area_reduce(self._shifted(stored, self.padding), size)
        else:
            # Bands of whole output rows: a full-size float copy never exists, and each band's
            # floats stay in the CPU cache between the passes (exact: no output row straddles
            # two bands).
            factor = rows // height
            band = factor * max(1, STRIP_ROWS // factor)
            reduced = np.empty((height, width), dtype=np.float32)
            for top in range(0, rows, band):
                part = slice(top, top + band)
                padding = self.padding[part] if self.padding is not None else None
                shifted = self._shifted(stored[part], padding)
                out = slice(top // factor, (top + shifted.shape[0]) // factor)
                reduced[out] = area_reduce(shifted, (width, shifted.shape[0] // factor))
        reduced /= np.float32(self.line[1])
        return np.clip(reduced, 0.0, 1.0, out=reduced)

    def _shifted(self, stored: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
        """Stored values minus black, clipped to the window, padding at black: float32."""
        assert self.line is not None
        pixels = np.subtract(stored, np.float32(self.line[0]), dtype=np.float32)
        if self.clips:
            np.clip(pixels, *(np.float32(side) for side in self._window()), out=pixels)
        if padding is not None:
            pixels[padding] = 0.0
        return pixels


def _display_table(stored: np.ndarray, view: Dataset, photometric: str) -> DisplayTable | None:
    """The image's `DisplayTable`; None for 32-bit samples or a modality mapping that is not
    monotonic without a window (those take `_monochrome_full`)."""
    if stored.dtype.kind not in "iu" or stored.dtype.itemsize > 2 or not stored.size:
        return None
    low_stored, high_stored = _extremes(stored)
    domain = np.arange(low_stored, high_stored + 1).astype(stored.dtype)
    padding = _padding_mask(stored, view)
    padding_value = int(view.PixelPaddingValue) if padding is not None else None
    values = np.asarray(apply_modality_lut(domain, view), dtype=np.float64)
    with np.errstate(all="ignore"):
        grey = _voi(values, view)
        if grey is None:
            grey = _min_max_of_table(values, stored, padding, padding_value, low_stored)
            if grey is None:
                return None
    grey = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 1.0)
    if _inverted(view, photometric):
        grey = 1.0 - grey
    keep = np.ones(grey.shape, dtype=bool)
    if padding_value is not None:
        keep[padding_value - low_stored] = False  # shown as black whatever the window says
    line = _clipped_line(domain[keep].astype(np.float64), grey[keep])
    return DisplayTable(low_stored, high_stored, grey, padding, padding_value, line)


def _min_max_of_table(
    values: np.ndarray,
    stored: np.ndarray,
    padding: np.ndarray | None,
    padding_value: int | None,
    low_stored: int,
) -> np.ndarray | None:
    """The min–max stretch of `_min_max`, for a table of modality values: lowest and highest
    over the stored values the image holds outside its padding. None when the modality
    mapping is not monotonic or not finite (then the table's ends need not be the image's)."""
    low, high = low_stored, low_stored + values.size - 1
    if padding is not None and padding_value in (low, high):
        unpadded = ~padding
        low = int(stored.min(where=unpadded, initial=high))
        high = int(stored.max(where=unpadded, initial=low))
    span = values[low - low_stored : high - low_stored + 1]
    if not np.isfinite(span).all():
        return None
    steps = np.diff(span)
    if not ((steps >= 0).all() or (steps <= 0).all()):
        return None
    bottom, top = sorted((float(span[0]), float(span[-1])))
    if top <= bottom:
        return np.zeros(values.shape)
    return (values - bottom) / (top - bottom)


def _clipped_line(domain: np.ndarray, grey: np.ndarray) -> tuple[float, float] | None:
    """(black, span) with grey = clip((domain − black) / span, 0, 1) at every entry, or None.

    Ends that fall on stored values (the min–max stretch: the darkest and brightest pixels)
    are taken exactly, so those pixels come out as exactly 0 and 1.
    """
    inside = np.flatnonzero((grey > 0.0) & (grey < 1.0))
    if inside.size < 2:
        return None
    first, last = int(inside[0]), int(inside[-1])
    slope = (grey[last] - grey[first]) / (domain[last] - domain[first])
    if not np.isfinite(slope) or slope == 0.0:
        return None
    black = float(domain[first] - grey[first] / slope)
    white = black + 1.0 / slope
    tolerance = 1e-6 * abs(white - black)
    black, white = (float(np.rint(end)) if abs(np.rint(end) - end) < tolerance else end
                    for end in (black, white))  # fmt: skip
    span = white - black
    line = np.clip((domain - black) / span, 0.0, 1.0)
    if float(np.abs(line - grey).max()) > 1e-7:
        return None
    return float(black), float(span)


def _look_up(stored: np.ndarray, table: np.ndarray, low_stored: int) -> np.ndarray:
    """table[stored − low_stored] for every pixel, indexing by the samples' own bits."""
    if low_stored >= 0:
        full = np.zeros(low_stored + table.size, dtype=np.float32)
        full[low_stored:] = table
        return full[stored]
    unsigned = np.dtype(f"u{stored.dtype.itemsize}")
    domain = np.arange(low_stored, low_stored + table.size).astype(stored.dtype)
    full = np.zeros(1 << (8 * stored.dtype.itemsize), dtype=np.float32)
    full[domain.view(unsigned)] = table
    return full[stored.view(unsigned)]


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
