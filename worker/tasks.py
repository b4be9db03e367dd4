"""Thin Celery tasks: JSON image ids in, the batch processor does the work."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery
from celery_batches import Batches, SimpleRequest

from fracture.settings import Settings
from worker.app import PREDICT_TASK, UPLOAD_TASK
from worker.processing import BatchProcessor

log = logging.getLogger(__name__)


def bind_tasks(app: Celery, settings: Settings, processor: Callable[[], BatchProcessor]) -> None:
    """Register the batched bulk task and the single-image upload task on `app`."""

    @app.task(
        name=PREDICT_TASK,
        base=Batches,
        flush_every=settings.batch_size,
        flush_interval=settings.batch_interval_ms / 1000,
        acks_late=True,
        reject_on_worker_lost=True,
    )
    def predict_batch(requests: list[SimpleRequest]) -> None:
        ids = [int(request.args[0]) for request in requests]
        processor().process(ids)

    @app.task(name=UPLOAD_TASK, acks_late=True, reject_on_worker_lost=True)
    def predict_upload(image_id: int) -> None:
        # An upload is a batch of one through the same code path.
        processor().process([int(image_id)])
