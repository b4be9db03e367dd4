"""The watcher records each file's signature as it hashes it; the worker trusts that hash while
the file keeps the signature, and refuses a file rewritten since (real broker, real SQLite)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from config import Settings
from db.models import Image
from db.session import make_engine, make_session_factory
from model.files import settled_signature
from model.inference import Classifier
from tests.helpers import make_distinct_images, wait_for
from watcher.main import build_watcher
from worker.processing import BatchProcessor


def test_worker_scores_a_file_that_kept_its_signature_and_refuses_one_rewritten_since(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    settings = Settings(inbox=tmp_path / "inbox", data_dir=tmp_path / "data", broker_url=broker_url)
    watcher = build_watcher(settings, broker_url)
    kept, rewritten = (
        Path(shutil.copy(path, settings.inbox / path.name))
        for path in make_distinct_images(tmp_path / "src", 2)
    )
    # A signature is only taken once a write now could no longer share the file's time stamps.
    assert wait_for(lambda: settled_signature(os.stat(rewritten), time.time_ns()) is not None, 5)
    ids = watcher.register([kept, rewritten])
    assert len(ids) == 2

    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        signatures = dict(session.execute(select(Image.filename, Image.file_signature)).all())
    assert signatures[kept.name] is not None
    assert signatures[kept.name] == settled_signature(os.stat(kept), time.time_ns())
    size = rewritten.stat().st_size
    with rewritten.open("r+b") as handle:  # same size, same inode, other bytes
        handle.seek(size // 2)
        handle.write(b"\x00" * 16)

    classifier = Classifier.load(tiny_model, device="cpu")
    try:
        processor = BatchProcessor(classifier, factory, heatmaps_dir=tmp_path / "maps")
        outcome = processor.process(ids)
    finally:
        classifier.close()
        engine.dispose()
    by_name = dict(zip((kept.name, rewritten.name), ids, strict=True))
    assert outcome.done == [by_name[kept.name]]
    assert "replaced after it was registered" in outcome.failed[by_name[rewritten.name]]
