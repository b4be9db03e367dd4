"""The results-to-PACS queue (db/exports.py) on real SQLite and PostgreSQL: what is queued,
leases, backoff, giving up and trying again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from db import exports, queries
from db.models import DicomExport, ExportState, ImageSource
from db.session import transaction
from tests.helpers import new_prediction

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
BACKOFF = timedelta(seconds=5)


def _scored(factory, name: str, *, source: str, fmt: str = "DICOM") -> int:
    """A done image with one prediction; its id."""
    identity = queries.DicomIdentity(f"1.2.{len(name)}", "1.3", f"1.4.{name}", "1.5", "MODALITY")
    entry = queries.NewImage(
        sha256=name.ljust(64, "0"),
        path=f"/data/{name}.dcm",
        filename=name,
        size=1,
        dicom=identity if source == ImageSource.DICOM else None,
    )
    with transaction(factory) as session:
        [(image_id, _)] = queries.register_images(session=session, new=[entry], source=source)
        queries.store_batch(
            session=session,
            predictions=[new_prediction(image_id, model_version="v2")],
            failures={},
            metadata={image_id: {"format": fmt}},
        )
    return image_id


def test_only_dicom_images_are_queued_once_and_folder_files_on_request(factory) -> None:
    received = _scored(factory, "received", source=ImageSource.DICOM)
    folder_dicom = _scored(factory, "folder", source=ImageSource.WATCH)
    _scored(factory, "photo", source=ImageSource.WATCH, fmt="JPEG")
    with transaction(factory) as session:
        assert exports.queue_results(session=session, include_folder_files=False, now=NOW) == 1
        assert exports.queue_results(session=session, include_folder_files=False, now=NOW) == 0
        assert exports.queue_results(session=session, include_folder_files=True, now=NOW) == 1
    with factory() as session:
        queued = {e.image_id: e.state for e in session.scalars(select(DicomExport))}
    assert queued == {received: ExportState.PENDING, folder_dicom: ExportState.PENDING}


def test_a_claimed_export_is_hidden_until_its_lease_ends(factory) -> None:
    _scored(factory, "a", source=ImageSource.DICOM)
    with transaction(factory) as session:
        exports.queue_results(session=session, include_folder_files=False, now=NOW)
    lease = timedelta(minutes=2)
    with transaction(factory) as session:
        [due] = exports.claim_due(session=session, now=NOW, lease=lease)
        assert due.path == "/data/a.dcm" and due.prediction.probability == 0.9
    with transaction(factory) as session:
        assert (
            exports.claim_due(session=session, now=NOW + timedelta(seconds=119), lease=lease) == []
        )
    with transaction(factory) as session:
        assert len(exports.claim_due(session=session, now=NOW + lease, lease=lease)) == 1


def test_failed_attempts_back_off_doubling_then_give_up_and_retry_failed_starts_over(
    factory,
) -> None:
    image_id = _scored(factory, "a", source=ImageSource.DICOM)
    with transaction(factory) as session:
        exports.queue_results(session=session, include_folder_files=False, now=NOW)
        export_id = session.scalars(select(DicomExport.id)).one()
    waits = []
    for attempt in range(1, 5):
        with transaction(factory) as session:
            gave_up = exports.mark_attempt_failed(
                session=session, export_id=export_id, destination="PACS@h:104",
                error="destination PACS@h:104 unreachable", now=NOW, max_attempts=4,
                backoff=BACKOFF,
            )  # fmt: skip
            export = session.get(DicomExport, export_id)
            assert export is not None
            waits.append((export.next_attempt_at.replace(tzinfo=UTC) - NOW).total_seconds())
        assert gave_up == (attempt == 4)
    assert waits[:3] == [5, 10, 20]
    with factory() as session:
        export = session.get(DicomExport, export_id)
        assert export is not None and export.state == ExportState.FAILED and export.attempts == 4
        assert export.error == "gave up after 4 attempt(s): destination PACS@h:104 unreachable"
        assert exports.counts(session=session) == {"pending": 0, "sent": 0, "failed": 1}

    with transaction(factory) as session:
        assert exports.retry_failed(session=session, now=NOW, image_ids=[image_id + 1]) == 0
        assert exports.retry_failed(session=session, now=NOW, image_ids=[image_id]) == 1
    with transaction(factory) as session:
        [due] = exports.claim_due(session=session, now=NOW, lease=BACKOFF)
        exports.mark_sent(
            session=session, export_id=due.export_id, destination="PACS@h:104", now=NOW
        )
    with factory() as session:
        [export] = exports.for_image(session=session, image_id=image_id)
        assert (export.state, export.attempts, export.error) == (ExportState.SENT, 1, None)


def test_backoff_never_exceeds_ten_minutes(factory) -> None:
    _scored(factory, "a", source=ImageSource.DICOM)
    with transaction(factory) as session:
        exports.queue_results(session=session, include_folder_files=False, now=NOW)
        export_id = session.scalars(select(DicomExport.id)).one()
        for _ in range(12):
            exports.mark_attempt_failed(
                session=session, export_id=export_id, destination="P@h:1", error="down",
                now=NOW, max_attempts=100, backoff=BACKOFF,
            )  # fmt: skip
        export = session.get(DicomExport, export_id)
        assert export is not None
        assert export.next_attempt_at.replace(tzinfo=UTC) - NOW == timedelta(minutes=10)
