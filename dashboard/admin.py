"""The Overview's figures for the admin: time from arrival to result and the oldest waiting
image, an alert when the last day's positive or failure rate leaves its usual range, failure
reasons with a way into Browse, and agreement figures with their intervals.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import services, ui
from db import admin, browse, reviews, versions
from db.models import as_utc, utcnow
from model.agreement import MIN_CASES, Agreement, Interval, kappa_interval, usual_range, wilson

RECENT = timedelta(days=1)
HISTORY = timedelta(days=30)
ALERT_LEVEL = 0.99  # the share of ordinary days whose rate falls in the usual range
MIN_RECENT = 20  # results in the last day before its rates are judged
MIN_HISTORY = 100  # results in the 30 days before, for a usual range
REASONS_SHOWN = 10
SLOW_TTL_S = 300  # all-time percentiles and the month's rates: recomputed every 5 minutes
RULE = (
    f"Usual range: where {ALERT_LEVEL:.0%} of days would fall if the last 24 hours had the "
    f"rate of the {HISTORY.days} days before them (the central binomial interval for that "
    f"rate and the last day's number of results). Judged once the last day has {MIN_RECENT} "
    f"results and the {HISTORY.days} days {MIN_HISTORY}; so about one ordinary day in "
    f"{1 / (1 - ALERT_LEVEL):.0f} still raises it."
)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds, 1)  # a database's time arithmetic leaves 9.99999 for 10
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


@dataclass(frozen=True)
class Latency:
    results: int
    p50_s: float | None
    p95_s: float | None

    @property
    def text(self) -> str:
        if not self.results:
            return "—"
        return f"{duration(self.p50_s)} / {duration(self.p95_s)}"


def latency(seconds: list[float]) -> Latency:
    if not seconds:
        return Latency(0, None, None)
    p50, p95 = np.percentile(np.asarray(seconds), [50, 95])
    return Latency(len(seconds), float(p50), float(p95))


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def all_time_latency(_dashboard: services.Dashboard, database_url: str) -> Latency:
    """Every result's time, read every SLOW_TTL_S at most: at 100,000 images, half a second."""
    del database_url  # the cache key
    with _dashboard.factory() as session:
        return latency(admin.result_times(session=session))


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def usual_rates(_dashboard: services.Dashboard, database_url: str, end: datetime) -> admin.Rates:
    """The HISTORY before `end` (the start of the last day): tens of thousands of results, read
    every SLOW_TTL_S at most; a few minutes' shift changes a month's rate by nothing to see."""
    del database_url  # the cache key
    with _dashboard.factory() as session:
        return admin.rates(session=session, start=end - HISTORY, end=end)


@dataclass(frozen=True)
class PredictionFigures:
    labels: dict[str, int]
    per_day: list[browse.DayRate]
    agreement: list[Agreement]
    by_region: list[browse.RegionCount]
    pairs: list[versions.VersionPair]


@st.cache_data(max_entries=16, show_spinner=False)
def prediction_figures(
    _dashboard: services.Dashboard,
    database_url: str,
    days: int,
    today: date,
    version: tuple[int, int],
) -> PredictionFigures:
    """The figures drawn from predictions and reviews alone, computed again only when one is
    stored (`version`) or the day changes: at 100,000 images they take a few hundred ms."""
    del database_url, today, version  # the cache key
    with _dashboard.factory() as session:
        return PredictionFigures(
            labels=browse.label_counts(session=session),
            per_day=browse.positive_rate_by_day(session=session, days=days),
            agreement=reviews.agreement_by_model(session=session),
            by_region=browse.counts_by_region(session=session),
            pairs=versions.version_agreement(session=session),
        )


@dataclass(frozen=True)
class RateCheck:
    """The last day's rate of something against the range the month before makes usual."""

    name: str
    hits: int
    trials: int
    usual_hits: int
    usual_trials: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.trials if self.trials else None

    @property
    def usual_rate(self) -> float | None:
        return self.usual_hits / self.usual_trials if self.usual_trials else None

    @property
    def judged(self) -> bool:
        return self.trials >= MIN_RECENT and self.usual_trials >= MIN_HISTORY

    @property
    def usual(self) -> tuple[float, float] | None:
        if not self.judged:
            return None
        return usual_range(self.usual_hits, self.usual_trials, self.trials, ALERT_LEVEL)

    @property
    def outside(self) -> bool:
        bounds, rate = self.usual, self.rate
        return bounds is not None and rate is not None and not bounds[0] <= rate <= bounds[1]

    def line(self) -> str:
        if self.rate is None:
            return f"{self.name}: no results in the last 24 h."
        text = f"{self.name} in the last 24 h: {self.rate:.1%} ({self.hits:,} of {self.trials:,})"
        bounds = self.usual
        if bounds is None:
            return (
                f"{text}; too few results to judge (needs {MIN_RECENT} in the last day and "
                f"{MIN_HISTORY} in the {HISTORY.days} days before)."
            )
        return (
            f"{text}; usual range {bounds[0]:.1%}–{bounds[1]:.1%} (the {HISTORY.days} days "
            f"before: {self.usual_rate:.1%} of {self.usual_trials:,})."
        )


def rate_checks(recent: admin.Rates, usual: admin.Rates) -> list[RateCheck]:
    return [
        RateCheck(
            "Positive rate",
            recent.positives,
            recent.predictions,
            usual.positives,
            usual.predictions,
        ),
        RateCheck("Failure rate", recent.failures, recent.results, usual.failures, usual.results),
    ]


def pipeline(dashboard: services.Dashboard, now: datetime | None = None) -> None:
    """Time to result (p50/p95), the oldest waiting image, and the rate alerts."""
    now = now or utcnow()
    with dashboard.factory() as session:
        last_day = latency(admin.result_times(session=session, since=now - RECENT))
        oldest = admin.oldest_waiting(session=session)
        recent = admin.rates(session=session, start=now - RECENT, end=now)
    url = dashboard.settings.resolved_database_url
    # The month's end moves in SLOW_TTL_S steps, so that the cache can serve it.
    step = int((now - RECENT).timestamp()) // SLOW_TTL_S * SLOW_TTL_S
    usual = usual_rates(dashboard, url, datetime.fromtimestamp(step, UTC))
    ever = all_time_latency(dashboard, url)
    cells = st.columns(3)
    cells[0].metric(
        "Time to result, last 24 h (p50 / p95)",
        last_day.text,
        help=f"From arrival to the stored prediction, over {last_day.results:,} images that "
        "got their first result in the last 24 hours (a rescore's later results not counted).",
    )
    cells[1].metric(
        "Time to result, all time (p50 / p95)",
        ever.text,
        help=f"Over {ever.results:,} images (updated every {SLOW_TTL_S // 60} minutes).",
    )
    waited = None if oldest is None else (now - as_utc(oldest)).total_seconds()
    cells[2].metric(
        "Oldest waiting image",
        "none waiting" if waited is None else f"{duration(waited)} ago",
        help="Arrival of the longest-waiting image still queued or processing.",
    )
    checks = rate_checks(recent, usual)
    for check in checks:
        if check.outside:
            st.warning(
                f"{check.line()} Outside its usual range: check the inputs (a new ward or "
                "device, another body region) and the model before trusting the results.",
                icon=":material/warning:",
            )
    st.caption("  \n".join([*(check.line() for check in checks if not check.outside), RULE]))


def _reason_cell(reason: str) -> str:
    return html.escape(reason or "no error text stored")


def failure_reasons(dashboard: services.Dashboard) -> None:
    """Failed images by reason, each with a button that opens them in Browse."""
    with dashboard.factory() as session:
        reasons = admin.failure_reasons(session=session)
    st.markdown("**Failure reasons**")
    if not reasons:
        st.caption("No image has failed.")
        return
    total = sum(r.images for r in reasons)
    for reason in reasons[:REASONS_SHOWN]:
        row = st.columns([6, 1, 2], vertical_alignment="center")
        row[0].markdown(_reason_cell(reason.reason))
        row[1].markdown(f"**{reason.images:,}**")
        if row[2].button(
            "Show in Browse",
            key=f"reason-{reason.reason}",
            icon=":material/filter_alt:",
            on_click=ui.show_in_browse,
            args=({"f-reason": reason.reason, "f-model": browse.ALL_VERSIONS},),
            help="Browse the images that failed for this reason.",
            width="stretch",
        ):
            st.switch_page(ui.BROWSE_PAGE)
    shown = sum(r.images for r in reasons[:REASONS_SHOWN])
    more = f"; {total - shown:,} more under {len(reasons) - REASONS_SHOWN} other reasons" * (
        len(reasons) > REASONS_SHOWN
    )
    st.caption(
        f"{total:,} failed images in all{more}. A reason is the stored error without its "
        "per-file details; Browse's Failure reason filter offers the same ones."
    )


# -- agreement ---------------------------------------------------------------------------------


def _with_interval(value: Interval | None, percent: bool) -> str:
    if value is None:
        return "—"
    if percent:
        return f"{value.estimate:.1%} ({value.low:.1%}–{value.high:.1%})"
    return f"{value.estimate:.2f} ({value.low:.2f} to {value.high:.2f})"


def agreement_table(rows: list[Agreement]) -> pd.DataFrame:
    """Model against readers per model version, each figure with its 95 % interval; "too few
    reviews" below MIN_CASES reviewed cases."""

    def figure(a: Agreement, value: Interval | None, percent: bool = True) -> str:
        return "too few reviews" if a.cases < MIN_CASES else _with_interval(value, percent)

    return pd.DataFrame(
        {
            "Model version": [a.model_version for a in rows],
            "Reviewed cases": [a.cases for a in rows],
            "Sensitivity": [
                figure(a, wilson(a.true_positive, a.true_positive + a.false_negative)) for a in rows
            ],
            "Specificity": [
                figure(a, wilson(a.true_negative, a.true_negative + a.false_positive)) for a in rows
            ],
            "Agreement": [
                figure(a, wilson(a.true_positive + a.true_negative, a.cases)) for a in rows
            ],
            "Cohen's κ": [
                figure(
                    a,
                    kappa_interval(
                        a.true_positive, a.false_positive, a.false_negative, a.true_negative
                    ),
                    percent=False,
                )
                for a in rows
            ],
            "TP": [a.true_positive for a in rows],
            "FP": [a.false_positive for a in rows],
            "FN": [a.false_negative for a in rows],
            "TN": [a.true_negative for a in rows],
        }
    )


def reader_agreement(dashboard: services.Dashboard) -> None:
    """Reader against reader: the first two readers of each prediction reviewed twice."""
    with dashboard.factory() as session:
        pairs = admin.reader_pairs(session=session)
    st.markdown("**Reader against reader**, on predictions two readers reviewed")
    n = len(pairs)
    if n < MIN_CASES:
        st.caption(
            f"Too few reviews: {n} prediction{'s' * (n != 1)} reviewed by two readers; the "
            f"figures show from {MIN_CASES}."
        )
        return
    positive = browse.POSITIVE_LABEL
    both = sum(p.first == positive and p.second == positive for p in pairs)
    first_only = sum(p.first == positive and p.second != positive for p in pairs)
    second_only = sum(p.first != positive and p.second == positive for p in pairs)
    neither = n - both - first_only - second_only
    kappa = kappa_interval(both, first_only, second_only, neither)
    agree = wilson(both + neither, n)
    cells = st.columns(3)
    cells[0].metric("Predictions read twice", f"{n:,}")
    cells[1].metric("Readers agree (95% CI)", _with_interval(agree, percent=True))
    cells[2].metric("Cohen's κ (95% CI)", _with_interval(kappa, percent=False))
    st.caption(
        "Each prediction's first two readers, each by their latest review. Intervals: Wilson "
        "for proportions, a percentile bootstrap (4,000 resamples) for κ."
    )
