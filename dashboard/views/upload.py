"""Upload page: one radiograph in, the model's answer out as soon as a worker has stored it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from dashboard import record, services, ui
from db import queries
from db.models import ImageStatus


@dataclass
class Ticket:
    """What this browser session knows about one uploaded file."""

    image_id: int
    created: bool
    sent: bool | None
    waited_s: float | None = None
    timed_out: bool = False


def wait(dashboard: services.Dashboard, image_id: int, started: float) -> tuple[float, bool]:
    """Poll until the image is finished or the upload timeout passes: (seconds, timed out)."""
    placeholder = st.empty()
    timeout = dashboard.settings.upload_timeout_s

    def progress(status: str, waited: float) -> None:
        placeholder.info(
            f"Stored as image #{image_id}. {ui.STATUS_TEXT.get(status, status)} — "
            f"waiting for a worker ({waited:.0f} s of {timeout:.0f} s)…",
            icon=":material/hourglass_top:",
        )

    answer = services.wait_for_answer(
        dashboard.factory,
        image_id,
        timeout_s=dashboard.settings.upload_timeout_s,
        on_poll=progress,
    )
    placeholder.empty()
    return time.monotonic() - started, answer.timed_out


def render() -> None:
    dashboard = ui.dashboard()
    settings = dashboard.settings
    st.subheader("Upload a radiograph")
    uploaded = st.file_uploader(
        f"{services.FORMATS} · up to {settings.upload_max_mb} MB",
        key="upload",
        help="The file is stored on this server and analysed by the same pipeline as files "
        "dropped into the inbox, ahead of any backlog. It stays available under Browse.",
    )
    if uploaded is None:
        st.caption(
            "Drop one image here. The answer — fracture suspected, doubt or no fracture, the "
            "probability against the operating points, the model version, fracture boxes where "
            "the model draws them, and a heat map — appears as soon as a worker has analysed "
            "it. The same image uploaded again is answered from the database."
        )
        return

    tickets: dict[str, Ticket] = st.session_state.setdefault("upload_tickets", {})
    ticket = tickets.get(uploaded.file_id)
    if ticket is None:
        started = time.monotonic()
        try:
            stored = services.store_upload(dashboard, uploaded.name, uploaded.getvalue())
        except services.UploadError as exc:
            st.error(f"Upload refused: {exc}.", icon=":material/block:")
            return
        ticket = Ticket(image_id=stored.image_id, created=stored.created, sent=stored.sent)
        tickets[uploaded.file_id] = ticket
        ticket.waited_s, ticket.timed_out = wait(dashboard, ticket.image_id, started)
    elif st.session_state.pop("upload-check-again", False):
        _, ticket.timed_out = wait(dashboard, ticket.image_id, time.monotonic())

    if not ticket.created:
        st.info(
            f"This exact image was received before (image #{ticket.image_id}): answered from "
            "the database.",
            icon=":material/history:",
        )
    if ticket.sent is False:
        st.warning(
            "The image is stored but could not be sent to the workers (no broker reachable). "
            "It stays queued; the watcher's sweeper sends it when the broker is back.",
            icon=":material/cloud_off:",
        )
    with dashboard.factory() as session:
        image = queries.get_image(session=session, image_id=ticket.image_id)
        status = image.status if image is not None else None
    if status in (ImageStatus.QUEUED, ImageStatus.PROCESSING) and ticket.timed_out:
        st.warning(
            f"No worker answered within {settings.upload_timeout_s:.0f} s. The image is stored "
            f"as #{ticket.image_id} and stays {status}: it will be analysed as soon as a worker "
            "is running, and then shows here and under Browse.",
            icon=":material/schedule:",
        )
        if st.button("Check again", icon=":material/refresh:"):
            st.session_state["upload-check-again"] = True
            st.rerun()
    record.detail(
        dashboard,
        ticket.image_id,
        waited_s=ticket.waited_s if ticket.created else None,
        key="upload",
    )


render()
