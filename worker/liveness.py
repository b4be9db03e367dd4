"""A worker's heartbeat in the database: while it beats, the images the worker claimed are its
own; once it stops (killed, hung, or gone), the watcher re-sends them within seconds."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import transaction

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats every `interval_s` from a daemon thread, naming the model the worker runs; `stop`
    says the worker left cleanly."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        worker: str,
        interval_s: float,
        model_version: str | None = None,
    ) -> None:
        self.factory = factory
        self.worker = worker
        self.model_version = model_version
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        with transaction(self.factory) as session:
            queries.heartbeat(session=session, worker=self.worker, model_version=self.model_version)

    def start(self) -> None:
        self.beat()  # before the first claim, so no claimed row ever looks orphaned
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except SQLAlchemyError as exc:
                # The database is away: say so, keep trying; the batch itself will fail too.
                log.warning("heartbeat not written: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        try:
            with transaction(self.factory) as session:
                queries.forget_worker(session=session, worker=self.worker)
        except SQLAlchemyError as exc:
            log.warning("could not sign the worker off: %s", type(exc).__name__)
