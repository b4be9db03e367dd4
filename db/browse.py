"""Queries behind the dashboard: browse (filter, sort, page), detail, DICOM studies,
overview figures.

Everything is filtered, sorted, counted and aggregated in the database, so a page costs the
same at 100 rows as at 100,000. Query functions take a keyword-only `session`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, Select, and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from db.models import (
    DicomExport,
    ExportState,
    Image,
    ImageSource,
    ImageStatus,
    Prediction,
    Review,
    Verdict,
    utcnow,
)

# The checkpoint's class names (model.checkpoint.CLASS_NAMES); kept here so db/ stays free of torch.
NEGATIVE_LABEL = "not_fractured"
POSITIVE_LABEL = "fractured"
LABELS = (POSITIVE_LABEL, NEGATIVE_LABEL)
STATUSES = tuple(s.value for s in ImageStatus)
SOURCES = tuple(s.value for s in ImageSource)
VERDICTS = tuple(v.value for v in Verdict)
ALL_VERSIONS = "*"  # BrowseFilter.model_version: every model's prediction, one row each
NO_REGION = "none"  # BrowseFilter.regions: predictions of a model without a region head
NOT_EXPORTED = "none"  # BrowseFilter.export_states: predictions with no export to PACS
EXPORT_STATES = (*(s.value for s in ExportState), NOT_EXPORTED)
NO_ERROR_TEXT = ""  # BrowseFilter.failure_reason: failed images stored without an error text
REASON_ENDS = (": ", " (")  # a stored error's reason ends where its details begin


def failure_reason(error: str | None) -> str:
    """A stored error's reason without its details, the same for every file it happens to:
    "corrupt image data: broken PNG file" → "corrupt image data"; NO_ERROR_TEXT for none."""
    text = (error or "").strip()
    ends = [at for at in (text.find(cut) for cut in REASON_ENDS) if at > 0]
    return text[: min(ends)] if ends else text


class ReviewState(enum.StrEnum):
    """A prediction's review state, judged by its latest review."""

    ANY = "any"
    UNREVIEWED = "unreviewed"
    REVIEWED = "reviewed"
    AGREED = "agreed"
    DISAGREED = "disagreed"


class SortKey(enum.StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    PROBABILITY_DESC = "probability_desc"
    PROBABILITY_ASC = "probability_asc"
    FILENAME = "filename"


class QueryError(ValueError):
    """A filter, sort or review value outside what the query accepts."""


def _check_choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise QueryError(f"unknown {name} {unknown!r}; choose from {', '.join(allowed)}")
    return tuple(values)


@dataclass(frozen=True)
class BrowseFilter:
    """What the browse table shows; empty tuples and None mean "no restriction"."""

    labels: tuple[str, ...] = ()
    probability_min: float | None = None
    probability_max: float | None = None
    received_from: datetime | None = None  # inclusive, timezone-aware (UTC)
    received_before: datetime | None = None  # exclusive
    sources: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    review_state: ReviewState = ReviewState.ANY
    filename: str | None = None  # case-insensitive substring
    # None: each image's latest prediction (one row per image); ALL_VERSIONS: one row per
    # prediction (audit, comparing models); a version: only that model's predictions.
    model_version: str | None = None
    regions: tuple[str, ...] = ()  # predicted body regions; NO_REGION matches region-less rows
    region_disagrees: bool = False  # only rows whose DICOM body part names another region
    verdicts: tuple[str, ...] = ()  # the model's answers: fracture, doubt, no_fracture
    study_uid: str | None = None  # only instances of this DICOM study
    # Where the row's prediction stands on its way to PACS: sent, pending, failed, or
    # NOT_EXPORTED (no export row: not a DICOM image, or not queued).
    export_states: tuple[str, ...] = ()
    # Only failed images whose error gives this reason (see failure_reason); NO_ERROR_TEXT:
    # failed without one.
    failure_reason: str | None = None

    def __post_init__(self) -> None:
        _check_choices("label", self.labels, LABELS)
        _check_choices("verdict", self.verdicts, VERDICTS)
        _check_choices("PACS send state", self.export_states, EXPORT_STATES)
        _check_choices("source", self.sources, SOURCES)
        _check_choices("status", self.statuses, STATUSES)
        for bound in (self.probability_min, self.probability_max):
            if bound is not None and not 0.0 <= bound <= 1.0:
                raise QueryError(f"probability bounds must be between 0 and 1, not {bound}")
        for moment in (self.received_from, self.received_before):
            if moment is not None and moment.tzinfo is None:
                raise QueryError("date bounds must be timezone-aware (UTC)")
        ReviewState(self.review_state)

    @property
    def restricts_prediction(self) -> bool:
        """True when only rows with a prediction can match."""
        return bool(
            self.labels
            or self.probability_min is not None
            or self.probability_max is not None
            or self.review_state != ReviewState.ANY
            or self.model_version not in (None, ALL_VERSIONS)
            or self.regions
            or self.region_disagrees
            or self.verdicts
            or self.export_states
        )


@dataclass(frozen=True)
class LatestReview:
    reviewer: str
    verdict: str
    agrees: bool
    note: str | None
    created_at: datetime
    count: int  # reviews of this prediction, this one included


@dataclass(frozen=True)
class BrowseRow:
    """One line of the browse table: an image and one of its predictions (if any)."""

    image_id: int
    filename: str
    source: str
    status: str
    received_at: datetime
    error: str | None
    warning: str | None
    prediction_id: int | None
    model_version: str | None
    label: str | None
    probability: float | None
    threshold: float | None
    predicted_at: datetime | None
    threshold_source: str | None = None
    region: str | None = None
    region_probability: float | None = None
    region_disagrees: bool | None = None
    verdict: str | None = None
    doubt_threshold: float | None = None
    boxes: list[list[float]] | None = None  # [x, y, width, height, score] each; None: no boxes
    study_uid: str | None = None  # DICOM Study Instance UID (instances received over DICOM)
    review: LatestReview | None = None
    export_state: str | None = None  # the prediction's trip to PACS; None: no export row


@dataclass(frozen=True)
class Page:
    rows: list[BrowseRow]
    total: int
    page: int  # 1-based
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


_ROW_COLUMNS: tuple[Any, ...] = (
    Image.id.label("image_id"),
    Image.filename,
    Image.source,
    Image.status,
    Image.received_at,
    Image.error,
    Image.warning,
    Prediction.id.label("prediction_id"),
    Prediction.model_version,
    Prediction.label,
    Prediction.probability,
    Prediction.threshold,
    Prediction.created_at.label("predicted_at"),
    Prediction.threshold_source,
    Prediction.region,
    Prediction.region_probability,
    Prediction.region_disagrees,
    Prediction.verdict,
    Prediction.doubt_threshold,
    Prediction.boxes,
    Image.study_uid,
)


def latest_review_ids() -> Select[Any]:
    """The id of each prediction's latest review."""
    return select(func.max(Review.id)).group_by(Review.prediction_id)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(flt: BrowseFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if flt.labels:
        conditions.append(Prediction.label.in_(flt.labels))
    if flt.probability_min is not None:
        conditions.append(Prediction.probability >= flt.probability_min)
    if flt.probability_max is not None:
        conditions.append(Prediction.probability <= flt.probability_max)
    if flt.received_from is not None:
        conditions.append(Image.received_at >= flt.received_from)
    if flt.received_before is not None:
        conditions.append(Image.received_at < flt.received_before)
    if flt.sources:
        conditions.append(Image.source.in_(flt.sources))
    if flt.statuses:
        conditions.append(Image.status.in_(flt.statuses))
    if flt.filename and flt.filename.strip():
        pattern = f"%{_escape_like(flt.filename.strip().lower())}%"
        conditions.append(func.lower(Image.filename).like(pattern, escape="\\"))
    if flt.model_version not in (None, ALL_VERSIONS):
        conditions.append(Prediction.model_version == flt.model_version)
    if flt.regions:
        named = [r for r in flt.regions if r != NO_REGION]
        matches = [Prediction.region.in_(named)] if named else []
        if NO_REGION in flt.regions:
            matches.append(Prediction.region.is_(None))
        conditions.append(or_(*matches))
    if flt.region_disagrees:
        conditions.append(Prediction.region_disagrees.is_(True))
    if flt.verdicts:
        conditions.append(Prediction.verdict.in_(flt.verdicts))
    if flt.study_uid:
        conditions.append(Image.study_uid == flt.study_uid)
    if flt.failure_reason is not None:
        conditions.append(Image.status == ImageStatus.FAILED)
        if flt.failure_reason == NO_ERROR_TEXT:
            conditions.append(or_(Image.error.is_(None), Image.error == ""))
        else:
            reason = _escape_like(flt.failure_reason)
            conditions.append(
                or_(
                    Image.error == flt.failure_reason,
                    *(Image.error.like(reason + cut + "%", escape="\\") for cut in REASON_ENDS),
                )
            )
    if flt.export_states:
        # Driven from the (small) exports table, like the review states below.
        named = [s for s in flt.export_states if s != NOT_EXPORTED]
        matches = []
        if named:
            exported = select(DicomExport.prediction_id).where(DicomExport.state.in_(named))
            matches.append(Prediction.id.in_(exported))
        if NOT_EXPORTED in flt.export_states:
            matches.append(Prediction.id.not_in(select(DicomExport.prediction_id)))
        conditions.append(or_(*matches))
    state = ReviewState(flt.review_state)
    if state == ReviewState.UNREVIEWED:
        conditions.append(Prediction.id.not_in(select(Review.prediction_id)))
    elif state == ReviewState.REVIEWED:
        conditions.append(Prediction.id.in_(select(Review.prediction_id)))
    elif state in (ReviewState.AGREED, ReviewState.DISAGREED):
        # Driven from the (small) reviews table rather than probed once per prediction.
        conditions.append(
            Prediction.id.in_(
                select(Review.prediction_id).where(
                    Review.id.in_(latest_review_ids()),
                    Review.agrees.is_(state == ReviewState.AGREED),
                )
            )
        )
    return conditions


def _base(
    columns: Sequence[Any], flt: BrowseFilter, *, part: Literal["all", "scored", "unscored"] = "all"
) -> Select[Any]:
    """Rows of images joined to their predictions; `part` keeps those with or without one."""
    query = select(*columns).select_from(Image)
    on = Prediction.image_id == Image.id
    if flt.model_version is None:
        # Each image's latest prediction: the one stored last (highest id).
        later = aliased(Prediction)
        on = and_(
            on,
            Prediction.id
            == select(func.max(later.id))
            .where(later.image_id == Image.id)
            .correlate(Image)
            .scalar_subquery(),
        )
    if part == "scored" or flt.restricts_prediction:
        query = query.join(Prediction, on)
    else:
        query = query.outerjoin(Prediction, on)
    if part == "unscored":
        query = query.where(Prediction.id.is_(None))
    return query.where(and_(True, *_conditions(flt)))


def _ordering(sort: SortKey, *, reverse: bool = False) -> list[Any]:
    """A total order (ids break ties), or its exact reverse."""
    sort = SortKey(sort)
    keys: list[tuple[Any, bool]]  # (column, ascending)
    if sort in (SortKey.NEWEST, SortKey.OLDEST):
        ascending = sort == SortKey.OLDEST
        keys = [(Image.received_at, ascending), (Image.id, ascending), (Prediction.id, ascending)]
    elif sort in (SortKey.PROBABILITY_DESC, SortKey.PROBABILITY_ASC):
        keys = [
            (Prediction.probability, sort == SortKey.PROBABILITY_ASC),
            (Image.id, False),
            (Prediction.id, False),
        ]
    else:
        keys = [(Image.filename, True), (Image.id, True), (Prediction.id, True)]
    ordering = []
    for column, ascending in keys:
        ascending = ascending != reverse
        term = column.asc() if ascending else column.desc()
        # Images without a prediction sort after every probability, in both directions.
        if column is Prediction.probability:
            term = term.nulls_first() if reverse else term.nulls_last()
        ordering.append(term)
    return ordering


def _rows(session: Session, raw: Sequence[Row[Any]]) -> list[BrowseRow]:
    """Page rows plus the latest review and the PACS send state of each prediction on the
    page (three small queries)."""
    prediction_ids = [r.prediction_id for r in raw if r.prediction_id is not None]
    latest: dict[int, LatestReview] = {}
    sent: dict[int, str] = {}
    if prediction_ids:
        counts: dict[int, int] = {
            pid: int(n)
            for pid, n in session.execute(
                select(Review.prediction_id, func.count(Review.id))
                .where(Review.prediction_id.in_(prediction_ids))
                .group_by(Review.prediction_id)
            ).all()
        }
        newest = (
            select(func.max(Review.id))
            .where(Review.prediction_id.in_(prediction_ids))
            .group_by(Review.prediction_id)
        )
        for review in session.scalars(select(Review).where(Review.id.in_(newest))):
            latest[review.prediction_id] = LatestReview(
                reviewer=review.reviewer,
                verdict=review.verdict,
                agrees=review.agrees,
                note=review.note,
                created_at=review.created_at,
                count=counts.get(review.prediction_id, 1),
            )
        sent = {
            pid: str(state)
            for pid, state in session.execute(
                select(DicomExport.prediction_id, DicomExport.state).where(
                    DicomExport.prediction_id.in_(prediction_ids)
                )
            ).all()
        }
    return [
        BrowseRow(
            **r._mapping,
            review=latest.get(r.prediction_id) if r.prediction_id else None,
            export_state=sent.get(r.prediction_id) if r.prediction_id else None,
        )
        for r in raw
    ]


def count_rows(*, session: Session, flt: BrowseFilter | None = None) -> int:
    """How many table rows match: images without a prediction count once."""
    flt = flt or BrowseFilter()
    # The unfiltered views, shown on every visit, are counted from indexes without a join.
    if flt == BrowseFilter():  # one row per image
        return int(session.scalar(select(func.count(Image.id))) or 0)
    if flt == BrowseFilter(model_version=ALL_VERSIONS):
        # Images without a prediction, plus every prediction (each has its image).
        images = select(func.count(Image.id)).scalar_subquery()
        predictions = select(func.count(Prediction.id)).scalar_subquery()
        scored = select(func.count(Prediction.image_id.distinct())).scalar_subquery()
        return int(session.scalar(select(images + predictions - scored)) or 0)
    return int(session.scalar(_base([func.count()], flt)) or 0)


def browse(
    *,
    session: Session,
    flt: BrowseFilter | None = None,
    sort: SortKey = SortKey.NEWEST,
    page: int = 1,
    page_size: int = 50,
) -> Page:
    """One page of the filtered, sorted table and the number of matching rows."""
    flt = flt or BrowseFilter()
    if not 1 <= page_size <= 1000:
        raise QueryError(f"page size must be between 1 and 1000, not {page_size}")
    total = count_rows(session=session, flt=flt)
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    offset = (page - 1) * page_size
    raw = _page_rows(session, flt, sort, offset=offset, limit=page_size, total=total)
    return Page(rows=_rows(session, raw), total=total, page=page, page_size=page_size)


def _page_rows(
    session: Session, flt: BrowseFilter, sort: SortKey, *, offset: int, limit: int, total: int
) -> list[Row[Any]]:
    if sort in (SortKey.PROBABILITY_DESC, SortKey.PROBABILITY_ASC) and not flt.restricts_prediction:
        # Images without a prediction sort last. Reading the scored rows on their own lets the
        # database walk the probability index instead of sorting every row of an outer join.
        raw = list(
            session.execute(
                _base(_ROW_COLUMNS, flt, part="scored")
                .order_by(*_ordering(sort))
                .limit(limit)
                .offset(offset)
            ).all()
        )
        if len(raw) < limit:
            if raw or offset == 0:
                scored = offset + len(raw)
            else:
                scored = int(session.scalar(_base([func.count()], flt, part="scored")) or 0)
            raw += session.execute(
                _base(_ROW_COLUMNS, flt, part="unscored")
                .order_by(*_ordering(sort))
                .limit(limit - len(raw))
                .offset(max(0, offset - scored))
            ).all()
        return raw
    query = _base(_ROW_COLUMNS, flt)
    if offset > total // 2:
        # Deep pages are read from the other end: OFFSET cost grows with the rows skipped.
        size = min(limit, total - offset)
        ordered = query.order_by(*_ordering(sort, reverse=True))
        return list(session.execute(ordered.limit(size).offset(total - offset - size)).all())[::-1]
    return list(session.execute(query.order_by(*_ordering(sort)).limit(limit).offset(offset)).all())


@dataclass(frozen=True)
class RowKey:
    """A table row: an image and the prediction the row shows (None: an image without one)."""

    image_id: int
    prediction_id: int | None


def _sort_keys(sort: SortKey) -> list[tuple[Any, bool]]:
    """The keys `_ordering` sorts by, as (expression, ascending), NULLs replaced by values that
    sort where the ordering puts them, so rows can be compared with a row's own values."""
    sort = SortKey(sort)
    prediction_id = func.coalesce(Prediction.id, 0)  # one NULL row per image at most
    if sort in (SortKey.NEWEST, SortKey.OLDEST):
        ascending = sort == SortKey.OLDEST
        return [(Image.received_at, ascending), (Image.id, ascending), (prediction_id, ascending)]
    if sort in (SortKey.PROBABILITY_DESC, SortKey.PROBABILITY_ASC):
        ascending = sort == SortKey.PROBABILITY_ASC
        # Images without a prediction sort after every probability, in both directions.
        probability = func.coalesce(Prediction.probability, 2.0 if ascending else -1.0)
        return [(probability, ascending), (Image.id, False), (prediction_id, False)]
    return [(Image.filename, True), (Image.id, True), (prediction_id, True)]


def _row_prediction(session: Session, flt: BrowseFilter, key: RowKey) -> int | None:
    """The prediction a row for this image shows: the key's own, else the image's latest (or
    the filtered model version's)."""
    if key.prediction_id is not None:
        return key.prediction_id
    query = select(func.max(Prediction.id)).where(Prediction.image_id == key.image_id)
    if flt.model_version not in (None, ALL_VERSIONS):
        query = query.where(Prediction.model_version == flt.model_version)
    found = session.scalar(query)
    return None if found is None else int(found)


def _beyond(
    session: Session, flt: BrowseFilter, sort: SortKey, key: RowKey, *, after: bool
) -> ColumnElement[bool] | None:
    """Rows after (or before) the key's row in the table's order: a lexicographic comparison
    with that row's own sort values (the row need not match the filters). None: no such image."""
    keys = _sort_keys(sort)
    prediction_id = _row_prediction(session, flt, key)
    on = and_(Prediction.image_id == Image.id, Prediction.id == prediction_id)
    values = session.execute(
        select(*(expression for expression, _ in keys))
        .select_from(Image)
        .outerjoin(Prediction, on)
        .where(Image.id == key.image_id)
    ).first()
    if values is None:
        return None
    return _lexicographic(keys, list(values), after=after)


def _lexicographic(
    keys: Sequence[tuple[Any, bool]], values: Sequence[Any], *, after: bool
) -> ColumnElement[bool]:
    """Rows whose keys come after (or before) these values, key by key."""
    alternatives = []
    for index, (expression, ascending) in enumerate(keys):
        equal = [keys[j][0] == values[j] for j in range(index)]
        later = expression > values[index] if ascending == after else expression < values[index]
        alternatives.append(and_(*equal, later))
    # The first key's bound on its own lets the database start from its index.
    first, ascending = keys[0]
    bound = first >= values[0] if ascending == after else first <= values[0]
    return and_(bound, or_(*alternatives))


def _by_probability(
    session: Session, flt: BrowseFilter, sort: SortKey, key: RowKey, *, forward: bool
) -> RowKey | None:
    """`neighbour` in a probability sort, in two parts as the table reads them: scored rows by
    the probability index, then images without a prediction (newest id first). A comparison
    over COALESCE(probability) would keep the database off the index: 0.6 s at 100,000."""
    prediction_id = _row_prediction(session, flt, key)
    anchor = session.execute(
        select(Image.id, Prediction.probability, Prediction.id)
        .select_from(Image)
        .outerjoin(
            Prediction, and_(Prediction.image_id == Image.id, Prediction.id == prediction_id)
        )
        .where(Image.id == key.image_id)
    ).first()
    if anchor is None:
        return None
    image_id, probability, scored_id = anchor
    ascending = SortKey(sort) == SortKey.PROBABILITY_ASC
    columns = [Image.id, Prediction.id]
    scored = _base(columns, flt, part="scored")
    unscored = None if flt.restricts_prediction else _base(columns, flt, part="unscored")

    def first(query: Select[Any] | None, reverse: bool) -> RowKey | None:
        if query is None:
            return None
        found = session.execute(query.order_by(*_ordering(sort, reverse=reverse)).limit(1)).first()
        if found is None:
            return None
        return RowKey(int(found[0]), None if found[1] is None else int(found[1]))

    if probability is not None:
        keys = [(Prediction.probability, ascending), (Image.id, False), (Prediction.id, False)]
        beyond = _lexicographic(keys, [probability, image_id, scored_id], after=forward)
        found = first(scored.where(beyond), reverse=not forward)
        if found is not None or not forward:
            return found
        return first(unscored, reverse=False)  # past the last scored row
    rest = _lexicographic([(Image.id, False)], [image_id], after=forward)
    found = first(None if unscored is None else unscored.where(rest), reverse=not forward)
    if found is not None or forward:
        return found
    return first(scored, reverse=True)  # before the first unscored row: the last scored one


def neighbour(
    *,
    session: Session,
    key: RowKey,
    flt: BrowseFilter | None = None,
    sort: SortKey = SortKey.NEWEST,
    forward: bool = True,
    unreviewed: bool = False,
) -> RowKey | None:
    """The row after (`forward`) or before the key's row in the filtered, sorted table, across
    page boundaries; with `unreviewed`, the next one whose prediction has no review yet. None:
    no such row (the end of the list, or nothing left to review)."""
    flt = flt or BrowseFilter()
    if unreviewed:
        if flt.review_state not in (ReviewState.ANY, ReviewState.UNREVIEWED):
            return None  # a list of reviewed rows has no unreviewed one
        flt = replace(flt, review_state=ReviewState.UNREVIEWED)
    if SortKey(sort) in (SortKey.PROBABILITY_DESC, SortKey.PROBABILITY_ASC):
        return _by_probability(session, flt, sort, key, forward=forward)
    beyond = _beyond(session, flt, sort, key, after=forward)
    if beyond is None:
        return None
    found = session.execute(
        _base([Image.id, Prediction.id], flt)
        .where(beyond)
        .order_by(*_ordering(sort, reverse=not forward))
        .limit(1)
    ).first()
    if found is None:
        return None
    return RowKey(image_id=int(found[0]), prediction_id=None if found[1] is None else int(found[1]))


def position(
    *,
    session: Session,
    key: RowKey,
    flt: BrowseFilter | None = None,
    sort: SortKey = SortKey.NEWEST,
) -> int | None:
    """How many rows of the filtered, sorted table come before the key's row (its 0-based
    index when it matches the filters); None when there is no such image."""
    flt = flt or BrowseFilter()
    before = _beyond(session, flt, sort, key, after=False)
    if before is None:
        return None
    return int(session.scalar(_base([func.count()], flt).where(before)) or 0)


def iter_rows(
    *,
    session: Session,
    flt: BrowseFilter | None = None,
    sort: SortKey = SortKey.NEWEST,
    chunk: int = 1000,
) -> Iterator[BrowseRow]:
    """Every matching row, streamed from the database in chunks (for CSV export)."""
    query = _base(_ROW_COLUMNS, flt or BrowseFilter()).order_by(*_ordering(sort))
    result = session.execute(query.execution_options(yield_per=chunk))
    for part in result.partitions():
        yield from _rows(session, part)


# -- detail and review -----------------------------------------------------------------------


def image_detail(*, session: Session, image_id: int) -> Image | None:
    """The image with its predictions and their reviews loaded (oldest first)."""
    return session.scalar(
        select(Image)
        .where(Image.id == image_id)
        .options(selectinload(Image.predictions).selectinload(Prediction.reviews))
    )


def model_versions(*, session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Prediction.model_version).distinct().order_by(Prediction.model_version)
        )
    )


# -- DICOM studies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """Instances received over DICOM that share a Study Instance UID."""

    study_uid: str
    images: int
    last_received_at: datetime


def _studies(*where: ColumnElement[bool]) -> Select[str | None, int, datetime]:
    last = func.max(Image.received_at)
    return (
        select(Image.study_uid, func.count(Image.id), last)
        .where(Image.study_uid.is_not(None), *where)
        .group_by(Image.study_uid)
        .order_by(last.desc(), Image.study_uid)
    )


def studies(*, session: Session, limit: int = 500) -> list[Study]:
    """The DICOM studies with the most recently received instances, newest first."""
    rows = session.execute(_studies().limit(limit)).all()
    return [Study(study_uid=str(uid), images=int(n), last_received_at=at) for uid, n, at in rows]


def study(*, session: Session, study_uid: str) -> Study | None:
    """One study's summary; None when no stored instance belongs to it."""
    for uid, n, at in session.execute(_studies(Image.study_uid == study_uid)).all():
        return Study(study_uid=str(uid), images=int(n), last_received_at=at)
    return None


def study_images(*, session: Session, study_uid: str, limit: int = 50) -> tuple[list[Image], int]:
    """The study's first `limit` instances in order of arrival, with their predictions, and
    how many it has in all."""
    total = session.scalar(select(func.count(Image.id)).where(Image.study_uid == study_uid))
    images = session.scalars(
        select(Image)
        .where(Image.study_uid == study_uid)
        .order_by(Image.received_at, Image.id)
        .limit(limit)
        .options(selectinload(Image.predictions))
    )
    return list(images), int(total or 0)


# -- overview ----------------------------------------------------------------------------------


def status_counts(*, session: Session) -> dict[str, int]:
    """Images per status, every status present (zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in session.execute(
        select(Image.status, func.count()).group_by(Image.status)
    ).all():
        counts[status] = int(count)
    return counts


def label_counts(*, session: Session, model_version: str | None = None) -> dict[str, int]:
    query = select(Prediction.label, func.count()).group_by(Prediction.label)
    if model_version:
        query = query.where(Prediction.model_version == model_version)
    counts = dict.fromkeys(LABELS, 0)
    for label, count in session.execute(query).all():
        counts[label] = int(count)
    return counts


def _bucket(session: Session, column: Any, hourly: bool) -> ColumnElement[str]:
    """A UTC day ('2026-01-31') or hour ('2026-01-31 14:00') as text, on either database."""
    if session.get_bind().dialect.name == "postgresql":
        fmt = 'YYYY-MM-DD HH24:"00"' if hourly else "YYYY-MM-DD"
        return func.to_char(func.timezone("UTC", column), fmt)
    # SQLite stores these columns as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'; slicing it is
    # several times faster than strftime() over a large table.
    if hourly:
        return func.substr(column, 1, 13).concat(":00")
    return func.substr(column, 1, 10)


@dataclass(frozen=True)
class DayRate:
    day: str
    total: int
    positives: int

    @property
    def rate(self) -> float:
        return self.positives / self.total if self.total else 0.0


def positive_rate_by_day(
    *,
    session: Session,
    days: int = 30,
    now: datetime | None = None,
    model_version: str | None = None,
) -> list[DayRate]:
    """Predictions and positives per UTC day over the last `days` days, oldest first."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    day = _bucket(session, Prediction.created_at, hourly=False).label("day")
    positives = func.sum(case((Prediction.label == POSITIVE_LABEL, 1), else_=0))
    query = (
        select(day, func.count(), positives)
        .where(Prediction.created_at >= cutoff)
        .group_by(day)
        .order_by(day)
    )
    if model_version:
        query = query.where(Prediction.model_version == model_version)
    return [
        DayRate(day=str(d), total=int(n), positives=int(p or 0))
        for d, n, p in session.execute(query).all()
    ]


@dataclass(frozen=True)
class RegionCount:
    region: str | None  # None: predictions of a model without a region head
    total: int
    positives: int
    disagreements: int  # DICOM body part named another region

    @property
    def rate(self) -> float:
        return self.positives / self.total if self.total else 0.0


def counts_by_region(*, session: Session, model_version: str | None = None) -> list[RegionCount]:
    """Predictions, positives and body-part disagreements per predicted region, largest first
    (predictions without a region last among equals)."""
    positives = func.sum(case((Prediction.label == POSITIVE_LABEL, 1), else_=0))
    disagreements = func.sum(case((Prediction.region_disagrees.is_(True), 1), else_=0))
    query = select(Prediction.region, func.count(), positives, disagreements).group_by(
        Prediction.region
    )
    if model_version:
        query = query.where(Prediction.model_version == model_version)
    rows = [
        RegionCount(region=r, total=int(n), positives=int(p or 0), disagreements=int(d or 0))
        for r, n, p, d in session.execute(query).all()
    ]
    return sorted(rows, key=lambda row: (-row.total, row.region is None, row.region or ""))


def predicted_regions(*, session: Session) -> list[str]:
    """Every region some stored prediction names, sorted."""
    return list(
        session.scalars(
            select(Prediction.region)
            .where(Prediction.region.is_not(None))
            .distinct()
            .order_by(Prediction.region)
        )
    )


@dataclass(frozen=True)
class HourCount:
    hour: str
    predictions: int
    failures: int


def throughput_by_hour(
    *, session: Session, hours: int = 48, now: datetime | None = None
) -> list[HourCount]:
    """Predictions stored and images failed per UTC hour over the last `hours` hours."""
    cutoff = (now or utcnow()) - timedelta(hours=hours)
    done_hour = _bucket(session, Prediction.created_at, hourly=True).label("hour")
    done = dict(
        session.execute(
            select(done_hour, func.count())
            .where(Prediction.created_at >= cutoff)
            .group_by(done_hour)
        ).all()
    )
    failed_hour = _bucket(session, Image.updated_at, hourly=True).label("hour")
    failed = dict(
        session.execute(
            select(failed_hour, func.count())
            .where(Image.status == ImageStatus.FAILED, Image.updated_at >= cutoff)
            .group_by(failed_hour)
        ).all()
    )
    return [
        HourCount(hour=str(h), predictions=int(done.get(h, 0)), failures=int(failed.get(h, 0)))
        for h in sorted(set(done) | set(failed))
    ]
