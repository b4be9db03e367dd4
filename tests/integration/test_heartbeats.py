"""Worker heartbeats in SQLite and PostgreSQL: which images a dead worker left behind, how they
go back to the queue, and what the Overview page shows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from dashboard.views.overview import heartbeat_rows
from db import queries
from db.migrate import upgrade
from db.models import Image, Worker
from db.session import make_engine, make_session_factory, transaction

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _register(session: Session, names: list[str]) -> list[int]:
    new = [
        queries.NewImage(sha256=f"{i:064x}", path=f"/inbox/{n}", filename=n, size=1)
        for i, n in enumerate(names)
    ]
    return [image_id for image_id, _ in queries.register_images(session=session, new=new)]


def test_images_of_a_silent_worker_are_found_and_requeued_once(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    dead_after = timedelta(seconds=15)
    with transaction(factory) as session:
        a, b, c, d = _register(session, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
        queries.heartbeat(session=session, worker="alive", now=T0)
        queries.heartbeat(session=session, worker="killed", now=T0 - timedelta(seconds=60))
        queries.claim_images(session=session, image_ids=[a], model_version="m", worker="alive")
        queries.claim_images(session=session, image_ids=[b, c], model_version="m", worker="killed")
        queries.claim_images(session=session, image_ids=[d], model_version="m", worker="gone")
    with transaction(factory) as session:
        orphans = queries.images_of_dead_workers(session=session, dead_after=dead_after, now=T0)
        assert orphans == [b, c, d]  # "gone" signed off (no row): its images are orphans too
        assert queries.requeue_orphans(session=session, image_ids=orphans, reason="stopped") == [
            b,
            c,
            d,
        ]
    with transaction(factory) as session:
        rows = {i.id: i for i in session.query(Image)}
        assert [rows[i].status for i in (a, b, c, d)] == [
            "processing",
            "queued",
            "queued",
            "queued",
        ]
        assert rows[b].error == "stopped" and rows[b].claimed_by is None
        assert rows[b].enqueued_at is None  # the watcher sends it and stamps it
        # nothing is left for a second look
        assert queries.images_of_dead_workers(session=session, dead_after=dead_after, now=T0) == []
        queries.forget_worker(session=session, worker="alive")
        assert queries.images_of_dead_workers(session=session, dead_after=dead_after, now=T0) == [a]
        listed = queries.worker_heartbeats(session=session, now=T0)
        assert [w.name for w in listed] == ["killed"]
    engine.dispose()


def test_overview_rows_say_which_workers_still_beat(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        queries.heartbeat(session=session, worker="old", now=T0 - timedelta(minutes=30))
        queries.heartbeat(session=session, worker="new", now=T0 - timedelta(minutes=5))
        queries.heartbeat(session=session, worker="new", now=T0 - timedelta(seconds=3))
    with factory() as session:
        rows = heartbeat_rows(queries.worker_heartbeats(session=session, now=T0), 15, T0)
    assert rows == [
        {"worker": "new", "state": "alive", "running for": "5 min", "last heartbeat": "3 s ago"},
        {
            "worker": "old",
            "state": "silent (stopped or lost)",
            "running for": "30 min",
            "last heartbeat": "30 min ago",
        },
    ]
    engine.dispose()


def test_live_model_versions_are_those_of_workers_with_a_recent_heartbeat(
    database_url: str,
) -> None:
    upgrade(database_url)
    factory = make_session_factory(make_engine(database_url))
    with transaction(factory) as session:
        queries.heartbeat(session=session, worker="a", model_version="m1", now=T0)
        queries.heartbeat(session=session, worker="b", model_version="m1", now=T0)
        queries.heartbeat(session=session, worker="c", model_version="m2", now=T0)
        queries.heartbeat(
            session=session, worker="dead", model_version="m3", now=T0 - timedelta(minutes=1)
        )
        queries.heartbeat(session=session, worker="old-style", now=T0)  # no version named
    with factory() as session:
        alive = timedelta(seconds=15)
        assert queries.live_model_versions(session=session, alive_within=alive, now=T0) == {
            "m1",
            "m2",
        }
    with transaction(factory) as session:  # a restarted worker with a new model says so
        queries.heartbeat(session=session, worker="c", model_version="m4", now=T0)
    with factory() as session:
        assert queries.live_model_versions(session=session, alive_within=alive, now=T0) == {
            "m1",
            "m4",
        }


def test_a_stalled_worker_stops_beating_and_exits_and_a_live_one_beats(database_url: str) -> None:
    from worker.liveness import STALLED_EXIT, Heartbeat, Progress

    upgrade(database_url)
    factory = make_session_factory(make_engine(database_url))
    now = [100.0]
    progress = Progress(lambda: now[0])
    exits: list[int] = []
    heartbeat = Heartbeat(
        factory,
        "w",
        1.0,
        "m1",
        stall_after_s=15.0,
        broker_answers=lambda: True,
        progress=progress,
        exit=exits.append,
    )
    assert heartbeat.check() is True
    with factory() as session:
        first = session.get(Worker, "w")
        assert first is not None and first.model_version == "m1"
        beat_at = first.heartbeat_at
    now[0] += 16.0
    assert heartbeat.check() is True  # quiet, the broker answers: its grace starts
    now[0] += 16.0
    assert heartbeat.check() is False
    assert exits == [STALLED_EXIT]
    with factory() as session:
        last = session.get(Worker, "w")
        assert last is not None
        assert last.heartbeat_at > beat_at  # the second round beat, the stalled one did not


def test_an_idle_worker_is_not_taken_for_a_stalled_one(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    """Celery's event-loop timer keeps the watchdog fed while the worker waits for work: with
    a 3 s stall limit, a worker idle for four times as long lives on and still scores."""
    from config import Settings
    from tests.helpers import make_distinct_images, process_pipeline, wait_for
    from tests.integration.test_rescore import register
    from worker import client
    from worker.app import make_celery

    with process_pipeline(tmp_path, broker_url, tiny_model, heartbeat_s=0.5, dead_after_s=3) as p:
        ids = register(p, make_distinct_images(tmp_path / "store", 2))
        p.start("worker")
        assert wait_for(lambda: "ready" in p.logs(20000), timeout=90), p.logs()
        time.sleep(12)  # what is checked is that nothing happens meanwhile
        assert p.alive(), p.logs()
        assert "stalled" not in p.logs(20000)
        assert client.enqueue(make_celery(Settings(), broker_url), p.factory, ids)
        assert wait_for(lambda: p.settled(2), timeout=60), p.logs()
        assert p.alive() and "stalled" not in p.logs(20000)
