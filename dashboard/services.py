"""What the dashboard does besides drawing: upload → store → register → enqueue → wait, CSV
export, the PACS send state in words, and image display helpers (sign-in: dashboard/access.py).
No Streamlit in here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from db import browse, exports, queries
from db.migrate import upgrade
from db.models import (
    DicomExport,
    ExportState,
    Image,
    ImageSource,
    ImageStatus,
    Prediction,
    as_utc,
    utcnow,
)
from db.session import make_engine, make_session_factory, transaction
from telemetry import metrics
from worker import client
from worker.app import make_celery

log = logging.getLogger(__name__)

NOTICE = "Decision support only — not for clinical use."
FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"
DISPLAY_NAME_MAX = 200
DISPLAY_MAX_SIDE = 1024  # px: about twice what a column shows, for sharp zoom on HiDPI


class UploadError(ValueError):
    """An upload refused before it was stored; the message is shown to the user."""


@dataclass
class Dashboard:
    """Everything the pages share, built once per process from one Settings object."""

    settings: Settings
    factory: sessionmaker[Session]
    celery: Celery | None

    @classmethod
    def start(cls, settings: Settings) -> Dashboard:
        settings.ensure_dirs()
        upgrade(settings.resolved_database_url)
        factory = make_session_factory(make_engine(settings.resolved_database_url))
        celery = make_celery(settings, settings.broker_url) if settings.broker_url else None
        return cls(settings=settings, factory=factory, celery=celery)


# -- upload ----------------------------------------------------------------------------------


def sniff_format(data: bytes) -> str | None:
    """The stored file's extension, judged from the bytes (never from the user's file name)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tif"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    from model.dicom import is_dicom

    if is_dicom(data):  # Part 10 (DICM at byte 128) or a bare dataset, as the worker accepts
        return "dcm"
    return None


def display_name(name: str) -> str:
    """The last component of a user-supplied name, printable, for display only."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    cleaned = " ".join(cleaned.split())[:DISPLAY_NAME_MAX]
    return cleaned if cleaned not in ("", ".", "..") else "upload"


@dataclass(frozen=True)
class Stored:
    image_id: int
    sha256: str
    created: bool  # False: these bytes were already known
    status: str  # status right after registration
    sent: bool | None  # sent to the broker now; None: nothing needed sending


def _refused(reason: str) -> UploadError:
    metrics.UPLOADS.labels("refused").inc()
    return UploadError(reason)


def store_upload(dashboard: Dashboard, name: str, data: bytes) -> Stored:
    """Keep the bytes under the uploads folder and register them; send new ones to a worker."""
    settings = dashboard.settings
    limit = settings.upload_max_mb * 1024 * 1024
    if len(data) > limit:
        raise _refused(
            f"the file is {len(data) / 1048576:.1f} MB; the upload limit is "
            f"{settings.upload_max_mb} MB (FRACTURE_UPLOAD_MAX_MB)"
        )
    if not data:
        raise _refused("the file is empty (0 bytes)")
    extension = sniff_format(data)
    if extension is None:
        raise _refused(f"not a {FORMATS} file (judged from its contents)")
    sha256 = hashlib.sha256(data).hexdigest()
    target = _write_once(settings.uploads_dir, f"{sha256}.{extension}", data)
    with transaction(dashboard.factory) as session:
        image, created = queries.register_image(
            session=session,
            sha256=sha256,
            path=str(target),
            filename=display_name(name),
            size=len(data),
            source=ImageSource.UPLOAD,
            fmt=extension,
        )
        session.flush()
        image_id, status, never_sent = image.id, image.status, image.enqueued_at is None
    sent: bool | None = None
    # New bytes, or a queued row that never reached the broker (it was down at the time).
    if created or (status == ImageStatus.QUEUED and never_sent):
        sent = (
            client.enqueue(dashboard.celery, dashboard.factory, [image_id], upload=True)
            if dashboard.celery is not None
            else False
        )
    metrics.UPLOADS.labels("stored").inc()
    log.info("upload stored as image %d (new: %s, sent: %s)", image_id, created, sent)
    return Stored(image_id=image_id, sha256=sha256, created=created, status=status, sent=sent)


def _write_once(directory: Path, name: str, data: bytes) -> Path:
    """Write `data` to directory/name atomically unless it is already there."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.is_file() and target.stat().st_size == len(data):
        return target
    partial = directory / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class Answer:
    image: Image
    prediction: Prediction | None
    waited_s: float
    timed_out: bool


FINISHED = (ImageStatus.DONE, ImageStatus.FAILED)
T = TypeVar("T")


def poll(
    read: Callable[[], T],
    settled: Callable[[T], bool],
    *,
    timeout_s: float,
    poll_s: float = 0.25,
    on_poll: Callable[[T, float], None] | None = None,
) -> tuple[T, float]:
    """`read()` every `poll_s` until `settled` says so or `timeout_s` has passed; the last
    reading and the seconds waited."""
    started = time.monotonic()
    while True:
        value = read()
        waited = time.monotonic() - started
        if settled(value) or waited >= timeout_s:
            return value, waited
        if on_poll is not None:
            on_poll(value, waited)
        time.sleep(min(poll_s, max(0.0, timeout_s - waited)))


def wait_for_answer(
    factory: sessionmaker[Session],
    image_id: int,
    *,
    timeout_s: float,
    poll_s: float = 0.25,
    on_poll: Callable[[str, float], None] | None = None,
) -> Answer:
    """Poll the database until the image is done or failed, or `timeout_s` has passed."""

    def read() -> Image:
        with factory() as session:
            image = browse.image_detail(session=session, image_id=image_id)
        if image is None:
            raise LookupError(f"image {image_id} is not in the database")
        return image

    image, waited = poll(
        read,
        lambda image: image.status in FINISHED,
        timeout_s=timeout_s,
        poll_s=poll_s,
        on_poll=None if on_poll is None else lambda image, waited: on_poll(image.status, waited),
    )
    return Answer(
        image=image,
        prediction=queries.latest_prediction(image),
        waited_s=waited,
        timed_out=image.status not in FINISHED,
    )


# -- heat maps drawn on request ------------------------------------------------------------------


def request_heatmap(dashboard: Dashboard, prediction: Prediction) -> str | None:
    """Ask a worker to draw this prediction's heat map (the dashboard runs no model); None when
    asked, else why it cannot be drawn now."""
    if dashboard.celery is None:
        return "no broker is configured, so no worker can draw it"
    with dashboard.factory() as session:
        versions = queries.live_model_versions(
            session=session, alive_within=timedelta(seconds=dashboard.settings.dead_after_s)
        )
    if not versions:
        return "no worker is running"
    if prediction.model_version not in versions:
        return (
            f"it can only be drawn by the model that made this prediction "
            f"({prediction.model_version}); the workers run {', '.join(sorted(versions))}"
        )
    if not client.send_heatmap(dashboard.celery, prediction.id, prediction.model_version):
        return "the broker cannot be reached"
    return None


def wait_for_heatmap(
    factory: sessionmaker[Session], prediction_id: int, *, timeout_s: float, poll_s: float = 0.25
) -> str | None:
    """The stored map's path once a worker has drawn it, or None after `timeout_s` (or once
    the prediction is gone)."""

    def read() -> tuple[bool, str | None]:
        with factory() as session:
            prediction = session.get(Prediction, prediction_id)
            path = prediction.heatmap_path if prediction is not None else None
        return prediction is None, path if path and Path(path).is_file() else None

    (_gone, path), _ = poll(
        read, lambda found: found[0] or found[1] is not None, timeout_s=timeout_s, poll_s=poll_s
    )
    return path


# -- export ----------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "image_id",
    "prediction_id",
    "received_at_utc",
    "filename",
    "source",
    "status",
    "label",
    "verdict",
    "probability",
    "threshold",
    "doubt_threshold",
    "threshold_source",
    "region",
    "region_probability",
    "region_disagrees",
    "boxes",
    "model_version",
    "predicted_at_utc",
    "review_verdict",
    "review_agrees",
    "reviewer",
    "reviewed_at_utc",
    "review_count",
    "review_note",
    "warning",
    "error",
    "study_uid",
    "pacs_state",
)


def _cell(value: object) -> object:
    """Plain values; text that a spreadsheet would run as a formula is quoted."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_record(row: browse.BrowseRow) -> tuple[object, ...]:
    review = row.review
    return tuple(
        _cell(v)
        for v in (
            row.image_id,
            row.prediction_id,
            row.received_at,
            row.filename,
            row.source,
            row.status,
            row.label,
            row.verdict,
            row.probability,
            row.threshold,
            row.doubt_threshold,
            row.threshold_source,
            row.region,
            row.region_probability,
            row.region_disagrees,
            None if row.boxes is None else json.dumps(row.boxes),
            row.model_version,
            row.predicted_at,
            review.verdict if review else None,
            review.agrees if review else None,
            review.reviewer if review else None,
            review.created_at if review else None,
            review.count if review else 0,
            review.note if review else None,
            row.warning,
            row.error,
            row.study_uid,
            row.export_state,
        )
    )


def export_lines(
    factory: sessionmaker[Session], flt: browse.BrowseFilter, sort: browse.SortKey
) -> Iterator[str]:
    """The filtered table as CSV text, a line at a time as the database returns rows. The
    header comes first, so a plain `pandas.read_csv` reads it; the notice is a column of every
    row, so it travels with any row copied out of the file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    notice = f"{NOTICE} Exported {utcnow():%Y-%m-%d %H:%M} UTC."
    writer.writerow((*EXPORT_COLUMNS, "notice"))
    yield flush()
    with factory() as session:
        for row in browse.iter_rows(session=session, flt=flt, sort=sort):
            writer.writerow((*export_record(row), notice))
            yield flush()


def export_csv(
    factory: sessionmaker[Session], flt: browse.BrowseFilter, sort: browse.SortKey
) -> bytes:
    return "".join(export_lines(factory, flt, sort)).encode("utf-8")


# -- results to PACS ---------------------------------------------------------------------------

SENDER_PICKUP = (
    "The running sender (inside `fracture dicom-listen`, which `fracture up` starts when "
    "FRACTURE_DICOM_PORT is set, or `fracture dicom-send --follow`) picks it up within a "
    "second or so."
)
_GAVE_UP = re.compile(r"^gave up after \d+ attempt\(s\): ")


def shows_pacs_state(image: Image, settings: Settings, has_exports: bool) -> bool:
    """Whether the image's results are (or would be) sent to PACS: received over DICOM, a
    DICOM file from the folder when those are sent too, or any image with an export row."""
    if has_exports or image.source == ImageSource.DICOM:
        return True
    return settings.dicom_export_folder_files and image.format == exports.DICOM_FORMAT


def last_error(export: DicomExport) -> str | None:
    """Why the last attempt failed, without the "gave up after N attempt(s)" the sender adds."""
    return _GAVE_UP.sub("", export.error) if export.error else None


def export_text(
    export: DicomExport | None,
    *,
    destination: str | None,
    max_attempts: int,
    now: datetime,
    when: Callable[[datetime | None], str],
) -> str:
    """One prediction's trip to PACS in words; `when` formats a time for the reader."""
    if export is None:
        if destination is None:
            return "not sent: no DICOM destination configured"
        return f"not queued yet for {destination}: the sender queues new results as it runs"
    reason = last_error(export)
    if export.state == ExportState.SENT:
        return f"sent to PACS at {when(export.sent_at)} ({export.destination or 'destination?'})"
    if export.state == ExportState.FAILED:
        return f"failed after {export.attempts} attempt(s): {reason or 'no reason stored'}"
    due = as_utc(export.next_attempt_at)
    # A claimed export's next try lies one lease ahead while it is being sent.
    moment = f"next try at {when(export.next_attempt_at)}" if due > now else "due now"
    text = f"pending — attempt {export.attempts + 1} of {max_attempts}, {moment}"
    return text + (f": {reason}" if reason else "")


def retry_image(factory: sessionmaker[Session], image_id: int, *, now: datetime) -> int:
    """The image's failed exports back to pending with fresh attempts; how many."""
    with transaction(factory) as session:
        return exports.retry_failed(session=session, now=now, image_ids=[image_id])


def short_uid(uid: str | None, keep: int = 12) -> str:
    """The last `keep` characters of a DICOM UID (where instances of one study differ)."""
    if not uid:
        return "—"
    return uid if len(uid) <= keep else "…" + uid[-keep:]


# -- image display -----------------------------------------------------------------------------


def display_pixels(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Greyscale floats reduced (area-averaged) so the longer side is at most `max_side`."""
    import cv2

    height, width = pixels.shape
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return pixels.astype(np.float32)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)


# -- fracture boxes ----------------------------------------------------------------------------

Box = tuple[float, float, float, float, float]  # x, y, width, height, score


def valid_boxes(raw: object) -> list[Box]:
    """Stored boxes ([x, y, width, height, score] lists) that can be drawn; malformed entries
    (wrong length, not numbers, not finite, empty area) are left out and logged."""
    if not isinstance(raw, list | tuple):
        return []
    boxes: list[Box] = []
    for entry in raw:
        try:
            x, y, w, h, score = (float(v) for v in entry)
        except (TypeError, ValueError):
            log.warning("stored box %r is not [x, y, width, height, score]; not drawn", entry)
            continue
        if not all(np.isfinite((x, y, w, h, score))) or w <= 0 or h <= 0:
            log.warning("stored box %r has no area or a non-finite value; not drawn", entry)
            continue
        boxes.append((x, y, w, h, score))
    return boxes
