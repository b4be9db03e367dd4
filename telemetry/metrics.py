"""The Prometheus metrics the services expose (prometheus-client's default registry) and the
one call that serves them. Each process updates the metrics of its own events; Prometheus adds
them up across processes and hosts."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from config import Settings, UserError

log = logging.getLogger(__name__)

disable_created_metrics()  # no `_created` series beside every counter: half the scrape

# Failure reasons are free text (file names and decoder messages in them); a label takes one of
# these categories instead, the first whose words appear in the reason.
FAILURE_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gave_up", ("gave up after",)),
    ("time_limit", ("time limit",)),
    ("moved", ("file not found", "replaced after")),
    ("empty", ("empty file",)),
    ("not_regular", ("not a regular file", "symbolic link")),
    ("bad_name", ("not valid utf-8",)),
    ("unreadable", ("cannot read file",)),
    ("too_large", ("too large",)),
    ("too_small", ("too small",)),
    ("memory", ("not enough memory",)),
    ("decoder_crash", ("decoder crashed",)),
    ("truncated", ("truncat", "cut short", "incomplete")),
    ("corrupt", ("corrupt", "not a valid", "absurd", "invalid", "not finite", "unexpected")),
    ("unsupported", ("not supported", "unsupported", "not a recognised", "no pixel data")),
)
OTHER_REASON = "other"

FILES_SEEN = Counter(
    "fracture_files_seen",
    "Files that arrived complete in the inbox, and DICOM instances received",
    ["source"],
)
IMAGES_REGISTERED = Counter("fracture_images_registered", "New image rows", ["source"])
DUPLICATES = Counter(
    "fracture_duplicates",
    "Arrivals whose bytes were already registered: recorded, not scored again",
    ["source"],
)
IMAGES_DONE = Counter("fracture_images_done", "Images scored and their result stored")
UPLOADS = Counter(
    "fracture_dashboard_uploads", "Files uploaded in the dashboard", ["outcome"]
)  # stored, refused
EXPORTS = Counter("fracture_dashboard_exports", "CSV exports streamed from the dashboard")
SIGN_INS = Counter(
    "fracture_dashboard_sign_ins", "Dashboard sign-in attempts", ["outcome"]
)  # accepted, refused
IMAGES_FAILED = Counter(
    "fracture_images_failed",
    "Images failed, by reason category (at registration or by a worker)",
    ["reason"],
)
BATCH_SIZE = Histogram(
    "fracture_batch_size",
    "Images per model run",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
MODEL_SECONDS = Histogram(
    "fracture_batch_model_seconds",
    "Decoding and model time per model run",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
ARRIVAL_TO_STORED = Histogram(
    "fracture_arrival_to_stored_seconds",
    "From an image's registration to its stored result",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
QUEUE_IMAGES = Gauge(
    "fracture_queue_images",
    "Images waiting for a result, by status (the watcher reads the database each sweep)",
    ["status"],
)
# The watcher's readings, registered by its first reading: another process showing them as
# 0 would look like an empty queue, or no live worker.
QUEUE_MESSAGES = Gauge(
    "fracture_queue_messages",
    "Messages waiting in the broker's scoring queues (watcher)",
    registry=None,
)
QUEUE_OLDEST_AGE = Gauge(
    "fracture_queue_oldest_age_seconds",
    "Age of the oldest image still waiting for a result; 0 when none waits (watcher)",
    registry=None,
)
WORKERS_LIVE = Gauge(
    "fracture_workers_live",
    "Workers whose heartbeat in the database is fresh, on any host (watcher)",
    registry=None,
)
_watcher_gauges = [QUEUE_MESSAGES, QUEUE_OLDEST_AGE, WORKERS_LIVE]
RESTARTS = Counter(
    "fracture_restarts", "Parts that `fracture up` restarted after they exited", ["service"]
)
DICOM_SENT = Counter("fracture_dicom_results_sent", "Results sent to the DICOM destination")
DICOM_FAILED = Counter(
    "fracture_dicom_results_failed",
    'Failed sends of a result: final="true" given up on, "false" to be retried',
    ["final"],
)

# Every reason from zero, so that rate() and increase() see the first failure of each kind.
for _reason, _ in (*FAILURE_REASONS, (OTHER_REASON, ())):
    IMAGES_FAILED.labels(_reason)
for _final in ("true", "false"):
    DICOM_FAILED.labels(_final)

# `fracture up` serves its own metrics on FRACTURE_METRICS_PORT and gives its children the
# ports above it, in this order.
_serving: set[int] = set()  # ports this process serves already
PORT_OFFSETS = {"supervisor": 0, "worker": 1, "watcher": 2, "dicom": 3, "dashboard": 4}

_oldest_waiting: list[float | None] = [None]  # POSIX time of the oldest waiting image
QUEUE_OLDEST_AGE.set_function(
    lambda: 0.0 if _oldest_waiting[0] is None else max(0.0, time.time() - _oldest_waiting[0])
)


def failure_reason(text: str | None) -> str:
    """The category of a stored failure reason (a label value of fracture_images_failed)."""
    lowered = (text or "").lower()
    for category, words in FAILURE_REASONS:
        if any(word in lowered for word in words):
            return category
    return OTHER_REASON


def count_failures(reasons: Iterable[str | None]) -> None:
    for reason in reasons:
        IMAGES_FAILED.labels(failure_reason(reason)).inc()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def observe_stored(received: Iterable[datetime | None], now: datetime | None = None) -> None:
    """Results stored now for images registered at these times (SQLite's are zone-less UTC)."""
    now = now or datetime.now(UTC)
    for moment in received:
        if moment is not None:
            ARRIVAL_TO_STORED.observe(max(0.0, (now - _utc(moment)).total_seconds()))


def observe_queue(
    *,
    queued: int,
    processing: int,
    oldest: datetime | None,
    live_workers: int,
) -> None:
    """The watcher's reading of the database: the age gauge counts on from `oldest` at scrape
    time, so a stalled queue shows its age growing between sweeps."""
    while _watcher_gauges:
        REGISTRY.register(_watcher_gauges.pop())
    QUEUE_IMAGES.labels("queued").set(queued)
    QUEUE_IMAGES.labels("processing").set(processing)
    _oldest_waiting[0] = None if oldest is None else _utc(oldest).timestamp()
    WORKERS_LIVE.set(live_workers)


def child_port(settings: Settings, service: str) -> int | None:
    """The metrics port `fracture up` gives one of its children; None when metrics are off;
    KeyError for a name it does not start."""
    offset = port_offset(service)
    if settings.metrics_port is None:
        return None
    return settings.metrics_port + offset


def port_offset(service: str) -> int:
    """A child's offset from FRACTURE_METRICS_PORT: the fixed ones, then `fracture up`'s further
    workers (`worker-2` the next port after the last fixed one, `worker-3` the one after)."""
    if service in PORT_OFFSETS:
        return PORT_OFFSETS[service]
    prefix, _, number = service.partition("-")
    if prefix == "worker" and number.isdigit() and int(number) >= 2:
        return len(PORT_OFFSETS) + int(number) - 2
    raise KeyError(service)


def serve(settings: Settings, service: str) -> None:
    """Serve /metrics on FRACTURE_METRICS_HOST:FRACTURE_METRICS_PORT (nothing when unset, once
    per process); UserError when the port cannot be had, rather than running unwatched."""
    port = settings.metrics_port
    if port is None or port in _serving:
        return
    try:
        start_http_server(port, addr=settings.metrics_host)
    except OSError as exc:
        raise UserError(
            f"cannot serve the {service}'s metrics on {settings.metrics_host}:{port} "
            f"(FRACTURE_METRICS_PORT): {exc.strerror or exc}"
        ) from exc
    _serving.add(port)
    log.info("%s metrics at http://%s:%d/metrics", service, settings.metrics_host, port)
