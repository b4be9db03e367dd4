"""Logs as JSON lines (fields, one line per record, secrets masked, broker troubles without
tracebacks) and the metric helpers (failure categories, settings of the metrics port)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery.worker.consumer.consumer import CONNECTION_RETRY
from kombu.message import Message

from config import Settings, UserError, build_settings
from telemetry import metrics
from telemetry.logs import JsonFormatter, MaskSecrets, OneLineBrokerErrors, mask_secrets
from tests.helpers import REPO, fracture_env

DATABASE_URL = "postgresql+psycopg://fracture:s3cret-pw@db.example.org:5432/fracture"


def record(
    name: str = "worker.processing",
    message: str = "batch of %d done",
    args: tuple[object, ...] = (3,),
    *,
    exc_info: object = None,
    level: int = logging.INFO,
    **extra: object,
) -> logging.LogRecord:
    entry = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def formatted(entry: logging.LogRecord, service: str = "worker") -> dict[str, object]:
    for check in (OneLineBrokerErrors(), MaskSecrets()):
        assert check.filter(entry)
    line = JsonFormatter(service).format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def raised(exc: BaseException) -> object:
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def test_json_line_has_time_level_service_image_id_and_message() -> None:
    entry = formatted(record(message="image %d failed: %s", args=(7, "corrupt"), image_id=7))
    assert entry["level"] == "INFO" and entry["service"] == "worker"
    assert entry["image_id"] == 7 and entry["message"] == "image 7 failed: corrupt"
    moment = datetime.fromisoformat(str(entry["time"]))
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)
    assert formatted(record())["image_id"] is None  # the field is always there


def test_a_traceback_is_one_escaped_field_and_the_line_stays_one_line() -> None:
    entry = formatted(record(message="boom", args=(), exc_info=raised(ValueError("bad\nvalue"))))
    assert entry["message"] == "boom"
    assert "Traceback" in str(entry["exception"]) and "ValueError: bad" in str(entry["exception"])


def test_passwords_in_urls_are_masked_in_message_and_traceback() -> None:
    entry = formatted(
        record(
            message="cannot use %s",
            args=(DATABASE_URL,),
            exc_info=raised(OSError(f"refused: {DATABASE_URL}")),
        )
    )
    text = json.dumps(entry)
    assert "s3cret-pw" not in text
    assert "postgresql+psycopg://fracture:***@db.example.org:5432/fracture" in entry["message"]  # type: ignore[operator]
    assert mask_secrets("redis://:pw_1-x@redis:6379/0 and rediss://u:p@h/1") == (
        "redis://:***@redis:6379/0 and rediss://u:***@h/1"
    )
    assert (
        mask_secrets("no secret in http://host:8501/path") == "no secret in http://host:8501/path"
    )


def test_celery_broker_loss_is_one_line_with_the_reason_and_no_traceback() -> None:
    error = redis.exceptions.ConnectionError("Error 111 connecting to redis:6379. Refused.")
    entry = formatted(
        record(
            "celery.worker.consumer.consumer",
            CONNECTION_RETRY,
            (),
            exc_info=raised(error),
            level=logging.WARNING,
        )
    )
    assert "exception" not in entry
    assert entry["message"] == (
        "consumer: Connection to broker lost. Trying to re-establish the connection... "
        "(ConnectionError: Error 111 connecting to redis:6379. Refused.)"
    )


def test_a_failed_ack_logged_by_kombu_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    class LostChannel:  # the broker connection went away between delivery and ack
        no_ack_consumers = None

        def basic_ack(self, *_: object, **__: object) -> None:
            raise redis.exceptions.ConnectionError("Connection closed by server.")

    logger = logging.getLogger("celery.worker.request")
    message = Message(body=b"{}", delivery_tag="tag-1", channel=LostChannel())
    with caplog.at_level(logging.CRITICAL, logger="celery.worker.request"):
        message.ack_log_error(logger, (redis.exceptions.ConnectionError,))
    (captured,) = caplog.records
    assert captured.exc_info is not None  # kombu attaches the traceback…
    entry = formatted(captured)  # …which the shipped line leaves out
    assert "exception" not in entry and entry["level"] == "CRITICAL"
    assert entry["message"].startswith("Couldn't ack 'tag-1'")  # type: ignore[union-attr]
    assert entry["message"].endswith("(ConnectionError: Connection closed by server.)")  # type: ignore[union-attr]


def test_other_tracebacks_and_our_own_records_are_left_alone() -> None:
    mine = record("watcher.watch", "sweep failed", (), exc_info=raised(OSError("disk")))
    assert "exception" in formatted(mine)  # our own code's traceback: kept, as one field
    theirs = record("celery.app.trace", "task failed", (), exc_info=raised(KeyError("x")))
    assert "exception" in formatted(theirs)  # not a connection problem: kept


def test_setup_logging_json_writes_only_json_lines(tmp_path: object) -> None:
    code = f"""
import logging, warnings
from fracture.console import setup_logging
setup_logging("INFO", "json", "watcher")
log = logging.getLogger("watcher.watch")
log.info("registered %d image(s)", 3)
log.warning("image %d rejected: %s", 5, "empty file", extra={{"image_id": 5}})
try:
    raise RuntimeError("first\\nsecond")
except RuntimeError:
    log.exception("sweep failed using {DATABASE_URL}")
warnings.warn("a library's\\nmulti-line warning")
"""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=fracture_env(),
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["level"] for e in entries] == ["INFO", "WARNING", "ERROR", "WARNING"]
    assert {e["service"] for e in entries} == {"watcher"}
    assert [e["image_id"] for e in entries] == [None, 5, None, None]
    assert "s3cret-pw" not in completed.stderr and "RuntimeError: first" in entries[2]["exception"]


def test_text_format_is_unchanged_but_masks_passwords() -> None:
    code = f"""
import logging
from fracture.console import setup_logging
setup_logging("INFO")
logging.getLogger("db").warning("cannot reach %s", "{DATABASE_URL}")
"""
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("\n") == 1 and " WARNING " in completed.stderr
    assert "fracture:***@db.example.org" in completed.stderr and "s3cret" not in completed.stderr


# -- metrics helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stored", "category"),
    [
        ("empty file (0 bytes): nothing to score", "empty"),
        ("truncated image file (incomplete or corrupt data): not scored", "truncated"),
        ("not a recognised image format (expected JPEG, PNG, …)", "unsupported"),
        ("image too large: 20000×20000 = 400,000,000 pixels (limit 80,000,000)", "too_large"),
        ("gave up after 3 attempts: scoring took longer than the 60 s time limit", "gave_up"),
        ("scoring took longer than the 60 s time limit", "time_limit"),
        ("file not found (deleted or moved before it could be read)", "moved"),
        ("cannot read file: Permission denied", "unreadable"),
        ("symbolic link pointing outside the inbox: not read", "not_regular"),
        ("corrupt or unsupported file (decoder failure: SIGSEGV)", "corrupt"),
        ("the decoder crashed on this file (signal SIGSEGV)", "decoder_crash"),
        ("something nobody foresaw", "other"),
        (None, "other"),
    ],
)
def test_failure_reasons_fall_into_a_few_label_values(stored: str | None, category: str) -> None:
    assert metrics.failure_reason(stored) == category


def test_metrics_port_zero_means_off_and_up_gives_its_children_the_next_ports() -> None:
    assert Settings(metrics_port=0).metrics_port is None
    assert Settings().metrics_port is None
    base = Settings(metrics_port=9464)
    assert {name: metrics.child_port(base, name) for name in metrics.PORT_OFFSETS} == {
        "supervisor": 9464,
        "worker": 9465,
        "watcher": 9466,
        "dicom": 9467,
        "dashboard": 9468,
    }
    # `fracture up` with FRACTURE_WORKERS=3: the further workers take the ports after those.
    assert metrics.child_port(base, "worker-2") == 9469
    assert metrics.child_port(base, "worker-3") == 9470
    for unknown in ("worker-1", "worker-x", "browser"):
        with pytest.raises(KeyError):
            metrics.child_port(base, unknown)
    assert metrics.child_port(Settings(), "worker") is None
    with pytest.raises(UserError, match="FRACTURE_METRICS_PORT"):
        build_settings(metrics_port=70000)
    with pytest.raises(UserError, match="log_format"):
        build_settings(log_format="xml")


def test_a_taken_metrics_port_is_a_user_error_naming_the_setting() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port} \\(FRACTURE_METRICS_PORT\\)"):
            metrics.serve(Settings(metrics_port=port), "worker")


def test_arrival_to_stored_counts_zone_less_sqlite_times_as_utc() -> None:
    before = metrics.ARRIVAL_TO_STORED._sum.get()  # type: ignore[attr-defined]
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    metrics.observe_stored([datetime(2026, 1, 1, 12, 0, 0), None], now=now)
    assert metrics.ARRIVAL_TO_STORED._sum.get() - before == pytest.approx(30)  # type: ignore[attr-defined]
