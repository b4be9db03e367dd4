"""The dashboard's sign-in without a server: tokens (signed, expiring, revocable), the gate in
front of every route, the sign-in page's return path and its throttle across clients."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from config import Settings
from dashboard import access

PASSWORD = "ward-7 s3cret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> access.Tokens:
    return access.Tokens(PASSWORD, clock=clock)


def test_a_token_is_valid_until_it_expires_or_is_signed_out(
    tokens: access.Tokens, clock: Clock
) -> None:
    token = tokens.issue()
    assert tokens.valid(token)
    clock.now += access.LIFETIME_S - 1
    assert tokens.valid(token)
    clock.now += 1
    assert not tokens.valid(token)

    clock.now -= access.LIFETIME_S
    other = tokens.issue()
    tokens.revoke(other)
    assert not tokens.valid(other)
    assert tokens.valid(tokens.issue())  # signing one browser out leaves the others signed in


def test_a_token_from_another_password_process_or_hand_is_refused(
    tokens: access.Tokens, clock: Clock
) -> None:
    token = tokens.issue()
    expires, nonce, signature = token.split(".")
    assert not access.Tokens("another password", clock=clock).valid(token)
    assert not access.Tokens(PASSWORD, clock=clock, process_key=b"restarted").valid(token)
    later = f"{int(expires) + 10 * access.LIFETIME_S}.{nonce}.{signature}"
    for forged in (later, f"{expires}.{nonce}.{'0' * 64}", "", "a.b", None, token + "x"):
        assert not tokens.valid(forged)


def test_every_password_check_goes_through_compare_digest(
    tokens: access.Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert tokens.password_ok(PASSWORD)
    assert not tokens.password_ok("ward-7")
    assert not tokens.password_ok("")
    assert len(calls) == 3


def test_no_password_or_an_empty_one_leaves_the_dashboard_open(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", inbox=tmp_path / "inbox")
    assert access.tokens_for(settings) is None
    empty = settings.model_copy(update={"dashboard_password": SecretStr("")})
    assert access.tokens_for(empty) is None
    protected = settings.model_copy(update={"dashboard_password": SecretStr(PASSWORD)})
    assert access.tokens_for(protected) is not None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/browse?image=57", "/browse?image=57"),
        ("/", "/"),
        (None, "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("browse", "/"),
        ("/signin?next=/", "/"),
        ("/browse\r\nSet-Cookie: x=1", "/"),
    ],
)
def test_sign_in_returns_only_to_a_page_of_this_server(target: str | None, expected: str) -> None:
    assert access.safe_next(target) == expected


# -- the gate and the sign-in page, driven as ASGI -------------------------------------------


Reply = tuple[int, dict[str, str], bytes]


async def call(
    app: Starlette,
    path: str,
    *,
    method: str = "GET",
    cookie: str | None = None,
    body: bytes = b"",
    accept: str = "*/*",
) -> Reply:
    """One HTTP request straight into the ASGI app: (status, headers, body)."""
    target, _, query = path.partition("?")
    headers = [(b"accept", accept.encode())]
    if cookie is not None:
        headers.append((b"cookie", f"{access.COOKIE}={cookie}".encode()))
    if body:
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": target,
        "raw_path": target.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8501),
    }
    sent: list[dict[str, object]] = []
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return requests.pop(0) if requests else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    raw = start["headers"]
    assert isinstance(raw, list)
    replied = {k.decode(): v.decode() for k, v in raw}
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    status = start["status"]
    assert isinstance(status, int)
    return status, replied, data


async def open_socket(app: Starlette, cookie: str | None) -> str:
    """A websocket handshake straight into the ASGI app: the first message the app sends."""
    headers = [] if cookie is None else [(b"cookie", f"{access.COOKIE}={cookie}".encode())]
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/_stcore/stream",
        "raw_path": b"/_stcore/stream",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8501),
        "subprotocols": [],
    }
    messages = [{"type": "websocket.connect"}]
    sent: list[str] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, object]) -> None:
        sent.append(str(message["type"]))

    await app(scope, receive, send)
    return sent[0]


def product(tokens: access.Tokens | None, pause: object = None) -> Starlette:
    """The gate and sign-in routes in front of stand-ins for Streamlit's routes."""

    async def media(request: Request) -> PlainTextResponse:
        return PlainTextResponse("radiograph bytes")

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    async def no_pause(seconds: float) -> None:
        del seconds

    return Starlette(
        routes=[
            *access.routes(tokens, pause=pause or no_pause),  # type: ignore[arg-type]
            Route("/_stcore/health", lambda r: PlainTextResponse("ok")),
            Route("/media/{name}", media),
            Route("/{page:path}", lambda r: PlainTextResponse("the app")),
            WebSocketRoute("/_stcore/stream", stream),
        ],
        middleware=[Middleware(access.Gate, tokens=tokens)],
    )


def signed_in_cookie(headers: dict[str, str]) -> str:
    cookie = SimpleCookie(headers["set-cookie"])[access.COOKIE]
    assert cookie["httponly"] and cookie["samesite"].lower() == "lax"
    assert not cookie["max-age"] and not cookie["expires"]  # gone when the browser closes
    return cookie.value


def test_without_a_sign_in_nothing_but_the_sign_in_page_and_health_answers(
    tokens: access.Tokens,
) -> None:
    app = product(tokens)

    async def scenario() -> None:
        for path in ("/media/0123abcd.jpg", "/media/0123abcd.csv", "/_stcore/host-config"):
            status, _, body = await call(app, path)
            assert status == 401 and b"radiograph" not in body
        # A browser asking for a page goes to sign in, and is told where it wanted to go.
        status, headers, _ = await call(app, "/browse?image=57", accept="text/html")
        assert status == 303 and headers["location"] == "/signin?next=%2Fbrowse%3Fimage%3D57"
        assert (await call(app, "/_stcore/health"))[0] == 200
        assert (await call(app, "/signin?next=/browse"))[0] == 200
        assert await open_socket(app, None) == "websocket.close"  # refused before accept
        assert await open_socket(app, "forged.token.value") == "websocket.close"

    asyncio.run(scenario())


def test_signing_in_returns_to_the_page_asked_for_and_opens_every_route(
    tokens: access.Tokens,
) -> None:
    app = product(tokens)

    async def scenario() -> None:
        body = b"password=ward-7+s3cret&next=%2Fbrowse%3Fimage%3D57"
        status, headers, _ = await call(app, "/signin", method="POST", body=body)
        assert status == 303 and headers["location"] == "/browse?image=57"
        cookie = signed_in_cookie(headers)
        assert (await call(app, "/media/0123abcd.jpg", cookie=cookie))[2] == b"radiograph bytes"
        assert (await call(app, "/browse", cookie=cookie))[2] == b"the app"
        assert await open_socket(app, cookie) == "websocket.accept"
        # Already signed in: the sign-in page sends the browser on.
        status, headers, _ = await call(app, "/signin?next=/overview", cookie=cookie)
        assert status == 303 and headers["location"] == "/overview"

        tokens.revoke(cookie)  # signed out from a page: the same cookie opens nothing now
        assert (await call(app, "/media/0123abcd.jpg", cookie=cookie))[0] == 401
        assert await open_socket(app, cookie) == "websocket.close"

    asyncio.run(scenario())


def test_a_wrong_password_is_refused_and_never_echoed(tokens: access.Tokens) -> None:
    app = product(tokens)

    async def scenario() -> None:
        body = b"password=guess-123&next=https%3A%2F%2Fevil.example%2F"
        status, headers, page = await call(app, "/signin", method="POST", body=body)
        assert status == 401 and "set-cookie" not in headers
        assert b"Wrong password." in page and b"guess-123" not in page
        assert b'name="next" value="/"' in page  # another site is never a return path
        assert access.NOTICE.encode() in page

    asyncio.run(scenario())


def test_guesses_wait_for_each_other_across_clients(tokens: access.Tokens) -> None:
    """Two clients guessing at once: the second is not even checked until the first one's
    pause is over, so many sessions guess no faster than one."""
    pauses: list[float] = []
    release = asyncio.Event()

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await release.wait()

    async def scenario() -> None:
        app = product(tokens, pause)
        guesses = [
            asyncio.create_task(call(app, "/signin", method="POST", body=b"password=a")),
            asyncio.create_task(call(app, "/signin", method="POST", body=b"password=b")),
        ]
        for _ in range(20):
            await asyncio.sleep(0)
        assert pauses == [access.FAILED_DELAY_S]  # the second guess waits in line
        release.set()
        replies = await asyncio.gather(*guesses)
        assert [status for status, _, _ in replies] == [401, 401]
        assert pauses == [access.FAILED_DELAY_S] * 2

    asyncio.run(scenario())


def test_without_a_password_the_gate_lets_everything_through() -> None:
    app = product(None)

    async def scenario() -> None:
        assert (await call(app, "/media/0123abcd.jpg"))[2] == b"radiograph bytes"
        assert await open_socket(app, None) == "websocket.accept"
        status, headers, _ = await call(app, "/signin?next=/browse")
        assert status == 303 and headers["location"] == "/browse"

    asyncio.run(scenario())


def test_the_dashboard_listens_on_loopback_unless_told_and_warns_when_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fracture.supervisor import dashboard_command

    def address(**values: object) -> str:
        settings = Settings(data_dir=tmp_path / "data", inbox=tmp_path / "inbox", **values)
        command = dashboard_command(settings)
        return command[command.index("--server.address") + 1]

    assert address() == "127.0.0.1"
    assert not caplog.records
    assert address(dashboard_host="0.0.0.0", dashboard_password=PASSWORD) == "0.0.0.0"
    assert not caplog.records
    assert address(dashboard_host="0.0.0.0") == "0.0.0.0"
    (warning,) = caplog.records
    assert "without a password" in warning.getMessage() and warning.levelname == "WARNING"
