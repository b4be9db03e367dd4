"""`fracture worker`: load the model once, consume both queues, one batch at a time."""

from __future__ import annotations

import logging
import os
import socket
from functools import cache
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from fracture.settings import Settings
from model.inference import Classifier
from worker.app import BULK_QUEUE, RESCORE_QUEUE, UPLOAD_QUEUE, make_celery
from worker.models import ModelPool
from worker.processing import BatchProcessor
from worker.tasks import bind_tasks

log = logging.getLogger(__name__)


def build_processor(
    settings: Settings,
    model_path: Path | None = None,
    factory: sessionmaker[Session] | None = None,
    *,
    warm_up: bool = True,
) -> BatchProcessor:
    """The configured model, or the one at `model_path` (rescoring), with a session factory
    (a new engine unless `factory` is given)."""
    classifier = Classifier.load(
        model_path or settings.resolved_model_path,
        device=settings.device,
        runtime=settings.runtime,
        max_pixels=settings.max_pixels,
        patient_salt=settings.patient_salt.get_secret_value() if settings.patient_salt else None,
    )
    if warm_up:
        log.info("model warmed up in %.1f s", classifier.warm_up(settings.batch_size))
    if factory is None:
        factory = make_session_factory(make_engine(settings.resolved_database_url))
    return BatchProcessor(
        classifier,
        factory,
        heatmaps_dir=settings.heatmaps_dir,
        heatmaps=settings.heatmaps,
    )


def run_worker(settings: Settings, broker_url: str, *, name: str | None = None) -> None:
    """Block consuming tasks until a shutdown signal; finishes the running batch on SIGTERM."""
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    app = make_celery(settings, broker_url)
    processor = cache(lambda: build_processor(settings))
    processor()  # load now: fail at start-up, not on the first image
    models = ModelPool(
        processor,
        settings.resolved_model_path,
        lambda path: build_processor(settings, path, processor().factory, warm_up=False),
    )
    bind_tasks(app, settings, processor, models.get)
    hostname = name or f"fracture-worker-{os.getpid()}@{socket.gethostname()}"
    worker = app.Worker(
        hostname=hostname,
        # solo: the model lives in this process and CUDA is never initialised before a fork.
        pool="solo",
        concurrency=1,
        queues=[UPLOAD_QUEUE, BULK_QUEUE, RESCORE_QUEUE],
        loglevel=settings.log_level,
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
    )
    worker.start()
    code = getattr(worker, "exitcode", 0) or 0
    if code:
        raise SystemExit(code)
