"""How a command talks to its user: the log format and level, and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer

# Libraries' start-up chatter (alembic's schema checks and migration steps): shown only with
# FRACTURE_LOG_LEVEL=DEBUG, so that a first run shows what the user needs to know.
QUIET_LOGGERS = ("alembic",)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", log_format: str = "text", service: str = "fracture") -> None:
    """Log to stderr: readable lines (`text`) or one JSON object per line (`json`, for a log
    shipper) naming `service`. Both mask passwords in URLs; below DEBUG, a lost broker
    connection or failed acknowledgement is one line instead of a traceback."""
    from telemetry.logs import JsonFormatter, MaskSecrets, OneLineBrokerErrors

    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
        logging.captureWarnings(True)  # warnings as records too, not multi-line stderr text
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    if level.upper() != "DEBUG":
        handler.addFilter(OneLineBrokerErrors())
    handler.addFilter(MaskSecrets())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    root = logging.getLogger().getEffectiveLevel()
    if root > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(root, logging.WARNING))


def fail(message: str) -> NoReturn:
    """Show `message` as one line and exit with status 2 (also under typer's test runner)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)
