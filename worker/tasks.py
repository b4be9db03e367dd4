"""Thin Celery tasks: JSON image ids in, the batch processor does the work."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from celery import Celery
from celery_batches import Batches, SimpleRequest

from fracture.settings import Settings
from worker.app import PREDICT_TASK, UPLOAD_TASK
from worker.processing import BatchProcessor

log = logging.getLogger(__name__)


class BatchTimeLimitExceeded(RuntimeError):
    """A batch ran past FRACTURE_TASK_TIME_LIMIT_S."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Abort the block after `seconds` (the solo pool ignores Celery's own time limits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(_signum: int, _frame: FrameType | None) -> None:
        raise BatchTimeLimitExceeded(f"batch exceeded the {seconds:.0f} s time limit")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_limited(processor: BatchProcessor, ids: Sequence[int], seconds: float) -> None:
    try:
        with time_limit(seconds):
            processor.process(ids)
    except BatchTimeLimitExceeded:
        # Rows stay `processing`; the sweeper re-sends them after FRACTURE_STUCK_AFTER_S.
        log.error("batch of %d image(s) aborted after %.0f s", len(ids), seconds)


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
        run_limited(processor(), ids, settings.task_time_limit_s)

    @app.task(name=UPLOAD_TASK, acks_late=True, reject_on_worker_lost=True)
    def predict_upload(image_id: int) -> None:
        # An upload is a batch of one through the same code path.
        run_limited(processor(), [int(image_id)], settings.task_time_limit_s)
