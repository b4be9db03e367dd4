"""`fracture worker`: load the model once, consume both queues, one batch at a time."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from celery.exceptions import SecurityWarning
from celery.signals import heartbeat_sent, worker_ready
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from model.inference import Classifier
from telemetry import metrics
from telemetry.logs import celery_notices_as_records
from worker import liveness
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
    worker: str | None = None,
) -> BatchProcessor:
    """The configured model, or the one at `model_path` (rescoring), with a session factory
    (a new engine unless `factory` is given)."""
    classifier = Classifier.load(
        model_path or settings.resolved_model_path,
        device=settings.device,
        runtime=settings.runtime,
        max_pixels=settings.max_pixels,
        patient_salt=settings.patient_salt.get_secret_value() if settings.patient_salt else None,
        isolation=settings.decode_isolation,
        max_file_bytes=settings.max_file_mb * 2**20,
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
        max_attempts=settings.max_attempts,
        worker=worker,
    )


def use_threads(settings: Settings) -> None:
    """FRACTURE_WORKER_THREADS, when set, as this process's CPU threads; call it before the
    model loads: ONNX Runtime's lanes and their threads follow torch's count."""
    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)


def run_worker(
    settings: Settings, broker_url: str, *, name: str | None = None, ready_file: Path | None = None
) -> None:
    """Block consuming tasks until a shutdown signal; finishes the running batch on SIGTERM.
    `ready_file` is created once the worker consumes its queues."""
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    app = make_celery(settings, broker_url)
    # A restarted container keeps its host name and often its pid: the random part keeps a
    # new worker from answering for the heartbeat of the one that died there.
    hostname = name or (
        f"fracture-worker-{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"
    )
    use_threads(settings)
    processor = cache(lambda: build_processor(settings, worker=hostname))
    processor()  # load now: fail at start-up, not on the first image
    metrics.serve(settings, "worker")
    if settings.log_format == "json":
        celery_notices_as_records()
    models = ModelPool(
        processor,
        settings.resolved_model_path,
        lambda path: build_processor(settings, path, processor().factory, warm_up=False),
    )
    bind_tasks(app, settings, processor, models.get, models.with_version)
    if ready_file is not None:
        _touch_when_ready(ready_file)
    if not settings.debug:
        # Celery's warning about running as root (a container, a VM) is start-up noise here;
        # the Docker image runs as an unprivileged user.
        warnings.filterwarnings("ignore", category=SecurityWarning)
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
        quiet=not settings.debug,  # Celery's banner
    )
    # Celery's event-loop timer sends its event heartbeat every 2 s: each one shows the main
    # loop is turning. A loop that stops (stuck in a socket call while the broker answers)
    # ends the worker, and whoever supervises it starts a fresh one.
    heartbeat_sent.connect(lambda **_: liveness.progress.tick(), weak=False)
    heartbeat = liveness.Heartbeat(
        processor().factory,
        hostname,
        settings.heartbeat_s,
        processor().classifier.version,
        stall_after_s=settings.dead_after_s,
        broker_answers=_broker_answers(broker_url),
    )
    heartbeat.start()
    try:
        worker.start()
    finally:
        heartbeat.stop()
    code = getattr(worker, "exitcode", 0) or 0
    if code:
        raise SystemExit(code)


def _broker_answers(url: str) -> Callable[[], bool]:
    """Whether the broker answers a ping within 2 s (a worker waiting for a broker that is
    down is not stalled: a restart would not help it)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    return answers


def _touch_when_ready(path: Path) -> None:
    def touch(**_: object) -> None:
        path.touch()

    worker_ready.connect(touch, weak=False)
