"""The backbone end to end: real watcher, broker, Celery worker and database processes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Image
from fracture.broker import PrivateBroker, free_port
from tests.helpers import (
    ProcessPipeline,
    make_distinct_images,
    process_pipeline,
    slow_copy,
    wait_for,
)

# Fast recovery for the tests: a batch may run 5 s, a row stuck 6 s is re-sent.
QUICK_RECOVERY = {"stuck_after_s": 6, "task_time_limit_s": 5}


def pipeline(
    tmp_path: Path, database_url: str, broker_url: str, model: Path, **extra: object
) -> AbstractContextManager[ProcessPipeline]:
    return process_pipeline(
        tmp_path, broker_url, model, database_url=database_url, **QUICK_RECOVERY, **extra
    )


def test_thirty_mixed_files_end_with_one_prediction_per_distinct_image(
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
        (p.inbox / ".hidden.jpg").write_bytes(sources[0].read_bytes()[:100])
        (p.inbox / "partial.jpg.part").write_bytes(b"half")
        for writer in writers:
            writer.join()

        assert wait_for(lambda: p.settled(25), timeout=90), (p.counts(), p.logs()[-3000:])
        assert p.counts() == {"done": 24, "failed": 1}
        per_image = p.predictions_per_image()
        assert len(per_image) == 24 and set(per_image.values()) == {1}
        with p.factory() as session:
            failed = session.scalars(select(Image).where(Image.status == "failed")).one()
            assert failed.filename == "corrupt.jpg"
            assert re.search(r"truncated|corrupt|not a recognised", failed.error or "")
            hashes = set(session.scalars(select(Image.sha256)))
        # the slow copies were hashed only once complete
        assert hashes == {hashlib.sha256(s.read_bytes()).hexdigest() for s in sources} | {
            failed.sha256
        }


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


def test_worker_killed_mid_batch_every_image_still_done_exactly_once(
    tmp_path: Path, broker_url: str, slow_model: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'fracture.db'}"
    with pipeline(tmp_path, database_url, broker_url, slow_model, batch_size=8) as p:
        worker = p.start("worker-1")
        p.start("watcher")
        for path in make_distinct_images(tmp_path / "src", 40):
            shutil.copy(path, p.inbox / path.name)
        assert wait_for(lambda: p.counts().get("processing", 0) > 0, timeout=60, interval=0.02)
        os.killpg(worker.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        worker.wait()  # type: ignore[attr-defined]
        assert p.counts().get("done", 0) < 40
        p.start("worker-2")
        assert wait_for(lambda: p.counts() == {"done": 40}, timeout=120), (
            p.counts(),
            p.logs()[-3000:],
        )
        per_image = p.predictions_per_image()
        assert len(per_image) == 40 and set(per_image.values()) == {1}
        with p.factory() as session:
            retried = session.scalar(select(func.count()).where(Image.attempts > 1))
        assert retried and retried > 0, "the killed batch was processed again"


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
