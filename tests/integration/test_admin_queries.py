"""Working through a Browse list record by record (next, previous, next unreviewed, across
pages), failure reasons, time to result, the oldest waiting image, the last day's rates and
reader-to-reader agreement, on real SQLite and real PostgreSQL databases."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import admin, browse, queries, reviews
from db.models import Image, Prediction
from db.session import transaction
from model.agreement import cohen_kappa, kappa_interval, usual_range, wilson
from tests.integration.test_browse_queries import ALL, NOW, seed


@pytest.fixture
def ids(factory: sessionmaker[Session]) -> dict[str, int]:
    """Test_browse_queries' ten images: scored, failed, queued, two model versions."""
    return seed(factory)


FILTERS = (
    browse.BrowseFilter(),
    browse.BrowseFilter(model_version=ALL),
    browse.BrowseFilter(sources=("watch",)),
    browse.BrowseFilter(probability_min=0.4),
)


def keys(session: Session, flt: browse.BrowseFilter, sort: browse.SortKey) -> list[browse.RowKey]:
    return [
        browse.RowKey(r.image_id, r.prediction_id)
        for r in browse.iter_rows(session=session, flt=flt, sort=sort)
    ]


@pytest.mark.parametrize("sort", list(browse.SortKey))
def test_next_and_previous_walk_the_list_in_its_order(
    factory: sessionmaker[Session], ids: dict, sort: browse.SortKey
) -> None:
    with factory() as session:
        for flt in FILTERS:
            listed = keys(session, flt, sort)
            assert len(listed) >= 4
            for index, key in enumerate(listed):
                after = browse.neighbour(session=session, key=key, flt=flt, sort=sort)
                before = browse.neighbour(
                    session=session, key=key, flt=flt, sort=sort, forward=False
                )
                assert after == (listed[index + 1] if index + 1 < len(listed) else None)
                assert before == (listed[index - 1] if index else None)
                assert browse.position(session=session, key=key, flt=flt, sort=sort) == index


def test_a_record_opened_without_its_prediction_steps_from_its_latest(
    factory: sessionmaker[Session], ids: dict
) -> None:
    """A link (`?image=N`) names no prediction: the row is the one the table shows for it."""
    with factory() as session:
        listed = keys(session, browse.BrowseFilter(), browse.SortKey.NEWEST)
        first = listed[0]
        opened = browse.RowKey(first.image_id, None)
        assert browse.neighbour(session=session, key=opened) == listed[1]
        assert browse.position(session=session, key=opened) == 0
        assert browse.neighbour(session=session, key=browse.RowKey(10**6, None)) is None


def test_a_record_outside_the_filter_steps_to_the_rows_beside_its_place(
    factory: sessionmaker[Session], ids: dict
) -> None:
    flt = browse.BrowseFilter(sources=("upload",))  # ward2/c (1.2 days), ward3/f (4.5 days)
    outside = browse.RowKey(ids["ward2/d.png"], None)  # 2.5 days old, from the inbox
    with factory() as session:
        after = browse.neighbour(session=session, key=outside, flt=flt)
        before = browse.neighbour(session=session, key=outside, flt=flt, forward=False)
        assert browse.position(session=session, key=outside, flt=flt) == 1
    assert after is not None and after.image_id == ids["ward3/f.png"]
    assert before is not None and before.image_id == ids["ward2/c.png"]


def test_next_unreviewed_skips_reviewed_rows_and_rows_without_a_prediction(
    factory: sessionmaker[Session], ids: dict
) -> None:
    sort = browse.SortKey.OLDEST
    with transaction(factory) as session:
        for name in ("ward4/i.png", "WARD4/H.PNG"):  # the 2nd and 3rd oldest
            prediction = session.scalar(select(Prediction).where(Prediction.image_id == ids[name]))
            assert prediction is not None
            reviews.add_review(
                session=session,
                prediction_id=prediction.id,
                reviewer="Dr A",
                verdict=prediction.label,
            )
    with factory() as session:
        listed = keys(session, browse.BrowseFilter(), sort)
        names = {image_id: name for name, image_id in ids.items()}
        walk, key = [], listed[0]
        while found := browse.neighbour(session=session, key=key, sort=sort, unreviewed=True):
            walk.append(names[found.image_id])
            key = found
        reviewed_only = browse.BrowseFilter(review_state=browse.ReviewState.REVIEWED)
        none_left = browse.neighbour(
            session=session, key=listed[0], flt=reviewed_only, sort=sort, unreviewed=True
        )
    # Oldest first: j, i (reviewed), H (reviewed), g (queued), f (failed), e, d, c, b, a.
    assert walk == ["ward3/e_100%.png", "ward2/d.png", "ward2/c.png", "ward1/b.png", "ward1/a.png"]
    assert none_left is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("corrupt image data: broken PNG file", "corrupt image data"),
        ("file not found (deleted or moved before it could be read)", "file not found"),
        ("cannot decode DICOM pixel data (JPEG 2000): x", "cannot decode DICOM pixel data"),
        ("empty file (0 bytes)", "empty file"),
        ("gave up after 3 attempts: worker lost", "gave up after 3 attempts"),
        ("plain reason", "plain reason"),
        (None, browse.NO_ERROR_TEXT),
    ],
)  # fmt: skip
def test_failure_reason_drops_the_per_file_details(error: str | None, reason: str) -> None:
    assert browse.failure_reason(error) == reason


def _fail(sessions: sessionmaker[Session], errors: dict[str, str | None]) -> dict[str, int]:
    """Failed images with these errors; their ids by name."""
    made = {}
    with transaction(sessions) as session:
        for index, (name, error) in enumerate(errors.items()):
            image, _ = queries.register_image(
                session=session,
                sha256=f"f{index:063x}",
                path=f"/nowhere/{name}",
                filename=name,
                size=10,
                source="watch",
            )
            session.flush()
            image.status, image.error = "failed", error
            made[name] = image.id
    return made


def test_failure_reasons_count_and_filter_the_same_images(
    factory: sessionmaker[Session], ids: dict
) -> None:
    failed = _fail(
        factory,
        {
            "x1.png": "corrupt image data: broken PNG file",
            "x2.png": "corrupt image data: bad Huffman code",
            "x3.png": "corrupt image data (decoder failure: x)",
            "x4.png": "corrupt image database: not a reason of the kind above",
            "x5.png": "empty file (0 bytes)",
            "x6.png": None,
        },
    )
    with factory() as session:
        counted = admin.failure_reasons(session=session)
        shown = {
            r.reason: {
                row.filename
                for row in browse.iter_rows(
                    session=session, flt=browse.BrowseFilter(failure_reason=r.reason)
                )
            }
            for r in counted
        }
    # The seed's ward3/f.png failed with "corrupt image data: boom".
    assert [(r.reason, r.images) for r in counted] == [
        ("corrupt image data", 4),
        ("", 1),
        ("corrupt image database", 1),
        ("empty file", 1),
    ]
    assert shown["corrupt image data"] == {"x1.png", "x2.png", "x3.png", "ward3/f.png"}
    assert shown["corrupt image database"] == {"x4.png"}
    assert shown[""] == {"x6.png"} and shown["empty file"] == {"x5.png"}
    assert set(failed) <= set().union(*shown.values())


def test_time_to_result_counts_each_images_first_prediction(
    factory: sessionmaker[Session], ids: dict
) -> None:
    """The seed stores V1's predictions 30 s after arrival and V2's 60 s after; ward1/a.png's
    V2 prediction is a rescore, not its result."""
    with factory() as session:
        every = admin.result_times(session=session)
        last_day = admin.result_times(session=session, since=NOW - timedelta(days=1))
    assert sorted(round(s, 3) for s in every) == [30.0] * 7 + [60.0]
    assert sorted(round(s, 3) for s in last_day) == [30.0, 30.0]  # ward1/a, ward1/b


def test_oldest_waiting_is_the_earliest_queued_or_processing_image(
    factory: sessionmaker[Session], ids: dict
) -> None:
    with factory() as session:
        queued = session.get(Image, ids["ward3/g.png"])
        assert queued is not None and queued.status == "queued"
        assert admin.oldest_waiting(session=session) == queued.received_at
    with transaction(factory) as session:
        session.execute(update(Image).where(Image.status == "queued").values(status="done"))
    with factory() as session:
        assert admin.oldest_waiting(session=session) is None


def test_recent_and_usual_rates_split_at_the_last_day(
    factory: sessionmaker[Session], ids: dict
) -> None:
    with factory() as session:
        recent, usual = admin.recent_and_usual(session=session, now=NOW)
    # Last day: ward1/a (p 0.91 by V1, its first) and ward1/b (0.12). The 30 days before: c,
    # d, e, H, i and the failure of f (4.5 days ago); j is 40 days old.
    assert (recent.predictions, recent.positives, recent.failures) == (2, 1, 0)
    assert (usual.predictions, usual.positives, usual.failures) == (5, 3, 1)
    assert usual.results == 6


def test_reader_pairs_take_the_first_two_readers_latest_verdicts(
    factory: sessionmaker[Session], ids: dict
) -> None:
    plan = {  # name: [(reader, verdict), ...] in order
        "ward1/b.png": [("A", "fractured"), ("B", "not_fractured"), ("A", "not_fractured")],
        "ward2/c.png": [("A", "fractured"), ("B", "fractured"), ("C", "not_fractured")],
        "ward2/d.png": [("A", "fractured")],  # one reader: no pair
        "WARD4/H.PNG": [("B", "not_fractured"), ("A", "fractured")],
    }
    with transaction(factory) as session:
        for name, entries in plan.items():
            prediction = session.scalar(select(Prediction).where(Prediction.image_id == ids[name]))
            assert prediction is not None
            for reader, verdict in entries:
                reviews.add_review(
                    session=session, prediction_id=prediction.id, reviewer=reader, verdict=verdict
                )
    with factory() as session:
        pairs = sorted((p.first, p.second) for p in admin.reader_pairs(session=session))
    assert pairs == [
        ("fractured", "fractured"),
        ("not_fractured", "fractured"),
        ("not_fractured", "not_fractured"),
    ]


def test_kappa_interval_holds_sklearns_kappa_and_narrows_with_more_cases() -> None:
    small = kappa_interval(8, 2, 3, 7)
    large = kappa_interval(80, 20, 30, 70)
    assert small is not None and large is not None
    reader = [1] * 8 + [0] * 2 + [1] * 3 + [0] * 7
    model = [1] * 10 + [0] * 10
    assert small.estimate == pytest.approx(cohen_kappa_score(reader, model))
    assert small.low < small.estimate < small.high and large.low < large.estimate < large.high
    assert large.high - large.low < small.high - small.low
    assert kappa_interval(5, 0, 0, 0) is None and cohen_kappa(5, 0, 0, 0) is None


def test_wilson_interval_matches_its_formula() -> None:
    interval = wilson(45, 50)
    assert interval is not None
    z, p, n = 1.959963984540054, 0.9, 50
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half))
    assert wilson(0, 0) is None


def test_usual_range_widens_for_a_quiet_day_and_holds_the_history_rate() -> None:
    busy = usual_range(300, 1000, 400)
    quiet = usual_range(300, 1000, 20)
    assert busy is not None and quiet is not None
    assert busy[0] < 0.3 < busy[1] and quiet[0] <= busy[0] and quiet[1] >= busy[1]
    assert usual_range(0, 0, 10) is None and usual_range(3, 10, 0) is None
