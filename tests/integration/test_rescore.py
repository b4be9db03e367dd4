"""`fracture rescore`: stored images scored again by a real worker, earlier predictions kept."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select, update

from config import Settings
from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from tests.helpers import (
    ProcessPipeline,
    fracture_cli,
    make_distinct_images,
    make_tiny_checkpoint,
    new_prediction,
    process_pipeline,
    wait_for,
)


def rescore(p: ProcessPipeline, *args: str) -> str:
    """Run `fracture rescore` as a user would, with the pipeline's settings; its one line."""
    completed = subprocess.run(
        fracture_cli("rescore", *args), env=p.env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    return lines[0]


def register(p: ProcessPipeline, files: list[Path], rejection: str | None = None) -> list[int]:
    new = [
        queries.NewImage(
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            path=str(path),
            filename=path.name,
            size=path.stat().st_size,
            rejection=rejection,
        )
        for path in files
    ]
    with transaction(p.factory) as session:
        return [image_id for image_id, _ in queries.register_images(session=session, new=new)]


def predictions(p: ProcessPipeline) -> dict[tuple[int, str], tuple[int, float]]:
    """(image id, model version) → (prediction id, probability)."""
    columns = (Prediction.image_id, Prediction.model_version, Prediction.id, Prediction.probability)
    with p.factory() as session:
        rows = session.execute(select(*columns))
        return {(image, version): (row_id, prob) for image, version, row_id, prob in rows}


def statuses(p: ProcessPipeline) -> dict[int, tuple[str, str | None]]:
    with p.factory() as session:
        return {i.id: (i.status, i.error) for i in session.scalars(select(Image))}


def version_of(path: Path) -> str:
    from model.checkpoint import load

    return load(path).version


def test_rescore_through_a_worker_keeps_old_predictions_and_adds_new_ones_exactly_once(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    from worker import client
    from worker.app import make_celery

    second = make_tiny_checkpoint(tmp_path / "models" / "second.pt", seed=1)
    third = make_tiny_checkpoint(tmp_path / "models" / "third.pt", seed=2)
    first_v, second_v, third_v = (version_of(m) for m in (tiny_model, second, third))
    assert len({first_v, second_v, third_v}) == 3

    with process_pipeline(tmp_path, broker_url, tiny_model) as p:
        files = make_distinct_images(tmp_path / "store", 5)
        corrupt = tmp_path / "store" / "corrupt.jpg"
        corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        scored = register(p, files[:4])
        broken = register(p, [corrupt])[0]
        # Failed earlier for a reason that no longer holds: the file is readable now.
        recovered = register(p, files[4:], rejection="worker lost while scoring")[0]
        app = make_celery(Settings(), broker_url)
        p.start("worker")
        assert client.enqueue(app, p.factory, [*scored, broken])
        assert wait_for(lambda: p.settled(6), timeout=90), p.logs()
        before = predictions(p)
        assert set(before) == {(i, first_v) for i in scored}
        broken_error = statuses(p)[broken][1]
        assert broken_error

        # Dry run: counts, queues nothing.
        line = rescore(p, "--model", str(second), "--dry-run")
        assert line.startswith("would queue 6 done/failed image(s) for model " + second_v)
        assert "0 already scored" in line
        assert predictions(p) == before

        line = rescore(p, "--model", str(second))
        assert line.startswith("queued 6 done/failed image(s) for model " + second_v), line
        expected = {(i, second_v) for i in [*scored, recovered]}
        assert wait_for(lambda: expected <= set(predictions(p)), timeout=90), p.logs()
        assert wait_for(lambda: f"rescore with {second_v} failed for 1" in p.logs(20000), 30)
        after = predictions(p)
        assert set(after) == set(before) | expected
        assert {key: after[key] for key in before} == before, "earlier predictions unchanged"
        now = statuses(p)
        assert all(now[i] == ("done", None) for i in [*scored, recovered])
        assert now[broken] == ("failed", broken_error), "a failed rescore changes nothing"

        # Again: only the image it could not score is tried again, and adds nothing.
        line = rescore(p, "--model", str(second))
        assert line.startswith("queued 1 done/failed image(s)"), line
        assert "5 already scored by it" in line
        failures = f"rescore with {second_v} failed for 1 image(s), left unchanged: {broken}: "
        assert wait_for(lambda: p.logs(20000).count(failures) == 2, 30), p.logs()
        assert predictions(p) == after
        # Even messages sent twice (two users at once, a redelivery) add nothing: duplicates
        # go first, then a third model on one image; once that is stored, both were handled.
        assert client.send_rescore(
            app, [*scored, recovered], model_path=str(second.resolve()), model_version=second_v
        )
        assert client.send_rescore(
            app, scored[:1], model_path=str(third.resolve()), model_version=third_v
        )
        assert wait_for(lambda: (scored[0], third_v) in predictions(p), timeout=60), p.logs()
        assert set(predictions(p)) == set(after) | {(scored[0], third_v)}

        # Without --model: the workers' own model, for what it has not scored (the recovered
        # image) — and only `failed` images when asked: none of them scores.
        line = rescore(p, "--status", "failed")
        assert line.startswith(f"queued 1 failed image(s) for model {first_v}"), line
        line = rescore(p)
        assert line.startswith(f"queued 2 done/failed image(s) for model {first_v}"), line
        assert wait_for(lambda: (recovered, first_v) in predictions(p), timeout=60), p.logs()
        final = predictions(p)
        per_image = {i: sum(1 for image, _ in final if image == i) for i in statuses(p)}
        assert per_image == {
            scored[0]: 3,
            scored[1]: 2,
            scored[2]: 2,
            scored[3]: 2,
            recovered: 2,
            broken: 0,
        }
        assert statuses(p)[broken] == ("failed", broken_error)


def test_images_to_rescore_by_status_date_and_version(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    try:
        with transaction(factory) as session:
            new = [
                queries.NewImage(sha256=f"{n:064x}", path=f"/in/{n}", filename=f"{n}", size=1)
                for n in range(6)
            ]
            ids = [i for i, _ in queries.register_images(session=session, new=new)]
            scored = [(ids[0], "old"), (ids[1], "old"), (ids[5], "new")]
            queries.store_batch(
                session=session,
                predictions=[
                    new_prediction(image_id, model_version=version) for image_id, version in scored
                ],
                failures={},
            )
            for offset, (image_id, status) in enumerate(
                zip(ids, ["done", "done", "failed", "queued", "processing", "done"], strict=True)
            ):
                session.execute(
                    update(Image)
                    .where(Image.id == image_id)
                    .values(status=status, received_at=start + timedelta(days=offset))
                )
        with factory() as session:
            everything = queries.images_to_rescore(
                session=session, model_version="new", statuses=["done", "failed"]
            )
            assert everything == ([ids[0], ids[1], ids[2]], 1)
            failed = queries.images_to_rescore(
                session=session, model_version="new", statuses=["failed"]
            )
            assert failed == ([ids[2]], 0)
            # On or after 2 March 00:00 UTC, written as 01:00 at UTC+01:00.
            since = datetime(2026, 3, 2, 1, tzinfo=timezone(timedelta(hours=1)))
            recent = queries.images_to_rescore(
                session=session, model_version="new", statuses=["done", "failed"], since=since
            )
            assert recent == ([ids[1], ids[2]], 1)
            claimed = queries.claim_for_rescore(session=session, image_ids=ids, model_version="new")
            assert sorted(i.id for i in claimed) == ids[:5]
            assert [i.status for i in sorted(claimed, key=lambda i: i.id)] == [
                "done", "done", "failed", "queued", "processing"
            ]  # fmt: skip
    finally:
        engine.dispose()
