"""The backbone end to end: real watcher, broker, Celery worker and database processes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from sqlalchemy import select

from db import queries
from db.models import Image
from tests.helpers import (
    ProcessPipeline,
    make_distinct_images,
    process_pipeline,
    slow_copy,
    wait_for,
)
from worker.broker import PrivateBroker, free_port

# Fast recovery for the tests: a batch may run 5 s, a row stuck 6 s is re-sent.
QUICK_RECOVERY = {"stuck_after_s": 6, "task_time_limit_s": 5}


def pipeline(
    tmp_path: Path, database_url: str, broker_url: str, model: Path, **extra: object
) -> AbstractContextManager[ProcessPipeline]:
    return process_pipeline(
        tmp_path, broker_url, model, database_url=database_url, **QUICK_RECOVERY, **extra
    )


def test_mixed_files_end_with_one_prediction_per_distinct_image_and_a_trace_for_the_rest(
    tmp_path: Path, database_url: str, broker_url: str, tiny_model: Path
) -> None:
    sources = make_distinct_images(tmp_path / "src", 24)
    with pipeline(tmp_path, database_url, broker_url, tiny_model) as p:
        p.start("worker")
        p.start("watcher")
        (p.inbox / "ward a" / "day 2").mkdir(parents=True)
        for path in sources[:16]:
            shutil.copy(path, p.inbox / path.name)
        for path in sources[16:20]:  # in subfolders
            shutil.copy(path, p.inbox / "ward a" / "day 2" / path.name)
        writers = [  # slow chunked copies: must never be read half-way
            threading.Thread(target=slow_copy, args=(path, p.inbox / f"slow {path.name}"))
            for path in sources[20:24]
        ]
        for writer in writers:
            writer.start()
        for path in sources[:5]:  # duplicates under other names
            shutil.copy(path, p.inbox / "ward a" / f"copy of {path.name}")
        (p.inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        for name in ("empty a.jpg", "ward a/empty b.jpg"):  # same (empty) bytes: a row each
            (p.inbox / name).write_bytes(b"")
        (p.inbox / ".hidden.jpg").write_bytes(sources[0].read_bytes()[:100])
        (p.inbox / "partial.jpg.part").write_bytes(b"half")
        for writer in writers:
            writer.join()

        assert wait_for(lambda: p.settled(27), timeout=90), (p.counts(), p.logs()[-3000:])
        assert p.counts() == {"done": 24, "failed": 3}
        per_image = p.predictions_per_image()
        assert len(per_image) == 24 and set(per_image.values()) == {1}
        with p.factory() as session:
            failed = {
                i.filename: i
                for i in session.scalars(select(Image).where(Image.status == "failed"))
            }
            assert sorted(failed) == ["corrupt.jpg", "empty a.jpg", "ward a/empty b.jpg"]
            assert re.search(r"truncated|corrupt|not a recognised", failed["corrupt.jpg"].error)
            assert failed["empty a.jpg"].error == "empty file (0 bytes): nothing to score"
            hashes = set(session.scalars(select(Image.sha256)))
            # each copy under another name is on record beside the image it duplicates
            copies = queries.duplicates_of(
                session=session, image_ids=list(session.scalars(select(Image.id)))
            )
            names = {
                d.filename: session.get(Image, image_id).filename  # type: ignore[union-attr]
                for image_id, rows in copies.items()
                for d in rows
            }
        assert names == {f"ward a/copy of {path.name}": path.name for path in sources[:5]}
        # the slow copies were hashed only once complete
        scored = {hashlib.sha256(s.read_bytes()).hexdigest() for s in sources}
        assert hashes - scored == {failed[name].sha256 for name in failed}


def test_files_dropped_while_watcher_was_down_are_found_at_start(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'fracture.db'}"
    with pipeline(tmp_path, database_url, broker_url, tiny_model) as p:
        for path in make_distinct_images(p.inbox / "before", 6):
            assert path.exists()
        p.start("worker")
        p.start("watcher")
        assert wait_for(lambda: p.counts() == {"done": 6}, timeout=60), p.logs()[-2000:]


def test_worker_killed_mid_batch_its_images_are_resent_within_seconds_and_done_once(
    tmp_path: Path, broker_url: str, slow_model: Path
) -> None:
    # The stuck-row timeout is set far out of reach: only the heartbeat can bring the killed
    # batch back in time, and the queue is not empty when it does.
    database_url = f"sqlite:///{tmp_path / 'fracture.db'}"
    with process_pipeline(
        tmp_path,
        broker_url,
        slow_model,
        database_url=database_url,
        batch_size=8,
        task_time_limit_s=60,
        stuck_after_s=600,
        heartbeat_s=1,
        dead_after_s=4,
    ) as p:
        worker = p.start("worker-1")
        p.start("watcher")
        for path in make_distinct_images(tmp_path / "src", 40):
            shutil.copy(path, p.inbox / path.name)
        assert wait_for(lambda: p.counts().get("processing", 0) > 0, timeout=60, interval=0.02)
        p.start("worker-2")
        os.killpg(worker.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        worker.wait()  # type: ignore[attr-defined]
        killed_at = time.monotonic()
        with p.factory() as session:
            names = session.scalars(
                select(Image.claimed_by).where(
                    Image.claimed_by.like(f"fracture-worker-{worker.pid}-%")
                )
            )
            (dead,) = set(names)
            assert dead.endswith(f"@{socket.gethostname()}")
            held = set(
                session.scalars(
                    select(Image.id).where(Image.status == "processing", Image.claimed_by == dead)
                )
            )
        assert held and p.counts().get("done", 0) < 40

        def resent() -> bool:
            with p.factory() as session:
                rows = session.scalars(select(Image).where(Image.id.in_(held))).all()
            return all(i.status != "processing" or i.claimed_by != dead for i in rows)

        assert wait_for(resent, timeout=60, interval=0.2), p.logs()[-3000:]
        print(f"batch of {len(held)} re-sent {time.monotonic() - killed_at:.1f} s after the kill")
        assert wait_for(lambda: _done(p, held), timeout=120), (p.counts(), p.logs()[-3000:])
        assert "a worker stopped while scoring" in (p.root / "watcher.log").read_text()
        assert wait_for(lambda: p.counts() == {"done": 40}, timeout=120), p.counts()
        per_image = p.predictions_per_image()
        assert len(per_image) == 40 and set(per_image.values()) == {1}
        with p.factory() as session:
            again = session.scalars(select(Image).where(Image.id.in_(held))).all()
        assert {image.attempts for image in again} == {2}, "each held image was tried again"
        assert all(image.error is None for image in again)


def _done(p: ProcessPipeline, ids: set[int]) -> bool:
    with p.factory() as session:
        statuses = set(session.scalars(select(Image.status).where(Image.id.in_(ids))))
    return statuses == {"done"}


def test_broker_down_for_ten_seconds_nothing_is_lost(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    broker = PrivateBroker(tmp_path / "broker", port=port).start()
    database_url = f"sqlite:///{tmp_path / 'fracture.db'}"
    try:
        with pipeline(tmp_path, database_url, broker.url, tiny_model) as p:
            p.start("worker")
            p.start("watcher")
            first = make_distinct_images(tmp_path / "src", 20)
            for path in first[:5]:
                shutil.copy(path, p.inbox / path.name)
            assert wait_for(lambda: p.counts() == {"done": 5}, timeout=60), p.logs()[-2000:]

            broker.stop()
            down_since = time.monotonic()
            for path in first[5:]:
                shutil.copy(path, p.inbox / path.name)
            assert wait_for(lambda: sum(p.counts().values()) == 20, timeout=30), p.counts()
            time.sleep(max(0.0, 10 - (time.monotonic() - down_since)))
            assert p.counts().get("done") == 5, "nothing can be processed while the broker is down"

            broker = PrivateBroker(tmp_path / "broker", port=port).start()
            assert wait_for(lambda: p.counts() == {"done": 20}, timeout=90), (
                p.counts(),
                p.logs()[-3000:],
            )
            assert set(p.predictions_per_image().values()) == {1}
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size EfficientNet-Lite0, fixed random weights: batches take long enough to kill."""
    import torch

    from model import architectures, checkpoint

    torch.manual_seed(0)
    net = architectures.build("efficientnet_lite0")
    path = tmp_path_factory.mktemp("slow") / "lite0.pt"
    return checkpoint.save(checkpoint.Checkpoint.from_network("efficientnet_lite0", net), path)
