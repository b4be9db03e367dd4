"""Thin Celery tasks: JSON image ids in, the batch processor does the work."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from celery import Celery
from celery_batches import Batches, SimpleRequest

from config import Settings
from db import queries
from db.session import transaction
from worker import liveness
from worker.app import HEATMAP_TASK, PREDICT_TASK, RESCORE_TASK, UPLOAD_TASK
from worker.models import ModelUnavailable
from worker.processing import BatchProcessor

log = logging.getLogger(__name__)


class BatchTimeLimitExceeded(RuntimeError):
    """A batch ran past FRACTURE_TASK_TIME_LIMIT_S."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Abort the block after `seconds` (the solo pool ignores Celery's own time limits); the
    watchdog counts the worker as working, not stalled, until then."""
    with liveness.progress.working(seconds):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        with _alarm(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:

    def _expired(_signum: int, _frame: FrameType | None) -> None:
        raise BatchTimeLimitExceeded(f"batch exceeded the {seconds:.0f} s time limit")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_limited(
    processor: BatchProcessor, ids: Sequence[int], seconds: float, *, rescore: bool = False
) -> None:
    try:
        with time_limit(seconds):
            processor.process(ids, rescore=rescore)
    except BatchTimeLimitExceeded:
        # Rows stay `processing`; the sweeper re-sends them after FRACTURE_STUCK_AFTER_S, and
        # each then runs alone. A rescore changed no row: running `fracture rescore` again
        # sends what is still missing.
        log.error(
            "%s of %d image(s) aborted after %.0f s",
            "rescore batch" if rescore else "batch",
            len(ids),
            seconds,
        )
        if not rescore:
            with transaction(processor.factory) as session:
                queries.note_unfinished(
                    session=session,
                    image_ids=ids,
                    reason=f"scoring took longer than the {seconds:.0f} s time limit",
                )


def rescore_groups(
    args: Iterable[Sequence[object]],
) -> dict[tuple[str | None, str | None], list[int]]:
    """Rescore messages ([image id, model path or None, model version or None]) grouped by
    the model they ask for, ids in arrival order."""
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for message in args:
        image_id, path, version = (*message, None, None)[:3]
        key = (None if path is None else str(path), None if version is None else str(version))
        groups.setdefault(key, []).append(int(str(image_id)))
    return groups


def bind_tasks(
    app: Celery,
    settings: Settings,
    processor: Callable[[], BatchProcessor],
    models: Callable[[str | None, str | None], BatchProcessor] | None = None,
    by_version: Callable[[str], BatchProcessor | None] | None = None,
) -> None:
    """Register the batched bulk task, the single-image upload task, the batched rescore task
    and the heat-map task on `app`; `models(path, version)` gives the processor a rescore asks
    for (default: the configured model whatever the message names), `by_version(version)` the
    loaded one a heat map needs (default: the configured model if it is that version)."""

    def loaded(version: str) -> BatchProcessor | None:
        if by_version is not None:
            return by_version(version)
        main = processor()
        return main if main.classifier.version == version else None

    # Bulk and rescore messages are collected into batches by the same two knobs.
    batched: dict[str, Any] = {
        "base": Batches,
        "flush_every": settings.batch_size,
        "flush_interval": settings.batch_interval_ms / 1000,
        "acks_late": True,
        "reject_on_worker_lost": True,
    }

    @app.task(name=PREDICT_TASK, **batched)
    def predict_batch(requests: list[SimpleRequest]) -> None:
        ids = [int(request.args[0]) for request in requests]
        run_limited(processor(), ids, settings.task_time_limit_s)

    @app.task(name=UPLOAD_TASK, acks_late=True, reject_on_worker_lost=True)
    def predict_upload(image_id: int) -> None:
        # An upload is a batch of one through the same code path.
        run_limited(processor(), [int(image_id)], settings.task_time_limit_s)

    @app.task(name=HEATMAP_TASK, acks_late=True, reject_on_worker_lost=True)
    def draw_heatmap(prediction_id: int, model_version: str) -> None:
        chosen = loaded(str(model_version))
        if chosen is None:
            # The dashboard asks only while a live worker runs this version; another worker
            # may, this one does not: say so rather than draw it with the wrong model.
            log.warning(
                "heat map for prediction %d not drawn: model %s is not loaded here",
                int(prediction_id),
                model_version,
            )
            return
        try:
            with time_limit(settings.task_time_limit_s):
                chosen.draw_heatmap(int(prediction_id))
        except BatchTimeLimitExceeded:
            log.error("heat map for prediction %d aborted by the time limit", int(prediction_id))

    @app.task(name=RESCORE_TASK, **batched)
    def rescore_batch(requests: list[SimpleRequest]) -> None:
        for (path, version), ids in rescore_groups(r.args for r in requests).items():
            try:
                chosen = models(path, version) if models else processor()
            except ModelUnavailable as exc:
                # Every later message for it would fail the same way: drop them, say why.
                log.error("rescore of %d image(s) dropped: %s", len(ids), exc)
                continue
            run_limited(chosen, ids, settings.task_time_limit_s, rescore=True)
