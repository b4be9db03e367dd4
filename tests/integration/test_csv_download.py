"""The CSV export as the dashboard's server streams it: a link issued to one sign-in, rows
written in chunks as the database returns them, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

from starlette.applications import Starlette

from dashboard import access, downloads
from db import browse, queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction
from telemetry import metrics
from tests.helpers import new_prediction


def get(
    app: Starlette, path: str, cookie: str | None = None
) -> tuple[int, dict[str, str], list[bytes]]:
    """One GET through the ASGI app: status, headers and each body chunk as it was sent."""
    headers = [(b"cookie", f"{access.COOKIE}={cookie}".encode())] if cookie else []
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "scheme": "http",
        "server": ("127.0.0.1", 8501),
        "client": ("127.0.0.1", 40000),
        "root_path": "",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client never disconnects during the test
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    chunks = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    return (
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        [c for c in chunks if c],
    )


def test_a_large_export_streams_in_chunks_to_the_sign_in_it_was_issued_to(
    database_url: str,
) -> None:
    upgrade(database_url)
    factory = make_session_factory(make_engine(database_url))
    rows = 3000
    with transaction(factory) as session:
        new = [
            queries.NewImage(
                sha256=f"{i:064x}", path=f"/inbox/{i}.jpg", filename=f"{i}.jpg", size=1
            )
            for i in range(rows)
        ]
        ids = [image_id for image_id, _ in queries.register_images(session=session, new=new)]
        queries.store_batch(
            session=session,
            predictions=[new_prediction(i, probability=0.9 if i % 3 else 0.1) for i in ids],
            failures={},
        )
    links = downloads.ExportLinks()
    app = Starlette(routes=downloads.routes(lambda: factory, links))
    wanted = downloads.Export(
        browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,)), browse.SortKey.NEWEST
    )
    url = links.issue(wanted, "cookie-a")
    assert links.issue(wanted, "cookie-a") == url  # the same link while it lives

    exports = metrics.EXPORTS._value.get()
    status, headers, chunks = get(app, url, "cookie-a")
    assert metrics.EXPORTS._value.get() == exports + 1
    assert status == 200
    assert headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"].startswith('attachment; filename="fracture-predictions-')
    assert len(chunks) > 1, "written in pieces, not built whole"
    assert max(len(c) for c in chunks) < 2 * downloads.CHUNK_CHARS
    table = list(csv.DictReader(io.StringIO(b"".join(chunks).decode("utf-8"))))
    assert len(table) == 2000  # the positives: the filters on screen, not every row
    assert {r["label"] for r in table} == {browse.POSITIVE_LABEL}
    assert all("not for clinical use" in r["notice"] for r in table)

    # Another sign-in, a wrong token, or none at all: nothing.
    assert get(app, url, "cookie-b")[0] == 404
    assert get(app, url)[0] == 404
    assert get(app, downloads.EXPORT_PATH + "guessed.csv", "cookie-a")[0] == 404


def test_export_links_expire_with_the_sign_in() -> None:
    now = [1000.0]
    links = downloads.ExportLinks(clock=lambda: now[0])
    wanted = downloads.Export(browse.BrowseFilter(), browse.SortKey.NEWEST)
    token = links.issue(wanted, None).removeprefix(downloads.EXPORT_PATH).removesuffix(".csv")
    assert links.resolve(token, None) == wanted  # no password: any browser that reached it
    now[0] += access.LIFETIME_S + 1
    assert links.resolve(token, None) is None
    fresh = links.issue(wanted, None).removeprefix(downloads.EXPORT_PATH).removesuffix(".csv")
    assert fresh != token and links.resolve(fresh, None) == wanted
