"""Browse, detail, review, DICOM study and overview queries on real SQLite and real PostgreSQL
databases."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import browse, exports, queries, reviews
from db.models import DicomExport, ExportState, Image, ImageSource, Prediction, Review
from db.session import transaction
from tests.helpers import new_prediction

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
V1, V2 = "seed_cnn-aaaaaaaaaaaa", "seed_cnn-bbbbbbbbbbbb"
ALL = browse.ALL_VERSIONS


@dataclass(frozen=True)
class Case:
    name: str
    days_ago: float
    source: str = "watch"
    probability: float | None = None  # None: no prediction
    failed: bool = False
    version: str = V1


CASES = (
    Case("ward1/a.png", 0.1, probability=0.91),
    Case("ward1/b.png", 0.5, probability=0.12),
    Case("ward2/c.png", 1.2, "upload", probability=0.55),
    Case("ward2/d.png", 2.5, probability=0.49),
    Case("ward3/e_100%.png", 3.5, probability=0.77),
    Case("ward3/f.png", 4.5, "upload", failed=True),
    Case("ward3/g.png", 5.5),  # queued, never predicted
    Case("WARD4/H.PNG", 9.0, probability=0.03),
    Case("ward4/i.png", 20.0, probability=0.66, version=V2),
    Case("ward4/j.png", 40.0, probability=0.5),
)


def seed(factory: sessionmaker[Session]) -> dict[str, int]:
    """The cases above through the project's own write path; returns image ids by name."""
    ids: dict[str, int] = {}
    with transaction(factory) as session:
        for index, case in enumerate(CASES):
            image, _ = queries.register_image(
                session=session,
                sha256=f"{index:064x}",
                path=f"/nowhere/{case.name}",
                filename=case.name,
                size=1000,
                source=case.source,
            )
            image.received_at = NOW - timedelta(days=case.days_ago)
            session.flush()
            ids[case.name] = image.id
        predictions = [
            new_prediction(ids[c.name], probability=c.probability, model_version=c.version)
            for c in CASES
            if c.probability is not None
        ]
        failures = {ids[c.name]: "corrupt image data: boom" for c in CASES if c.failed}
        queries.store_batch(session=session, predictions=predictions, failures=failures)
        # ward1/a.png also has a second model's opinion: two rows in the table.
        queries.store_batch(
            session=session,
            predictions=[new_prediction(ids["ward1/a.png"], probability=0.31, model_version=V2)],
            failures={},
        )
    with transaction(factory) as session:
        received = dict(session.execute(select(Image.id, Image.received_at)).all())
        for prediction in session.scalars(select(Prediction)):
            offset = timedelta(seconds=30 if prediction.model_version == V1 else 60)
            prediction.created_at = received[prediction.image_id] + offset
        for image in session.scalars(select(Image).where(Image.status == "failed")):
            image.updated_at = image.received_at + timedelta(seconds=60)
    return ids


@pytest.fixture
def ids(factory: sessionmaker[Session]) -> dict[str, int]:
    return seed(factory)


def prediction_of(session: Session, image_id: int, version: str = V1) -> Prediction:
    found = session.scalar(
        select(Prediction).where(
            Prediction.image_id == image_id, Prediction.model_version == version
        )
    )
    assert found is not None
    return found


def names(page: browse.Page) -> list[str]:
    return [row.filename for row in page.rows]


def test_one_row_per_image_with_its_latest_prediction(
    factory: sessionmaker[Session], ids: dict
) -> None:
    with factory() as session:
        page = browse.browse(session=session, page_size=100)
        assert browse.count_rows(session=session) == 10
    assert page.total == 10 and len(page.rows) == 10
    first = page.rows[0]
    assert (first.filename, first.model_version, first.label) == (
        "ward1/a.png",
        V2,  # stored after V1's
        browse.NEGATIVE_LABEL,
    )
    failed = next(r for r in page.rows if r.filename == "ward3/f.png")
    assert (failed.status, failed.error, failed.prediction_id) == (
        "failed",
        "corrupt image data: boom",
        None,
    )
    queued = next(r for r in page.rows if r.filename == "ward3/g.png")
    assert queued.status == "queued" and queued.label is None


def test_all_versions_gives_one_row_per_prediction(
    factory: sessionmaker[Session], ids: dict
) -> None:
    flt = browse.BrowseFilter(model_version=ALL)
    with factory() as session:
        page = browse.browse(session=session, flt=flt, page_size=100)
        assert browse.count_rows(session=session, flt=flt) == 11
    assert page.total == 11 and len(page.rows) == 11
    assert names(page)[:3] == ["ward1/a.png", "ward1/a.png", "ward1/b.png"]
    assert sum(r.prediction_id is None for r in page.rows) == 2  # failed and queued


def test_latest_prediction_decides_the_label_filter(
    factory: sessionmaker[Session], ids: dict
) -> None:
    with factory() as session:
        latest = browse.browse(
            session=session, flt=browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,))
        )
        only_v1 = browse.browse(
            session=session,
            flt=browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,), model_version=V1),
        )
    assert "ward1/a.png" not in names(latest)  # V2, stored last, says no fracture
    assert "ward1/a.png" in names(only_v1) and "ward4/i.png" not in names(only_v1)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (
            browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,)),
            {"ward1/a.png", "ward2/c.png", "ward3/e_100%.png", "ward4/i.png", "ward4/j.png"},
        ),
        (
            browse.BrowseFilter(probability_min=0.5, probability_max=0.8),
            {"ward2/c.png", "ward3/e_100%.png", "ward4/i.png", "ward4/j.png"},
        ),
        (browse.BrowseFilter(sources=("upload",)), {"ward2/c.png", "ward3/f.png"}),
        (browse.BrowseFilter(statuses=("failed", "queued")), {"ward3/f.png", "ward3/g.png"}),
        (browse.BrowseFilter(filename="WARD4"), {"WARD4/H.PNG", "ward4/i.png", "ward4/j.png"}),
        (browse.BrowseFilter(filename="e_100%"), {"ward3/e_100%.png"}),  # % is literal
        (browse.BrowseFilter(filename="a_png"), set()),  # _ is literal: a.png does not match
        (browse.BrowseFilter(model_version=V2), {"ward1/a.png", "ward4/i.png"}),
        (
            browse.BrowseFilter(
                received_from=NOW - timedelta(days=3), received_before=NOW - timedelta(days=1)
            ),
            {"ward2/c.png", "ward2/d.png"},
        ),
        (
            browse.BrowseFilter(labels=(browse.NEGATIVE_LABEL,), sources=("watch",)),
            {"ward1/a.png", "ward1/b.png", "ward2/d.png", "WARD4/H.PNG"},
        ),
        # one operating point: the verdict is the label's ("doubt" never given)
        (
            browse.BrowseFilter(verdicts=("fracture",)),
            {"ward1/a.png", "ward2/c.png", "ward3/e_100%.png", "ward4/i.png", "ward4/j.png"},
        ),
        (browse.BrowseFilter(verdicts=("no_fracture",), model_version=V2), {"ward1/a.png"}),
        (browse.BrowseFilter(verdicts=("doubt",)), set()),
    ],
)
def test_each_filter_narrows_the_rows(
    factory: sessionmaker[Session], ids: dict, flt: browse.BrowseFilter, expected: set[str]
) -> None:
    if flt.model_version is None:
        flt = replace(flt, model_version=ALL)  # every prediction, not only the latest
    with factory() as session:
        page = browse.browse(session=session, flt=flt, page_size=100)
        assert page.total == len(page.rows) == browse.count_rows(session=session, flt=flt)
    assert set(names(page)) == expected


def test_review_state_follows_the_latest_review(factory: sessionmaker[Session], ids: dict) -> None:
    with transaction(factory) as session:
        a = prediction_of(session, ids["ward1/a.png"]).id
        b = prediction_of(session, ids["ward1/b.png"]).id
        reviews.add_review(
            session=session, prediction_id=a, reviewer="Dr A", verdict=browse.NEGATIVE_LABEL
        )
        reviews.add_review(
            session=session, prediction_id=a, reviewer="Dr B", verdict=browse.POSITIVE_LABEL
        )
        reviews.add_review(
            session=session, prediction_id=b, reviewer="Dr A", verdict=browse.POSITIVE_LABEL
        )

    everything = browse.BrowseFilter(model_version=ALL)

    def matching(state: browse.ReviewState) -> list[int]:
        with factory() as session:
            page = browse.browse(
                session=session,
                flt=browse.BrowseFilter(review_state=state, model_version=ALL),
                page_size=100,
            )
        return sorted(r.prediction_id or 0 for r in page.rows)

    assert matching(browse.ReviewState.REVIEWED) == sorted([a, b])
    assert matching(browse.ReviewState.AGREED) == [a]  # Dr B's later review agrees
    assert matching(browse.ReviewState.DISAGREED) == [b]
    assert len(matching(browse.ReviewState.UNREVIEWED)) == 11 - 2 - 2  # no prediction: excluded
    with factory() as session:
        row = next(
            r
            for r in browse.browse(session=session, flt=everything, page_size=100).rows
            if r.prediction_id == a
        )
    assert row.review is not None
    assert (row.review.reviewer, row.review.agrees, row.review.count) == ("Dr B", True, 2)


@pytest.mark.parametrize("sort", list(browse.SortKey))
def test_pages_cover_every_row_once_in_order(
    factory: sessionmaker[Session], ids: dict, sort: browse.SortKey
) -> None:
    for flt, rows in ((browse.BrowseFilter(), 10), (browse.BrowseFilter(model_version=ALL), 11)):
        with factory() as session:
            everything = list(browse.iter_rows(session=session, flt=flt, sort=sort, chunk=4))
            paged = []
            for number in range(1, 5):  # 3 + 3 + 3 + 1 or 2; later pages read from the far end
                page = browse.browse(session=session, flt=flt, sort=sort, page=number, page_size=3)
                paged += page.rows
            last = browse.browse(session=session, flt=flt, sort=sort, page=99, page_size=3)
        keys = [(r.image_id, r.prediction_id) for r in everything]
        assert [(r.image_id, r.prediction_id) for r in paged] == keys
        assert len(set(keys)) == rows and last.page == 4
        probabilities = [r.probability for r in everything if r.probability is not None]
        if sort == browse.SortKey.PROBABILITY_DESC:
            assert probabilities == sorted(probabilities, reverse=True)
            assert [r.probability for r in everything][-2:] == [None, None]
        if sort == browse.SortKey.PROBABILITY_ASC:
            assert probabilities == sorted(probabilities)
            assert [r.probability for r in everything][-2:] == [None, None]
        if sort == browse.SortKey.NEWEST:
            assert everything[0].filename == "ward1/a.png"
        if sort == browse.SortKey.OLDEST:
            assert everything[0].filename == "ward4/j.png"
        if sort == browse.SortKey.FILENAME:
            assert everything[0].filename == "WARD4/H.PNG"  # byte order: capitals first


def test_probability_sort_with_filters_pages_the_same_way(
    factory: sessionmaker[Session], ids: dict
) -> None:
    flt = browse.BrowseFilter(sources=("watch",), model_version=ALL)
    with factory() as session:
        everything = list(
            browse.iter_rows(session=session, flt=flt, sort=browse.SortKey.PROBABILITY_DESC)
        )
        paged = [
            row
            for number in (1, 2, 3, 4, 5)
            for row in browse.browse(
                session=session,
                flt=flt,
                sort=browse.SortKey.PROBABILITY_DESC,
                page=number,
                page_size=2,
            ).rows
        ]
    assert [r.prediction_id for r in paged] == [r.prediction_id for r in everything]
    assert len(everything) == 9 and everything[-1].filename == "ward3/g.png"


def test_add_review_is_stored_beside_the_prediction(
    factory: sessionmaker[Session], ids: dict
) -> None:
    with transaction(factory) as session:
        prediction = prediction_of(session, ids["ward2/c.png"])
        before = (prediction.label, prediction.probability, prediction.threshold)
        review = reviews.add_review(
            session=session,
            prediction_id=prediction.id,
            reviewer="  Dr   Example ",
            verdict=browse.NEGATIVE_LABEL,
            note=" callus, old injury ",
        )
        review_id = review.id
    with factory() as session:
        image = browse.image_detail(session=session, image_id=ids["ward2/c.png"])
        assert image is not None
        stored = image.predictions[0]
        assert (stored.label, stored.probability, stored.threshold) == before
        (saved,) = stored.reviews
    assert saved.id == review_id
    assert (saved.reviewer, saved.verdict, saved.agrees, saved.note) == (
        "Dr Example",
        browse.NEGATIVE_LABEL,
        False,
        "callus, old injury",
    )
    assert saved.created_at is not None


@pytest.mark.parametrize(
    ("reviewer", "verdict", "message"),
    [
        ("", browse.POSITIVE_LABEL, "reader's name"),
        ("x" * 129, browse.POSITIVE_LABEL, "longer than 128"),
        ("Dr A", "maybe", "choose from fractured, not_fractured"),
    ],
)
def test_add_review_refuses_bad_input(
    factory: sessionmaker[Session], ids: dict, reviewer: str, verdict: str, message: str
) -> None:
    with transaction(factory) as session:
        prediction_id = prediction_of(session, ids["ward1/b.png"]).id
        with pytest.raises(browse.QueryError, match=message):
            reviews.add_review(
                session=session, prediction_id=prediction_id, reviewer=reviewer, verdict=verdict
            )
    with factory() as session:
        assert session.scalars(select(Review)).all() == []
        with pytest.raises(browse.QueryError, match="no prediction with id 999999"):
            reviews.add_review(
                session=session,
                prediction_id=999_999,
                reviewer="Dr A",
                verdict=browse.POSITIVE_LABEL,
            )


def test_filter_values_are_checked() -> None:
    with pytest.raises(browse.QueryError, match="choose from fractured, not_fractured"):
        browse.BrowseFilter(labels=("broken",))
    with pytest.raises(browse.QueryError, match="choose from queued, processing, done, failed"):
        browse.BrowseFilter(statuses=("lost",))
    with pytest.raises(browse.QueryError, match="choose from fracture, doubt, no_fracture"):
        browse.BrowseFilter(verdicts=("fractured",))
    with pytest.raises(browse.QueryError, match="between 0 and 1"):
        browse.BrowseFilter(probability_min=1.5)
    with pytest.raises(browse.QueryError, match="timezone-aware"):
        browse.BrowseFilter(received_from=datetime(2026, 1, 1))
    with pytest.raises(browse.QueryError, match="choose from pending, sent, failed, none"):
        browse.BrowseFilter(export_states=("delivered",))


def test_overview_counts_and_series(factory: sessionmaker[Session], ids: dict) -> None:
    with factory() as session:
        assert browse.status_counts(session=session) == {
            "queued": 1,
            "processing": 0,
            "done": 8,
            "failed": 1,
        }
        assert browse.label_counts(session=session) == {
            browse.POSITIVE_LABEL: 5,
            browse.NEGATIVE_LABEL: 4,
        }
        assert browse.label_counts(session=session, model_version=V2) == {
            browse.POSITIVE_LABEL: 1,
            browse.NEGATIVE_LABEL: 1,
        }
        days = browse.positive_rate_by_day(session=session, days=7, now=NOW)
        hours = browse.throughput_by_hour(session=session, hours=48, now=NOW)
        assert browse.model_versions(session=session) == [V1, V2]
    # Predictions are stored 30 s (V1) or 60 s (V2) after the image arrived, NOW - days_ago.
    assert {d.day: (d.total, d.positives) for d in days} == {
        "2026-03-07": (1, 1),  # e, 3.5 days ago
        "2026-03-08": (1, 0),  # d
        "2026-03-09": (1, 1),  # c
        "2026-03-10": (3, 1),  # a (two model versions, one positive) and b
    }
    assert [d.day for d in days] == sorted(d.day for d in days)
    assert {h.hour: (h.predictions, h.failures) for h in hours} == {
        "2026-03-09 07:00": (1, 0),  # c
        "2026-03-10 00:00": (1, 0),  # b
        "2026-03-10 09:00": (2, 0),  # a, both versions
    }
    with factory() as session:
        week = browse.throughput_by_hour(session=session, hours=24 * 7, now=NOW)
    assert sum(h.failures for h in week) == 1 and sum(h.predictions for h in week) == 6


def test_agreement_matches_sklearn(factory: sessionmaker[Session], ids: dict) -> None:
    verdicts = {  # name → reader's verdict (fracture = True)
        "ward1/a.png": True,  # model + → TP
        "ward1/b.png": True,  # model - → FN
        "ward2/c.png": False,  # model + → FP
        "ward2/d.png": False,  # model - → TN
        "ward3/e_100%.png": True,  # model + → TP
        "WARD4/H.PNG": False,  # model - → TN
    }
    with transaction(factory) as session:
        for name, fractured in verdicts.items():
            prediction = prediction_of(session, ids[name])
            # An earlier, superseded opinion must not count.
            reviews.add_review(
                session=session,
                prediction_id=prediction.id,
                reviewer="first look",
                verdict=browse.NEGATIVE_LABEL if fractured else browse.POSITIVE_LABEL,
            )
            reviews.add_review(
                session=session,
                prediction_id=prediction.id,
                reviewer="Dr A",
                verdict=browse.POSITIVE_LABEL if fractured else browse.NEGATIVE_LABEL,
            )
        reviews.add_review(
            session=session,
            prediction_id=prediction_of(session, ids["ward4/i.png"], V2).id,
            reviewer="Dr A",
            verdict=browse.POSITIVE_LABEL,
        )
    with factory() as session:
        table = {a.model_version: a for a in reviews.agreement_by_model(session=session)}
    v1 = table[V1]
    assert (v1.true_positive, v1.false_positive, v1.false_negative, v1.true_negative) == (
        2,
        1,
        1,
        2,
    )
    model = [True, False, True, False, True, False]
    reader = list(verdicts.values())
    assert v1.sensitivity == pytest.approx(2 / 3)
    assert v1.specificity == pytest.approx(2 / 3)
    assert v1.kappa == pytest.approx(cohen_kappa_score(reader, model))
    v2 = table[V2]
    assert (v2.cases, v2.sensitivity, v2.specificity, v2.kappa) == (1, 1.0, None, None)


def test_labels_match_the_checkpoint() -> None:
    from model.checkpoint import CLASS_NAMES

    assert (browse.NEGATIVE_LABEL, browse.POSITIVE_LABEL) == CLASS_NAMES


# -- DICOM studies and results sent to PACS ----------------------------------------------------

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.202"


def seed_dicom(factory: sessionmaker[Session], ids: dict[str, int]) -> dict[str, int]:
    """Instances received over DICOM, two studies: (name, study, export state or None)."""
    instances = (
        ("dicom/a1.dcm", STUDY_A, ExportState.SENT, 1.0),
        ("dicom/a2.dcm", STUDY_A, ExportState.PENDING, 2.0),
        ("dicom/a3.dcm", STUDY_A, None, 3.0),
        ("dicom/b1.dcm", STUDY_B, ExportState.FAILED, 0.5),
    )
    with transaction(factory) as session:
        for index, (name, study, state, hours_ago) in enumerate(instances):
            image = Image(
                sha256=f"d{index:063x}",
                path=f"/data/dicom/{name}",
                filename=name,
                source=ImageSource.DICOM,
                bytes=2000,
                format="DICOM",
                status="done",
                received_at=NOW - timedelta(hours=hours_ago),
                study_uid=study,
                series_uid=f"{study}.1",
                sop_instance_uid=f"{study}.1.{index}",
                calling_ae="MODALITY",
            )
            prediction = Prediction(
                model_version=V1,
                label=browse.POSITIVE_LABEL,
                probability=0.8,
                threshold=0.5,
                batch_size=1,
                inference_ms=5.0,
                created_at=NOW,
            )
            image.predictions.append(prediction)
            session.add(image)
            session.flush()
            ids[name] = image.id
            if state is not None:
                session.add(
                    DicomExport(
                        prediction_id=prediction.id,
                        image_id=image.id,
                        state=state,
                        destination="PACS@pacs:104",
                        attempts=1,
                    )
                )
    return ids


def test_study_filter_keeps_one_studys_instances(factory: sessionmaker[Session], ids: dict) -> None:
    seed_dicom(factory, ids)
    with factory() as session:
        page = browse.browse(session=session, flt=browse.BrowseFilter(study_uid=STUDY_A))
        assert browse.count_rows(session=session, flt=browse.BrowseFilter(study_uid=STUDY_A)) == 3
        dicom = browse.browse(session=session, flt=browse.BrowseFilter(sources=("dicom",)))
        everything = browse.browse(session=session, page_size=100)
    assert names(page) == ["dicom/a1.dcm", "dicom/a2.dcm", "dicom/a3.dcm"]  # newest first
    assert {r.study_uid for r in page.rows} == {STUDY_A}
    assert sorted(names(dicom)) == ["dicom/a1.dcm", "dicom/a2.dcm", "dicom/a3.dcm", "dicom/b1.dcm"]
    assert {r.study_uid for r in everything.rows if r.source != "dicom"} == {None}


def test_studies_newest_first_with_their_instances(
    factory: sessionmaker[Session], ids: dict
) -> None:
    seed_dicom(factory, ids)
    with factory() as session:
        found = browse.studies(session=session)
        one = browse.study(session=session, study_uid=STUDY_A)
        assert browse.study(session=session, study_uid="1.2.3") is None
        assert [s.study_uid for s in browse.studies(session=session, limit=1)] == [STUDY_B]
        instances, total = browse.study_images(session=session, study_uid=STUDY_A, limit=2)
        names_in_order = [i.filename for i in instances]
        scored = [len(i.predictions) for i in instances]
    assert [(s.study_uid, s.images) for s in found] == [(STUDY_B, 1), (STUDY_A, 3)]
    assert one is not None and one.images == 3
    assert ensure_utc(one.last_received_at) == NOW - timedelta(hours=1)
    assert (names_in_order, total, scored) == (["dicom/a3.dcm", "dicom/a2.dcm"], 3, [1, 1])


def ensure_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((ExportState.SENT,), {"dicom/a1.dcm"}),
        ((ExportState.FAILED,), {"dicom/b1.dcm"}),
        ((ExportState.PENDING, ExportState.FAILED), {"dicom/a2.dcm", "dicom/b1.dcm"}),
        ((browse.NOT_EXPORTED,), {"dicom/a3.dcm"}),
        ((ExportState.SENT, browse.NOT_EXPORTED), {"dicom/a1.dcm", "dicom/a3.dcm"}),
    ],
)
def test_send_state_filter_follows_each_predictions_export(
    factory: sessionmaker[Session], ids: dict, states: tuple[str, ...], expected: set[str]
) -> None:
    seed_dicom(factory, ids)
    flt = browse.BrowseFilter(export_states=states, sources=("dicom",))
    with factory() as session:
        page = browse.browse(session=session, flt=flt, page_size=100)
        assert page.total == browse.count_rows(session=session, flt=flt) == len(page.rows)
        exported = list(browse.iter_rows(session=session, flt=flt))
    assert set(names(page)) == expected
    stored = {"dicom/a1.dcm": "sent", "dicom/a2.dcm": "pending", "dicom/b1.dcm": "failed"}
    assert {r.filename: r.export_state for r in page.rows} == {
        name: stored.get(name) for name in expected
    }
    assert [r.export_state for r in exported] == [r.export_state for r in page.rows]


def test_not_exported_keeps_predictions_without_an_export_only(
    factory: sessionmaker[Session], ids: dict
) -> None:
    seed_dicom(factory, ids)
    flt = browse.BrowseFilter(export_states=(browse.NOT_EXPORTED,), model_version=ALL)
    with factory() as session:
        page = browse.browse(session=session, flt=flt, page_size=100)
    # The 9 predictions of inbox and upload files, and the one DICOM result never queued;
    # images without a prediction have nothing to send and are left out.
    assert page.total == 10 and "dicom/a3.dcm" in names(page)
    assert all(r.prediction_id is not None and r.export_state is None for r in page.rows)


def test_retry_failed_from_the_record_view_sets_only_that_image_pending(
    factory: sessionmaker[Session], ids: dict
) -> None:
    seed_dicom(factory, ids)
    with transaction(factory) as session:
        session.add(
            DicomExport(
                prediction_id=prediction_of(session, ids["ward1/a.png"]).id,
                image_id=ids["ward1/a.png"],
                state=ExportState.FAILED,
                attempts=10,
                error="gave up after 10 attempt(s): unreachable",
            )
        )
    with transaction(factory) as session:
        assert exports.retry_failed(session=session, now=NOW, image_ids=[ids["dicom/b1.dcm"]]) == 1
    with factory() as session:
        assert exports.counts(session=session) == {"pending": 2, "sent": 1, "failed": 1}
        (again,) = exports.for_image(session=session, image_id=ids["dicom/b1.dcm"])
    assert (again.state, again.attempts) == (ExportState.PENDING, 0)
