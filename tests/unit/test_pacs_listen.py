"""What the DICOM listener reads from an instance before it says Success (no network here)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from pacs.listen import MalformedDataset, read_instance, write_durably
from tests.make_inputs import dicom_bytes


def _grey() -> np.ndarray:
    return (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) % 256).astype(np.uint8)


def _report() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_an_image_instance_gives_its_identity_and_no_patient_data() -> None:
    data = dicom_bytes(_grey(), bits=12)
    ds = pydicom.dcmread(io.BytesIO(data))
    instance = read_instance(data, "MODALITY1")
    assert instance.has_pixels and not instance.ours
    assert instance.identity.study_uid == ds.StudyInstanceUID
    assert instance.identity.sop_instance_uid == ds.SOPInstanceUID
    assert instance.identity.calling_ae == "MODALITY1"
    assert "Digital X-Ray" in instance.sop_class_name
    assert "Doe" not in repr(instance) and "MRN" not in repr(instance)


def test_a_report_is_recognised_as_a_non_image_instance() -> None:
    instance = read_instance(_report(), None)
    assert not instance.has_pixels and instance.sop_class_name == "Basic Text SR Storage"


def test_a_result_made_by_this_product_is_recognised() -> None:
    data = dicom_bytes(_grey(), bits=8, Manufacturer="fracture-screening")
    assert read_instance(data, None).ours


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "1.2.3/../../x", "1.2." + "3" * 70, ""])
def test_a_uid_that_is_not_a_uid_is_never_used_as_a_file_name(hostile: str) -> None:
    data = dicom_bytes(
        _grey(), bits=8, SOPInstanceUID=hostile or None, StudyInstanceUID=hostile or None
    )
    instance = read_instance(data, None)
    assert instance.identity.sop_instance_uid is None and instance.identity.study_uid is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 200, b"\x00" * 128 + b"DICM" + b"\xff" * 40],
    ids=["empty", "zeros", "junk"],
)
def test_bytes_that_are_not_a_dataset_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedDataset, match="malformed DICOM dataset"):
        read_instance(data, None)


def test_stored_instances_are_private_to_the_service(tmp_path: Path) -> None:
    target = tmp_path / "dicom" / "1.2.3" / "1.2.3.4.dcm"
    write_durably(target, b"data")
    assert target.read_bytes() == b"data" and not list(target.parent.glob("*.part"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700


def test_an_instance_that_cannot_be_stored_asks_the_sender_to_retry(tmp_path: Path) -> None:
    """The database is unreachable: no Success, but Out of Resources (A700), so the sender
    keeps the instance and tries again."""
    from config import Settings
    from db.session import make_engine, make_session_factory
    from pacs.listen import OUT_OF_RESOURCES, StoreHandler
    from worker.app import make_celery

    broken = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    handler = StoreHandler(
        directory=tmp_path / "dicom",
        app=make_celery(Settings(), "redis://127.0.0.1:1/0"),  # never reached
        factory=broken,
    )
    assert handler.store(dicom_bytes(_grey(), bits=12), "CT1") == OUT_OF_RESOURCES
