"""Hospital-size inputs for `fracture bench --realistic`, made from the shipped radiographs.

Modalities and PACS send 2,000–3,500 px, 12–16-bit images of 8–20 MB; the bench's default
samples are 13 KB, 373×454 JPEGs. Each sample is upscaled (bicubic) so its long side is a
detector's, stored in 12 bits with a little noise (σ 6 of 4,095) so that the low bits carry
something, and written as a modality would send it. Half of the DICOM files are MONOCHROME1
(inverted, as CR often is), and every DICOM file carries a window over its whole stored range.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)

BITS = 12
NOISE = 6.0  # in stored units of 4,095


@dataclass(frozen=True)
class Format:
    description: str
    long_side: int
    suffix: str


FORMATS = {
    "dicom": Format("12-bit DX DICOM, uncompressed (explicit VR little endian)", 3000, ".dcm"),
    "dicom-j2k": Format("12-bit DX DICOM, JPEG 2000 lossless", 3000, ".dcm"),
    "png16": Format("16-bit greyscale PNG", 2500, ".png"),
}
DEFAULT_FORMATS = ("dicom", "dicom-j2k", "png16")
# SOP Instance UIDs of one fixed length, so each copy gets its own by replacing bytes in place.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
PLACEHOLDER_UID = UID_ROOT + "1" + "0" * 19


def parse_formats(text: str) -> tuple[str, ...]:
    """'dicom,png16' → ('dicom', 'png16'); ValueError listing the allowed names otherwise."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(
            f"--formats takes a comma-separated list of {', '.join(FORMATS)}, not {text!r}"
        )
    return names


def describe(formats: tuple[str, ...]) -> str:
    return "; ".join(
        f"{name}: {FORMATS[name].long_side:,} px {FORMATS[name].description}" for name in formats
    )


def stored_values(source: Path, long_side: int, seed: int) -> np.ndarray:
    """A sample radiograph as 12-bit stored values, its long side `long_side` pixels and its
    short side rounded to a multiple of 8 (detector sizes)."""
    with Image.open(source) as image:
        grey = np.asarray(ImageOps.grayscale(image), dtype=np.float32)
    height, width = grey.shape
    scale = long_side / max(height, width)
    size = (8 * max(1, round(width * scale / 8)), 8 * max(1, round(height * scale / 8)))
    size = (long_side, size[1]) if width >= height else (size[0], long_side)
    big = cv2.resize(grey * (2**BITS - 1) / 255, size, interpolation=cv2.INTER_CUBIC)
    big += np.random.default_rng(seed).normal(0.0, NOISE, big.shape).astype(np.float32)
    return np.clip(np.rint(big), 0, 2**BITS - 1).astype(np.uint16)


def dicom_file(values: np.ndarray, *, syntax: str, inverted: bool) -> bytes:
    """A DX DICOM file of 12-bit values with a placeholder instance UID (see `copies`)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = UID(PLACEHOLDER_UID)
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if inverted else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.WindowCenter, ds.WindowWidth = 2**BITS / 2, 2**BITS
    pixels = (2**BITS - 1 - values if inverted else values).astype(np.uint16)
    if syntax == "dicom":
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png16_file(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((values.astype(np.uint16) << 4) | (values >> 8)).save(buffer, "PNG")
    return buffer.getvalue()


def make_set(
    sources: list[Path], n: int, directory: Path, formats: tuple[str, ...] = DEFAULT_FORMATS
) -> list[Path]:
    """N files cycling through `formats` × `sources`, each with different bytes (its own
    instance UID; for PNG a trailer after the image, which decoders ignore) so the pipeline's
    de-duplication keeps them all."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = list(itertools.product(range(len(sources)), formats))  # formats interleaved
    bases: dict[tuple[int, str], bytes] = {}
    made = []
    for index in range(n):
        source, name = pairs[index % len(pairs)]
        if (source, name) not in bases:
            values = stored_values(sources[source], FORMATS[name].long_side, seed=source)
            bases[source, name] = (
                png16_file(values)
                if name == "png16"
                else dicom_file(values, syntax=name, inverted=source % 2 == 1)
            )
        data = bases[source, name]
        if name == "png16":
            data += f"\nfracture-bench-copy-{index}".encode()
        else:
            unique = f"{UID_ROOT}1{index:019d}"  # same length: only bytes change
            data = data.replace(PLACEHOLDER_UID.encode(), unique.encode())
        target = directory / f"bench_{index:06d}_{name}{FORMATS[name].suffix}"
        target.write_bytes(data)
        made.append(target)
    return made
