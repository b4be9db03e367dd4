"""Readers' reviews: a verdict stored beside a prediction (never changing it), and how often
readers agree with each model version."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.browse import LABELS, POSITIVE_LABEL, QueryError, latest_review_ids
from db.models import Prediction, Review
from model.agreement import Agreement

REVIEWER_MAX = 128


def add_review(
    *,
    session: Session,
    prediction_id: int,
    reviewer: str,
    verdict: str,
    note: str | None = None,
) -> Review:
    """Store a reader's verdict beside the prediction; the prediction itself is never changed."""
    reviewer = " ".join(reviewer.split())
    if not reviewer:
        raise QueryError("a review needs the reader's name")
    if len(reviewer) > REVIEWER_MAX:
        raise QueryError(f"reader name longer than {REVIEWER_MAX} characters")
    if verdict not in LABELS:
        raise QueryError(f"unknown verdict {verdict!r}; choose from {', '.join(LABELS)}")
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        raise QueryError(f"no prediction with id {prediction_id}")
    review = Review(
        prediction_id=prediction.id,
        reviewer=reviewer,
        verdict=verdict,
        agrees=verdict == prediction.label,
        note=(note or "").strip() or None,
    )
    session.add(review)
    session.flush()
    return review


def agreement_by_model(*, session: Session) -> list[Agreement]:
    """2×2 tables of model label against each prediction's latest reader verdict."""
    rows = session.execute(
        select(Prediction.model_version, Prediction.label, Review.verdict, func.count())
        .join(Review, Review.prediction_id == Prediction.id)
        .where(Review.id.in_(latest_review_ids()))
        .group_by(Prediction.model_version, Prediction.label, Review.verdict)
    ).all()
    tables: dict[str, dict[tuple[bool, bool], int]] = {}
    for version, label, verdict, count in rows:
        cell = (label == POSITIVE_LABEL, verdict == POSITIVE_LABEL)
        table = tables.setdefault(version, {})
        table[cell] = table.get(cell, 0) + int(count)
    return [
        Agreement(
            model_version=version,
            true_positive=t.get((True, True), 0),
            false_positive=t.get((True, False), 0),
            false_negative=t.get((False, True), 0),
            true_negative=t.get((False, False), 0),
        )
        for version, t in sorted(tables.items())
    ]
