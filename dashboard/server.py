"""The dashboard's web server (`streamlit run dashboard/server.py`, started by `fracture
dashboard`/`up`): Streamlit serving app.py, with the sign-in page and the gate in front of every
route when FRACTURE_DASHBOARD_PASSWORD is set (dashboard/access.py says why and how)."""

from __future__ import annotations

import streamlit as st
from starlette.middleware import Middleware

from config import build_settings
from dashboard import access, downloads, viewer
from fracture.console import setup_logging
from telemetry import metrics

_settings = build_settings()
setup_logging(_settings.log_level, _settings.log_format, "dashboard")
metrics.serve(_settings, "dashboard")
_tokens = access.tokens_for(_settings)
app = st.App(
    "app.py",
    routes=[
        *access.routes(_tokens),
        *viewer.routes(),
        *downloads.routes(downloads.session_factory),
    ],
    middleware=[Middleware(access.Gate, tokens=_tokens)],
)
