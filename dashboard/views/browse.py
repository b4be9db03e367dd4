"""Browse page: every stored prediction, filtered, sorted and paged by the database; one opens
right under a shortened table (in view, the row kept highlighted) with its image, heatmap,
fields, review form and, for an instance received over DICOM, its study and its results' trip to
PACS. `?image=57` links to a record.
"""

from __future__ import annotations

import html
from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import downloads, record, services, signin, ui
from db import admin, browse, exports
from db.models import ImageStatus, Verdict

SORTS = {
    browse.SortKey.NEWEST: "Newest first",
    browse.SortKey.OLDEST: "Oldest first",
    browse.SortKey.PROBABILITY_DESC: "Highest probability first",
    browse.SortKey.PROBABILITY_ASC: "Lowest probability first",
    browse.SortKey.FILENAME: "File name",
}
REVIEW_STATES = {
    browse.ReviewState.ANY: "Any",
    browse.ReviewState.UNREVIEWED: "Not reviewed",
    browse.ReviewState.REVIEWED: "Reviewed",
    browse.ReviewState.AGREED: "Reader agrees",
    browse.ReviewState.DISAGREED: "Reader corrected",
}
PAGE_SIZES = (25, 50, 100, 200)
ROW_PX, HEADER_PX = 35, 38
TABLE_PX = 640  # the table's height with no record open
TABLE_ROWS_WITH_RECORD = 6  # with one open: short, so the record below it starts in view
CHOICES_TTL_S = 30  # a new model version or region shows in the filters within this
STUDY_CHOICES = 500  # the most recently received studies offered in the study filter
VERSION_CHOICES = {
    ui.LATEST: "Latest prediction per image",
    browse.ALL_VERSIONS: "Every model version (a row each)",
}


def _first_page() -> None:
    st.session_state["page"] = 1


def _step(delta: int, pages: int) -> None:
    st.session_state["page"] = min(max(1, int(st.session_state.get("page", 1)) + delta), pages)


def _open_selected() -> None:
    """A row picked in the table becomes the open image. An empty selection changes nothing: the
    table reports one back when a typed image is not on this page (Close record closes)."""
    selection = list(st.session_state["table"]["selection"]["rows"])
    keys: list[tuple[int, int | None]] = st.session_state.get("page-keys", [])
    if selection == st.session_state.get("table-highlight"):
        # The browser echoing the row the page highlighted, not a click: a number typed in the
        # same run must not be overridden by the row it replaces.
        return
    if selection and selection[0] < len(keys):
        st.session_state["open-image"], st.session_state["open-prediction"] = keys[selection[0]]


def _step_record(
    dashboard: services.Dashboard,
    flt: browse.BrowseFilter,
    sort: browse.SortKey,
    page_size: int,
    *,
    forward: bool,
    unreviewed: bool = False,
) -> None:
    """Opens the row after (or before) the open record in the list as filtered and sorted,
    across pages; the table turns to that row's page so that list and record stay together."""
    image_id = st.session_state.get("open-image")
    if image_id is None:
        return
    keys: list[tuple[int, int | None]] = st.session_state.get("page-keys", [])
    here = _row_of_open_record(keys)
    step = here + (1 if forward else -1) if here is not None else -1
    if not unreviewed and 0 <= step < len(keys):  # the row beside it on this page
        st.session_state["open-image"], st.session_state["open-prediction"] = keys[step]
        return
    key = browse.RowKey(int(image_id), st.session_state.get("open-prediction"))
    with dashboard.factory() as session:
        target = browse.neighbour(
            session=session, key=key, flt=flt, sort=sort, forward=forward, unreviewed=unreviewed
        )
        if target is None:
            st.session_state["step-note"] = (
                "No unreviewed row after this one in this list."
                if unreviewed
                else f"This is the {'last' if forward else 'first'} row of this list."
            )
            return
        if (target.image_id, target.prediction_id) not in keys:
            if not unreviewed and here is not None:
                # One step off the edge of the page shown: the next or previous page.
                page = int(st.session_state.get("page", 1))
                st.session_state["page"] = max(1, page + (1 if forward else -1))
            else:  # a jump, or from a record off this page: count the rows before it
                before = browse.position(session=session, key=target, flt=flt, sort=sort) or 0
                st.session_state["page"] = before // page_size + 1
    st.session_state["open-image"] = target.image_id
    st.session_state["open-prediction"] = target.prediction_id


def _close_record() -> None:
    st.session_state["open-image"] = st.session_state["open-prediction"] = None


def _follow_link() -> None:
    """`?image=57` (a link to a record, or the page asked for before signing in) opens that
    record when this session first shows Browse."""
    linked = st.query_params.get("image", "")
    if "open-image" not in st.session_state and linked.isdigit():
        st.session_state["open-image"] = int(linked)
        st.session_state["open-prediction"] = None
        st.session_state["turn-to-open"] = True


def _typed() -> None:
    """A typed image number: the table turns to that row's page too."""
    st.session_state["open-prediction"] = None
    st.session_state["turn-to-open"] = True


def _turn_to_open_record(
    dashboard: services.Dashboard, flt: browse.BrowseFilter, sort: browse.SortKey, size: int
) -> None:
    """Shows the page the open record's row is on, once it was opened by a link or a typed
    number (a click or a step is on its page already)."""
    image_id = st.session_state.get("open-image")
    if not st.session_state.pop("turn-to-open", False) or image_id is None:
        return
    key = browse.RowKey(int(image_id), None)
    with dashboard.factory() as session:
        before = browse.position(session=session, key=key, flt=flt, sort=sort)
    if before is not None:
        st.session_state["page"] = before // size + 1


def _row_of_open_record(keys: list[tuple[int, int | None]]) -> int | None:
    """The open record's row on this page (its index), or None when it is not on it."""
    image_id = st.session_state.get("open-image")
    prediction_id = st.session_state.get("open-prediction")
    for index, key in enumerate(keys):
        if key == (image_id, prediction_id):
            return index
    return next((i for i, (image, _) in enumerate(keys) if image == image_id), None)


def _highlight_open_row(keys: list[tuple[int, int | None]]) -> None:
    """The table highlights the open record's row (none when it is not on this page), whether
    it was clicked or typed: list and record never disagree."""
    image_id = st.session_state.get("open-image")
    prediction_id = st.session_state.get("open-prediction")
    rows = [i for i, key in enumerate(keys) if key == (image_id, prediction_id)]
    rows = (rows or [i for i, (image, _) in enumerate(keys) if image == image_id])[:1]
    st.session_state["table-highlight"] = rows  # what the browser may echo back (_open_selected)
    shown = st.session_state.get("table")
    if rows != (list(shown["selection"]["rows"]) if shown else []):  # set only to change it
        st.session_state["table"] = {"selection": {"rows": rows, "columns": []}}


FILTER_NAMES = {
    "f-verdicts": "verdict",
    "f-prob": "probability",
    "f-dates": "received",
    "f-sources": "source",
    "f-statuses": "status",
    "f-review": "review",
    "f-name": "file name",
    "f-regions": "region",
    "f-disagree": "DICOM body part",
    "f-study": "study",
    "f-export": "PACS",
    "f-reason": "failure reason",
    "f-model": "model",
}


def active_filters() -> list[str]:
    """The filters set to anything but "any", by name."""

    def same(value: object, default: object) -> bool:
        if isinstance(value, list | tuple) and isinstance(default, list | tuple):
            return list(value) == list(default)
        return value == default or (value in ("", None) and default in ("", None))

    return [
        FILTER_NAMES.get(key, key)
        for key, default in ui.BROWSE_FILTERS.items()
        if not same(st.session_state.get(key, default), default)
    ]


@st.cache_data(ttl=CHOICES_TTL_S, show_spinner=False)
def choices(
    _dashboard: services.Dashboard, database_url: str
) -> tuple[list[str], list[str], dict[str, browse.Study], dict[str, int], dict[str, int]]:
    """What the filters offer (model versions, regions, recent studies, PACS states, failure
    reasons), asked of the database at most every CHOICES_TTL_S seconds, not at every click."""
    del database_url  # the cache key
    with _dashboard.factory() as session:
        return (
            browse.model_versions(session=session),
            browse.predicted_regions(session=session),
            {s.study_uid: s for s in browse.studies(session=session, limit=STUDY_CHOICES)},
            dict(exports.counts(session=session)),
            {r.reason: r.images for r in admin.failure_reasons(session=session)},
        )


def reason_text(reason: str) -> str:
    return reason or "no error text stored"


def filters(dashboard: services.Dashboard) -> tuple[browse.BrowseFilter, browse.SortKey]:
    """The filters, in the page (a phone hides the sidebar), each applied by the database, not
    to a loaded table. The expander's label stays the same (a new label would close it); the
    line above the table names the filters that are on."""
    side = st.expander("Filters", icon=":material/filter_alt:")
    verdicts = side.multiselect(
        "Verdict",
        browse.VERDICTS,
        format_func=ui.verdict_text,
        key="f-verdicts",
        on_change=_first_page,
        help="The model's answer: fracture (at or above the main threshold), doubt (between "
        "the doubt threshold and the main one) or no fracture. Models with one operating "
        "point answer only fracture or no fracture.",
    )
    low, high = side.slider(
        "Fracture probability",
        0.0,
        1.0,
        (0.0, 1.0),
        step=0.01,
        key="f-prob",
        on_change=_first_page,
    )
    days = side.date_input(
        "Received between",
        value=[],
        max_value=date.today(),
        key="f-dates",
        on_change=_first_page,
        help="Days in your browser's time zone.",
    )
    statuses = side.multiselect(
        "Status",
        browse.STATUSES,
        format_func=lambda s: ui.STATUS_TEXT.get(s, s),
        key="f-statuses",
        on_change=_first_page,
    )
    sources = side.multiselect(
        "Source",
        browse.SOURCES,
        format_func=ui.source_text,
        key="f-sources",
        on_change=_first_page,
    )
    review = side.selectbox(
        "Review",
        list(REVIEW_STATES),
        format_func=REVIEW_STATES.__getitem__,
        key="f-review",
        on_change=_first_page,
    )
    name = side.text_input(
        "File name contains", key="f-name", on_change=_first_page, placeholder="e.g. ward3/"
    )
    versions, regions, listed, sends, reasons = choices(
        dashboard, dashboard.settings.resolved_database_url
    )
    chosen_reason = st.session_state.get("f-reason")
    reason = None
    if reasons or chosen_reason is not None:
        options = list(reasons)
        if chosen_reason is not None and chosen_reason not in reasons:
            options.append(chosen_reason)  # set from the Overview, newer than the choices
        reason = side.selectbox(
            "Failure reason",
            options,
            index=None,
            format_func=lambda r: f"{reason_text(r)} ({reasons[r]:,})" if r in reasons else r,
            key="f-reason",
            on_change=_first_page,
            placeholder="Any (failed or not)",
            help="Only failed images that failed for this reason (the stored error without "
            "its per-file details).",
        )
    studies = dict(listed)
    chosen_study = st.session_state.get("f-study")
    if chosen_study and chosen_study not in studies:  # an older study, opened from a record
        with dashboard.factory() as session:
            found = browse.study(session=session, study_uid=chosen_study)
        if found is not None:
            studies[chosen_study] = found
    study = None
    if studies or chosen_study:
        options = list(studies)
        if chosen_study and chosen_study not in studies:
            options.append(chosen_study)
        study = side.selectbox(
            "DICOM study",
            options,
            index=None,
            format_func=lambda uid: study_choice(uid, studies.get(uid)),
            key="f-study",
            on_change=_first_page,
            placeholder="Any study",
            help="Instances received over the DICOM network, grouped by Study Instance UID "
            f"(the {STUDY_CHOICES} most recently received studies; type to search). A record "
            "received over DICOM can also show its study here.",
        )
    export_states: list[str] = []
    if any(sends.values()) or dashboard.settings.destination is not None:
        export_states = side.multiselect(
            "Sent to PACS",
            browse.EXPORT_STATES,
            format_func=ui.EXPORT_TEXT.__getitem__,
            key="f-export",
            on_change=_first_page,
            help="Where each row's result stands on its way back to PACS. Not sent: no "
            "export for it (not a DICOM image, no destination, or not queued yet).",
        )
    chosen_regions = side.multiselect(
        "Body region (predicted)",
        [*regions, browse.NO_REGION],
        format_func=ui.region_text,
        key="f-regions",
        on_change=_first_page,
    )
    disagree = side.checkbox(
        "Only where DICOM body part disagrees",
        key="f-disagree",
        on_change=_first_page,
        help="The file's BodyPartExamined names another region than the model predicted.",
    )
    version = side.selectbox(
        "Model",
        [*VERSION_CHOICES, *versions],
        format_func=lambda v: VERSION_CHOICES.get(v, v),
        key="f-model",
        on_change=_first_page,
        help="A new model adds predictions beside the old ones; the table shows each image's "
        "latest unless you pick a version.",
    )
    side.button("Clear filters", on_click=ui.clear_browse_filters, icon=":material/filter_alt_off:")
    start, before = ui.day_bounds(tuple(days) if isinstance(days, tuple | list) else (days,))
    flt = browse.BrowseFilter(
        verdicts=tuple(verdicts),
        probability_min=low if low > 0.0 else None,
        probability_max=high if high < 1.0 else None,
        received_from=start,
        received_before=before,
        sources=tuple(sources),
        statuses=tuple(statuses),
        review_state=browse.ReviewState(review),
        filename=name or None,
        model_version=None if version == ui.LATEST else version,
        regions=tuple(chosen_regions),
        region_disagrees=bool(disagree),
        study_uid=study or None,
        export_states=tuple(export_states),
        failure_reason=reason,
    )
    return flt, st.session_state.get("sort", browse.SortKey.NEWEST)


def study_choice(uid: str, study: browse.Study | None) -> str:
    """A study in the filter: the end of its UID, its instances, when the last one came."""
    if study is None:
        return f"{services.short_uid(uid)} · no stored instance"
    count = f"{study.images} instance{'s' if study.images != 1 else ''}"
    return f"{services.short_uid(uid)} · {count} · {ui.local_time(study.last_received_at)}"


def review_text(row: browse.BrowseRow) -> str:
    if row.review is None:
        return ""
    mark = "✓" if row.review.agrees else "✗ " + ui.label_text(row.review.verdict)
    more = f" (+{row.review.count - 1})" if row.review.count > 1 else ""
    return f"{mark} {row.review.reviewer}{more}"


def verdict_cell(row: browse.BrowseRow) -> str:
    """The three-way answer; a row stored without one answers as its label implies."""
    if row.label is None:
        return ""
    if row.verdict is None:
        return ui.label_text(row.label)
    return ui.verdict_text(row.verdict)


EMPTY = "—"
# The finding's colour, as on the verdict card: red, amber, blue; grey for a failure.
FINDING_COLOURS = {
    ui.verdict_text(Verdict.FRACTURE): "color: #e03131; font-weight: 700",
    ui.label_text(browse.POSITIVE_LABEL): "color: #e03131; font-weight: 700",
    ui.verdict_text(Verdict.DOUBT): "color: #e67700; font-weight: 600",
    ui.verdict_text(Verdict.NO_FRACTURE): "color: #1c7ed6",
    ui.label_text(browse.NEGATIVE_LABEL): "color: #1c7ed6",
    ui.STATUS_TEXT[ImageStatus.FAILED]: "color: #868e96; font-weight: 600",
}


def table(page: browse.Page) -> pd.DataFrame:
    """Only the rows of this page: at most a few hundred, never the whole table. The finding
    and any problem come first, so they show without scrolling sideways; "—" marks nothing."""

    def text(value: str | None) -> str:
        return value or EMPTY

    return pd.DataFrame(
        {
            "Image": [r.image_id for r in page.rows],
            "Received": [ui.local_time(r.received_at) for r in page.rows],
            "File": [r.filename for r in page.rows],
            "Status": [ui.STATUS_TEXT.get(r.status, r.status) for r in page.rows],
            "Verdict": [text(verdict_cell(r)) for r in page.rows],
            "Probability": [r.probability for r in page.rows],
            "Problem": [text(r.error or r.warning) for r in page.rows],
            "Review": [text(review_text(r)) for r in page.rows],
            "Region": [text(ui.region_cell(r.region, r.region_disagrees)) for r in page.rows],
            "Study": [text(services.short_uid(r.study_uid)) for r in page.rows],
            "PACS": [text(ui.EXPORT_TEXT.get(r.export_state or "")) for r in page.rows],
            "Source": [ui.source_text(r.source) for r in page.rows],
            "Model": [text(r.model_version) for r in page.rows],
        }
    )


def coloured(frame: pd.DataFrame) -> Any:
    """The table with each finding (and a failed status) in its colour."""
    return frame.style.map(lambda cell: FINDING_COLOURS.get(cell, ""), subset=["Verdict", "Status"])


def render() -> None:
    dashboard = ui.dashboard()
    _follow_link()
    top = st.columns([3, 2, 1, 1], vertical_alignment="bottom")
    top[0].subheader("Browse predictions")
    sort = top[1].selectbox(
        "Sort",
        list(SORTS),
        format_func=SORTS.__getitem__,
        key="sort",
        on_change=_first_page,
    )
    page_size = top[2].selectbox(
        "Rows per page", PAGE_SIZES, index=1, key="page-size", on_change=_first_page
    )
    top[3].button("Refresh", icon=":material/refresh:", width="stretch")
    flt, _ = filters(dashboard)
    _turn_to_open_record(dashboard, flt, browse.SortKey(sort), int(page_size))

    try:
        with dashboard.factory() as session:
            page = browse.browse(
                session=session,
                flt=flt,
                sort=browse.SortKey(sort),
                page=int(st.session_state.get("page", 1)),
                page_size=int(page_size),
            )
    except browse.QueryError as exc:
        st.error(f"Cannot filter like that: {exc}.")
        return
    st.session_state["page"] = page.page
    keys = [(r.image_id, r.prediction_id) for r in page.rows]
    st.session_state["page-keys"] = keys

    first = (page.page - 1) * page.page_size + 1 if page.total else 0
    last = min(page.total, page.page * page.page_size)
    nav = st.columns([4, 1, 1, 1.4, 1.6], vertical_alignment="center")
    nav[0].markdown(
        f"**{page.total:,}** matching rows · showing {first:,}–{last:,} · "
        f"page {page.page:,} of {page.pages:,}"
        + (f" · filtered by {', '.join(active_filters())}" if active_filters() else "")
    )
    nav[1].button(
        "Previous",
        on_click=_step,
        args=(-1, page.pages),
        disabled=page.page <= 1,
        width="stretch",
    )
    nav[2].button(
        "Next",
        on_click=_step,
        args=(1, page.pages),
        disabled=page.page >= page.pages,
        width="stretch",
    )
    nav[3].number_input(
        "Page", min_value=1, max_value=page.pages, key="page", label_visibility="collapsed"
    )
    # Streamed by the server (dashboard/downloads.py) from the filters and order the table
    # shows, over a link issued to this sign-in: any size, one chunk of rows in memory.
    link = downloads.LINKS.issue(
        downloads.Export(flt, browse.SortKey(sort)), signin.sign_in_token()
    )
    nav[4].markdown(
        f'<a class="fx-export" href="{html.escape(link)}" download '
        f'title="All {page.total:,} matching rows (not just this page), as CSV.">'
        "Export CSV</a>",
        unsafe_allow_html=True,
    )

    st.session_state.setdefault("open-image", None)  # set by a table click, a link, or typed
    record_open = st.session_state["open-image"] is not None
    if page.rows:
        _highlight_open_row(keys)
        rows = min(len(page.rows), TABLE_ROWS_WITH_RECORD) if record_open else len(page.rows)
        st.dataframe(
            coloured(table(page)),
            hide_index=True,
            width="stretch",
            height=min(HEADER_PX + ROW_PX * rows, TABLE_PX),
            key="table",
            on_select=_open_selected,
            selection_mode="single-row",
            column_config={
                "Image": st.column_config.NumberColumn(format="%d", width="small"),
                "Probability": st.column_config.ProgressColumn(
                    min_value=0.0, max_value=1.0, format="%.3f", width="small"
                ),
                "Received": st.column_config.TextColumn(width=135),
                "File": st.column_config.TextColumn(width="medium"),
                "Status": st.column_config.TextColumn(width="small"),
                "Verdict": st.column_config.TextColumn(width="medium"),
                "Study": st.column_config.TextColumn(
                    width="small",
                    help="DICOM Study Instance UID, its last 12 characters (— : not received "
                    "over DICOM). The record below shows it in full; Filters filters by it.",
                ),
                "PACS": st.column_config.TextColumn(
                    width="small", help="The result's trip back to PACS: sent, pending, failed."
                ),
                "Problem": st.column_config.TextColumn(
                    width="medium", help="Why the image failed, or a warning stored with it."
                ),
                "Review": st.column_config.TextColumn(width="small"),
            },
        )
    else:
        st.info("No stored prediction matches these filters.", icon=":material/search_off:")

    chosen = st.columns([1.1, 1, 1, 1.2, 1, 2], vertical_alignment="bottom")
    image_id = chosen[0].number_input(
        "Open image #", min_value=1, step=1, key="open-image", placeholder="id", on_change=_typed
    )
    if image_id is None:
        chosen[1].caption("Select a row in the table (or type an image number) to open it here.")
        if "image" in st.query_params:
            del st.query_params["image"]
        return
    here = _row_of_open_record(keys)
    step = (dashboard, flt, browse.SortKey(sort), int(page_size))
    chosen[1].button(
        "Previous record",
        on_click=_step_record,
        args=step,
        kwargs={"forward": False},
        icon=":material/arrow_upward:",
        disabled=page.page == 1 and here == 0,
        width="stretch",
    )
    chosen[2].button(
        "Next record",
        on_click=_step_record,
        args=step,
        kwargs={"forward": True},
        icon=":material/arrow_downward:",
        disabled=page.page == page.pages and here == len(keys) - 1,
        width="stretch",
    )
    chosen[3].button(
        "Next unreviewed",
        on_click=_step_record,
        args=step,
        kwargs={"forward": True, "unreviewed": True},
        icon=":material/rate_review:",
        help="The next row of this list (filtered and sorted as shown) that no reader has "
        "reviewed yet.",
        width="stretch",
    )
    chosen[4].button("Close record", on_click=_close_record, icon=":material/close:")
    if here is not None:
        chosen[5].caption(
            f"Row {(page.page - 1) * page.page_size + here + 1:,} of {page.total:,} in this list"
        )
    note = st.session_state.pop("step-note", None)
    if note:
        st.info(note, icon=":material/info:")
    if st.query_params.get("image") != str(image_id):
        st.query_params["image"] = str(image_id)  # the address bar links to this record
    record.detail(
        dashboard,
        int(image_id),
        prediction_id=st.session_state.get("open-prediction"),
        key="browse",
    )


render()
