"""The sign-in gate as the pages see it: the cookie this browser presents, the page shown
until it signs in, and Sign out (the server side is dashboard/access.py)."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import streamlit as st

from dashboard import access, services


def sign_in_token() -> str | None:
    """The sign-in cookie this browser opened the session with (see dashboard/access.py)."""
    return st.context.cookies.get(access.COOKIE)


def gate(dashboard: services.Dashboard) -> bool:
    """True when the reader may see the dashboard: no password set, or this browser's sign-in
    is still valid. The server's gate refuses a browser that never signed in; this check ends a
    session whose sign-in expired or was signed out (in any tab) while it was open."""
    tokens = access.tokens_for(dashboard.settings)
    if tokens is None or tokens.valid(sign_in_token()):
        return True
    st.subheader("Signed out")
    here = urlsplit(st.context.url or "/").path or "/"
    query = urlencode(st.query_params.to_dict())
    st.markdown(
        "This browser's sign-in has ended: signed out, expired after "
        f"{access.LIFETIME_S // 3600} hours, or the dashboard was restarted. "
        f"[Sign in again]({access.sign_in_url(here + (f'?{query}' if query else ''))})"
    )
    return False


def sign_out_button(dashboard: services.Dashboard) -> None:
    """Signs this browser out everywhere: its cookie is refused from now on, for pages, images
    and exports alike."""
    tokens = access.tokens_for(dashboard.settings)
    if tokens is not None:
        st.sidebar.button(
            "Sign out",
            icon=":material/logout:",
            on_click=tokens.revoke,
            args=(sign_in_token(),),
        )
