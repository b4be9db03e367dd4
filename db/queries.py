"""Query functions: the only way services read or write rows. Keyword-only `session`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload

from db.models import (
    Duplicate,
    Image,
    ImageSource,
    ImageStatus,
    Prediction,
    Verdict,
    Worker,
    utcnow,
)

log = logging.getLogger(__name__)

# Failures a file can recover from by being there again, unchanged or complete.
REPLACED = "replaced after it was registered"
TRANSIENT_ERRORS = ("deleted or moved", REPLACED, "cannot read file")


def register_image(
    *,
    session: Session,
    sha256: str,
    path: str,
    filename: str,
    size: int,
    source: str = ImageSource.WATCH,
    fmt: str | None = None,
) -> tuple[Image, bool]:
    """The image row for these bytes, and whether it was created now (False: seen before)."""
    entry = NewImage(sha256=sha256, path=path, filename=filename, size=size, fmt=fmt)
    [(image_id, created)] = register_images(session=session, new=[entry], source=source)
    image = session.get(Image, image_id)
    if image is None:  # pragma: no cover - the row was just read or written in this transaction
        raise LookupError(f"image {image_id} vanished while being registered")
    return image, created


@dataclass(frozen=True)
class DicomIdentity:
    """Where a DICOM instance received over the network belongs (no patient data)."""

    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    calling_ae: str | None = None


@dataclass(frozen=True)
class NewImage:
    """A file to register; `rejection` registers it as failed with that reason."""

    sha256: str
    path: str
    filename: str
    size: int
    fmt: str | None = None
    rejection: str | None = None
    dicom: DicomIdentity | None = None
    signature: str | None = None  # `model.files.settled_signature` when it was hashed


def register_images(
    *, session: Session, new: Sequence[NewImage], source: str = ImageSource.WATCH
) -> list[tuple[int, bool]]:
    """Register many files in three statements, not three per file: (image id, created now)
    for each entry, in order. An entry whose bytes are already stored, or appear earlier in
    `new`, gets the existing id and False. Safe against another process registering the same
    bytes at the same moment (the unique sha256 decides; the loser gets the winner's id)."""
    shas = list(dict.fromkeys(entry.sha256 for entry in new))
    known = _ids_by_sha(session, shas)
    first = {entry.sha256: entry for entry in reversed(new)}  # the first entry of each sha256
    fresh = [first[sha] for sha in shas if sha not in known]
    created: set[str] = set()
    if fresh:
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {
                "sha256": entry.sha256,
                "path": entry.path,
                "filename": entry.filename,
                "bytes": entry.size,
                "file_signature": entry.signature,
                "format": entry.fmt,
                "source": source,
                "status": ImageStatus.FAILED if entry.rejection else ImageStatus.QUEUED,
                "error": entry.rejection,
                "attempts": 0,
                "received_at": now,
                "updated_at": now,
                **_dicom_columns(entry.dicom),
            }
            for entry in fresh
        ]
        # One cached statement run for many parameter sets: a multi-row VALUES clause was
        # compiled again for every chunk (a third of the watcher's CPU for a bulk drop).
        statement = _insert_ignoring_duplicates(session)
        inserted = session.execute(statement.returning(Image.id, Image.sha256), rows).all()
        created = {sha for _, sha in inserted}
        known |= {sha: image_id for image_id, sha in inserted}
        if missing := [entry.sha256 for entry in fresh if entry.sha256 not in known]:
            known |= _ids_by_sha(session, missing)  # registered by someone else meanwhile
    results = []
    for entry in new:
        results.append((known[entry.sha256], entry.sha256 in created))
        created.discard(entry.sha256)  # a repeat within `new` is a duplicate of the first
    return results


def record_duplicates(
    *, session: Session, pairs: Sequence[tuple[int, NewImage]]
) -> list[tuple[int, NewImage]]:
    """Keep a record of each file that brought a stored image's bytes under another path
    (once per path); the same file seen again is not a duplicate. Returns the new records."""
    if not pairs:
        return []
    ids = {image_id for image_id, _ in pairs}
    paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    known: set[tuple[int, str]] = {
        (image_id, path)
        for image_id, path in session.execute(
            select(Duplicate.image_id, Duplicate.path).where(Duplicate.image_id.in_(ids))
        )
    }
    recorded = []
    for image_id, new in pairs:
        if paths.get(image_id) in (None, new.path) or (image_id, new.path) in known:
            continue
        known.add((image_id, new.path))
        session.add(
            Duplicate(image_id=image_id, path=new.path, filename=new.filename, bytes=new.size)
        )
        recorded.append((image_id, new))
    return recorded


def duplicates_of(*, session: Session, image_ids: Sequence[int]) -> dict[int, list[Duplicate]]:
    """The duplicate files recorded for each image, in order of arrival."""
    found: dict[int, list[Duplicate]] = {}
    for row in session.scalars(
        select(Duplicate).where(Duplicate.image_id.in_(list(image_ids))).order_by(Duplicate.id)
    ):
        found.setdefault(row.image_id, []).append(row)
    return found


def _dicom_columns(identity: DicomIdentity | None) -> dict[str, str | None]:
    # Every row of one INSERT needs the same keys: a file from the folder gets NULLs.
    return {
        "study_uid": identity.study_uid if identity else None,
        "series_uid": identity.series_uid if identity else None,
        "sop_instance_uid": identity.sop_instance_uid if identity else None,
        "sop_class_uid": identity.sop_class_uid if identity else None,
        "calling_ae": identity.calling_ae if identity else None,
    }


def image_by_sop_instance(*, session: Session, sop_instance_uid: str) -> Image | None:
    return session.scalars(
        select(Image).where(Image.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def _ids_by_sha(session: Session, shas: Sequence[str]) -> dict[str, int]:
    if not shas:
        return {}
    rows = session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(shas)))
    return {sha: image_id for sha, image_id in rows}


def _insert_ignoring_duplicates(session: Session) -> Any:
    """INSERT … ON CONFLICT (sha256) DO NOTHING in the two dialects we run on."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Image).on_conflict_do_nothing(index_elements=["sha256"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(Image).on_conflict_do_nothing(index_elements=["sha256"])
    raise ValueError(f"unsupported database dialect {dialect!r} (SQLite or PostgreSQL)")


def mark_enqueued(*, session: Session, image_ids: Iterable[int]) -> None:
    ids = list(image_ids)
    if ids:
        session.execute(
            update(Image).where(Image.id.in_(ids)).values(enqueued_at=utcnow(), updated_at=utcnow())
        )


def get_image(*, session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def get_image_by_sha(*, session: Session, sha256: str) -> Image | None:
    return session.scalar(select(Image).where(Image.sha256 == sha256))


def claim_images(
    *, session: Session, image_ids: Sequence[int], model_version: str, worker: str | None = None
) -> list[Image]:
    """Mark the images of a batch `processing` by `worker`; skip unknown ones and ones already
    predicted.

    Idempotent: a redelivered message for a finished image claims nothing.
    """
    images = session.scalars(select(Image).where(Image.id.in_(list(image_ids)))).all()
    done = set(
        session.scalars(
            select(Prediction.image_id).where(
                Prediction.image_id.in_([i.id for i in images]),
                Prediction.model_version == model_version,
            )
        )
    )
    claimed = []
    for image in images:
        if image.id in done:
            if image.status != ImageStatus.DONE:
                image.status = ImageStatus.DONE
            continue
        image.status = ImageStatus.PROCESSING
        image.claimed_by = worker
        image.attempts += 1
        image.updated_at = utcnow()
        claimed.append(image)
    return claimed


def give_up(*, session: Session, image_ids: Sequence[int], max_attempts: int) -> dict[int, str]:
    """Fail the images of a batch that have had `max_attempts` tries already (each one ended
    with the worker stopping or the batch timing out); their ids and the reason stored."""
    rows = session.scalars(
        select(Image).where(
            Image.id.in_(list(image_ids)),
            Image.attempts >= max_attempts,
            Image.status.in_([ImageStatus.QUEUED, ImageStatus.PROCESSING]),
        )
    ).all()
    reasons = {}
    for image in rows:
        last = image.error or "the worker stopped while scoring it"
        image.status = ImageStatus.FAILED
        image.error = f"gave up after {image.attempts} attempts: {last}"
        image.updated_at = utcnow()
        reasons[image.id] = image.error
    return reasons


def note_unfinished(*, session: Session, image_ids: Sequence[int], reason: str) -> None:
    """Why a try of these images ended without a result; they stay `processing` for the
    sweeper, and the reason is what a later give-up quotes."""
    session.execute(
        update(Image)
        .where(Image.id.in_(list(image_ids)), Image.status == ImageStatus.PROCESSING)
        .values(error=reason)
    )


def heartbeat(
    *,
    session: Session,
    worker: str,
    model_version: str | None = None,
    now: datetime | None = None,
) -> None:
    """`worker`, running `model_version`, is alive now."""
    now = now or utcnow()
    row = session.get(Worker, worker)
    if row is None:
        session.add(
            Worker(name=worker, started_at=now, heartbeat_at=now, model_version=model_version)
        )
    else:
        row.heartbeat_at = now
        row.model_version = model_version


def forget_worker(*, session: Session, worker: str) -> None:
    """`worker` stopped cleanly; whatever it still held is re-sent at the next check."""
    session.execute(delete(Worker).where(Worker.name == worker))


def worker_heartbeats(
    *, session: Session, since: timedelta = timedelta(days=1), now: datetime | None = None
) -> list[Worker]:
    """Workers heard from within `since`, most recently started first: the live ones and
    those that went silent (killed, hung or lost) without signing off."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(Worker)
            .where(Worker.heartbeat_at >= now - since)
            .order_by(Worker.started_at.desc())
        )
    )


def live_model_versions(
    *, session: Session, alive_within: timedelta, now: datetime | None = None
) -> set[str]:
    """The model versions run by workers whose heartbeat is recent."""
    now = now or utcnow()
    return {
        version
        for version in session.scalars(
            select(Worker.model_version).where(Worker.heartbeat_at >= now - alive_within)
        )
        if version
    }


def set_heatmap_path(*, session: Session, prediction_id: int, path: str) -> bool:
    """Record a heat map drawn on request; False if the prediction is gone."""
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        return False
    prediction.heatmap_path = path
    return True


def requeue_orphans(*, session: Session, image_ids: Sequence[int], reason: str) -> list[int]:
    """Images a dead worker held back to `queued` (not yet sent), with why the try ended;
    the ids that were still orphaned (a live worker may have claimed one meanwhile)."""
    rows = session.scalars(
        select(Image).where(Image.id.in_(list(image_ids)), Image.status == ImageStatus.PROCESSING)
    ).all()
    for image in rows:
        image.status = ImageStatus.QUEUED
        image.error = reason
        image.claimed_by = None
        image.enqueued_at = None
        image.updated_at = utcnow()
    return [image.id for image in rows]


def images_of_dead_workers(
    *, session: Session, dead_after: timedelta, now: datetime | None = None
) -> list[int]:
    """Images left `processing` by a worker whose heartbeat stopped (or that stopped)."""
    now = now or utcnow()
    alive = select(Worker.name).where(Worker.heartbeat_at >= now - dead_after)
    return list(
        session.scalars(
            select(Image.id)
            .where(
                Image.status == ImageStatus.PROCESSING,
                Image.claimed_by.is_not(None),
                Image.claimed_by.not_in(alive),
            )
            .order_by(Image.id)
        )
    )


def images_to_rescore(
    *,
    session: Session,
    model_version: str,
    statuses: Sequence[str],
    since: datetime | None = None,
) -> tuple[list[int], int]:
    """Images in `statuses` received at or after `since` (timezone-aware): the ids of those
    `model_version` has not scored yet, oldest first, and how many it has scored already."""
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware (UTC)")
    query = select(Image.id).where(Image.status.in_(list(statuses)))
    if since is not None:
        query = query.where(Image.received_at >= since.astimezone(UTC))
    scored = select(Prediction.image_id).where(Prediction.model_version == model_version)
    ids = list(session.scalars(query.where(Image.id.not_in(scored)).order_by(Image.id)))
    already = session.scalar(
        select(func.count()).select_from(query.where(Image.id.in_(scored)).subquery())
    )
    return ids, int(already or 0)


def claim_for_rescore(
    *, session: Session, image_ids: Sequence[int], model_version: str
) -> list[Image]:
    """The images of a rescore batch that `model_version` has not scored yet.

    Unlike `claim_images` this leaves status and attempts alone: a `done` image stays `done`
    while it is scored again, and the sweeper never sees it as stuck.
    """
    scored = select(Prediction.image_id).where(
        Prediction.image_id.in_(list(image_ids)), Prediction.model_version == model_version
    )
    query = select(Image).where(Image.id.in_(list(image_ids)), Image.id.not_in(scored))
    return list(session.scalars(query))


@dataclass(frozen=True)
class NewPrediction:
    image_id: int
    model_version: str
    label: str
    probability: float
    threshold: float
    batch_size: int
    inference_ms: float
    heatmap_path: str | None = None
    threshold_source: str = "global"
    region: str | None = None
    region_probability: float | None = None
    region_disagrees: bool | None = None  # DICOM body part names another region
    verdict: str | None = None  # a Verdict; None: the one `label` implies (one operating point)
    doubt_threshold: float | None = None
    # [x, y, width, height, score] each, original image pixels, best first; None: the model
    # draws no boxes (an empty sequence: it draws them and found none).
    boxes: Sequence[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in set(Verdict):
            allowed = ", ".join(Verdict)
            raise ValueError(f"unknown verdict {self.verdict!r}; choose from {allowed}")


def store_batch(
    *,
    session: Session,
    predictions: Sequence[NewPrediction],
    failures: dict[int, str],
    metadata: dict[int, dict[str, object]] | None = None,
) -> None:
    """A batch's predictions (done) and errors (failed), in the caller's transaction."""
    metadata = metadata or {}
    ids = {*metadata, *(new.image_id for new in predictions), *failures}
    # Two queries for the whole batch, not two per image: this runs once per inference batch.
    images = {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(ids)))}
    stored = {
        (image_id, version)
        for image_id, version in session.execute(
            select(Prediction.image_id, Prediction.model_version).where(
                Prediction.image_id.in_(ids)
            )
        )
    }
    for image_id, fields in metadata.items():
        if (image := images.get(image_id)) is not None:
            for key, value in fields.items():
                setattr(image, key, value)
    fresh = [
        new
        for new in predictions
        if new.image_id in images and (new.image_id, new.model_version) not in stored
    ]
    _insert_all(session, fresh)
    for new in predictions:
        if (image := images.get(new.image_id)) is None:
            continue
        image.status = ImageStatus.DONE
        image.error = None
        image.updated_at = utcnow()
    superseded = _superseded(session, [images[i] for i in failures if i in images])
    for image_id, error in failures.items():
        if (image := images.get(image_id)) is None:
            continue
        if REPLACED in error and image.id in superseded:
            # A file still being written: the watcher registered its later bytes as a newer
            # row while a worker was reading this one. That row is the file's; this one goes.
            session.delete(image)
            continue
        image.status = ImageStatus.FAILED
        image.error = error
        image.updated_at = utcnow()


def _superseded(session: Session, images: Sequence[Image]) -> set[int]:
    """The ids among `images` with a newer row for the same path."""
    if not images:
        return set()
    newer = aliased(Image)
    return set(
        session.scalars(
            select(Image.id).where(
                Image.id.in_([i.id for i in images]),
                select(newer.id).where(newer.path == Image.path, newer.id > Image.id).exists(),
            )
        )
    )


def _prediction_row(new: NewPrediction) -> Prediction:
    return Prediction(
        image_id=new.image_id,
        model_version=new.model_version,
        label=new.label,
        probability=new.probability,
        threshold=new.threshold,
        threshold_source=new.threshold_source,
        region=new.region,
        region_probability=new.region_probability,
        region_disagrees=new.region_disagrees,
        heatmap_path=new.heatmap_path,
        verdict=new.verdict or verdict_of_label(new.label),
        doubt_threshold=new.doubt_threshold,
        boxes=None if new.boxes is None else [[float(v) for v in box] for box in new.boxes],
        batch_size=new.batch_size,
        inference_ms=new.inference_ms,
    )


def verdict_of_label(label: str) -> Verdict:
    """The verdict of a model with one operating point: its label, in the verdict's words."""
    return Verdict.FRACTURE if label == "fractured" else Verdict.NO_FRACTURE


def _insert_all(session: Session, new: Sequence[NewPrediction]) -> None:
    """All rows in one savepoint; only if another worker stored one of them meanwhile, row by
    row (a savepoint per row was 5 % of a CPU worker's time)."""
    if not new:
        return
    try:
        with session.begin_nested():
            session.add_all([_prediction_row(n) for n in new])
    except IntegrityError:
        for one in new:
            _insert_once(session, _prediction_row(one))


def _insert_once(session: Session, row: Prediction) -> None:
    """Insert, tolerating a concurrent worker that stored the same image + model version first."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        log.info("prediction for image %d already stored by another worker", row.image_id)


def images_to_resend(
    *,
    session: Session,
    stuck_after: timedelta,
    now: datetime | None = None,
    unsent_after: timedelta = timedelta(seconds=10),
    limit: int = 1000,
) -> list[Image]:
    """Rows never sent (broker was down) or stuck in queued/processing longer than `stuck_after`.

    A row is only "never sent" once `unsent_after` has passed since it was registered, so a
    sweep cannot race the watcher's own send between commit and `mark_enqueued`.
    """
    now = now or utcnow()
    cutoff = now - stuck_after
    return list(
        session.scalars(
            select(Image)
            .where(
                or_(
                    (Image.status == ImageStatus.QUEUED)
                    & Image.enqueued_at.is_(None)
                    & (Image.updated_at < now - unsent_after),
                    Image.status.in_([ImageStatus.QUEUED, ImageStatus.PROCESSING])
                    & (Image.updated_at < cutoff),
                )
            )
            .order_by(Image.id)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class Waiting:
    queued: int
    processing: int
    oldest_received_at: datetime | None


def waiting_images(*, session: Session) -> Waiting:
    """How many images wait for a result (queued, processing) and when the oldest arrived."""
    waiting = [ImageStatus.QUEUED, ImageStatus.PROCESSING]
    counts = dict(
        session.execute(
            select(Image.status, func.count())
            .where(Image.status.in_(waiting))
            .group_by(Image.status)
        ).all()
    )
    oldest = session.scalar(select(func.min(Image.received_at)).where(Image.status.in_(waiting)))
    return Waiting(
        int(counts.get(ImageStatus.QUEUED, 0)), int(counts.get(ImageStatus.PROCESSING, 0)), oldest
    )


def list_images(*, session: Session, limit: int = 50, status: str | None = None) -> list[Image]:
    """Newest first, with their predictions loaded."""
    query = select(Image).options(selectinload(Image.predictions)).order_by(Image.id.desc())
    if status:
        query = query.where(Image.status == status)
    return list(session.scalars(query.limit(limit)))


def latest_prediction(image: Image) -> Prediction | None:
    return max(image.predictions, key=lambda p: p.created_at, default=None)


def images_to_retry(
    *,
    session: Session,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int = 100_000,
) -> list[int]:
    """Failed images, oldest first: all, those whose error contains `reason` (any case), and
    received at or after `since` (timezone-aware)."""
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware (UTC)")
    query = select(Image.id).where(Image.status == ImageStatus.FAILED)
    if reason:
        query = query.where(Image.error.ilike(f"%{reason}%"))
    if since is not None:
        query = query.where(Image.received_at >= since)
    return list(session.scalars(query.order_by(Image.id).limit(limit)))


def requeue(*, session: Session, image_ids: Sequence[int]) -> int:
    """Failed images back to `queued` with a clean slate (error, attempts), not yet sent."""
    ids = list(image_ids)
    if not ids:
        return 0
    result = session.execute(
        update(Image)
        .where(Image.id.in_(ids), Image.status == ImageStatus.FAILED)
        .values(
            status=ImageStatus.QUEUED, error=None, attempts=0, enqueued_at=None, updated_at=utcnow()
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def reattach_many(*, session: Session, new: Sequence[NewImage]) -> dict[str, int]:
    """Settled files that belong to existing, unfinished rows: each such file's path → its
    row's id, queued again. Two lookups for all the files, not two for each.

    - The same bytes as a row that failed for a transient reason (moved out before it was
      read, then back in): the row is retried.
    - Other bytes at the path of a row still waiting in the queue, or failed (a writer that
      appended after the file was registered, or a broken file replaced by a good one): the
      row takes the new bytes, so the finished file is one row.
    A file is left out when neither applies (a new file, a duplicate of a finished image, or a
    row a worker is reading right now). Each update is conditional on the row as it was looked
    up, so a worker claiming the row at the same moment, or an earlier file of `new` that took
    it, wins and the file is registered as new instead."""
    if not new:
        return {}
    by_sha = {
        row.sha256: row
        for row in session.scalars(
            select(Image).where(Image.sha256.in_({entry.sha256 for entry in new}))
        )
    }
    by_path: dict[str, Image] = {}
    if unknown := {entry.path for entry in new if entry.sha256 not in by_sha}:
        for earlier in session.scalars(
            select(Image)
            .where(Image.path.in_(unknown), Image.source == ImageSource.WATCH)
            .order_by(Image.id)
        ):
            by_path[earlier.path] = earlier  # the newest row at each path
    found: dict[str, int] = {}
    for entry in new:
        row = by_sha.get(entry.sha256)
        if row is None:
            row = by_path.get(entry.path)
            if row is None or row.status not in (ImageStatus.QUEUED, ImageStatus.FAILED):
                continue
        elif not _transient(row):
            continue
        if _take_over(session, row, entry):
            found[entry.path] = row.id
    return found


def _take_over(session: Session, row: Image, new: NewImage) -> bool:
    """Queue `row` again with `new`'s bytes, if it is still as it was looked up."""
    result = session.execute(
        update(Image)
        .where(Image.id == row.id, Image.sha256 == row.sha256, Image.status == row.status)
        .values(
            sha256=new.sha256,
            bytes=new.size,
            file_signature=new.signature,
            path=new.path,
            status=ImageStatus.QUEUED,
            error=None,
            attempts=0,
            enqueued_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


def _transient(row: Image) -> bool:
    return row.status == ImageStatus.FAILED and any(
        reason in (row.error or "") for reason in TRANSIENT_ERRORS
    )
