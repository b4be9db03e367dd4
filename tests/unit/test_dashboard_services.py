"""Dashboard services without Streamlit: upload storage, formats, names, CSV, contrast, the PACS
send state in words."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from config import Settings
from dashboard import services
from db import browse, queries
from db.models import DicomExport, ExportState, Image
from db.session import transaction
from tests.helpers import new_prediction, sample_images


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", inbox=tmp_path / "inbox", upload_max_mb=1)


@pytest.fixture
def dashboard(settings: Settings) -> services.Dashboard:
    return services.Dashboard.start(settings)  # no broker configured


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("L", (32, 32), 128).save(buffer, fmt)
    return buffer.getvalue()


def bare_dicom() -> bytes:
    from tests.make_inputs import dicom_bytes, grey_radiograph

    return dicom_bytes(grey_radiograph(size=(32, 40)), preamble=False)


@pytest.mark.parametrize(
    ("data", "extension"),
    [
        (encoded("PNG"), "png"),
        (encoded("JPEG"), "jpg"),
        (encoded("BMP"), "bmp"),
        (encoded("TIFF"), "tif"),
        (b"\0" * 128 + b"DICM" + b"\0" * 64, "dcm"),
        (bare_dicom(), "dcm"),  # no preamble: what some PACS exports write
        (b"GIF89a" + b"\0" * 64, None),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_format_is_judged_from_the_bytes(data: bytes, extension: str | None) -> None:
    assert services.sniff_format(data) == extension


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("wrist.png", "wrist.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\Desktop\\hand.jpg", "hand.jpg"),
        ("bad\x00name\n.png", "badname.png"),
        ("..", "upload"),
        ("   ", "upload"),
        ("a" * 300 + ".png", "a" * 200),
    ],
)
def test_display_name_keeps_only_a_printable_base_name(name: str, shown: str) -> None:
    assert services.display_name(name) == shown


def test_upload_is_stored_under_its_hash_and_registered(
    dashboard: services.Dashboard, settings: Settings
) -> None:
    data = sample_images()[0].read_bytes()
    stored = services.store_upload(dashboard, "../../../tmp/evil.jpg", data)
    sha = hashlib.sha256(data).hexdigest()
    target = settings.uploads_dir / f"{sha}.jpg"
    assert stored.sha256 == sha and stored.created and stored.status == "queued"
    assert stored.sent is False  # no broker: stays queued for the sweeper
    assert target.read_bytes() == data
    assert sorted(p.name for p in settings.uploads_dir.iterdir()) == [target.name]
    with dashboard.factory() as session:
        image = queries.get_image(session=session, image_id=stored.image_id)
        assert image is not None
        assert (image.source, image.filename, image.path, image.format, image.bytes) == (
            "upload",
            "evil.jpg",
            str(target),
            "jpg",
            len(data),
        )

    again = services.store_upload(dashboard, "other-name.jpg", data)
    assert (again.image_id, again.created) == (stored.image_id, False)
    with dashboard.factory() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text, not an image", "not a PNG, JPEG, BMP, TIFF or DICOM file"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024), "upload limit is 1 MB"),
    ],
)
def test_refused_uploads_leave_nothing_behind(
    dashboard: services.Dashboard, settings: Settings, data: bytes, message: str
) -> None:
    with pytest.raises(services.UploadError, match=message):
        services.store_upload(dashboard, "x.png", data)
    assert list(settings.uploads_dir.iterdir()) == []
    with dashboard.factory() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0


def test_wait_gives_up_after_the_timeout(dashboard: services.Dashboard) -> None:
    stored = services.store_upload(dashboard, "a.jpg", sample_images()[1].read_bytes())
    polls: list[str] = []
    answer = services.wait_for_answer(
        dashboard.factory,
        stored.image_id,
        timeout_s=0.3,
        poll_s=0.05,
        on_poll=lambda status, _: polls.append(status),
    )
    assert answer.timed_out and answer.prediction is None and answer.image.status == "queued"
    assert 0.3 <= answer.waited_s < 2 and polls and set(polls) == {"queued"}


def test_wait_returns_as_soon_as_the_image_is_done(dashboard: services.Dashboard) -> None:
    stored = services.store_upload(dashboard, "a.jpg", sample_images()[2].read_bytes())
    with transaction(dashboard.factory) as session:
        queries.store_batch(
            session=session,
            predictions=[new_prediction(stored.image_id, probability=0.8, model_version="m-1")],
            failures={},
        )
    answer = services.wait_for_answer(dashboard.factory, stored.image_id, timeout_s=30)
    assert not answer.timed_out and answer.waited_s < 5
    assert answer.prediction is not None and answer.prediction.probability == 0.8


def test_csv_export_is_the_notice_then_the_filtered_rows_with_safe_names(
    dashboard: services.Dashboard,
) -> None:
    names = ["=HYPERLINK(evil)", "ward/b.png", "-2+3.png"]
    with transaction(dashboard.factory) as session:
        for index, name in enumerate(names):
            image, _ = queries.register_image(
                session=session, sha256=f"{index:064x}", path="/x", filename=name, size=1
            )
            image.patient_hash = "f" * 64
            session.flush()
            queries.store_batch(
                session=session,
                predictions=[
                    new_prediction(
                        image.id, probability=0.9 if index != 1 else 0.1, model_version="m-1"
                    )
                ],
                failures={},
            )
    flt = browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,))
    text = services.export_csv(dashboard.factory, flt, browse.SortKey.FILENAME).decode()
    rows = list(csv.DictReader(io.StringIO(text)))  # the header is the first line
    assert tuple(rows[0]) == (*services.EXPORT_COLUMNS, "notice")
    assert all(r["notice"].startswith(services.NOTICE + " Exported ") for r in rows)
    frame = pd.read_csv(io.StringIO(text))  # plain, no options
    assert list(frame.columns) == [*services.EXPORT_COLUMNS, "notice"] and len(frame) == 2
    assert "patient_hash" not in text and "f" * 64 not in text
    assert [r["filename"] for r in rows] == ["'-2+3.png", "'=HYPERLINK(evil)"]
    assert {r["label"] for r in rows} == {browse.POSITIVE_LABEL}
    assert rows[0]["probability"] == "0.900000" and rows[0]["review_count"] == "0"


def test_csv_export_carries_verdict_doubt_threshold_and_boxes(
    dashboard: services.Dashboard,
) -> None:
    boxes = [[12.5, 30.0, 40.0, 22.5, 0.75]]
    answers = {"doubt.png": ("doubt", 0.2, boxes), "old.png": (None, None, None)}
    with transaction(dashboard.factory) as session:
        for index, (name, (verdict, doubt_threshold, drawn)) in enumerate(answers.items()):
            image, _ = queries.register_image(
                session=session, sha256=f"{index:064x}", path="/x", filename=name, size=1
            )
            session.flush()
            queries.store_batch(
                session=session,
                predictions=[
                    new_prediction(
                        image.id,
                        probability=0.3,
                        model_version="m-1",
                        verdict=verdict,
                        doubt_threshold=doubt_threshold,
                        boxes=drawn,
                    )
                ],
                failures={},
            )
    flt = browse.BrowseFilter(verdicts=("doubt", "no_fracture"))
    text = services.export_csv(dashboard.factory, flt, browse.SortKey.FILENAME).decode()
    rows = {r["filename"]: r for r in csv.DictReader(io.StringIO(text))}
    doubt, old = rows["doubt.png"], rows["old.png"]
    assert (doubt["verdict"], doubt["doubt_threshold"]) == ("doubt", "0.200000")
    assert json.loads(doubt["boxes"]) == boxes
    assert (old["verdict"], old["doubt_threshold"], old["boxes"]) == ("no_fracture", "", "")


def test_display_pixels_cap_the_longer_side() -> None:
    pixels = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], dtype=np.float32)
    large = np.random.default_rng(0).random((3000, 1000)).astype(np.float32)
    assert services.display_pixels(large).shape == (1024, 341)
    assert services.display_pixels(pixels).shape == pixels.shape


def test_only_well_formed_stored_boxes_are_drawn() -> None:
    stored = [
        [1, 2, 3, 4, 0.5],
        [1, 2, 3],  # too short
        [1, 2, 0, 4, 0.5],  # no width
        ["x", 2, 3, 4, 0.5],
        [1, 2, 3, float("nan"), 0.5],
    ]
    assert services.valid_boxes(stored) == [(1.0, 2.0, 3.0, 4.0, 0.5)]
    assert services.valid_boxes(None) == [] and services.valid_boxes("[]") == []


# -- results to PACS ---------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def stamp(moment: datetime | None) -> str:
    return "?" if moment is None else moment.strftime("%H:%M")


def send_text(export: DicomExport | None, destination: str | None = "PACS@pacs:104") -> str:
    return services.export_text(
        export, destination=destination, max_attempts=10, now=NOW, when=stamp
    )


def test_each_send_state_reads_as_a_sentence() -> None:
    sent = DicomExport(state=ExportState.SENT, attempts=2, destination="PACS@pacs:104", sent_at=NOW)
    assert send_text(sent) == "sent to PACS at 12:00 (PACS@pacs:104)"
    waiting = DicomExport(
        state=ExportState.PENDING,
        attempts=3,
        error="destination PACS@pacs:104 unreachable",
        next_attempt_at=NOW + timedelta(seconds=40),
    )
    assert send_text(waiting) == (
        "pending — attempt 4 of 10, next try at 12:00: destination PACS@pacs:104 unreachable"
    )
    fresh = DicomExport(state=ExportState.PENDING, attempts=0, next_attempt_at=NOW)
    assert send_text(fresh) == "pending — attempt 1 of 10, due now"
    # SQLite hands the time back without a zone: it is UTC all the same.
    naive = DicomExport(
        state=ExportState.PENDING, attempts=0, next_attempt_at=datetime(2026, 3, 10, 12, 5)
    )
    assert send_text(naive) == "pending — attempt 1 of 10, next try at 12:05"
    failed = DicomExport(
        state=ExportState.FAILED,
        attempts=10,
        error="gave up after 10 attempt(s): destination refused SR object: status 0xA700",
    )
    assert send_text(failed) == (
        "failed after 10 attempt(s): destination refused SR object: status 0xA700"
    )
    assert send_text(None, destination=None) == "not sent: no DICOM destination configured"
    assert send_text(None).startswith("not queued yet for PACS@pacs:104")


def test_pacs_state_shown_for_dicom_images_and_folder_files_when_those_are_sent(
    settings: Settings,
) -> None:
    received = Image(source="dicom", format="DICOM")
    folder_dicom = Image(source="watch", format="DICOM")
    jpeg = Image(source="upload", format="jpg")
    assert services.shows_pacs_state(received, settings, has_exports=False)
    assert not services.shows_pacs_state(folder_dicom, settings, has_exports=False)
    assert services.shows_pacs_state(jpeg, settings, has_exports=True)
    sending_folder = settings.model_copy(update={"dicom_export_folder_files": True})
    assert services.shows_pacs_state(folder_dicom, sending_folder, has_exports=False)
    assert not services.shows_pacs_state(jpeg, sending_folder, has_exports=False)


@pytest.mark.parametrize(
    ("uid", "shown"),
    [
        ("1.2.826.0.1.3680043.8.498.12345678901234", "…345678901234"),
        ("1.2.3", "1.2.3"),
        (None, "—"),
        ("", "—"),
    ],
)
def test_short_uid_keeps_the_end_where_instances_differ(uid: str | None, shown: str) -> None:
    assert services.short_uid(uid) == shown


def test_csv_export_carries_the_study_and_the_send_state(dashboard: services.Dashboard) -> None:
    with transaction(dashboard.factory) as session:
        for index, (name, study, state) in enumerate(
            [("dicom/x.dcm", "1.2.3.4", ExportState.FAILED), ("ward/y.png", None, None)]
        ):
            image, _ = queries.register_image(
                session=session, sha256=f"{index:064x}", path="/x", filename=name, size=1
            )
            image.study_uid = study
            session.flush()
            queries.store_batch(
                session=session,
                predictions=[new_prediction(image.id, probability=0.3, model_version="m-1")],
                failures={},
            )
            if state is not None:
                session.refresh(image)
                prediction = image.predictions[0]
                session.add(
                    DicomExport(prediction_id=prediction.id, image_id=image.id, state=state)
                )
    text = services.export_csv(
        dashboard.factory, browse.BrowseFilter(), browse.SortKey.FILENAME
    ).decode()
    rows = {r["filename"]: r for r in csv.DictReader(io.StringIO(text))}
    assert (rows["dicom/x.dcm"]["study_uid"], rows["dicom/x.dcm"]["pacs_state"]) == (
        "1.2.3.4",
        "failed",
    )
    assert (rows["ward/y.png"]["study_uid"], rows["ward/y.png"]["pacs_state"]) == ("", "")
