"""CSV exports streamed to a signed-in browser: a page run issues a short-lived link for the
rows on screen (their filters and sort), and the handler writes them as the database returns
them, so an export of any size holds only one chunk of rows in memory at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dashboard import access
from dashboard.links import SessionLinks
from db import browse
from db.models import utcnow
from telemetry import metrics

EXPORT_PATH = "/export/"
MAX_LINKS = 1024
CHUNK_CHARS = 64 * 1024


@dataclass(frozen=True)
class Export:
    """What an export link writes: the Browse table's rows under these filters, in this order."""

    flt: browse.BrowseFilter
    sort: browse.SortKey


class ExportLinks(SessionLinks[Export]):
    """Per-session export links, shared by the page runs and the handler."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(EXPORT_PATH, suffix=".csv", max_links=MAX_LINKS, clock=clock)


LINKS = ExportLinks()


def file_name() -> str:
    return f"fracture-predictions-{utcnow():%Y%m%d-%H%M%S}Z.csv"


def routes(factory: Callable[[], sessionmaker[Session]], links: ExportLinks = LINKS) -> list[Route]:
    """GET /export/<token>.csv: the rows behind a live link, streamed (the gate in front has
    already refused a browser that is not signed in). `factory` gives the session factory on
    first use."""
    from dashboard import services

    async def export(request: Request) -> Response:
        wanted = links.resolve(request.path_params["token"], request.cookies.get(access.COOKIE))
        if wanted is None:
            return PlainTextResponse("No such export link (expired or not yours).", 404)

        def lines() -> Iterator[bytes]:
            # About 64 kB a write: one per row would be a network write per row.
            pending: list[str] = []
            size = 0
            for line in services.export_lines(factory(), wanted.flt, wanted.sort):
                pending.append(line)
                size += len(line)
                if size >= CHUNK_CHARS:
                    yield "".join(pending).encode("utf-8")
                    pending, size = [], 0
            if pending:
                yield "".join(pending).encode("utf-8")

        metrics.EXPORTS.inc()
        return StreamingResponse(
            iterate_in_threadpool(lines()),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{file_name()}"',
                "Cache-Control": "private, no-store",
            },
        )

    return [Route(EXPORT_PATH + "{token}.csv", export, methods=["GET"])]


@cache
def session_factory() -> sessionmaker[Session]:
    """The dashboard process's database, for the export handler."""
    from config import build_settings
    from db.session import make_engine, make_session_factory

    return make_session_factory(make_engine(build_settings().resolved_database_url))
