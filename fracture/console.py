"""How a command talks to its user: the log format and level, and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer

# Libraries' start-up chatter (alembic's schema checks and migration steps): shown only with
# FRACTURE_LOG_LEVEL=DEBUG, so that a first run shows what the user needs to know.
QUIET_LOGGERS = ("alembic",)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    root = logging.getLogger().getEffectiveLevel()
    if root > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(root, logging.WARNING))


def fail(message: str) -> NoReturn:
    """Show `message` as one line and exit with status 2 (also under typer's test runner)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)
