"""Queries behind the Overview's figures for the admin: why images failed, how long an image
waits for its result, the oldest image still waiting, the last day's rates beside the month's,
and readers' agreement with each other. Query functions take a keyword-only `session`; every
query runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, exists, func, select
from sqlalchemy.orm import Session, aliased

from db.browse import POSITIVE_LABEL, failure_reason
from db.models import Image, ImageStatus, Prediction, Review, utcnow

WAITING = (ImageStatus.QUEUED, ImageStatus.PROCESSING)


@dataclass(frozen=True)
class ReasonCount:
    reason: str  # failure_reason(...) of the stored errors; "" for none stored
    images: int


def failure_reasons(*, session: Session) -> list[ReasonCount]:
    """Failed images by reason (the stored error without its per-file details), most first."""
    counts: dict[str, int] = {}
    for error, count in session.execute(
        select(Image.error, func.count())
        .where(Image.status == ImageStatus.FAILED)
        .group_by(Image.error)
    ).all():
        reason = failure_reason(error)
        counts[reason] = counts.get(reason, 0) + int(count)
    return [
        ReasonCount(reason=reason, images=images)
        for reason, images in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def _seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    """end − start in seconds, computed by the database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86_400.0


def is_first_prediction() -> ColumnElement[bool]:
    """The prediction is its image's first: its result (a rescore adds later ones). Probed per
    row through the (image, model) index, so a day's results cost a day's rows, not a scan."""
    earlier = aliased(Prediction)
    return ~exists().where(earlier.image_id == Prediction.image_id, earlier.id < Prediction.id)


def result_times(*, session: Session, since: datetime | None = None) -> list[float]:
    """Seconds from each image's arrival to its first prediction, for results stored since
    `since` (all when None), in no order."""
    seconds = _seconds_between(session, Image.received_at, Prediction.created_at)
    query = (
        select(seconds)
        .select_from(Prediction)
        .join(Image, Image.id == Prediction.image_id)
        .where(is_first_prediction())
    )
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    return [max(0.0, float(s)) for s in session.scalars(query) if s is not None]


def oldest_waiting(*, session: Session) -> datetime | None:
    """When the longest-waiting queued or processing image arrived; None when none waits."""
    return session.scalar(select(func.min(Image.received_at)).where(Image.status.in_(WAITING)))


@dataclass(frozen=True)
class Rates:
    """Results (predictions and failures) in a period: how many, how many positive, failed."""

    predictions: int
    positives: int
    failures: int

    @property
    def results(self) -> int:
        return self.predictions + self.failures


def rates(*, session: Session, start: datetime, end: datetime) -> Rates:
    """First predictions stored in [start, end), their positives, and images failed then (by
    the failed image's last update)."""
    positives = func.sum(case((Prediction.label == POSITIVE_LABEL, 1), else_=0))
    predictions, positive = session.execute(
        select(func.count(), positives).where(
            Prediction.created_at >= start,
            Prediction.created_at < end,
            is_first_prediction(),
        )
    ).one()
    failures = session.scalar(
        select(func.count()).where(
            Image.status == ImageStatus.FAILED, Image.updated_at >= start, Image.updated_at < end
        )
    )
    return Rates(
        predictions=int(predictions or 0), positives=int(positive or 0), failures=int(failures or 0)
    )


def recent_and_usual(
    *,
    session: Session,
    now: datetime | None = None,
    recent: timedelta = timedelta(days=1),
    history: timedelta = timedelta(days=30),
) -> tuple[Rates, Rates]:
    """The last `recent` period's rates and those of the `history` before it."""
    now = now or utcnow()
    return (
        rates(session=session, start=now - recent, end=now),
        rates(session=session, start=now - recent - history, end=now - recent),
    )


@dataclass(frozen=True)
class ReaderPair:
    """Two readers' verdicts on the same prediction: the first two to review it, each by their
    latest review."""

    first: str  # verdict labels
    second: str


def reader_pairs(*, session: Session) -> list[ReaderPair]:
    """One pair per prediction that two or more readers reviewed."""
    shared = (
        select(Review.prediction_id)
        .group_by(Review.prediction_id)
        .having(func.count(Review.reviewer.distinct()) >= 2)
    )
    verdicts: dict[int, dict[str, str]] = {}  # prediction → reader → latest verdict, in order
    for prediction_id, reviewer, verdict in session.execute(
        select(Review.prediction_id, Review.reviewer, Review.verdict)
        .where(Review.prediction_id.in_(shared))
        .order_by(Review.prediction_id, Review.id)
    ).all():
        readers = verdicts.setdefault(prediction_id, {})
        readers[reviewer] = verdict  # a reader's later review replaces theirs, keeps the order
    return [
        ReaderPair(first=first, second=second)
        for readers in verdicts.values()
        for first, second in [list(readers.values())[:2]]
    ]


def prediction_version(*, session: Session) -> tuple[int, int]:
    """Changes whenever a prediction or a review is stored (both only ever added): a cache key
    for figures drawn from them alone. Read from the primary keys' ends, at no cost."""
    predictions = session.scalar(select(func.max(Prediction.id)))
    reviewed = session.scalar(select(func.max(Review.id)))
    return int(predictions or 0), int(reviewed or 0)
