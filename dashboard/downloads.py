"""CSV exports streamed to a signed-in browser: a page run issues a short-lived link for the
rows on screen (their filters and sort), and the handler writes them as the database returns
them, so an export of any size holds only one chunk of rows in memory at a time."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dashboard import access
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


@dataclass
class _Link:
    export: Export
    cookie: str | None  # the sign-in cookie it was issued to; None with no password
    expires: float


@dataclass
class ExportLinks:
    """Per-session export links, shared by the page runs and the handler."""

    clock: Callable[[], float] = time.time
    _links: OrderedDict[str, _Link] = field(default_factory=OrderedDict)
    _by_key: dict[tuple[Export, str | None], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, export: Export, cookie: str | None) -> str:
        """The link for these rows and this sign-in (the same one while it lives)."""
        now = self.clock()
        with self._lock:
            token = self._by_key.get((export, cookie))
            link = self._links.get(token) if token else None
            if token is None or link is None or link.expires <= now:
                token = secrets.token_urlsafe(24)
                self._by_key[(export, cookie)] = token
            self._links[token] = _Link(export, cookie, now + access.LIFETIME_S)
            self._links.move_to_end(token)
            while len(self._links) > MAX_LINKS:
                _, old = self._links.popitem(last=False)
                self._by_key.pop((old.export, old.cookie), None)
        return f"{EXPORT_PATH}{token}.csv"

    def resolve(self, token: str, cookie: str | None) -> Export | None:
        """The export behind a live link presented with the cookie it was issued to."""
        with self._lock:
            link = self._links.get(token)
        if link is None or link.expires <= self.clock():
            return None
        if link.cookie is not None and not secrets.compare_digest(link.cookie, cookie or ""):
            return None
        return link.export


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
