"""Overview page: counts, results sent to PACS, positive rate over time, throughput, the queue
and the workers, and how often readers agree with each model version.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

import altair as alt
import pandas as pd
import streamlit as st
from celery import Celery

from dashboard import admin as admin_view
from dashboard import services, ui
from db import admin, browse, exports, queries, versions
from db.models import ExportState, Worker, as_utc
from worker import client


@st.cache_data(ttl=5, show_spinner=False)
def broker_health(_celery: Celery, broker_url: str) -> tuple[int | None, list[str]]:
    """Queue depth and live workers, asked of the broker at most every 5 s (a ping waits 1 s)."""
    del broker_url  # the cache key
    return client.queue_depth(_celery), client.live_workers(_celery)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def version_table(pairs: list[versions.VersionPair]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Earlier model": [p.earlier for p in pairs],
            "Later model": [p.later for p in pairs],
            "Images scored by both": [p.images for p in pairs],
            "Same verdict": [p.same for p in pairs],
            "Agreement": [_percent(p.agreement) for p in pairs],
        }
    )


def cross_table(pair: versions.VersionPair) -> pd.DataFrame:
    """Images by the earlier model's verdict (rows) and the later model's (columns)."""
    return pd.DataFrame(
        {
            f"{pair.later}: {ui.verdict_text(later)}": [
                pair.counts.get((earlier, later), 0) for earlier in versions.VERDICTS
            ]
            for later in versions.VERDICTS
        },
        index=pd.Index(
            [f"{pair.earlier}: {ui.verdict_text(v)}" for v in versions.VERDICTS],
            name="Earlier ↓ / later →",
        ),
    )


def version_agreement(pairs: list[versions.VersionPair]) -> None:
    st.markdown("**Model versions against each other**, on the images both scored")
    if not pairs:
        st.caption(
            "No image has been scored by two model versions yet (`fracture rescore` scores "
            "stored images with a new model and keeps the earlier predictions)."
        )
        return
    st.dataframe(version_table(pairs), hide_index=True, width="stretch")
    names = [f"{p.earlier} → {p.later}" for p in pairs]
    chosen = 0
    if len(pairs) > 1:
        chosen = names.index(st.selectbox("Cross table for", names, key="version-pair"))
    st.dataframe(cross_table(pairs[chosen]), width="stretch")
    st.caption(
        "Verdicts as each model stored them: a model with one operating point answers only "
        "fracture or no fracture. Agreement between models is not accuracy: readers' reviews "
        "are the reference (above)."
    )


def region_table(rows: list[browse.RegionCount]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Region (predicted)": [ui.region_text(r.region) for r in rows],
            "Predictions": [r.total for r in rows],
            "Fracture suspected": [r.positives for r in rows],
            "Positive rate": [_percent(r.rate) for r in rows],
            "DICOM body part differs": [r.disagreements for r in rows],
        }
    )


def day_chart(per_day: list[browse.DayRate], days: int) -> alt.LayerChart:
    """Bars: predictions per day (zeros included); line: the share that were positive."""
    today = pd.Timestamp.now(tz="UTC").normalize().tz_localize(None)
    frame = pd.DataFrame(
        {"predictions": 0, "positives": 0}, index=pd.date_range(end=today, periods=days, freq="D")
    )
    for d in per_day:
        frame.loc[pd.Timestamp(d.day), ["predictions", "positives"]] = [d.total, d.positives]
    frame["positive rate"] = (frame["positives"] / frame["predictions"]).where(
        frame["predictions"] > 0
    )
    frame = frame.rename_axis("day").reset_index()
    base = alt.Chart(frame).encode(x=alt.X("day:T", title=None))
    bars = base.mark_bar(opacity=0.35, color="#868e96").encode(
        y=alt.Y("predictions:Q", title="predictions"),
        tooltip=["day:T", "predictions:Q", "positives:Q"],
    )
    line = base.mark_line(color="#e03131", point=alt.OverlayMarkDef(color="#e03131")).encode(
        y=alt.Y("positive rate:Q", title="positive rate", axis=alt.Axis(format="%")),
        tooltip=["day:T", alt.Tooltip("positive rate:Q", format=".1%")],
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=260)


def hour_chart(per_hour: list[browse.HourCount]) -> alt.Chart:
    """Images finished per hour over the last 48 hours, predictions and failures stacked."""
    now = pd.Timestamp.now(tz="UTC").floor("h").tz_localize(None)
    frame = pd.DataFrame(
        {"predictions": 0, "failures": 0}, index=pd.date_range(end=now, periods=48, freq="h")
    )
    for h in per_hour:
        stamp = pd.Timestamp(h.hour)
        if stamp in frame.index:
            frame.loc[stamp, ["predictions", "failures"]] = [h.predictions, h.failures]
    long = frame.rename_axis("hour").reset_index().melt("hour", var_name="outcome")
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("hour:T", title=None),
            y=alt.Y("value:Q", title="images per hour", stack=True),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(domain=["predictions", "failures"], range=["#1c7ed6", "#f08c00"]),
                legend=alt.Legend(orient="top", title=None),
            ),
            tooltip=["hour:T", "outcome:N", "value:Q"],
        )
        .properties(height=260)
    )


def chart(drawing: alt.TopLevelMixin) -> None:
    """Draws an Altair chart from its spec unvalidated: Altair's schema check (what
    st.altair_chart runs) took 0.2–0.6 s a chart on a loaded 2-core machine, for specs this
    module builds the same way every time (and the Overview test draws)."""
    st.vega_lite_chart(drawing.to_dict(validate=False), width="stretch")


def pacs_figures(dashboard: services.Dashboard, sends: dict[str, int]) -> None:
    """Results sent, pending and failed, where results go to PACS (or once went)."""
    destination = dashboard.settings.destination
    if not any(sends.values()) and destination is None:
        return
    where = (
        f"to <code>{html.escape(str(destination))}</code>"
        if destination
        else "— no destination configured now (FRACTURE_DICOM_DESTINATION)"
    )
    st.markdown(f"**Results to PACS** {where}", unsafe_allow_html=True)
    cells = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
    cells[0].metric("Sent", f"{sends[ExportState.SENT]:,}")
    cells[1].metric(
        "Pending",
        f"{sends[ExportState.PENDING]:,}",
        help="Waiting for their first or next attempt.",
    )
    failed = sends[ExportState.FAILED]
    cells[2].metric(
        "Failed",
        f"{failed:,}",
        help="Given up after FRACTURE_DICOM_SEND_ATTEMPTS attempts; a record's Send again "
        "(or `fracture dicom-send --retry-failed`) tries them again.",
    )
    if failed and cells[3].button(
        "Show failed in Browse",
        icon=":material/filter_alt:",
        on_click=ui.show_in_browse,
        args=({"f-export": [ExportState.FAILED.value], "f-model": browse.ALL_VERSIONS},),
        help="Browse every model version's rows whose results failed to reach PACS.",
    ):
        st.switch_page(ui.BROWSE_PAGE)


def heartbeat_rows(
    workers: list[Worker], dead_after_s: float, now: datetime
) -> list[dict[str, str]]:
    """One row per worker heard from today: how long it has run and whether it still beats."""
    rows = []
    for worker in workers:
        silent = (now - as_utc(worker.heartbeat_at)).total_seconds()
        up = (now - as_utc(worker.started_at)).total_seconds()
        rows.append(
            {
                "worker": worker.name,
                "state": "alive" if silent <= dead_after_s else "silent (stopped or lost)",
                "running for": _duration(up),
                "last heartbeat": f"{_duration(silent)} ago",
            }
        )
    return rows


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def heartbeat_table(dashboard: services.Dashboard) -> None:
    """Workers by their heartbeats in the database: a worker that was restarted shows as a new
    row beside the silent one it replaced, whose images were re-sent."""
    with dashboard.factory() as session:
        workers = queries.worker_heartbeats(session=session)
    if not workers:
        return
    rows = heartbeat_rows(workers, dashboard.settings.dead_after_s, datetime.now(UTC))
    silent = sum(row["state"] != "alive" for row in rows)
    with st.expander(
        f"Worker heartbeats (last 24 h): {len(rows) - silent} alive, {silent} silent",
        expanded=bool(silent),
    ):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.caption(
            "A silent worker stopped without signing off (killed, out of memory, host lost); "
            "the images it held were sent again to the others within seconds."
        )


def figures(dashboard: services.Dashboard, days: int) -> None:
    with dashboard.factory() as session:
        statuses = browse.status_counts(session=session)
        per_hour = browse.throughput_by_hour(session=session, hours=48)
        sends = exports.counts(session=session)
        version = admin.prediction_version(session=session)
    cached = admin_view.prediction_figures(
        dashboard,
        dashboard.settings.resolved_database_url,
        days,
        datetime.now(UTC).date(),
        version,
    )
    labels, per_day, agreement = cached.labels, cached.per_day, cached.agreement
    by_region, pairs = cached.by_region, cached.pairs
    if dashboard.celery is not None:
        depth, workers = broker_health(dashboard.celery, dashboard.settings.broker_url or "")
    else:
        depth, workers = None, []

    total = sum(statuses.values())
    predictions = sum(labels.values())
    cells = st.columns(7)
    cells[0].metric("Images", f"{total:,}")
    cells[1].metric("Done", f"{statuses['done']:,}")
    cells[2].metric("Failed", f"{statuses['failed']:,}")
    cells[3].metric("Waiting", f"{statuses['queued'] + statuses['processing']:,}")
    cells[4].metric(
        "Fracture suspected",
        f"{labels[browse.POSITIVE_LABEL]:,}",
        help=f"{labels[browse.POSITIVE_LABEL] / predictions:.1%} of predictions"
        if predictions
        else None,
    )
    cells[5].metric(
        "Broker queue",
        "unknown" if depth is None else f"{depth:,}",
        help="Messages waiting in the bulk and upload queues (not those held by workers).",
    )
    cells[6].metric(
        "Workers alive",
        f"{len(workers)}",
        help=", ".join(workers) if workers else "No worker answered a ping within 1 s.",
    )
    if dashboard.celery is None:
        st.caption("No broker configured (FRACTURE_BROKER_URL): queue and workers are unknown.")
    elif not workers:
        st.warning(
            "No worker answered. Uploads and new inbox files stay queued until one runs.",
            icon=":material/power_off:",
        )
    heartbeat_table(dashboard)
    admin_view.pipeline(dashboard)
    pacs_figures(dashboard, sends)

    left, right = st.columns(2, gap="large")
    with left:
        st.markdown(f"**Predictions and positive rate per day** (UTC, last {days} days)")
        if per_day:
            chart(day_chart(per_day, days))
        else:
            st.caption("No predictions in this period.")
    with right:
        st.markdown("**Throughput per hour** (UTC, last 48 hours)")
        if per_hour:
            chart(hour_chart(per_hour))
        else:
            st.caption("Nothing processed in the last 48 hours.")
    st.markdown("**Images by status and finding**")
    st.dataframe(
        pd.DataFrame(
            [
                {ui.STATUS_TEXT.get(k, k): v for k, v in statuses.items()}
                | {ui.label_text(k): v for k, v in labels.items()}
            ]
        ),
        hide_index=True,
        width="stretch",
    )

    st.markdown("**By body region**, as the model predicts it (all model versions)")
    if any(r.region is not None for r in by_region):
        st.dataframe(region_table(by_region), hide_index=True, width="stretch")
    else:
        st.caption("No region predictions yet: the model in use has no region head.")

    admin_view.failure_reasons(dashboard)

    st.markdown("**Model against readers**, per model version")
    if agreement:
        st.dataframe(admin_view.agreement_table(agreement), hide_index=True, width="stretch")
        st.caption(
            "Readers' verdicts are the reference; each reviewed prediction counts once, by its "
            "latest review. Sensitivity and specificity are the model's, for fracture; 95 % "
            "intervals in brackets (Wilson for proportions, a percentile bootstrap of 4,000 "
            f"resamples for κ), shown from {admin_view.MIN_CASES} reviewed cases. "
            "Reviewed cases are not a random sample: read these figures with that in mind."
        )
    else:
        st.caption("No reviews yet: confirm or correct predictions under Browse.")
    admin_view.reader_agreement(dashboard)

    version_agreement(pairs)


def render() -> None:
    dashboard = ui.dashboard()
    head = st.columns([4, 1, 1], vertical_alignment="bottom")
    head[0].subheader("Overview")
    days = head[1].selectbox("Period", (7, 30, 90, 365), index=1, format_func="{} days".format)
    live = head[2].toggle("Auto-refresh", help="Update every 10 s.")

    @st.fragment(run_every=10 if live else None)
    def live_figures() -> None:
        figures(dashboard, int(days))

    live_figures()


render()
