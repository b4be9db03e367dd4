"""Query functions on a real SQLite file and a real PostgreSQL server."""

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction, utcnow
from db.session import make_engine, make_session_factory, transaction
from tests.helpers import new_prediction


def _register(factory, sha: str, name: str = "a.jpg") -> tuple[int, bool]:
    with transaction(factory) as session:
        image, created = queries.register_image(
            session=session, sha256=sha, path=f"/inbox/{name}", filename=name, size=10
        )
        session.flush()
        return image.id, created


def test_migrations_create_every_table(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # idempotent
    tables = set(inspect(make_engine(database_url)).get_table_names())
    assert {"images", "predictions", "reviews", "alembic_version"} <= tables


def test_same_bytes_register_once(factory) -> None:
    first, created = _register(factory, "a" * 64, "one.jpg")
    again, created_again = _register(factory, "a" * 64, "copy-of-one.jpg")
    assert created and not created_again
    assert first == again
    with factory() as session:
        assert session.scalar(select(func.count(Image.id))) == 1


def test_registering_a_chunk_sorts_new_known_repeated_and_rejected_files(factory) -> None:
    known, _ = _register(factory, "k" * 64, "known.jpg")
    chunk = [
        queries.NewImage(sha256="n" * 64, path="/inbox/new.jpg", filename="new.jpg", size=3),
        queries.NewImage(sha256="k" * 64, path="/inbox/again.jpg", filename="again.jpg", size=3),
        queries.NewImage(sha256="n" * 64, path="/inbox/copy.jpg", filename="copy.jpg", size=3),
        queries.NewImage(
            sha256="r" * 64,
            path="/inbox/bad.jpg",
            filename="bad.jpg",
            size=3,
            fmt="jpg",
            rejection="symbolic link pointing outside the inbox: not read",
        ),
    ]
    with transaction(factory) as session:
        registered = queries.register_images(session=session, new=chunk)
    (new, new_created), (again, again_created), (copy, copy_created), (bad, bad_created) = (
        registered
    )
    assert (again, again_created) == (known, False)
    assert new_created and not copy_created and copy == new
    assert bad_created
    with factory() as session:
        assert session.scalar(select(func.count(Image.id))) == 3
        stored = session.get(Image, new)
        assert (stored.filename, stored.status, stored.attempts) == ("new.jpg", "queued", 0)
        assert stored.received_at is not None and stored.enqueued_at is None
        rejected = session.get(Image, bad)
        assert (rejected.status, rejected.format) == ("failed", "jpg")
        assert rejected.error == "symbolic link pointing outside the inbox: not read"


def test_bytes_registered_by_another_process_meanwhile_get_its_row(factory, monkeypatch) -> None:
    winner, _ = _register(factory, "s" * 64, "first.jpg")
    # Simulate the race: our look-up ran just before the other process committed, so it saw
    # nothing; the insert then meets the unique sha256 and must fall back to the stored row.
    real = queries._ids_by_sha
    looks: list[list[str]] = []

    def stale_first_look(session, shas):
        looks.append(list(shas))
        return {} if len(looks) == 1 else real(session, shas)

    monkeypatch.setattr(queries, "_ids_by_sha", stale_first_look)
    entry = queries.NewImage(
        sha256="s" * 64, path="/inbox/second.jpg", filename="second.jpg", size=1
    )
    with transaction(factory) as session:
        assert queries.register_images(session=session, new=[entry]) == [(winner, False)]
    assert len(looks) == 2
    with factory() as session:
        assert session.scalar(select(func.count(Image.id))) == 1
        assert session.get(Image, winner).filename == "first.jpg"


def test_storing_a_batch_twice_keeps_one_prediction(factory) -> None:
    good, _ = _register(factory, "b" * 64)
    bad, _ = _register(factory, "c" * 64)
    for _ in range(2):  # a redelivered batch
        with transaction(factory) as session:
            queries.claim_images(session=session, image_ids=[good, bad], model_version="v1")
        with transaction(factory) as session:
            queries.store_batch(
                session=session, predictions=[new_prediction(good)], failures={bad: "corrupt"}
            )
    with factory() as session:
        assert session.scalar(select(func.count(Prediction.id))) == 1
        assert session.get(Image, good).status == "done"
        failed = session.get(Image, bad)
        assert (failed.status, failed.error) == ("failed", "corrupt")


def test_claim_skips_images_already_predicted_by_this_model(factory) -> None:
    image_id, _ = _register(factory, "d" * 64)
    with transaction(factory) as session:
        queries.store_batch(session=session, predictions=[new_prediction(image_id)], failures={})
    with transaction(factory) as session:
        assert queries.claim_images(session=session, image_ids=[image_id], model_version="v1") == []
        claimed = queries.claim_images(session=session, image_ids=[image_id], model_version="v2")
        assert [i.id for i in claimed] == [image_id]


def test_resend_picks_unsent_and_stuck_rows_only(factory) -> None:
    unsent, _ = _register(factory, "e" * 64)
    sent, _ = _register(factory, "f" * 64)
    stuck, _ = _register(factory, "0" * 64)
    with transaction(factory) as session:
        queries.mark_enqueued(session=session, image_ids=[sent, stuck])
        session.get(Image, stuck).status = "processing"
        session.get(Image, stuck).updated_at = utcnow() - timedelta(minutes=10)
    with factory() as session:
        rows = queries.images_to_resend(
            session=session, stuck_after=timedelta(minutes=2), now=utcnow() + timedelta(seconds=30)
        )
    assert sorted(r.id for r in rows) == sorted([unsent, stuck])
    with factory() as session:  # a row the watcher is sending right now is left alone
        rows = queries.images_to_resend(session=session, stuck_after=timedelta(minutes=2))
    assert [r.id for r in rows] == [stuck]


def test_migrations_match_the_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base

    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_concurrent_upgrades_on_a_fresh_database_do_not_collide(database_url: str) -> None:
    """Worker, watcher and dashboard all upgrade at start, possibly at the same moment."""
    import subprocess
    import sys

    code = f"from db.migrate import upgrade; upgrade({database_url!r})"
    processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0, 0]
    assert {"images", "predictions", "reviews"} <= set(
        inspect(make_engine(database_url)).get_table_names()
    )


def test_batch_insert_survives_a_row_another_worker_stored_first(factory) -> None:
    """The whole batch goes in one savepoint; a duplicate falls back to row by row."""
    ids = [_register(factory, c * 64, f"{c}.jpg")[0] for c in "123"]

    with transaction(factory) as session:
        queries.store_batch(
            session=session, predictions=[new_prediction(ids[1], probability=0.9)], failures={}
        )
    with transaction(factory) as session:  # as if stored between our check and our insert
        queries._insert_all(session, [new_prediction(i, probability=0.7) for i in ids])
    with factory() as session:
        stored = dict(session.execute(select(Prediction.image_id, Prediction.probability)).all())
    assert stored == {ids[0]: 0.7, ids[1]: 0.9, ids[2]: 0.7}


def test_migration_0004_gives_stored_predictions_a_verdict_and_keeps_their_reviews(
    database_url: str,
) -> None:
    """A database at 0003 with predictions and a review: upgraded, every prediction has the
    verdict its label implies and no doubt threshold or boxes; downgraded, nothing is lost."""
    from alembic import command
    from sqlalchemy import text

    from db.migrate import alembic_config

    upgrade(database_url, "0003")
    engine = make_engine(database_url)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO images (id, sha256, path, filename, source, bytes, received_at,"
                " status, attempts, updated_at) VALUES (:id, :sha, '/x', :name, 'watch', 1, :now,"
                " 'done', 1, :now)"
            ),
            [
                {"id": 1, "sha": "1" * 64, "name": "a.jpg", "now": now},
                {"id": 2, "sha": "2" * 64, "name": "b.jpg", "now": now},
            ],
        )
        connection.execute(
            text(
                "INSERT INTO predictions (id, image_id, model_version, label, probability,"
                " threshold, threshold_source, batch_size, inference_ms, created_at)"
                " VALUES (:id, :id, 'v1', :label, :p, 0.5, 'global', 2, 5.0, :now)"
            ),
            [
                {"id": 1, "label": "fractured", "p": 0.8, "now": now},
                {"id": 2, "label": "not_fractured", "p": 0.2, "now": now},
            ],
        )
        connection.execute(
            text(
                "INSERT INTO reviews (prediction_id, reviewer, verdict, agrees, created_at)"
                " VALUES (1, 'reader', 'fractured', :yes, :now)"
            ),
            {"yes": True, "now": now},
        )
    upgrade(database_url)
    with make_session_factory(engine)() as session:
        stored = {
            p.id: (p.label, p.verdict, p.doubt_threshold, p.boxes)
            for p in session.scalars(select(Prediction))
        }
        assert session.scalar(select(func.count()).where(Prediction.verdict == "doubt")) == 0
    assert stored == {
        1: ("fractured", "fracture", None, None),
        2: ("not_fractured", "no_fracture", None, None),
    }
    indexes = {i["name"] for i in inspect(engine).get_indexes("predictions")}
    assert "ix_predictions_verdict" in indexes

    command.downgrade(alembic_config(database_url), "0003")
    columns = {c["name"] for c in inspect(engine).get_columns("predictions")}
    assert not {"verdict", "doubt_threshold", "boxes"} & columns
    with engine.connect() as connection:  # a table copy on SQLite would cascade to the reviews
        assert connection.scalar(text("SELECT count(*) FROM predictions")) == 2
        assert connection.scalar(text("SELECT count(*) FROM reviews")) == 1
    upgrade(database_url)
    engine.dispose()


def test_verdict_doubt_threshold_and_boxes_are_stored_and_read_back(factory) -> None:
    from db import browse

    ids = [_register(factory, c * 64, f"{c}.jpg")[0] for c in "789"]
    boxes = [[10.5, 20.0, 30.0, 40.25, 0.875], [1.0, 2.0, 3.0, 4.0, 0.5]]

    def new(index: int, label: str, probability: float, **answer: Any) -> queries.NewPrediction:
        return new_prediction(
            ids[index],
            probability=probability,
            threshold=0.6,
            model_version="v2",
            label=label,
            **answer,
        )

    stored_new = [
        new(0, "not_fractured", 0.4, verdict="doubt", doubt_threshold=0.3, boxes=boxes),
        # a model that draws boxes and found none; one that draws none (old checkpoints),
        # whose verdict follows from its label
        new(1, "not_fractured", 0.1, verdict="no_fracture", doubt_threshold=0.3, boxes=()),
        new(2, "fractured", 0.9),
    ]
    with transaction(factory) as session:
        queries.store_batch(session=session, predictions=stored_new, failures={})
    with factory() as session:
        stored = {
            p.image_id: (p.verdict, p.doubt_threshold, p.boxes)
            for p in session.scalars(select(Prediction))
        }
        null_boxes = set(
            session.scalars(select(Prediction.image_id).where(Prediction.boxes.is_(None)))
        )
        doubts = browse.browse(session=session, flt=browse.BrowseFilter(verdicts=("doubt",)))
        answered = browse.count_rows(
            session=session, flt=browse.BrowseFilter(verdicts=("fracture", "no_fracture"))
        )
    assert stored == {
        ids[0]: ("doubt", 0.3, boxes),
        ids[1]: ("no_fracture", 0.3, []),
        ids[2]: ("fracture", None, None),
    }
    assert null_boxes == {ids[2]}  # SQL NULL, not a JSON null
    assert [(r.image_id, r.verdict, r.doubt_threshold, r.boxes) for r in doubts.rows] == [
        (ids[0], "doubt", 0.3, boxes)
    ]
    assert answered == 2
    with pytest.raises(ValueError, match="choose from fracture, doubt, no_fracture"):
        replace(stored_new[0], verdict="doubtful")


def _rows_a_file_may_come_back_to(factory) -> tuple[int, int, int, int]:
    """Rows of moved.jpg (failed: moved out before it was read), growing.jpg (queued),
    finished.jpg (done) and busy.jpg (being scored), with the bytes "a"… to "d"…."""
    from sqlalchemy import update

    moved, _ = _register(factory, "a" * 64, "moved.jpg")
    growing, _ = _register(factory, "b" * 64, "growing.jpg")
    finished, _ = _register(factory, "c" * 64, "finished.jpg")
    busy, _ = _register(factory, "d" * 64, "busy.jpg")
    with transaction(factory) as session:
        session.execute(
            update(Image)
            .where(Image.id == moved)
            .values(status="failed", error="file was deleted or moved before it could be processed")
        )
        session.execute(update(Image).where(Image.id == finished).values(status="done"))
        session.execute(update(Image).where(Image.id == busy).values(status="processing"))
    return moved, growing, finished, busy


def test_a_file_seen_again_reattaches_to_its_unfinished_row_only(factory) -> None:
    """Same bytes after a transient failure, or new bytes at the path of a queued or failed
    row: that row is queued again; a finished image or a row being scored is left alone."""
    moved, growing, finished, busy = _rows_a_file_may_come_back_to(factory)

    def seen(sha: str, name: str) -> int | None:
        entry = queries.NewImage(sha256=sha, path=f"/inbox/{name}", filename=name, size=99)
        with transaction(factory) as session:
            return queries.reattach_many(session=session, new=[entry]).get(entry.path)

    assert seen("a" * 64, "moved.jpg") == moved  # moved back in
    assert seen("e" * 64, "growing.jpg") == growing  # appended to after it was registered
    assert seen("f" * 64, "finished.jpg") is None
    assert seen("g" * 64, "busy.jpg") is None
    assert seen("h" * 64, "new.jpg") is None
    with factory() as session:
        rows = {row.id: row for row in session.scalars(select(Image))}
    assert (rows[moved].status, rows[moved].error) == ("queued", None)
    assert (rows[growing].sha256, rows[growing].bytes) == ("e" * 64, 99)
    assert rows[finished].sha256 == "c" * 64 and rows[busy].status == "processing"


def test_many_files_reattach_in_two_lookups_as_they_would_one_by_one(factory) -> None:
    """A chunk of settled files: the rows they belong to are found in two SELECTs whatever the
    chunk's size; a second file with the bytes of a row an earlier one took is not attached."""
    from sqlalchemy import event

    moved, growing, finished, busy = _rows_a_file_may_come_back_to(factory)
    entries = [
        queries.NewImage(sha256=sha, path=f"/inbox/{name}", filename=name, size=99)
        for sha, name in [
            ("a" * 64, "moved.jpg"),
            ("a" * 64, "copy-of-moved.jpg"),
            ("e" * 64, "growing.jpg"),
            ("f" * 64, "finished.jpg"),
            ("g" * 64, "busy.jpg"),
            *((f"{n:064x}", f"new-{n}.jpg") for n in range(20)),
        ]
    ]
    selects: list[str] = []
    with transaction(factory) as session:
        connection = session.connection()

        def count(_conn, _cursor, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                selects.append(statement)

        event.listen(connection, "before_cursor_execute", count)
        again = queries.reattach_many(session=session, new=entries)
        event.remove(connection, "before_cursor_execute", count)
    assert again == {"/inbox/moved.jpg": moved, "/inbox/growing.jpg": growing}
    assert len(selects) == 2
    with factory() as session:
        rows = {row.id: row for row in session.scalars(select(Image))}
    assert (rows[moved].status, rows[moved].path) == ("queued", "/inbox/moved.jpg")
    assert rows[growing].sha256 == "e" * 64 and rows[finished].sha256 == "c" * 64
    assert rows[busy].status == "processing"


def test_a_row_whose_file_changed_under_the_worker_goes_when_a_newer_row_has_the_file(
    factory,
) -> None:
    replaced = "file was replaced after it was registered (contents changed)"
    first, _ = _register(factory, "1" * 64, "growing.jpg")
    newer, _ = _register(factory, "2" * 64, "growing.jpg")  # its later bytes, same path
    alone, _ = _register(factory, "3" * 64, "alone.jpg")
    with transaction(factory) as session:
        queries.store_batch(
            session=session, predictions=[], failures={first: replaced, alone: replaced}
        )
    with factory() as session:
        rows = {i.id: i for i in session.scalars(select(Image))}
    assert first not in rows  # superseded: the newer row is the file's
    assert rows[newer].status == "queued"
    assert (rows[alone].status, rows[alone].error) == ("failed", replaced)  # re-attaches later
