"""The result objects sent back to PACS: a Secondary Capture with the answer burned in and a
TID 1500 Structured Report, both in the original's study, carrying its patient and nothing else."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from model.decode import decode
from pacs.objects import (
    MAX_SIDE,
    Finding,
    ResultUIDs,
    read_report,
    secondary_capture,
    structured_report,
)
from tests.helpers import sample_images

MODEL = "efficientnet_lite0-d177e8fd48cd"
PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-123",
    "IssuerOfPatientID": "ST-ELSEWHERE-MRN",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
}
STUDY = {
    "StudyDate": "20240131",
    "StudyTime": "101500",
    "AccessionNumber": "ACC-0042",
    "StudyID": "S42",
    "ReferringPhysicianName": "House^Gregory",
}
IDENTITY = (*PATIENT, "StudyInstanceUID", *STUDY)
FOREIGN = ("InstitutionName", "OperatorsName", "ImageComments", "StationName", "OtherPatientIDs")
BOXES = [[300.0, 380.0, 90.0, 70.0, 0.91], [40.0, 60.0, 50.0, 40.0, 0.55]]
RED, AMBER = (255, 0, 0), (255, 176, 0)


# -- building an original as a hospital would send it ------------------------------------------
def original_bytes(
    grey: np.ndarray, *, syntax: UID = ExplicitVRLittleEndian, **elements: object
) -> bytes:
    """A CR, 12-bit MONOCHROME2 Part 10 file of an 8-bit (H, W) picture, with site details."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "HAND"
    for keyword, value in {**PATIENT, **STUDY}.items():
        setattr(ds, keyword, value)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Manufacturer = "Acme Imaging"  # highdicom would copy the site's equipment from this
    ds.InstitutionName = "St Elsewhere"
    ds.StationName = "CR-ROOM-2"
    ds.OperatorsName = "Tech^Terry"
    ds.OtherPatientIDs = "OLD-999"
    ds.ImageComments = "left hand, patient in pain"
    ds.private_block(0x0009, "ACME 1.1", create=True).add_new(0x01, "LO", "site secret")
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2040.0, 4080.0, "LINEAR_EXACT"
    for keyword, value in elements.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    stored = grey.astype(np.uint16) * 16
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
    else:
        ds.compress(syntax, stored, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def radiograph(width: int, height: int) -> np.ndarray:
    """A real FracAtlas radiograph (shipped fixture), 8-bit grey, resized."""
    with Image.open(sample_images()[0]) as image:
        grey = ImageOps.grayscale(image).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(grey, dtype=np.uint8).copy()


@pytest.fixture(scope="module")
def received() -> tuple[Dataset, np.ndarray]:
    """(original as received, pixels as a reader sees them) of a 500×600 real radiograph."""
    data = original_bytes(radiograph(500, 600))
    return pydicom.dcmread(io.BytesIO(data)), decode(data, target_size=None).pixels


def finding(
    verdict: str = "fracture", boxes: list[list[float]] | None = None, **kw: object
) -> Finding:
    values: dict[str, object] = {
        "probability": {"fracture": 0.63, "doubt": 0.04, "no_fracture": 0.01}[verdict],
        "threshold": 0.058,
        "doubt_threshold": 0.032,
        "region": "hand",
        "model_version": MODEL,
        **kw,
    }
    return Finding(verdict=verdict, boxes=boxes, **values)  # type: ignore[arg-type]


def round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def sc_of(received: tuple[Dataset, np.ndarray], result: Finding) -> np.ndarray:
    original, pixels = received
    uids = ResultUIDs.for_result(original.SOPInstanceUID, result.model_version)
    return round_trip(secondary_capture(original, pixels, result, uids)).pixel_array


def all_keywords(ds: Dataset) -> Iterator[str]:
    for element in ds.iterall():
        yield element.keyword


def coloured(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(rgb.astype(int) - colour) <= 10, axis=-1)


def banner_rows(sc: np.ndarray, source_shape: tuple[int, int]) -> int:
    """Rows above the image: the SC is the banner, then the image scaled to the SC's width."""
    return sc.shape[0] - round(source_shape[0] * sc.shape[1] / source_shape[1])


# -- UIDs and decoding -------------------------------------------------------------------------
def test_decode_gives_dicom_pixels_at_full_resolution(received: tuple[Dataset, np.ndarray]) -> None:
    original, pixels = received
    assert pixels.shape == (original.Rows, original.Columns) == (600, 500)
    assert pixels.dtype == np.float32 and pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_result_uids_are_valid_and_the_same_for_the_same_result() -> None:
    instance = str(generate_uid())
    uids = ResultUIDs.for_result(instance, MODEL)
    values = [uids.sc_series, uids.sc_instance, uids.sr_series, uids.sr_instance]
    assert all(UID(value).is_valid for value in values)
    assert len(set(values)) == 4
    assert ResultUIDs.for_result(instance, MODEL) == uids
    other_model = ResultUIDs.for_result(instance, "efficientnet_lite0-000000000000")
    other_image = ResultUIDs.for_result(str(generate_uid()), MODEL)
    for other in (other_model, other_image):
        assert not set(values) & {
            other.sc_series,
            other.sc_instance,
            other.sr_series,
            other.sr_instance,
        }


# -- what travels from the original ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sc", "sr"])
def test_result_joins_the_study_with_the_patient_module_and_nothing_else(
    received: tuple[Dataset, np.ndarray], kind: str
) -> None:
    original, pixels = received
    result = finding("fracture", BOXES)
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    made = (
        secondary_capture(original, pixels, result, uids)
        if kind == "sc"
        else structured_report(original, result, uids)
    )
    ds = round_trip(made)
    for keyword in IDENTITY:
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.SpecificCharacterSet == original.SpecificCharacterSet
    series, instance = (
        (uids.sc_series, uids.sc_instance) if kind == "sc" else (uids.sr_series, uids.sr_instance)
    )
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (series, instance)
    assert ds.SeriesInstanceUID != original.SeriesInstanceUID
    assert ds.SeriesNumber == (9901 if kind == "sc" else 9902) and ds.InstanceNumber == 1
    assert ds.Manufacturer == "fracture-screening"
    assert "not for clinical use" in ds.SeriesDescription
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    keywords = set(all_keywords(ds))  # nested sequences included (e.g. contributing equipment)
    assert not keywords & set(FOREIGN)
    assert not any(element.tag.is_private for element in ds.iterall())
    text = str(ds)
    for value in (
        "St Elsewhere",
        "Tech^Terry",
        "Acme Imaging",
        "site secret",
        "CR-ROOM-2",
        "OLD-999",
    ):
        assert value not in text


def test_secondary_capture_is_an_8_bit_rgb_image_with_burned_in_annotation(
    received: tuple[Dataset, np.ndarray],
) -> None:
    original, pixels = received
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    sc = round_trip(secondary_capture(original, pixels, finding("fracture", BOXES), uids))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.BitsAllocated == sc.BitsStored == 8
    assert sc.BurnedInAnnotation == "YES"
    assert "PatientOrientation" in sc and not sc.PatientOrientation  # empty: not copied
    assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    (source,) = sc.SourceImageSequence
    assert source.ReferencedSOPClassUID == original.SOPClassUID
    assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID


def test_answer_is_burned_into_a_dark_banner_above_the_unchanged_image(
    received: tuple[Dataset, np.ndarray],
) -> None:
    _, pixels = received
    sc = sc_of(received, finding("no_fracture"))
    top = banner_rows(sc, pixels.shape)
    assert sc.shape[1] == pixels.shape[1] and top > 20
    banner = sc[:top].astype(int)
    assert np.median(banner) < 40  # dark
    assert (banner.max(axis=-1) > 180).sum() > 200  # with bright text on it
    image = sc[top:, :, 0].astype(float)
    assert np.abs(image - np.rint(pixels * 255)).max() <= 1  # the radiograph itself untouched


def test_fracture_box_is_drawn_in_red_at_its_place(received: tuple[Dataset, np.ndarray]) -> None:
    _, pixels = received
    sc = sc_of(received, finding("fracture", BOXES))
    top = banner_rows(sc, pixels.shape)
    red = coloured(sc, RED)
    x, y, w, h, _ = BOXES[0]
    left, upper, right, lower = int(x), top + int(y), int(x + w) - 1, top + int(y + h) - 1
    middle_row, middle_column = (upper + lower) // 2, (left + right) // 2
    assert red[middle_row, left] and red[middle_row, right]  # left and right edges
    assert red[upper, middle_column] and red[lower, middle_column]  # top and bottom edges
    assert not red[middle_row, middle_column]  # an outline, not a filled block
    centre = red[top + 250 : top + 350, 150:250]  # the middle of the image: no box there
    assert not centre.any()
    assert not coloured(sc, AMBER).any()


def test_doubt_boxes_are_amber(received: tuple[Dataset, np.ndarray]) -> None:
    _, pixels = received
    sc = sc_of(received, finding("doubt", BOXES))
    top = banner_rows(sc, pixels.shape)
    x, y, _, h, _ = BOXES[0]
    assert coloured(sc, AMBER)[top + int(y + h / 2), int(x)]
    assert not coloured(sc, RED).any()


def test_no_fracture_draws_no_box_even_when_given_boxes(
    received: tuple[Dataset, np.ndarray],
) -> None:
    sc = sc_of(received, finding("no_fracture", BOXES))
    assert not coloured(sc, RED).any() and not coloured(sc, AMBER).any()


def test_large_original_is_downscaled_to_2048_with_its_boxes() -> None:
    rows, columns = 3000, 2400
    grey = np.tile(np.linspace(0.2, 0.8, columns, dtype=np.float32), (rows, 1))
    original = pydicom.dcmread(io.BytesIO(original_bytes(np.zeros((32, 32), np.uint8))))
    original.Rows, original.Columns = rows, columns  # the header is all the SC reads
    box = [1800.0, 2000.0, 300.0, 400.0, 0.8]
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    sc = round_trip(secondary_capture(original, grey, finding("fracture", [box]), uids)).pixel_array
    assert max(sc.shape[:2]) <= MAX_SIDE
    assert max(sc.shape[:2]) >= MAX_SIDE - 2  # as large as allowed, not smaller
    scale = sc.shape[1] / columns
    top = banner_rows(sc, (rows, columns))
    red = coloured(sc, RED)
    left, upper = round(box[0] * scale), top + round(box[1] * scale)
    right, lower = round((box[0] + box[2]) * scale) - 1, top + round((box[1] + box[3]) * scale) - 1
    middle_row, middle_column = (upper + lower) // 2, (left + right) // 2
    assert red[middle_row, left] and red[middle_row, right]
    assert red[upper, middle_column] and red[lower, middle_column]
    assert not red[middle_row, left - 5] and not red[middle_row, right + 5]  # nowhere else


@pytest.mark.parametrize("size", [(300, 360), (2048, 1600)])
def test_banner_text_fits_the_width_of_small_and_large_images(size: tuple[int, int]) -> None:
    width, height = size
    original = pydicom.dcmread(io.BytesIO(original_bytes(np.zeros((32, 32), np.uint8))))
    pixels = np.full((height, width), 0.5, dtype=np.float32)
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    sc = secondary_capture(original, pixels, finding("doubt"), uids).pixel_array
    top = banner_rows(sc, pixels.shape)
    text = sc[:top].max(axis=-1) > 150
    rows_with_text = np.flatnonzero(text.any(axis=1))
    assert rows_with_text.size >= 2 * 9  # at least two lines of text at least 9 px tall
    assert not text[:, -2:].any()  # wrapped, not cut off at the right edge
    assert text.any(axis=0).sum() > width // 2  # and using the width


# -- Structured Report -------------------------------------------------------------------------
@pytest.mark.parametrize("verdict", ["fracture", "doubt", "no_fracture"])
@pytest.mark.parametrize("boxes", [None, [], BOXES], ids=["no-boxes", "empty", "two-boxes"])
def test_report_reads_back_the_finding(
    received: tuple[Dataset, np.ndarray], verdict: str, boxes: list[list[float]] | None
) -> None:
    original, _ = received
    result = finding(verdict, boxes, probability=0.123456789)
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    back = read_report(round_trip(structured_report(original, result, uids)))
    assert back["verdict"] == verdict
    assert back["probability"] == pytest.approx(0.123456789, abs=1e-6)
    assert (back["threshold"], back["doubt_threshold"]) == (0.058, 0.032)
    assert (back["region"], back["model_version"]) == ("hand", MODEL)
    assert back["boxes"] == (boxes or [])


def test_numpy_numbers_in_a_finding_read_back_as_plain_floats(
    received: tuple[Dataset, np.ndarray],
) -> None:
    original, _ = received
    result = finding(
        "doubt",
        [[np.float32(10.5), 20, 30, 40, np.float64(0.7)]],  # type: ignore[list-item]
        probability=np.float32(0.045),
        threshold=np.float64(0.058),
        doubt_threshold=np.float64(0.032),
    )
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    back = read_report(round_trip(structured_report(original, result, uids)))
    assert (back["threshold"], back["doubt_threshold"]) == (0.058, 0.032)
    assert back["probability"] == pytest.approx(0.045, abs=1e-6)
    assert back["boxes"] == [[10.5, 20.0, 30.0, 40.0, pytest.approx(0.7)]]


def test_report_without_a_doubt_threshold_or_region(received: tuple[Dataset, np.ndarray]) -> None:
    original, _ = received
    result = finding("no_fracture", None, doubt_threshold=None, region=None)
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    back = read_report(round_trip(structured_report(original, result, uids)))
    assert back["verdict"] == "no_fracture"
    assert back["threshold"] == 0.058 and back["doubt_threshold"] is None
    assert back["region"] is None


def test_mixed_region_is_kept_as_the_models_word(received: tuple[Dataset, np.ndarray]) -> None:
    original, _ = received
    result = finding("fracture", None, region="mixed")
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    assert read_report(round_trip(structured_report(original, result, uids)))["region"] == "mixed"


def test_report_is_a_tid_1500_measurement_report_highdicom_can_parse(
    received: tuple[Dataset, np.ndarray],
) -> None:
    original, _ = received
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    ds = round_trip(structured_report(original, finding("fracture", BOXES), uids))
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (ds.VerificationFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == original.StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == original.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == original.SOPInstanceUID
    texts = [str(element.value) for element in ds.iterall() if element.keyword == "TextValue"]
    assert any(text.startswith("Decision support, not for clinical use") for text in texts)
    document = hd.sr.ComprehensiveSR.from_dataset(ds)
    assert len(document.content.get_image_measurement_groups()) == 1
    rois = document.content.get_planar_roi_measurement_groups()
    assert len(rois) == 2
    region = rois[0].roi
    assert region is not None and region.GraphicType == "POLYLINE"
    points = region.value
    assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])  # closed
    x, y, w, h, _ = BOXES[0]
    assert points.min(axis=0).tolist() == [x, y] and points.max(axis=0).tolist() == [x + w, y + h]
    source = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID


def test_read_report_refuses_a_report_without_a_finding() -> None:
    with pytest.raises(ValueError, match="not a fracture-screening report"):
        read_report(Dataset())


# -- robustness and privacy --------------------------------------------------------------------
def test_compressed_original_and_a_name_without_components_are_handled_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = original_bytes(radiograph(300, 360), syntax=RLELossless, PatientName="JANEDOE")
    original = pydicom.dcmread(io.BytesIO(data))
    pixels = decode(data, target_size=None).pixels
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc = round_trip(secondary_capture(original, pixels, finding("fracture", BOXES), uids))
        sr = round_trip(structured_report(original, finding("fracture", BOXES), uids))
    assert sc.PatientName == sr.PatientName == "JANEDOE"
    said = caplog.text + " ".join(str(w.message) for w in caught)
    assert "JANEDOE" not in said and "PID-123" not in said


def test_missing_optional_patient_details_stay_empty_and_are_not_invented() -> None:
    data = original_bytes(
        radiograph(64, 64),
        PatientBirthDate=None,
        IssuerOfPatientID=None,
        ReferringPhysicianName=None,
    )
    original = pydicom.dcmread(io.BytesIO(data))
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    for made in (
        secondary_capture(original, np.zeros((64, 64), np.float32), finding("no_fracture"), uids),
        structured_report(original, finding("no_fracture"), uids),
    ):
        ds = round_trip(made)
        assert ds.PatientBirthDate == "" and ds.ReferringPhysicianName == ""  # type 2: empty
        assert "IssuerOfPatientID" not in ds


def test_report_on_a_non_standard_sop_class_is_refused_with_the_reason() -> None:
    original = pydicom.dcmread(io.BytesIO(original_bytes(np.zeros((32, 32), np.uint8))))
    original.SOPClassUID = "1.2.840.113619.4.30"  # a vendor's private class
    uids = ResultUIDs.for_result(original.SOPInstanceUID, MODEL)
    with pytest.raises(ValueError, match="not a standard DICOM image class"):
        structured_report(original, finding("fracture", BOXES), uids)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"verdict": "maybe"}, "verdict must be one of fracture, doubt, no_fracture"),
        ({"probability": 1.5}, "probability must be a number from 0 to 1"),
        ({"verdict": "doubt", "doubt_threshold": None}, "doubt verdict needs its doubt_threshold"),
        ({"boxes": [[1.0, 2.0, 3.0]]}, r"each box must be \[x, y, width, height, score\]"),
    ],
)
def test_a_finding_that_breaks_a_rule_is_refused(change: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "verdict": "fracture",
        "probability": 0.5,
        "threshold": 0.058,
        "doubt_threshold": 0.032,
        "region": None,
        "model_version": MODEL,
        "boxes": None,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        Finding(**values)  # type: ignore[arg-type]
