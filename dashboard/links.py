"""Short-lived links bound to one sign-in, shared by the page runs that issue them and the
server's handlers that answer them (the viewer's pixels, CSV exports): an unguessable token per
item and cookie, valid as long as a sign-in and only with the cookie it was issued to."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dashboard import access

T = TypeVar("T", bound=Hashable)


@dataclass
class _Link(Generic[T]):
    item: T
    cookie: str | None  # the sign-in cookie it was issued to; None with no password
    expires: float


class SessionLinks(Generic[T]):
    """`issue(item, cookie)` gives `prefix + token + suffix`; `resolve(token, cookie)` the item
    behind a live token presented with the cookie it was issued to. At most `max_links` live
    at once, the least recently issued dropped first."""

    def __init__(
        self,
        prefix: str,
        *,
        suffix: str = "",
        max_links: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.max_links = max_links
        self.clock = clock
        self._links: OrderedDict[str, _Link[T]] = OrderedDict()
        self._by_key: dict[tuple[T, str | None], str] = {}
        self._lock = threading.Lock()

    def issue(self, item: T, cookie: str | None) -> str:
        """The link for this item and this sign-in (the same one while it lives, so a page run
        redraws nothing the browser already has)."""
        now = self.clock()
        with self._lock:
            token = self._by_key.get((item, cookie))
            link = self._links.get(token) if token else None
            if token is None or link is None or link.expires <= now:
                token = secrets.token_urlsafe(24)
                self._by_key[(item, cookie)] = token
            self._links[token] = _Link(item, cookie, now + access.LIFETIME_S)
            self._links.move_to_end(token)
            while len(self._links) > self.max_links:
                _, old = self._links.popitem(last=False)
                self._by_key.pop((old.item, old.cookie), None)
        return self.prefix + token + self.suffix

    def resolve(self, token: str, cookie: str | None) -> T | None:
        with self._lock:
            link = self._links.get(token)
        if link is None or link.expires <= self.clock():
            return None
        if link.cookie is not None and not secrets.compare_digest(link.cookie, cookie or ""):
            return None
        return link.item
