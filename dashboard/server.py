"""The dashboard's web server (`streamlit run dashboard/server.py`, started by `fracture
dashboard`/`up`): Streamlit serving app.py, with the sign-in page and the gate in front of every
route when FRACTURE_DASHBOARD_PASSWORD is set (dashboard/access.py says why and how)."""

from __future__ import annotations

import streamlit as st
from starlette.middleware import Middleware

from config import build_settings
from dashboard import access, downloads, viewer

_tokens = access.tokens_for(build_settings())
app = st.App(
    "app.py",
    routes=[
        *access.routes(_tokens),
        *viewer.routes(),
        *downloads.routes(downloads.session_factory),
    ],
    middleware=[Middleware(access.Gate, tokens=_tokens)],
)
