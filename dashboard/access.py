"""Who may see the dashboard: the shared password (FRACTURE_DASHBOARD_PASSWORD) is exchanged on
a sign-in page for a signed, expiring cookie, which a middleware checks in front of every route
(pages, the websocket, /media images and CSV exports, uploads) and each page run checks again.
No Streamlit in here.

Why a cookie: the browser sends it with every request (page, websocket, image, download) without
it showing in a URL, the history or a screenshot, so a reload or a new tab stays signed in and a
copied link carries no right to see anything. It is HttpOnly (page scripts cannot read it) and a
browser-session cookie (gone when the browser closes); its signature also expires after
LIFETIME_S. The signing key is derived from the password and a key drawn when the process starts,
so a new password or a restart signs everyone out, and nothing secret is stored on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from telemetry import metrics

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from config import Settings

log = logging.getLogger(__name__)

NOTICE = "Decision support only — not for clinical use."
COOKIE = "fracture_sign_in"
LIFETIME_S = 12 * 3600  # one long shift
FAILED_DELAY_S = 1.0
SIGN_IN_PATH = "/signin"
# Open without a cookie: the sign-in page and the liveness probe (it answers "ok", nothing more).
OPEN_PATHS = frozenset({SIGN_IN_PATH, "/_stcore/health"})
FORM_MAX_BYTES = 4096

_PROCESS_KEY = secrets.token_bytes(32)  # drawn once per process: a restart signs everyone out
# Signed-out tokens (nonce → expiry), shared by the middleware and the pages of this process.
_revoked: dict[str, int] = {}
_revoked_lock = threading.Lock()


def password_of(settings: Settings) -> str | None:
    """The dashboard password, or None when none is set (an empty one counts as none)."""
    secret = settings.dashboard_password
    if secret is None:
        return None
    return secret.get_secret_value() or None


class Tokens:
    """Issues, checks and revokes sign-in tokens (`expiry.nonce.signature`) for one password."""

    def __init__(
        self,
        password: str,
        *,
        clock: Callable[[], float] = time.time,
        process_key: bytes = _PROCESS_KEY,
    ) -> None:
        self._password = password.encode()
        self._key = hmac.new(process_key, self._password, hashlib.sha256).digest()
        self._clock = clock

    def password_ok(self, attempt: str) -> bool:
        """Constant-time comparison with the password."""
        return hmac.compare_digest(attempt.encode(), self._password)

    def issue(self) -> str:
        body = f"{int(self._clock()) + LIFETIME_S}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, token: str | None) -> bool:
        """Signed with this password in this process, not expired, not signed out."""
        parts = self._parts(token)
        if parts is None:
            return False
        expires, nonce = parts
        with _revoked_lock:
            return expires > self._clock() and nonce not in _revoked

    def revoke(self, token: str | None) -> None:
        """Sign this token out for every request and page that would present it."""
        parts = self._parts(token)
        if parts is None:
            return
        now = self._clock()
        with _revoked_lock:
            _revoked[parts[1]] = parts[0]
            for nonce in [n for n, expires in _revoked.items() if expires <= now]:
                del _revoked[nonce]  # expired anyway: no need to remember it

    def _parts(self, token: str | None) -> tuple[int, str] | None:
        """(expiry, nonce) of a token signed by this key; None for anything else."""
        expires, _, rest = (token or "").partition(".")
        nonce, _, signature = rest.partition(".")
        if not (expires.isdigit() and nonce and signature):
            return None
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{nonce}")):
            return None
        return int(expires), nonce

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


def tokens_for(settings: Settings) -> Tokens | None:
    """The token checker for the configured password; None when the dashboard is open."""
    password = password_of(settings)
    return Tokens(password) if password is not None else None


def safe_next(target: str | None) -> str:
    """A path on this server to return to after sign-in; anything else (another site, a scheme,
    the sign-in page itself) is the start page."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) < 0x20 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path == SIGN_IN_PATH:
        return "/"
    return target


def sign_in_url(target: str) -> str:
    return f"{SIGN_IN_PATH}?next={quote(safe_next(target), safe='')}"


# -- the middleware ------------------------------------------------------------------------------


class Gate:
    """ASGI middleware: with a password set, every request but OPEN_PATHS needs a valid sign-in
    cookie. A browser asking for a page is sent to sign in (and back); anything else is refused."""

    def __init__(self, app: ASGIApp, tokens: Tokens | None) -> None:
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._tokens is None or scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        if scope["path"] in OPEN_PATHS or self._tokens.valid(connection.cookies.get(COOKIE)):
            await self._app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # refused before accept: 403
            return
        response: Response
        wants_page = "text/html" in connection.headers.get("accept", "")
        if scope["method"] == "GET" and wants_page:
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            response = RedirectResponse(sign_in_url(target), status_code=303)
        else:
            response = PlainTextResponse("Sign in to the dashboard first.", status_code=401)
        await response(scope, receive, send)


# -- the sign-in page ----------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Fracture screening</title>
<style>
body {{font-family: system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1f2328;}}
main {{max-width: 24rem; margin: 12vh auto; padding: 1.6rem; background: #fff;
  border: 1px solid #d0d7de; border-radius: .5rem;}}
h1 {{font-size: 1.3rem; margin: 0 0 1rem 0;}}
.notice {{border-left: 4px solid #f08c00; background: rgba(240,140,0,.10); padding: .35rem .8rem;
  border-radius: .3rem; font-size: .9rem; margin-bottom: 1rem;}}
.error {{color: #c92a2a; margin: .6rem 0;}}
label {{display: block; margin-bottom: .3rem;}}
input[type=password] {{width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem;}}
button {{margin-top: .9rem; padding: .5rem 1.1rem; font-size: 1rem; background: #ff4b4b;
  color: #fff; border: 0; border-radius: .4rem; cursor: pointer;}}
small {{display: block; margin-top: 1rem; opacity: .7;}}
</style></head>
<body><main>
<div class="notice"><b>{notice}</b></div>
<h1>Fracture screening · sign in</h1>
{error}
<form method="post" action="{action}">
<label for="password">Dashboard password</label>
<input id="password" name="password" type="password" autocomplete="current-password" autofocus
  required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form>
<small>A shared password (FRACTURE_DASHBOARD_PASSWORD). You stay signed in in this browser until
you sign out, close it, or {hours} hours pass.</small>
</main></body></html>
"""


def sign_in_page(target: str, *, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    page = _PAGE.format(
        notice=html.escape(NOTICE),
        error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
        action=SIGN_IN_PATH,
        next=html.escape(safe_next(target)),
        hours=LIFETIME_S // 3600,
    )
    # The page holds a form for a secret: never cached, never framed by another site.
    headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}
    return HTMLResponse(page, status_code=status_code, headers=headers)


def routes(
    tokens: Tokens | None, *, pause: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> list[Route]:
    """GET and POST /signin. One attempt at a time across all clients, and a wrong password holds
    the line for FAILED_DELAY_S: guessing runs at most one try per delay, however many sessions
    or connections it uses."""
    attempts = asyncio.Lock()

    async def show(request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        if tokens is None or tokens.valid(request.cookies.get(COOKIE)):
            return RedirectResponse(target, status_code=303)
        return sign_in_page(target)

    async def submit(request: Request) -> Response:
        if tokens is None:
            return RedirectResponse("/", status_code=303)
        body = await request.body()
        if len(body) > FORM_MAX_BYTES:
            return PlainTextResponse("Form too large.", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        target = safe_next(form.get("next", ["/"])[0])
        async with attempts:
            if not tokens.password_ok(form.get("password", [""])[0]):
                metrics.SIGN_INS.labels("refused").inc()
                log.warning("dashboard sign-in refused: wrong password")
                await pause(FAILED_DELAY_S)
                return sign_in_page(target, error="Wrong password.", status_code=401)
        metrics.SIGN_INS.labels("accepted").inc()
        log.info("dashboard sign-in")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            tokens.issue(),
            httponly=True,
            samesite="lax",  # sent on links from other sites, never on their requests or sockets
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    return [
        Route(SIGN_IN_PATH, show, methods=["GET"]),
        Route(SIGN_IN_PATH, submit, methods=["POST"]),
    ]
