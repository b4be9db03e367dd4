"""Log lines an operator can ship: one JSON object per line (FRACTURE_LOG_FORMAT=json) with
time, level, service, image id and message; passwords in URLs masked; a lost broker connection
or a failed acknowledgement as one line, not a traceback."""

from __future__ import annotations

import json
import logging
import re
import socket
from contextlib import suppress
from datetime import UTC, datetime

# The password of `scheme://user:password@host` (broker and database URLs): masked wherever
# it would be logged. Our .env.example keeps passwords to letters, digits, '-' and '_'.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)")
MASK = "***"
# Celery, kombu and celery-batches: their connection troubles come with full tracebacks.
BROKER_LOGGERS = ("celery", "kombu", "celery_batches")


def mask_secrets(text: str) -> str:
    """`redis://:secret@host` → `redis://:***@host`, for every URL in `text`."""
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)


def one_line(text: str) -> str:
    return " ".join(text.split())


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError]
    with suppress(ImportError):
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        errors += [RedisConnectionError, RedisTimeoutError]
    with suppress(ImportError):
        from kombu.exceptions import OperationalError

        errors.append(OperationalError)
    return tuple(errors)


class OneLineBrokerErrors(logging.Filter):
    """The broker libraries' records of a connection problem ("Connection to broker lost",
    "Couldn't ack", "Cannot connect to …") as one line: the exception's type and text appended
    to the message instead of its traceback. Every other record passes unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = _connection_errors()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in BROKER_LOGGERS:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit: logging reports those
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.errors):
            message = f"{message} ({type(exc).__name__}: {one_line(str(exc))})"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = one_line(message), None
        return True


class MaskSecrets(logging.Filter):
    """Passwords in URLs masked in the message (the arguments merged into it first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, service, image_id
    (null unless the record is about one image: `extra={"image_id": …}`), message, logger, host,
    pid, and a traceback as one escaped string when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "image_id": getattr(record, "image_id", None),
            "message": mask_secrets(record.getMessage()),
            "logger": record.name,
            "host": self.host,
            "pid": record.process,
        }
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def celery_notices_as_records() -> None:
    """Celery writes its shutdown notices ("worker: Warm shutdown") straight to the standard
    streams; in JSON mode they go through logging instead, so that every line is JSON."""
    import celery.apps.worker as celery_worker

    notices = logging.getLogger("celery.apps.worker")

    def say(message: str, *_: object) -> None:
        notices.info("%s", message)

    celery_worker.safe_say = say
