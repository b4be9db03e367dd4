"""How model versions agree on the images that several of them scored (after a rescore)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session, aliased

from db.models import Prediction, Verdict

# The checkpoint's positive class name (db.browse.POSITIVE_LABEL), for rows stored without a
# verdict: a model of one operating point answers fracture or no fracture by its label.
_POSITIVE_LABEL = "fractured"
VERDICTS = tuple(v.value for v in Verdict)


def _verdict(prediction: type[Prediction]) -> ColumnElement[str]:
    implied = case(
        (prediction.label == _POSITIVE_LABEL, Verdict.FRACTURE.value),
        else_=Verdict.NO_FRACTURE.value,
    )
    return func.coalesce(prediction.verdict, implied)


@dataclass(frozen=True)
class VersionPair:
    """Two model versions over the images both scored: (earlier's verdict, later's) → images."""

    earlier: str
    later: str
    counts: dict[tuple[str, str], int]

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    @property
    def same(self) -> int:
        return sum(n for (a, b), n in self.counts.items() if a == b)

    @property
    def agreement(self) -> float | None:
        """Share of the images both scored that got the same verdict from each."""
        return self.same / self.images if self.images else None


def version_agreement(*, session: Session) -> list[VersionPair]:
    """Each pair of model versions that scored the same images, with the cross table of their
    verdicts; the earlier version is the one whose first prediction is older. Pairs with the
    most shared images first."""
    first_seen: dict[str, datetime] = {
        version: seen
        for version, seen in session.execute(
            select(Prediction.model_version, func.min(Prediction.created_at)).group_by(
                Prediction.model_version
            )
        ).all()
    }
    if len(first_seen) < 2:  # the usual case, answered without the self-join
        return []
    one, other = aliased(Prediction), aliased(Prediction)
    one_verdict, other_verdict = _verdict(one), _verdict(other)
    rows = session.execute(
        select(one.model_version, other.model_version, one_verdict, other_verdict, func.count())
        .join(
            other,
            and_(other.image_id == one.image_id, other.model_version > one.model_version),
        )
        .group_by(one.model_version, other.model_version, one_verdict, other_verdict)
    ).all()
    pairs: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
    for a, b, verdict_a, verdict_b, count in rows:
        if (first_seen[b], b) < (first_seen[a], a):  # b is the earlier model: swap
            a, b, verdict_a, verdict_b = b, a, verdict_b, verdict_a
        cell = (str(verdict_a), str(verdict_b))
        table = pairs.setdefault((a, b), {})
        table[cell] = table.get(cell, 0) + int(count)
    found = [VersionPair(earlier=a, later=b, counts=t) for (a, b), t in pairs.items()]
    return sorted(found, key=lambda p: (-p.images, p.earlier, p.later))
