"""The DICOM objects that carry a result back into the original study: an SC image and an SR.

`secondary_capture` burns the answer into a copy of the radiograph (8-bit RGB, long side at most
2048 px, a dark banner with the answer above the image, red or amber boxes on the fracture);
`structured_report` states the same finding as a TID 1500 Measurement Report in a Comprehensive
SR; `read_report` reads it back. Both objects are new series in the original's study, with UIDs
from `ResultUIDs.for_result`, so sending the same result twice stores it once.

Patient data rule: only the patient module and the study's identity travel from the original —
PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex, StudyInstanceUID,
StudyDate, StudyTime, AccessionNumber, StudyID and ReferringPhysicianName, element for element
(plus SpecificCharacterSet, which says how those names are encoded). Nothing else: no
institution, operator, device, private or image-comment elements.

highdicom is never handed the original itself, because it copies more than that:
`SCImage.from_ref_dataset` copies the values above except IssuerOfPatientID, and
SpecificCharacterSet, but also — when the original names its Manufacturer — an "acquisition
equipment" item in ContributingEquipmentSequence with Manufacturer, ManufacturerModelName,
SoftwareVersions, DeviceSerialNumber, InstitutionName, InstitutionalDepartmentName,
InstitutionAddress, StationName and the acquisition date/time; the SR constructors copy every
top-level element of the Patient, General Study, Patient Study and Clinical Trial modules (e.g.
OtherPatientIDs, PatientComments, StudyDescription, PatientAge, PatientWeight) plus the same
equipment item. It also validates and warns about names (quoting them). So highdicom builds
each object from a stub holding the original's SOP, series and study UIDs, a few image-pixel
descriptors its reference checks need, and empty patient/study values; the real values are then
copied from the original unchanged, exactly as the PACS sent them (what it matches on).

Nothing here logs. Decision support, not for clinical use: stated on the image and in the SR.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

VERDICTS = ("fracture", "doubt", "no_fracture")
MANUFACTURER = "fracture-screening"
SERIES_DESCRIPTION = "Fracture screening - decision support, not for clinical use"
DISCLAIMER = (
    "Decision support, not for clinical use: produced by an automated model and not reviewed "
    "by a clinician."
)
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
MAX_SIDE = 2048  # longest side of the Secondary Capture, banner included

PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
# Type 2 in both IODs: present, empty when the original lacks them.
_TYPE2_IDENTITY = tuple(k for k in PATIENT_KEYWORDS + STUDY_KEYWORDS if k != "IssuerOfPatientID")
# What highdicom's reference checks read from a referenced image (never copied into our objects).
_REFERENCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PixelRepresentation",
    "NumberOfFrames",
)

# -- codes ------------------------------------------------------------------------------------
FRACTURE = Code("125605004", "SCT", "Fracture of bone")
PRESENCE = {
    "fracture": Code("52101004", "SCT", "Present"),
    "doubt": Code("42425007", "SCT", "Equivocal"),
    "no_fracture": Code("272519000", "SCT", "Absent"),
}
PROBABILITY = Code("122157", "DCM", "Probability")
BOX_SCORE = Code("246262008", "SCT", "Score")
RADIOGRAPHY = Code("363680008", "SCT", "Radiographic imaging procedure")
TARGET_REGION = Code("123014", "DCM", "Target Region")
COMMENT = Code("121106", "DCM", "Comment")
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1": probabilities and scores are ratios
REGION_SITES = {
    "hand": Code("85562004", "SCT", "Hand"),
    "hip": Code("29836001", "SCT", "Hip"),
    "leg": Code("61685007", "SCT", "Lower limb"),
    "shoulder": Code("16982005", "SCT", "Shoulder"),
}
_ALGORITHM_VERSION = ("DCM", "111003")
_ALGORITHM_PARAMETERS = ("DCM", "111002")
_IMAGING_MEASUREMENTS = ("DCM", "126010")
_MEASUREMENT_GROUP = ("DCM", "125007")

# -- drawing ----------------------------------------------------------------------------------
BOX_COLOURS = {"fracture": (255, 0, 0), "doubt": (255, 176, 0)}
HEADLINE_COLOURS = {
    "fracture": (255, 96, 96),
    "doubt": (255, 190, 40),
    "no_fracture": (235, 235, 235),
}
BANNER_COLOUR = (16, 16, 16)
FOOTNOTE_COLOUR = (200, 200, 200)
MIN_FONT = 12  # px: the smallest text a reader can still read on a 300 px image


@dataclass(frozen=True)
class Finding:
    """One stored prediction, as the result objects need it."""

    verdict: str  # "fracture" | "doubt" | "no_fracture"
    probability: float  # calibrated, 0..1
    threshold: float  # fracture operating point
    doubt_threshold: float | None  # lower operating point (None: two answers only)
    region: str | None  # body region the model saw: hand, hip, leg, shoulder, mixed, or None
    model_version: str  # e.g. "efficientnet_lite0-d177e8fd48cd"
    # [[x, y, width, height, score], ...] in the ORIGINAL image's pixel coordinates
    # (x = column, y = row, from the image's top-left corner), best first
    boxes: list[list[float]] | None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}")
        for name in ("probability", "threshold", "doubt_threshold"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number from 0 to 1, not {value!r}")
        if self.verdict == "doubt" and self.doubt_threshold is None:
            raise ValueError(
                "a doubt verdict needs its doubt_threshold (the lower operating point)"
            )
        if not self.model_version or len(self.model_version) > 64:
            raise ValueError("model_version must be 1 to 64 characters (a DICOM LO value)")
        for box in self.boxes or []:
            if len(box) != 5 or not all(math.isfinite(v) for v in box) or min(box[2:4]) <= 0:
                raise ValueError(
                    f"each box must be [x, y, width, height, score] with a positive size, "
                    f"not {box!r}"
                )


@dataclass(frozen=True)
class ResultUIDs:
    sc_series: str
    sc_instance: str
    sr_series: str
    sr_instance: str

    @classmethod
    def for_result(cls, sop_instance_uid: str, model_version: str) -> ResultUIDs:
        """Deterministic UIDs: the same result sent twice has the same UIDs, so a PACS stores it
        once; another model version's result is another series."""

        def uid(kind: str) -> str:
            return str(generate_uid(entropy_srcs=[sop_instance_uid, model_version, kind]))

        return cls(
            sc_series=uid("sc-series"),
            sc_instance=uid("sc-instance"),
            sr_series=uid("sr-series"),
            sr_instance=uid("sr-instance"),
        )


# -- Secondary Capture ------------------------------------------------------------------------
def secondary_capture(
    original: pydicom.Dataset, pixels: np.ndarray, finding: Finding, uids: ResultUIDs
) -> pydicom.Dataset:
    """The radiograph with the answer burned in, as an SC image in the original's study.

    `pixels`: the greyscale image as a reader sees it, (H, W) in [0, 1], at the original's
    resolution (`model.decode.decode(..., target_size=None).pixels`).
    """
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"pixels must be a greyscale (H, W) array, not shape {pixels.shape}")
    stub = _reference_stub(original)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=stub,
        pixel_array=_render(pixels, finding),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Required by highdicom for a PATIENT image; emptied below (we do not copy it).
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=finding.model_version,
    )
    image.add_new("PatientOrientation", "CS", None)  # type 2: not ours to state, left empty
    image.ConversionType = "WSD"  # made by a workstation, not digitised from a film
    image.BurnedInAnnotation = "YES"
    image.DerivationDescription = (
        "Fracture screening result burned in; downscaled. " + SERIES_DESCRIPTION
    )[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = stub.SOPClassUID
    source.ReferencedSOPInstanceUID = stub.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
    ]
    image.SourceImageSequence = [source]
    _copy_identity(image, original)
    return image


def _render(pixels: np.ndarray, finding: Finding) -> np.ndarray:
    """(rows, columns, 3) uint8: banner with the answer on top, the downscaled image below."""
    grey = np.rint(np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0) * 255)
    source = Image.fromarray(grey.astype(np.uint8))  # 2-D uint8: mode "L"
    lines = _banner_text(finding)
    scale = min(1.0, MAX_SIDE / max(source.size))
    text_size = _text_size(round(source.width * scale), round(source.height * scale))
    for _ in range(8):  # the banner's height depends on the width: shrink until both fit
        size = (max(1, math.floor(source.width * scale)), max(1, math.floor(source.height * scale)))
        banner = _Banner.layout(lines, size[0], text_size)
        if size[1] + banner.height <= MAX_SIDE:
            break
        scale = min(scale, (MAX_SIDE - banner.height) / source.height) * (1 - 1e-9)
    scaled = source.resize(size, Image.Resampling.LANCZOS) if size != source.size else source
    canvas = Image.new("RGB", (size[0], size[1] + banner.height), BANNER_COLOUR)
    canvas.paste(scaled.convert("RGB"), (0, banner.height))
    draw = ImageDraw.Draw(canvas)
    banner.draw(draw, HEADLINE_COLOURS[finding.verdict])
    if finding.verdict in BOX_COLOURS:
        _draw_boxes(
            draw,
            canvas.size,
            finding.boxes or [],
            scale=(size[0] / source.width, size[1] / source.height),
            top=banner.height,
            colour=BOX_COLOURS[finding.verdict],
        )
    return np.asarray(canvas, dtype=np.uint8).copy()


def _banner_text(finding: Finding) -> tuple[str, str]:
    p, threshold = _number(finding.probability), _number(finding.threshold)
    if finding.verdict == "fracture":
        headline = f"Fracture suspected - p {p} (threshold {threshold})"
    elif finding.verdict == "doubt":
        low = _number(finding.doubt_threshold or 0.0)  # a doubt always has one (checked)
        headline = f"Doubt - p {p} (between {low} and {threshold})"
    else:
        headline = f"No fracture suspected - p {p} (threshold {threshold})"
    return headline, f"Decision support, not for clinical use - model {finding.model_version}"


def _number(value: float) -> str:
    """Two decimals from 0.1 up, two significant digits below (0.058, 0.0049), then "<0.001"."""
    if value >= 0.1:
        return f"{value:.2f}"
    if value >= 0.001:
        return f"{value:.2g}"
    return "<0.001"


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class _Banner:
    headline: list[str]
    footnote: list[str]
    headline_size: int
    footnote_size: int
    margin: int

    @classmethod
    def layout(cls, lines: tuple[str, str], width: int, headline_size: int) -> _Banner:
        """The two lines wrapped to `width`, the second one smaller."""
        footnote_size = max(MIN_FONT, round(headline_size * 0.7))
        margin = max(4, headline_size // 3)
        room = max(1, width - 2 * margin)
        return cls(
            headline=_wrap(lines[0], _font(headline_size), room),
            footnote=_wrap(lines[1], _font(footnote_size), room),
            headline_size=headline_size,
            footnote_size=footnote_size,
            margin=margin,
        )

    @property
    def height(self) -> int:
        text = len(self.headline) * _line_height(self.headline_size) + len(
            self.footnote
        ) * _line_height(self.footnote_size)
        return text + 2 * self.margin

    def draw(self, draw: ImageDraw.ImageDraw, headline_colour: tuple[int, int, int]) -> None:
        y = self.margin
        for lines, size, colour in (
            (self.headline, self.headline_size, headline_colour),
            (self.footnote, self.footnote_size, FOOTNOTE_COLOUR),
        ):
            for line in lines:
                draw.text((self.margin, y), line, fill=colour, font=_font(size))
                y += _line_height(size)


def _text_size(width: int, height: int) -> int:
    """Headline size for an image: a 40th of its long side, within its width, legible."""
    return max(MIN_FONT, min(64, round(max(width, height) / 40), round(width / 22)))


def _line_height(size: int) -> int:
    return round(size * 1.3)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, room: int) -> list[str]:
    """Greedy word wrap to `room` pixels (a word longer than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _draw_boxes(
    draw: ImageDraw.ImageDraw,
    canvas: tuple[int, int],
    boxes: Sequence[Sequence[float]],
    *,
    scale: tuple[float, float],
    top: int,
    colour: tuple[int, int, int],
) -> None:
    """Each box scaled onto the canvas below the banner (`top`), its score above it."""
    width, height = canvas
    line = max(2, round(max(width, height) / 400))
    label_size = max(MIN_FONT, round(max(width, height) / 60))
    for x, y, w, h, score in boxes:
        left = min(max(0, round(x * scale[0])), width - 1)
        right = min(max(0, round((x + w) * scale[0])), width) - 1
        upper = top + min(max(0, round(y * scale[1])), height - top - 1)
        lower = top + min(max(0, round((y + h) * scale[1])), height - top) - 1
        if right <= left or lower <= upper:
            continue  # wholly outside the image
        draw.rectangle((left, upper, right, lower), outline=colour, width=line)
        label = f"{score:.2f}"
        font = _font(label_size)
        box = draw.textbbox((0, 0), label, font=font)
        label_height = box[3] + 2
        # Above the box; below it when the banner is in the way (never over a small box).
        label_top = upper - label_height if upper - label_height >= top else lower + 1
        draw.rectangle(
            (left, label_top, left + box[2] + 3, label_top + label_height), fill=BANNER_COLOUR
        )
        draw.text((left + 2, label_top), label, fill=colour, font=font)


# -- Structured Report ------------------------------------------------------------------------
def structured_report(
    original: pydicom.Dataset, finding: Finding, uids: ResultUIDs
) -> pydicom.Dataset:
    """The finding as a TID 1500 Measurement Report (Comprehensive SR) in the original's study.

    One image-level measurement group (fracture present / equivocal / absent, the probability,
    the operating points as algorithm parameters, the body region, the disclaimer), then one
    planar-ROI group per box: a closed POLYLINE rectangle in the original's pixel coordinates
    with its score.
    """
    stub = _reference_stub(original)
    try:
        report = _report(stub, finding, uids)
    except KeyError as exc:
        # highdicom looks every referenced SOP class up in its table of standard IODs.
        raise ValueError(
            f"cannot report on SOP class {stub.SOPClassUID}: not a standard DICOM image class"
        ) from exc
    _copy_identity(report, original)
    return report


def _report(stub: Dataset, finding: Finding, uids: ResultUIDs) -> hd.sr.ComprehensiveSR:
    algorithm = hd.sr.AlgorithmIdentification(
        name=MANUFACTURER,
        version=finding.model_version,
        parameters=_parameters(finding),
        manufacturer=MANUFACTURER,
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=[MANUFACTURER, "device", finding.model_version])),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=finding.model_version,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [_image_group(stub, finding, uids, algorithm)]
    for rank, box in enumerate(finding.boxes or [], start=1):
        groups.append(_box_group(stub, box, rank, uids, algorithm))
    content = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=RADIOGRAPHY,
        imaging_measurements=groups,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[stub],
        content=content[0],
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY: not a clinician's report
        is_verified=False,
        performed_procedure_codes=[RADIOGRAPHY],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=finding.model_version,
    )


def _parameters(finding: Finding) -> list[str]:
    """The operating points, labelled, with exact (round-tripping) values."""
    parameters = [f"threshold={float(finding.threshold)!r}"]
    if finding.doubt_threshold is not None:
        parameters.append(f"doubt_threshold={float(finding.doubt_threshold)!r}")
    return parameters


def _image_group(
    stub: Dataset, finding: Finding, uids: ResultUIDs, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    site = REGION_SITES.get(finding.region or "")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=[uids.sr_instance, "finding"])),
            identifier="Fracture screening result",
        ),
        finding_type=FRACTURE,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(site)] if site else None,
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=float(finding.probability), unit=NO_UNITS)
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=FRACTURE, value=PRESENCE[finding.verdict])
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(stub)],
    )
    items = group[0].ContentSequence
    if finding.region:
        # The model's own word ("mixed" has no anatomic code); coded above when it has one.
        items.append(_text(TARGET_REGION, finding.region))
    items.append(_text(COMMENT, DISCLAIMER))
    return group


def _box_group(
    stub: Dataset,
    box: Sequence[float],
    rank: int,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    x, y, w, h, score = (float(v) for v in box)
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float64)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=[uids.sr_instance, "box", str(rank)])),
            identifier=f"Fracture region {rank}",
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(stub),
        ),
        finding_type=FRACTURE,
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=BOX_SCORE, value=score, unit=NO_UNITS)],
    )


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def read_report(report: pydicom.Dataset) -> dict[str, object]:
    """The finding back out of a report made by `structured_report`.

    Keys: verdict, probability, threshold, doubt_threshold, region, model_version, boxes
    ([[x, y, width, height, score], ...] in the original's pixel coordinates, in report order).
    Raises ValueError for a document that does not hold such a finding.
    """
    verdicts = {(code.scheme_designator, code.value): v for v, code in PRESENCE.items()}
    result: dict[str, object] = {
        "verdict": None,
        "probability": None,
        "threshold": None,
        "doubt_threshold": None,
        "region": None,
        "model_version": None,
    }
    boxes: list[list[float]] = []
    for group in _measurement_groups(report):
        items = list(_descendants(group))
        region = next((i for i in items if i.get("ValueType") == "SCOORD"), None)
        if region is not None:
            points = np.asarray(region.GraphicData, dtype=np.float64).reshape(-1, 2)
            (left, upper), (right, lower) = points.min(axis=0), points.max(axis=0)
            score = next((_num(i) for i in items if _concept(i) == _key(BOX_SCORE)), math.nan)
            boxes.append(
                [float(left), float(upper), float(right - left), float(lower - upper), score]
            )
            continue
        for item in items:
            concept, kind = _concept(item), item.get("ValueType")
            if kind == "CODE" and concept == _key(FRACTURE):
                value = item.ConceptCodeSequence[0]
                result["verdict"] = verdicts.get(
                    (value.CodingSchemeDesignator, value.CodeValue), "unknown"
                )
            elif kind == "NUM" and concept == _key(PROBABILITY):
                result["probability"] = _num(item)
            elif kind == "TEXT" and concept == _ALGORITHM_VERSION:
                result["model_version"] = str(item.TextValue)
            elif kind == "TEXT" and concept == _ALGORITHM_PARAMETERS:
                name, _, value = str(item.TextValue).partition("=")
                if name in ("threshold", "doubt_threshold"):
                    result[name] = float(value)
            elif kind == "TEXT" and concept == _key(TARGET_REGION):
                result["region"] = str(item.TextValue)
    if result["verdict"] is None or result["probability"] is None:
        raise ValueError("not a fracture-screening report: no fracture finding with a probability")
    result["boxes"] = boxes
    return result


def _measurement_groups(report: Dataset) -> Iterator[Dataset]:
    for container in report.get("ContentSequence", []):
        if _concept(container) == _IMAGING_MEASUREMENTS:
            for item in container.get("ContentSequence", []):
                if _concept(item) == _MEASUREMENT_GROUP:
                    yield item


def _descendants(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _descendants(child)


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return str(names[0].CodingSchemeDesignator), str(names[0].CodeValue)


def _key(code: Code) -> tuple[str, str]:
    return code.scheme_designator, code.value


def _num(item: Dataset) -> float:
    value = item.MeasuredValueSequence[0]
    return float(value.get("FloatingPointValue", value.NumericValue))


# -- what comes from the original -------------------------------------------------------------
def _reference_stub(original: Dataset) -> Dataset:
    """What highdicom may see of the original: UIDs and pixel descriptors, identity blanked."""
    missing = [
        k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if k not in original
    ]
    if missing:
        raise ValueError(f"the original has no {', '.join(missing)}: a result cannot refer to it")
    stub = Dataset()
    for keyword in _REFERENCE_KEYWORDS:
        if keyword in original:
            stub.add(copy.deepcopy(original[keyword]))
    if "Modality" not in stub:
        stub.Modality = ""
    for keyword in _TYPE2_IDENTITY:
        if keyword != "StudyInstanceUID":
            setattr(stub, keyword, "")
    return stub


def _copy_identity(target: Dataset, original: Dataset) -> None:
    """The patient module and study identity, element for element, as the original has them."""
    for keyword in ("SpecificCharacterSet", *PATIENT_KEYWORDS, *STUDY_KEYWORDS):
        if keyword in original:
            target.add(copy.deepcopy(original[keyword]))
