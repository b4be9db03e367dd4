"""Sending image ids to the workers: the one arrow from watcher/dashboard into the queue."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from amqp.exceptions import ChannelError
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ImageSource
from db.session import transaction
from telemetry import metrics
from worker.app import (
    BULK_QUEUE,
    HEATMAP_TASK,
    PREDICT_TASK,
    RESCORE_TASK,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
)

log = logging.getLogger(__name__)


def _publish(app: Celery, task: str, messages: Sequence[list[object]]) -> None:
    """One message per argument list, through one producer; raises when the broker is
    unreachable."""
    with app.producer_or_acquire() as producer:
        for args in messages:
            app.send_task(
                task,
                args=args,
                producer=producer,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )


def send(app: Celery, image_ids: Sequence[int], *, upload: bool = False) -> bool:
    """Publish one message per image id; False when the broker is unreachable."""
    task = UPLOAD_TASK if upload else PREDICT_TASK
    try:
        _publish(app, task, [[int(image_id)] for image_id in image_ids])
    except (OperationalError, ConnectionError, OSError) as exc:
        log.warning("broker unreachable, %d image(s) stay queued: %s", len(image_ids), exc)
        return False
    return True


def send_rescore(
    app: Celery, image_ids: Sequence[int], *, model_path: str | None, model_version: str | None
) -> bool:
    """Ask the workers to score these stored images again: with their configured model
    (`model_path` None) or with the checkpoint at `model_path`, which must be that path on
    every worker host; `model_version` is the version it must have there. False when the
    broker is unreachable (some messages may have gone out: rescoring is idempotent)."""
    try:
        _publish(
            app,
            RESCORE_TASK,
            [[int(image_id), model_path, model_version] for image_id in image_ids],
        )
    except (OperationalError, ConnectionError, OSError) as exc:
        log.warning("broker unreachable, rescore of %d image(s) not sent: %s", len(image_ids), exc)
        return False
    return True


def send_heatmap(app: Celery, prediction_id: int, model_version: str) -> bool:
    """Ask a worker running `model_version` to draw and store this prediction's heat map;
    False when the broker is unreachable."""
    try:
        _publish(app, HEATMAP_TASK, [[int(prediction_id), model_version]])
    except (OperationalError, ConnectionError, OSError) as exc:
        log.warning("broker unreachable, heat map not asked for: %s", exc)
        return False
    return True


def enqueue(
    app: Celery,
    factory: sessionmaker[Session],
    image_ids: Sequence[int],
    *,
    upload: bool = False,
) -> bool:
    """Send the ids and record when; rows stay `queued` with no send time if it fails."""
    if not image_ids:
        return True
    if not send(app, image_ids, upload=upload):
        return False
    with transaction(factory) as session:
        queries.mark_enqueued(session=session, image_ids=image_ids)
    return True


def register(
    app: Celery,
    factory: sessionmaker[Session],
    entries: Sequence[queries.NewImage],
    *,
    source: str = ImageSource.WATCH,
) -> list[tuple[int, bool]]:
    """Register files (one transaction) and queue the new, unrejected ones: the one road in
    for the watcher and the DICOM listener. (image id, created now) per entry, in order. A
    broker that is down leaves the rows `queued` and unsent; the sweeper sends them later."""
    if not entries:
        return []
    with transaction(factory) as session:
        registered = queries.register_images(session=session, new=entries, source=source)
        duplicates = queries.record_duplicates(
            session=session,
            pairs=[
                (i, e) for e, (i, created) in zip(entries, registered, strict=True) if not created
            ],
        )
    for image_id, _ in duplicates:
        log.info(
            "duplicate of image %d recorded, not scored again",
            image_id,
            extra={"image_id": image_id},
        )
    metrics.DUPLICATES.labels(source).inc(len(duplicates))
    new_ids: list[int] = []
    for entry, (image_id, created) in zip(entries, registered, strict=True):
        if not created:
            continue
        metrics.IMAGES_REGISTERED.labels(source).inc()
        if entry.rejection:
            # The image id, not the file name: names can carry a patient's name.
            log.warning(
                "image %d rejected: %s", image_id, entry.rejection, extra={"image_id": image_id}
            )
            metrics.count_failures([entry.rejection])
        else:
            new_ids.append(image_id)
    if new_ids and enqueue(app, factory, new_ids):
        log.info("registered and queued %d new image(s)", len(new_ids))
    return registered


def queue_depth(app: Celery) -> int | None:
    """Messages waiting in both queues (not counting those held by workers); None if unknown."""
    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            return sum(
                # Declaring is idempotent and creates the same queue a worker would.
                channel.queue_declare(queue=name, durable=True, auto_delete=False).message_count
                for name in (BULK_QUEUE, UPLOAD_QUEUE)
            )
    except (OperationalError, ChannelError, ConnectionError, OSError) as exc:
        log.debug("queue depth unavailable: %s", exc)
        return None


def live_workers(app: Celery, timeout: float = 1.0) -> list[str]:
    """Names of workers that answer a ping within `timeout` seconds."""
    try:
        replies = app.control.ping(timeout=timeout) or []
    except (OperationalError, ConnectionError, OSError) as exc:
        log.debug("worker ping failed: %s", exc)
        return []
    return sorted(name for reply in replies for name in reply)
