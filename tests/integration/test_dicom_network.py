"""DICOM in and out against real peers: Orthanc (a PACS) and DCMTK's storescu/echoscu, with a
real broker, Celery worker and database, and `fracture dicom-listen` as its own process."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from db.models import DicomExport, Image, Prediction
from model.files import file_signature
from pacs.objects import read_report
from tests.helpers import (
    OrthancServer,
    ProcessPipeline,
    dicom_tool,
    make_tiny_heat_checkpoint,
    process_pipeline,
    sample_images,
    wait_for,
)
from tests.make_inputs import PATIENT_ID, PATIENT_NAME, dicom_bytes, grey_radiograph
from worker.broker import free_port

pytestmark = pytest.mark.usefixtures("orthanc_binary")

SENDER = "STORESCU"


@pytest.fixture(scope="module")
def heat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Boxes and three answers, as the shipped model gives them."""
    return make_tiny_heat_checkpoint(
        tmp_path_factory.mktemp("heat") / "heat.pt", threshold=0.5, doubt_threshold=0.3
    )


def study_files(
    directory: Path, count: int, *, syntax: str = "explicit", study_uid: str | None = None
) -> list[Path]:
    """`count` 12-bit DX instances of one study (real radiographs), written as files."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    sources = sample_images()
    paths = []
    for index in range(count):
        grey = grey_radiograph(sources[index % len(sources)])
        if index >= len(sources):  # different pixels, so no two instances are the same image
            grey = grey[:, ::-1] if (index // len(sources)) % 2 else grey[::-1, :]
            grey = grey[index // len(sources) :, :]
        data = dicom_bytes(
            grey.copy(),
            bits=12,
            syntax=syntax,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            InstanceNumber=index + 1,
            InstitutionName="St Elsewhere Hospital",
        )
        path = directory / f"instance_{index:03d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def text_report(study_uid: str) -> bytes:
    """A non-image instance (Basic Text SR) in the same study: to be accepted and ignored."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@contextmanager
def gateway(
    tmp_path: Path, broker_url: str, model: Path, **settings: object
) -> Iterator[tuple[ProcessPipeline, int]]:
    """Worker, watcher (its sweeper) and DICOM listener processes; the listener's port."""
    port = free_port()
    values = {"dicom_port": port, "dicom_calling_aes": f"{SENDER},ORTHANC", **settings}
    with process_pipeline(tmp_path, broker_url, model, **values) as p:
        p.start("worker")
        p.start("watcher")  # its sweeper sends rows a killed listener registered but never sent
        p.start("dicom")
        assert wait_for(lambda: _listening(port), 60), p.logs()
        yield p, port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def storescu(
    port: int, files: list[Path], *, ae_title: str = SENDER
) -> subprocess.CompletedProcess[str]:
    return dicom_tool(
        "storescu", "-v", "-aet", ae_title, "-aec", "FRACTURE", "127.0.0.1", str(port),
        *map(str, files),
    )  # fmt: skip


def counts(p: ProcessPipeline) -> dict[str, int]:
    return p.counts()


def exports_by_state(p: ProcessPipeline) -> dict[str, int]:
    with p.factory() as session:
        rows = session.execute(select(DicomExport.state, func.count()).group_by(DicomExport.state))
        return {state: count for state, count in rows}


def assert_no_patient_identity_in_logs(p: ProcessPipeline) -> None:
    text = "\n".join(path.read_text(errors="replace") for path in p.root.glob("*.log"))
    assert PATIENT_NAME not in text and "Doe" not in text and PATIENT_ID not in text


def test_a_study_sent_by_orthanc_is_scored_and_its_results_come_back_into_the_same_study(
    tmp_path: Path, broker_url: str, orthanc: OrthancServer, heat_model: Path
) -> None:
    files = study_files(tmp_path / "study", 3)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    for path in files:
        orthanc.upload(path.read_bytes())
    orthanc.upload(text_report(study_uid))
    destination = f"{OrthancServer.AE_TITLE}@127.0.0.1:{orthanc.dicom_port}"
    with gateway(tmp_path, broker_url, heat_model, dicom_destination=destination) as (p, port):
        orthanc.add_modality("fracture", "FRACTURE", port)
        study = orthanc.study_id(study_uid)
        orthanc.request(
            "POST", "/modalities/fracture/store", {"Resources": [study], "Synchronous": True}
        )
        assert wait_for(lambda: exports_by_state(p).get("sent") == 3, 120), p.logs()
        assert counts(p) == {"done": 3}  # the text report was acknowledged, not queued
        with p.factory() as session:
            rows = session.scalars(select(Image)).all()
            assert {r.source for r in rows} == {"dicom"} and {r.study_uid for r in rows} == {
                study_uid
            }
            assert {r.calling_ae for r in rows} == {"ORTHANC"}
            stored = {
                (p_.verdict, round(p_.probability, 6), p_.model_version, len(p_.boxes or []))
                for p_ in session.scalars(select(Prediction))
            }
            for row in rows:  # kept as sent, in a private folder
                assert (
                    Path(row.path).is_file()
                    and (os.stat(Path(row.path).parent.parent).st_mode & 0o077) == 0
                )
                # written by the listener alone: the worker trusted its hash, not hashing again
                assert row.file_signature == file_signature(os.stat(row.path))
        assert "ignored non-image instance" in p.logs(20000)
        assert_no_patient_identity_in_logs(p)

    returned = [pydicom.dcmread(io.BytesIO(data)) for data in orthanc.study_files(study_uid)]
    ours = [ds for ds in returned if ds.get("Manufacturer") == "fracture-screening"]
    captures = [ds for ds in ours if ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage]
    reports = [ds for ds in ours if ds.Modality == "SR"]
    assert len(returned) == 4 + 6 and len(captures) == 3 and len(reports) == 3
    for ds in ours:
        assert ds.StudyInstanceUID == study_uid
        assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == PATIENT_ID
        assert "InstitutionName" not in ds
    for ds in captures:
        assert ds.BurnedInAnnotation == "YES" and ds.pixel_array.ndim == 3
    found = set()
    for ds in reports:
        report = read_report(ds)
        boxes = report.get("boxes")
        found.add(
            (
                report["verdict"],
                round(float(report["probability"]), 6),  # type: ignore[arg-type]
                report["model_version"],
                len(boxes) if isinstance(boxes, list) else int(report.get("box_count", 0)),  # type: ignore[call-overload]
            )
        )
    assert found == stored


def test_storescu_fifty_instances_echo_a_compressed_syntax_and_a_rejected_calling_ae(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    plain = study_files(tmp_path / "plain", 50)
    # each proposed the way storescu offers it, and stored as it was sent (not converted)
    compressed = {
        (syntax, flag): study_files(tmp_path / syntax, 1, syntax=syntax)[0]
        for syntax, flag in (("rle", "-xr"), ("j2k-lossless", "-xv"), ("jpeg-lossless", "-xs"))
    }
    stranger = study_files(tmp_path / "stranger", 1)
    with gateway(tmp_path, broker_url, tiny_model) as (p, port):
        echo = dicom_tool("echoscu", "-aet", SENDER, "-aec", "FRACTURE", "127.0.0.1", str(port))
        assert echo.returncode == 0, echo.stderr
        sent = storescu(port, plain)  # one association
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert sent.stderr.count("Association Accepted") == 1
        assert sent.stderr.count("Received Store Response (Success)") == 50
        for (_, flag), path in compressed.items():
            result = dicom_tool(
                "storescu",
                flag,
                "-aet",
                SENDER,
                "-aec",
                "FRACTURE",
                "127.0.0.1",
                str(port),
                str(path),
            )
            assert result.returncode == 0, result.stderr[-2000:]
        refused = storescu(port, stranger, ae_title="INTRUDER")
        assert refused.returncode != 0
        assert wait_for(lambda: counts(p).get("done") == 53, 180), (counts(p), p.logs())
        with p.factory() as session:
            paths = session.scalars(select(Image.path)).all()
        assert len(paths) == 53  # nothing from the rejected AE title
        syntaxes = {str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) for path in paths}
        assert syntaxes == {
            pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless,
            pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEGLosslessSV1,
        }  # fmt: skip
        assert "Association Rejected" in refused.stdout + refused.stderr


def test_destination_down_then_up_every_result_is_sent_once(
    tmp_path: Path, broker_url: str, heat_model: Path, orthanc_binary: None
) -> None:
    files = study_files(tmp_path / "study", 2)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    pacs_port, http_port = free_port(), free_port()
    destination = f"{OrthancServer.AE_TITLE}@127.0.0.1:{pacs_port}"
    settings = {"dicom_destination": destination, "dicom_send_backoff_s": 0.5}
    with gateway(tmp_path, broker_url, heat_model, **settings) as (p, port):
        assert storescu(port, files).returncode == 0
        assert wait_for(lambda: counts(p).get("done") == 2, 120), p.logs()

        def retrying() -> bool:
            with p.factory() as session:
                rows = session.scalars(select(DicomExport)).all()
            return len(rows) == 2 and all(r.attempts >= 2 and r.state == "pending" for r in rows)

        assert wait_for(retrying, 60), p.logs()
        with p.factory() as session:
            assert all(
                "unreachable" in (r.error or "") for r in session.scalars(select(DicomExport))
            )
        orthanc = OrthancServer(tmp_path / "late-orthanc", http_port, pacs_port).start()
        try:
            assert wait_for(lambda: exports_by_state(p) == {"sent": 2}, 60), p.logs()
            returned = orthanc.study_files(study_uid)
            statistics = orthanc.get("/statistics")
        finally:
            orthanc.stop()
    assert len(returned) == 4  # a capture and a report per image, nothing twice
    assert statistics["CountInstances"] == 4


def test_listener_killed_mid_association_loses_nothing_it_acknowledged(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    files = study_files(tmp_path / "study", 120)
    with gateway(tmp_path, broker_url, tiny_model) as (p, port):
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        sender = threading.Thread(target=lambda: result.update(first=storescu(port, files)))
        sender.start()
        assert wait_for(lambda: sum(counts(p).values()) >= 10, 60), p.logs()
        os.killpg(p.processes["dicom"].pid, signal.SIGKILL)
        sender.join(timeout=120)
        first = result["first"]
        acknowledged = (first.stdout + first.stderr).count("Received Store Response (Success)")
        assert first.returncode != 0 and 10 <= acknowledged < len(files)
        assert wait_for(
            lambda: counts(p).get("done", 0) >= acknowledged and p.settled(sum(counts(p).values())),
            120,
        ), (acknowledged, counts(p), p.logs())
        registered = sum(counts(p).values())
        assert registered >= acknowledged and counts(p) == {"done": registered}

        p.start("dicom-2")
        assert wait_for(lambda: _listening(port), 60), p.logs()
        again = storescu(port, files)  # the whole study again
        assert again.returncode == 0, again.stderr[-2000:]
        assert wait_for(lambda: counts(p).get("done") == len(files), 180), (counts(p), p.logs())
        assert set(p.predictions_per_image().values()) == {1}


def test_a_malformed_dataset_gets_a_failure_status_and_a_failed_row_and_the_listener_serves_on(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    from pynetdicom import AE

    good = study_files(tmp_path / "good", 1)[0]
    broken = pydicom.dcmread(good)
    # Rows (US, two bytes) sent with three: pydicom writes a raw element as it is
    broken[0x00280010] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, False, True)
    with gateway(tmp_path, broker_url, tiny_model) as (p, port):
        ae = AE(ae_title=SENDER)
        ae.add_requested_context(
            pydicom.uid.DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
        )
        association = ae.associate("127.0.0.1", port, ae_title="FRACTURE")
        assert association.is_established
        status = association.send_c_store(broken)
        association.release()
        assert status.Status == 0xC210
        assert wait_for(lambda: counts(p).get("failed") == 1, 30), p.logs()
        with p.factory() as session:
            failed = session.scalars(select(Image)).one()
        assert "malformed DICOM dataset" in (failed.error or "") and Path(failed.path).is_file()
        assert storescu(port, [good]).returncode == 0  # still serving
        assert wait_for(lambda: counts(p).get("done") == 1, 60), p.logs()


def test_results_that_gave_up_are_sent_by_dicom_send_retry_failed(
    tmp_path: Path, broker_url: str, heat_model: Path
) -> None:
    import json

    from tests.helpers import fracture_cli

    files = study_files(tmp_path / "study", 2)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    pacs_port, http_port = free_port(), free_port()
    settings = {
        "dicom_destination": f"{OrthancServer.AE_TITLE}@127.0.0.1:{pacs_port}",
        "dicom_send_backoff_s": 0.2,
        "dicom_send_attempts": 2,
    }
    with gateway(tmp_path, broker_url, heat_model, **settings) as (p, port):
        assert storescu(port, files).returncode == 0
        assert wait_for(lambda: exports_by_state(p) == {"failed": 2}, 120), p.logs()
        env = p.env
        listed = subprocess.run(
            fracture_cli("results", "--json"), env=env, capture_output=True, text=True, timeout=60
        )
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {r["pacs"]["state"] for r in records} == {"failed"}
        assert all(r["pacs"]["error"].startswith("gave up after 2 attempt(s)") for r in records)
        assert {r["study_uid"] for r in records} == {study_uid}
    orthanc = OrthancServer(tmp_path / "orthanc", http_port, pacs_port).start()
    try:
        again = subprocess.run(
            fracture_cli("dicom-send", "--retry-failed"),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "2 failed result(s) given fresh attempts" in again.stdout
        assert ": 2 sent, 0 to retry, 0 failed now" in again.stdout
        assert len(orthanc.study_files(study_uid)) == 4
    finally:
        orthanc.stop()


def test_five_hundred_instances_over_one_association_are_all_scored(tiny_model: Path) -> None:
    """`fracture bench --dicom`: storescu → listener → worker; the figures are printed."""
    import json

    from tests.helpers import fracture_cli, fracture_env

    completed = subprocess.run(
        [*fracture_cli("bench", "--dicom", "--json", "--n", "500"), "--model", str(tiny_model)],
        env=fracture_env(device="cpu"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"DICOM bench (tiny model): {result}")
    assert result["n"] == 500  # the bench fails unless every instance was scored
    assert 0 < result["scored_ips"] <= result["receive_ips"]
