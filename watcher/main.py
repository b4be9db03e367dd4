"""`fracture watch`: watch the inbox until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
from types import FrameType

from config import Settings
from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from telemetry import metrics
from watcher.watch import Watcher
from worker.app import make_celery


def build_watcher(settings: Settings, broker_url: str) -> Watcher:
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    return Watcher(
        inbox=settings.inbox,
        app=make_celery(settings, broker_url),
        factory=make_session_factory(make_engine(settings.resolved_database_url)),
        settle_s=settings.settle_s,
        polling=settings.polling,
        hash_threads=settings.hash_threads,
        sweep_interval_s=settings.sweep_interval_s,
        stuck_after_s=settings.stuck_after_s,
        dead_after_s=settings.dead_after_s,
        rescan_interval_s=settings.rescan_interval_s,
        observe_queue=settings.metrics_port is not None,
    )


def run_watcher(settings: Settings, broker_url: str) -> None:
    watcher = build_watcher(settings, broker_url)
    metrics.serve(settings, "watcher")

    def _stop(signum: int, _frame: FrameType | None) -> None:
        watcher.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    watcher.run_forever()
