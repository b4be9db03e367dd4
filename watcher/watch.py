"""Inbox watcher: a complete file → hashed → image row (queued) → id sent to the workers."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from db import queries
from db.session import transaction
from model.files import settled_signature, special_kind
from telemetry import metrics
from worker import client

log = logging.getLogger(__name__)

IGNORED_PATTERNS = (".*", "*.part", "*.tmp", "*~", "*.crdownload", "*.partial")
# Files registered (hashed, inserted, sent) per transaction. Small enough that workers get the
# first batches of a large drop while the rest is still being registered: at about 2.5 ms per
# file, chunks of 200 kept a 2-core machine's worker waiting half a second at the start.
REGISTER_CHUNK = 32
CLOSED_SETTLE_S = 0.3  # after a close-write or move-in, only a short quiet period is needed
# Written to (native events) but not closed yet: a copy that pauses with the file open, as
# stalled SMB/NFS copies do. The writer's close (also when it dies) ends the wait sooner.
OPEN_SETTLE_S = 60.0
# Closed, then reopened to append: the writer comes back after each close, so wait longer.
REOPENED_SETTLE_S = 3.0
SETTLE_TICK_S = 0.1  # how often pending files are looked at (a stat each)
RESCUE_TICK_S = 2.0  # how often the heartbeats are read for a dead worker (one query)


def is_ignored(path: Path) -> bool:
    parts = path.parts
    return any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in IGNORED_PATTERNS)


class Described(NamedTuple):
    """What registering a settled file needs to know about it."""

    sha256: str
    size: int
    path: str  # the path to read
    rejection: str | None  # why it is registered as failed, or None
    signature: str | None = None  # `settled_signature` before hashing an accepted file


@dataclass
class _Pending:
    signature: tuple[int, int] | None
    changed_at: float
    closed: bool = False
    writing: bool = False  # written to since the last close-write
    reopened: bool = False  # written to again after a close: an appending writer


def _signature(path: Path) -> tuple[int, int]:
    """Size and mtime: what must stay unchanged for a file to count as complete."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class ArrivalTracker:
    """Decides when a file is complete: unchanged size and mtime for the settle time."""

    def __init__(
        self,
        settle_s: float,
        *,
        close_events: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_s = settle_s
        self.close_events = close_events  # native events report close-write; polling does not
        self._clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()

    def touch(self, path: Path, *, closed: bool = False, written: bool = False) -> None:
        """Note an event for `path`: `closed` a close-write or move-in, `written` a write.
        Its size and mtime are read now, so the quiet period counts from the event itself, not
        from the next look at the pending files."""
        now = self._clock()
        try:
            signature: tuple[int, int] | None = _signature(path)
        except OSError:
            signature = None  # gone or unreadable: `ready` decides what happens to it
        with self._lock:
            entry = self._pending.get(path)
            if entry is None:
                entry = _Pending(signature=signature, changed_at=now)
                self._pending[path] = entry
            elif not closed or signature != entry.signature:
                entry.changed_at = now
            entry.signature = signature
            if closed:
                entry.closed, entry.writing = True, False
            elif written:
                entry.reopened = entry.reopened or entry.closed
                entry.closed = False
                entry.writing = self.close_events

    def ready(self) -> list[Path]:
        """Paths whose size and mtime have been stable long enough; removes them."""
        now = self._clock()
        done: list[Path] = []
        with self._lock:
            items = list(self._pending.items())
        for path, entry in items:
            try:
                signature = _signature(path)
            except FileNotFoundError:
                with self._lock:
                    self._pending.pop(path, None)
                continue
            except OSError:
                continue
            if signature != entry.signature:
                entry.signature = signature
                entry.changed_at = now
                continue
            if now - entry.changed_at >= self._quiet(entry):
                done.append(path)
        with self._lock:
            for path in done:
                self._pending.pop(path, None)
        return done

    def _quiet(self, entry: _Pending) -> float:
        """How long a file must stay unchanged: short after its writer closed it (unless that
        writer keeps reopening it to append), long while a writer holds it open."""
        if entry.closed:
            return max(self.settle_s, REOPENED_SETTLE_S) if entry.reopened else CLOSED_SETTLE_S
        if entry.writing:
            return max(self.settle_s, OPEN_SETTLE_S)
        return self.settle_s

    def __len__(self) -> int:
        return len(self._pending)


class _InboxHandler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "closed_no_write", "opened"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(os.fsdecode(raw))
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                self.watcher.scan(path)
            return
        self.watcher.offer(
            path,
            closed=event.event_type in ("closed", "moved"),
            # "created" alone may be a rename from outside the inbox (complete); writes
            # show as "modified"
            written=event.event_type == "modified",
        )


def _utf8_safe(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _displayable(text: str) -> str:
    """Text that any database accepts: undecodable name bytes shown as \\xNN escapes."""
    if _utf8_safe(text):
        return text
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class Watcher:
    def __init__(
        self,
        *,
        inbox: Path,
        app: Celery,
        factory: sessionmaker[Session],
        settle_s: float = 1.0,
        polling: bool = False,
        hash_threads: int = 2,
        sweep_interval_s: float = 15.0,
        stuck_after_s: float = 120.0,
        dead_after_s: float = 15.0,
        rescan_interval_s: float = 60.0,
        observe_queue: bool = False,
    ) -> None:
        self.inbox = inbox.resolve()
        self.app = app
        self.factory = factory
        self.tracker = ArrivalTracker(settle_s, close_events=not polling)
        self.polling = polling
        self.sweep_interval_s = sweep_interval_s
        self.stuck_after = timedelta(seconds=stuck_after_s)
        self.dead_after = timedelta(seconds=dead_after_s)
        self.rescan_interval_s = rescan_interval_s
        self.observe_queue = observe_queue  # metrics: read the queue's state each sweep
        # path → (size, mtime) when it was hashed: a rescan skips files that have not changed
        self._hashed: dict[str, tuple[int, int]] = {}
        self._hash_pool = ThreadPoolExecutor(max_workers=max(1, hash_threads))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observer: BaseObserver | None = None

    # -- arrival -------------------------------------------------------------------
    def offer(self, path: Path, *, closed: bool = False, written: bool = False) -> None:
        if is_ignored(path.relative_to(self.inbox) if path.is_relative_to(self.inbox) else path):
            return
        self.tracker.touch(path, closed=closed, written=written)

    def _files(self, root: Path | None = None) -> Iterator[Path]:
        """Every file under `root` (default: the inbox), ignored folders left out."""
        for dirpath, dirnames, filenames in os.walk(root or self.inbox, followlinks=False):
            dirnames[:] = [d for d in dirnames if not is_ignored(Path(d))]
            for name in filenames:
                yield Path(dirpath) / name

    def scan(self, root: Path | None = None) -> int:
        """Offer every file under `root` (default: the inbox) — catches files dropped while down."""
        count = 0
        for path in self._files(root):
            self.offer(path)
            count += 1
        return count

    def rescan(self) -> int:
        """Offer the inbox's files that are new or changed since they were hashed (events lost
        to an inotify overflow, a network share, a missed rename); the rest are not read."""
        offered = 0
        present = set()
        for path in self._files():
            present.add(str(path))
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if self._hashed.get(str(path)) != (info.st_size, info.st_mtime_ns):
                self.offer(path)
                offered += 1
        for gone in set(self._hashed) - present:
            self._hashed.pop(gone, None)
        if offered:
            log.info("rescan found %d new or changed file(s)", offered)
        return offered

    # -- registration ----------------------------------------------------------------
    def _describe(self, path: Path) -> Described:
        """How a settled file is registered."""
        relative = path.relative_to(self.inbox)
        if not _utf8_safe(str(path)):
            # Names from old Windows shares may be Latin-1 bytes: the database stores text and
            # the worker could not reopen the file from it. Fail that one file, readably.
            sha, size = sha256_file(path)
            return Described(
                sha,
                size,
                _displayable(str(path)),
                ("file name is not valid UTF-8 (rename the file to score it): not read"),
            )
        # One look at the file for its kind and its signature, before hashing: a write during
        # the hash changes the signature, so the worker hashes again.
        info, now_ns = os.stat(path), time.time_ns()
        kind = special_kind(info.st_mode)
        if kind is not None:  # a FIFO would block the reader for good; a device never ends
            digest = hashlib.sha256(f"skipped-{kind}:{relative}".encode()).hexdigest()
            return Described(
                digest, 0, str(path), f"not a regular file ({kind}): skipped, not read"
            )
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.inbox):
                digest = hashlib.sha256(f"rejected-symlink:{relative}".encode()).hexdigest()
                return Described(
                    digest, 0, str(path), "symbolic link pointing outside the inbox: not read"
                )
        signature = settled_signature(info, now_ns)
        sha, size = sha256_file(path)
        if size == 0:  # every empty file has the same digest: each gets a row of its own
            digest = hashlib.sha256(f"empty:{relative}".encode()).hexdigest()
            return Described(digest, 0, str(path), "empty file (0 bytes): nothing to score")
        return Described(sha, size, str(path), None, signature)

    def register(self, paths: Iterable[Path]) -> list[int]:
        """Hash, register and enqueue settled files; returns the ids sent."""
        paths = list(paths)
        metrics.FILES_SEEN.labels("watch").inc(len(paths))
        described = list(self._hash_pool.map(self._safe_describe, paths))
        entries: list[tuple[Path, queries.NewImage]] = []
        for path, info in zip(paths, described, strict=True):
            if info is None:  # vanished before it was read: logged, nothing to register
                continue
            entry = queries.NewImage(
                sha256=info.sha256,
                path=info.path,
                filename=_displayable(str(path.relative_to(self.inbox))),
                size=info.size,
                fmt=path.suffix.lower().lstrip(".") or None,
                rejection=info.rejection,
                signature=info.signature,
            )
            entries.append((path, entry))
        with transaction(self.factory) as session:
            again = queries.reattach_many(
                session=session, new=[entry for _, entry in entries if not entry.rejection]
            )
        if again:
            log.info("%d known file(s) re-attached to their rows and queued again", len(again))
            client.enqueue(self.app, self.factory, list(again.values()))
        fresh = [(path, entry) for path, entry in entries if entry.path not in again]
        registered = client.register(self.app, self.factory, [entry for _, entry in fresh])
        return list(again.values()) + [
            image_id
            for (_, entry), (image_id, created) in zip(fresh, registered, strict=True)
            if created and not entry.rejection
        ]

    def _safe_describe(self, path: Path) -> Described | None:
        try:
            before = os.lstat(path)  # taken before hashing: a later change is seen as one
            described = self._describe(path)
            self._hashed[str(path)] = (before.st_size, before.st_mtime_ns)
            return described
        except FileNotFoundError:
            log.info("file vanished before it was registered: %s", path.name)
        except OSError as exc:
            # A row says why (permissions, I/O error); fixed, the file re-attaches to it.
            relative = path.relative_to(self.inbox)
            digest = hashlib.sha256(f"unreadable:{relative}".encode()).hexdigest()
            return Described(digest, 0, str(path), f"cannot read file: {exc.strerror or exc}")
        return None

    # -- sweeping --------------------------------------------------------------------
    def sweep(self) -> int:
        """Re-send rows never sent, or stuck while no backlog explains the wait."""
        depth = client.queue_depth(self.app)
        with transaction(self.factory) as session:
            rows = queries.images_to_resend(session=session, stuck_after=self.stuck_after)
            unsent = [r.id for r in rows if r.enqueued_at is None]
            stuck = [r.id for r in rows if r.enqueued_at is not None]
            if self.observe_queue:
                self._observe(session, depth)
        # A non-empty queue means workers are still working through a backlog.
        resend = unsent + (stuck if depth == 0 else [])
        if resend and client.enqueue(self.app, self.factory, resend):
            log.info("sweeper re-sent %d image(s) (%d never sent)", len(resend), len(unsent))
            return len(resend)
        return 0

    def _observe(self, session: Session, depth: int | None) -> None:
        """The queue's state for the metrics: three small queries, once per sweep."""
        waiting = queries.waiting_images(session=session)
        live = queries.worker_heartbeats(session=session, since=self.dead_after)
        metrics.observe_queue(
            queued=waiting.queued,
            processing=waiting.processing,
            oldest=waiting.oldest_received_at,
            live_workers=len(live),
        )
        if depth is not None:
            metrics.QUEUE_MESSAGES.set(depth)

    def rescue(self) -> int:
        """Re-send at once what a dead worker held (each image then runs alone): a worker
        that died is noticed when its heartbeat is `dead_after` old, not after the stuck
        timeout, and whether or not the queue is empty."""
        with transaction(self.factory) as session:
            orphans = queries.images_of_dead_workers(session=session, dead_after=self.dead_after)
            ids = queries.requeue_orphans(
                session=session,
                image_ids=orphans,
                reason="the worker scoring it stopped before it finished",
            )
        if ids:
            log.warning("a worker stopped while scoring %d image(s): re-sending them", len(ids))
            client.enqueue(self.app, self.factory, ids)
        return len(ids)

    # -- lifecycle -------------------------------------------------------------------
    def _settle_loop(self) -> None:
        while not self._stop.is_set():
            ready = self.tracker.ready()
            for start in range(0, len(ready), REGISTER_CHUNK):
                chunk = ready[start : start + REGISTER_CHUNK]
                try:
                    self.register(chunk)
                except Exception:
                    log.exception("registering %d file(s) failed; will rescan", len(chunk))
                    for path in chunk:
                        self.tracker.touch(path)
            self._stop.wait(SETTLE_TICK_S)

    def _sweep_loop(self) -> None:
        next_rescan = time.monotonic() + self.rescan_interval_s
        while not self._stop.wait(self.sweep_interval_s):
            try:
                self.sweep()
                if time.monotonic() >= next_rescan:
                    next_rescan = time.monotonic() + self.rescan_interval_s
                    self.rescan()
            except Exception:
                log.exception("sweep failed; retrying at the next interval")

    def _rescue_loop(self) -> None:
        while not self._stop.wait(RESCUE_TICK_S):
            try:
                self.rescue()
            except Exception:
                log.exception("looking for a dead worker's images failed; retrying")

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer_cls = PollingObserver if self.polling else Observer
        self._observer = observer_cls()
        self._observer.schedule(_InboxHandler(self), str(self.inbox), recursive=True)
        self._observer.start()
        found = self.scan()
        log.info(
            "watching %s (%s); %d file(s) already there",
            self.inbox,
            "polling" if self.polling else "native events",
            found,
        )
        self._threads = [
            threading.Thread(target=self._settle_loop, name="settle", daemon=True),
            threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True),
            threading.Thread(target=self._rescue_loop, name="rescuer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self.sweep()
        except Exception:
            log.exception("initial sweep failed")

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._hash_pool.shutdown(wait=False)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
