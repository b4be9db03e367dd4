"""Streamlit pieces every page shares: the process-wide context, the style and the notice, local
times, the words for statuses, findings and regions, and moving to Browse with filters set
(the record view, the verdict card and sign-in have modules of their own)."""

from __future__ import annotations

import hashlib
import html
import os
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from dashboard import services
from db import browse
from db.models import (
    ExportState,
    ImageSource,
    ImageStatus,
    Verdict,
    as_utc,
)

LABEL_TEXT = {
    browse.POSITIVE_LABEL: "Fracture suspected",
    browse.NEGATIVE_LABEL: "No fracture suspected",
}
VERDICT_TEXT: dict[str, str] = {
    Verdict.FRACTURE: "Fracture suspected",
    Verdict.DOUBT: "Doubt — review",
    Verdict.NO_FRACTURE: "No fracture suspected",
}
VERDICT_CLASS: dict[str, str] = {
    Verdict.FRACTURE: "pos",
    Verdict.DOUBT: "doubt",
    Verdict.NO_FRACTURE: "neg",
}
STATUS_TEXT: dict[str, str] = {
    ImageStatus.QUEUED: "Queued",
    ImageStatus.PROCESSING: "Processing",
    ImageStatus.DONE: "Done",
    ImageStatus.FAILED: "Failed",
}
SOURCE_TEXT: dict[str, str] = {
    ImageSource.WATCH: "Inbox",
    ImageSource.UPLOAD: "Upload",
    ImageSource.DICOM: "DICOM network",
}
EXPORT_TEXT: dict[str, str] = {
    ExportState.SENT: "sent",
    ExportState.PENDING: "pending",
    ExportState.FAILED: "failed",
    browse.NOT_EXPORTED: "not sent",
}
BROWSE_PAGE = "views/browse.py"
LATEST = "latest"
# Browse's sidebar filters: widget key → the value that filters nothing.
BROWSE_FILTERS: dict[str, object] = {
    "f-verdicts": [],
    "f-prob": (0.0, 1.0),
    "f-dates": [],
    "f-sources": [],
    "f-statuses": [],
    "f-review": browse.ReviewState.ANY,
    "f-name": "",
    "f-regions": [],
    "f-disagree": False,
    "f-study": None,
    "f-export": [],
    "f-reason": None,
    "f-model": LATEST,
}


# -- context -------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _dashboard(environment: str) -> services.Dashboard:
    from config import build_settings

    del environment  # the cache key: a new FRACTURE_* environment builds a new context
    return services.Dashboard.start(build_settings())


def dashboard() -> services.Dashboard:
    """The process's settings, database and broker handles; stops the page on bad settings."""
    from config import UserError

    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("FRACTURE_"))
    key = hashlib.sha256(repr(environment).encode()).hexdigest()
    try:
        return _dashboard(key)
    except UserError as exc:
        st.error(f"The dashboard cannot start: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


# -- page furniture ------------------------------------------------------------------------------


@cache
def _css() -> str:
    return (Path(__file__).parent / "static" / "dashboard.css").read_text(encoding="utf-8")


def style() -> None:
    st.markdown(f"<style>\n{_css()}</style>", unsafe_allow_html=True)


def notice() -> None:
    st.markdown(
        f'<div class="fx-notice"><b>{html.escape(services.NOTICE)}</b> '
        "The model's output is a second look, never a diagnosis: every image is read by a "
        "clinician.</div>",
        unsafe_allow_html=True,
    )


# -- time ----------------------------------------------------------------------------------------


def browser_zone() -> tzinfo:
    name = st.context.timezone
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def local_time(moment: datetime | None, *, seconds: bool = False) -> str:
    if moment is None:
        return ""
    zone = browser_zone()
    text = as_utc(moment).astimezone(zone).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))
    return text if zone is not UTC else text + " UTC"


def day_bounds(days: tuple[date, ...]) -> tuple[datetime | None, datetime | None]:
    """A date-input range (browser time zone) as [from, before) in UTC."""
    zone = browser_zone()
    start = end = None
    if len(days) >= 1:
        start = datetime.combine(days[0], datetime.min.time(), zone).astimezone(UTC)
    if len(days) == 2:
        end = datetime.combine(days[1] + timedelta(days=1), datetime.min.time(), zone)
        end = end.astimezone(UTC)
    return start, end


# -- verdict -------------------------------------------------------------------------------------


def source_text(source: str) -> str:
    return SOURCE_TEXT.get(source, source)


def label_text(label: str | None) -> str:
    return LABEL_TEXT.get(label or "", label or "—")


def region_text(region: str | None) -> str:
    """A predicted body region for people; `none` is a model without a region head."""
    if region is None or region == browse.NO_REGION:
        return "no region (single-head model)"
    return region.capitalize()


def region_cell(region: str | None, disagrees: bool | None) -> str:
    if region is None:
        return ""
    return f"{region} ⚠ DICOM differs" if disagrees else region


def verdict_text(verdict: str | None) -> str:
    return VERDICT_TEXT.get(verdict or "", verdict or "—")


# -- images --------------------------------------------------------------------------------------


# -- fields and reviews ------------------------------------------------------------------------


# -- DICOM: the study and the results sent to PACS ---------------------------------------------


def clear_browse_filters() -> None:
    """Every Browse filter back to the value that filters nothing, first page shown. A callback
    (it runs before the widgets are drawn). Each value is set, not deleted: a deleted key leaves
    the browser showing the old value, and sending it back with the next change."""
    for name, value in BROWSE_FILTERS.items():
        st.session_state[name] = list(value) if isinstance(value, list) else value
    st.session_state["page"] = 1


def show_in_browse(filters: dict[str, object], open_image: int | None = None) -> None:
    """Browse with only these filters set (widget key → value) and first page shown; a button
    callback, so it runs before any widget it sets is drawn. The caller switches page."""
    clear_browse_filters()
    for name, value in filters.items():
        st.session_state[name] = value
    if open_image is not None:
        st.session_state["open-image"] = open_image
        st.session_state["open-prediction"] = None
