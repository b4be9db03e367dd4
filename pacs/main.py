"""`fracture dicom-listen` and `fracture dicom-send`: wiring the listener and the sender."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from config import Settings
from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from pacs.listen import Listener, StoreHandler
from pacs.send import ResultSender
from telemetry import metrics
from worker.app import make_celery

log = logging.getLogger(__name__)

DEFAULT_PORT = 11112  # the registered DICOM port; 104 needs root


def build_sender(settings: Settings) -> ResultSender | None:
    destination = settings.destination
    if destination is None:
        return None
    return ResultSender(
        make_session_factory(make_engine(settings.resolved_database_url)),
        destination,
        ae_title=settings.dicom_ae_title,
        max_attempts=settings.dicom_send_attempts,
        backoff_s=settings.dicom_send_backoff_s,
        include_folder_files=settings.dicom_export_folder_files,
    )


def run_listener(settings: Settings, broker_url: str) -> None:
    """Serve C-STORE/C-ECHO (and send results, if a destination is set) until SIGINT/SIGTERM."""
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    handler = StoreHandler(
        directory=settings.dicom_dir, app=make_celery(settings, broker_url), factory=factory
    )
    listener = Listener(
        handler,
        ae_title=settings.dicom_ae_title,
        host=settings.dicom_host,
        port=settings.dicom_port or DEFAULT_PORT,
        calling_aes=settings.calling_ae_titles,
    )
    sender = build_sender(settings)
    metrics.serve(settings, "dicom")
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listener.start()
    if sender is not None:
        sender.start()
    else:
        log.info("no FRACTURE_DICOM_DESTINATION: results are stored, not sent")
    try:
        stop.wait()
    finally:
        listener.stop()
        if sender is not None:
            sender.stop()
        log.info("DICOM listener stopped")
