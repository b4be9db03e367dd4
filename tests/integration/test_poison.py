"""Poison isolation in the real batch processor (tiny fixed-weight model, SQLite and
PostgreSQL): a file that crashes the decoder, or that took its batch down before, costs only
itself; after FRACTURE_MAX_ATTEMPTS tries an image is failed with the last reason."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from model.inference import Classifier
from model.isolation import CRASHED, IsolatedDecoder
from tests.crash_decoder import aborting_decode
from tests.helpers import sample_images
from tests.integration.test_bad_batch import register
from worker.processing import BatchProcessor


@pytest.fixture
def processor(tmp_path: Path, database_url: str, tiny_model: Path) -> Iterator[BatchProcessor]:
    upgrade(database_url)
    engine = make_engine(database_url)
    classifier = Classifier.load(tiny_model, device="cpu", isolation="process")
    assert classifier.isolated is not None
    classifier.isolated.close()
    classifier.isolated = IsolatedDecoder(2, decode_fn=aborting_decode)
    yield BatchProcessor(
        classifier, make_session_factory(engine), heatmaps_dir=tmp_path / "maps", max_attempts=3
    )
    classifier.close()
    engine.dispose()


def _inbox(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name, sample in zip(names, sample_images(), strict=False):
        shutil.copy(sample, folder / name)
    return folder


def _rows(processor: BatchProcessor) -> dict[str, tuple[str, str | None, int]]:
    with transaction(processor.factory) as session:
        return {i.filename: (i.status, i.error, i.attempts) for i in session.scalars(select(Image))}


def test_a_decoder_crash_fails_one_image_and_the_worker_goes_on(
    tmp_path: Path, processor: BatchProcessor
) -> None:
    names = ["a.jpg", "crash.jpg", "b.jpg", "c.jpg"]
    ids = register(processor, _inbox(tmp_path, names), names)

    outcome = processor.process(list(ids.values()))

    assert outcome.failed == {ids["crash.jpg"]: CRASHED}
    assert sorted(outcome.done) == sorted(ids[n] for n in ("a.jpg", "b.jpg", "c.jpg"))
    rows = _rows(processor)
    assert rows["crash.jpg"][:2] == ("failed", CRASHED)
    assert {rows[n][0] for n in ("a.jpg", "b.jpg", "c.jpg")} == {"done"}
    assert os.path.exists(tmp_path / "inbox" / "crash.jpg")  # the file is kept


def test_an_image_on_a_later_try_runs_alone_and_gives_up_after_max_attempts(
    tmp_path: Path, processor: BatchProcessor
) -> None:
    names = ["fresh1.jpg", "fresh2.jpg", "retried.jpg", "hopeless.jpg"]
    ids = register(processor, _inbox(tmp_path, names), names)
    with transaction(processor.factory) as session:
        # as the sweeper leaves them: one earlier try that timed out, three for the hopeless
        for name, attempts in (("retried.jpg", 1), ("hopeless.jpg", 3)):
            image = session.get(Image, ids[name])
            assert image is not None
            image.status, image.attempts = "processing", attempts
        queries.note_unfinished(
            session=session,
            image_ids=[ids["retried.jpg"], ids["hopeless.jpg"]],
            reason="scoring took longer than the 60 s time limit",
        )

    outcome = processor.process(list(ids.values()))

    assert outcome.failed == {
        ids["hopeless.jpg"]: (
            "gave up after 3 attempts: scoring took longer than the 60 s time limit"
        )
    }
    rows = _rows(processor)
    assert rows["hopeless.jpg"][0] == "failed" and rows["hopeless.jpg"][2] == 3
    assert {rows[n][0] for n in ("fresh1.jpg", "fresh2.jpg", "retried.jpg")} == {"done"}
    assert rows["retried.jpg"][1] is None  # a success clears the last try's reason
    with transaction(processor.factory) as session:
        sizes = dict(session.execute(select(Prediction.image_id, Prediction.batch_size)).all())
    assert sizes[ids["retried.jpg"]] == 1  # alone
    assert sizes[ids["fresh1.jpg"]] == sizes[ids["fresh2.jpg"]] == 2  # first tries together
