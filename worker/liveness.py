"""A worker's liveness: its heartbeat in the database (while it beats, the images the worker
claimed are its own; once it stops — killed, hung or gone — the watcher re-sends them within
seconds), and the watchdog that ends a worker whose main loop has stopped making progress, so
that its supervisor (`fracture up`, a container's restart policy) starts a fresh one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import transaction

log = logging.getLogger(__name__)

# The exit status of a worker its watchdog ended; the supervisor restarts it like any crash.
STALLED_EXIT = 70
# How long past its own time limit a piece of work may run before it counts as hung: the time
# limit's alarm cannot interrupt a call stuck inside native code.
OVERRUN_GRACE_S = 30.0


class Progress:
    """What the worker's main thread last did: its event loop turned (Celery's own event-loop
    timer, every 2 s), or it is working on a batch under a time limit. Fed from the main
    thread, read by the heartbeat thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_tick = clock()
        self.working_until: float | None = None  # when the current work overran its limit
        self._broker_answering_since: float | None = None

    def tick(self) -> None:
        self.last_tick = self.clock()

    @contextmanager
    def working(self, limit_s: float) -> Iterator[None]:
        """The main thread is busy on something that must end within `limit_s`."""
        self.working_until = self.clock() + limit_s + OVERRUN_GRACE_S
        try:
            yield
        finally:
            self.working_until = None
            self.tick()

    def stalled(self, quiet_s: float, broker_answers: Callable[[], bool]) -> str | None:
        """Why the main thread counts as stuck, or None. A loop that has been quiet for
        `quiet_s` while the broker is down is waiting to reconnect (a restart would not help);
        quiet for `quiet_s` more while the broker answers, it is stuck."""
        now = self.clock()
        if self.working_until is not None:
            if now > self.working_until:
                return f"a batch has run {OVERRUN_GRACE_S:.0f} s past its time limit"
            return None
        quiet = now - self.last_tick
        if quiet <= quiet_s:
            self._broker_answering_since = None
            return None
        if not broker_answers():
            self._broker_answering_since = None
            return None
        if self._broker_answering_since is None:
            self._broker_answering_since = now
        if now - self._broker_answering_since > quiet_s:
            return f"its main loop has made no progress for {quiet:.0f} s while the broker answers"
        return None


# One per worker process: Celery's signals and the task wrappers feed it.
progress = Progress()


class Heartbeat:
    """Beats every `interval_s` from a daemon thread, naming the model the worker runs, while
    the main thread makes progress; when it has stalled (`stall_after_s`), stops beating and
    ends the process with STALLED_EXIT. `stop` says the worker left cleanly."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        worker: str,
        interval_s: float,
        model_version: str | None = None,
        *,
        stall_after_s: float | None = None,
        broker_answers: Callable[[], bool] = lambda: True,
        progress: Progress = progress,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.factory = factory
        self.worker = worker
        self.interval_s = interval_s
        self.model_version = model_version
        self.stall_after_s = stall_after_s
        self.broker_answers = broker_answers
        self.progress = progress
        self.exit = exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        with transaction(self.factory) as session:
            queries.heartbeat(session=session, worker=self.worker, model_version=self.model_version)

    def start(self) -> None:
        self.beat()  # before the first claim, so no claimed row ever looks orphaned
        self.progress.tick()  # loading the model took a while; the loop starts now
        self._thread.start()

    def check(self) -> bool:
        """One round: beat if the worker is making progress; else say why and end it."""
        stalled = (
            self.progress.stalled(self.stall_after_s, self.broker_answers)
            if self.stall_after_s is not None
            else None
        )
        if stalled is not None:
            # One line, then exit at once: the main thread cannot be trusted to shut down.
            log.critical("worker stalled: %s; exiting so that it is restarted", stalled)
            self.exit(STALLED_EXIT)
            return False
        try:
            self.beat()
        except SQLAlchemyError as exc:
            # The database is away: say so, keep trying; the batch itself will fail too.
            log.warning("heartbeat not written: %s", type(exc).__name__)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.check():
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        try:
            with transaction(self.factory) as session:
                queries.forget_worker(session=session, worker=self.worker)
        except SQLAlchemyError as exc:
            log.warning("could not sign the worker off: %s", type(exc).__name__)
