"""Results on their way back to PACS: the `dicom_exports` rows are both the send queue and its
record (pending → sent, or failed with the reason after the last attempt)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import DicomExport, ExportState, Image, ImageSource, ImageStatus, Prediction

DICOM_FORMAT = "DICOM"  # what the worker stores in images.format for a decoded DICOM file


def queue_results(*, session: Session, include_folder_files: bool, now: datetime) -> int:
    """A pending export for every stored prediction of a DICOM image that has none yet (images
    received over the network; with `include_folder_files`, DICOM files from the folder too)."""
    wanted = Image.source == ImageSource.DICOM
    if include_folder_files:
        wanted = or_(wanted, Image.format == DICOM_FORMAT)
    rows = session.execute(
        select(Prediction.id, Prediction.image_id)
        .join(Image, Image.id == Prediction.image_id)
        .outerjoin(DicomExport, DicomExport.prediction_id == Prediction.id)
        .where(DicomExport.id.is_(None), Image.status == ImageStatus.DONE, wanted)
        .order_by(Prediction.id)
    ).all()
    for prediction_id, image_id in rows:
        session.add(
            DicomExport(
                prediction_id=prediction_id,
                image_id=image_id,
                state=ExportState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    return len(rows)


@dataclass(frozen=True)
class DueExport:
    """What sending one result needs, read in the claiming transaction."""

    export_id: int
    attempts: int
    image_id: int
    path: str
    prediction: Prediction


def claim_due(
    *, session: Session, now: datetime, lease: timedelta, limit: int = 32
) -> list[DueExport]:
    """Pending exports whose time has come, oldest first, hidden from other senders for
    `lease` (a sender that dies mid-send leaves them to be tried again after it)."""
    statement = (
        select(DicomExport, Image.path, Prediction)
        .join(Image, Image.id == DicomExport.image_id)
        .join(Prediction, Prediction.id == DicomExport.prediction_id)
        .where(DicomExport.state == ExportState.PENDING, DicomExport.next_attempt_at <= now)
        .order_by(DicomExport.next_attempt_at, DicomExport.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=DicomExport)
    due = []
    for export, path, prediction in session.execute(statement).all():
        export.next_attempt_at = now + lease
        due.append(DueExport(export.id, export.attempts, export.image_id, path, prediction))
    return due


def mark_sent(*, session: Session, export_id: int, destination: str, now: datetime) -> None:
    session.execute(
        update(DicomExport)
        .where(DicomExport.id == export_id)
        .values(
            state=ExportState.SENT,
            destination=destination,
            attempts=DicomExport.attempts + 1,
            error=None,
            sent_at=now,
            updated_at=now,
        )
    )


def mark_attempt_failed(
    *,
    session: Session,
    export_id: int,
    destination: str,
    error: str,
    now: datetime,
    max_attempts: int,
    backoff: timedelta,
) -> bool:
    """Count a failed attempt: pending again after `backoff` × 2^(attempts−1) (at most ten
    minutes), or failed for good after `max_attempts`. True when it is now failed."""
    export = session.get(DicomExport, export_id)
    if export is None:
        return False
    export.attempts += 1
    export.destination = destination
    export.updated_at = now
    if export.attempts >= max_attempts:
        export.state = ExportState.FAILED
        export.error = f"gave up after {export.attempts} attempt(s): {error}"
        return True
    export.error = error
    wait = min(backoff * 2 ** (export.attempts - 1), timedelta(minutes=10))
    export.next_attempt_at = now + wait
    return False


def retry_failed(*, session: Session, now: datetime, image_ids: Sequence[int] = ()) -> int:
    """Failed exports (all, or those of `image_ids`) back to pending with fresh attempts."""
    condition = DicomExport.state == ExportState.FAILED
    if image_ids:
        condition = and_(condition, DicomExport.image_id.in_(list(image_ids)))
    result = session.execute(
        update(DicomExport)
        .where(condition)
        .values(state=ExportState.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def counts(*, session: Session) -> dict[str, int]:
    """Exports by state (pending, sent, failed)."""
    rows = session.execute(select(DicomExport.state, func.count()).group_by(DicomExport.state))
    found = {str(state): int(count) for state, count in rows}
    return {state.value: found.get(state.value, 0) for state in ExportState}


def for_image(*, session: Session, image_id: int) -> list[DicomExport]:
    """The image's exports, newest prediction first."""
    return list(
        session.scalars(
            select(DicomExport)
            .where(DicomExport.image_id == image_id)
            .order_by(DicomExport.prediction_id.desc())
        )
    )
