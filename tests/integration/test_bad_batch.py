"""A worker batch holding one of each bad file still finishes: one result or one error per file.

The real batch processor (what the Celery task calls) with the tiny fixed-weight model and real
databases (SQLite and PostgreSQL: PostgreSQL refuses over-long or NUL-bearing text, so cleaned
DICOM metadata is checked there too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from model.inference import Classifier
from tests.make_inputs import (
    HOSTILE_MAX_PIXELS,
    Expected,
    dicom_bytes,
    grey_radiograph,
    hostile_set,
    replacement_image,
)
from worker.processing import BatchProcessor


@pytest.fixture
def processor(tmp_path: Path, database_url: str, tiny_model: Path) -> Iterator[BatchProcessor]:
    upgrade(database_url)
    engine = make_engine(database_url)
    classifier = Classifier.load(tiny_model, device="cpu", max_pixels=HOSTILE_MAX_PIXELS)
    yield BatchProcessor(
        classifier, make_session_factory(engine), heatmaps_dir=tmp_path / "heatmaps", heatmaps="all"
    )
    classifier.close()
    engine.dispose()


def register(processor: BatchProcessor, folder: Path, names: list[str]) -> dict[str, int]:
    ids = {}
    with transaction(processor.factory) as session:
        for name in names:
            path = folder / name
            data = path.read_bytes()
            image, created = queries.register_image(
                session=session,
                sha256=hashlib.sha256(data).hexdigest(),
                path=str(path),
                filename=name,
                size=len(data),
                fmt=path.suffix.lstrip(".") or None,
            )
            assert created, f"{name} duplicates another file"
            session.flush()
            ids[name] = image.id
    return ids


def test_batch_with_every_bad_file_finishes_with_one_outcome_per_file(
    tmp_path: Path, processor: BatchProcessor
) -> None:
    folder = tmp_path / "inbox"
    expected = hostile_set(folder)
    # a readable DICOM whose metadata would overflow the columns or carry NUL bytes
    (folder / "hostile tags.dcm").write_bytes(
        dicom_bytes(
            grey_radiograph(size=(200, 240)),
            BodyPartExamined="KNEE" * 50,
            Modality="DX\x00\x00",
            ViewPosition="L" * 40,
            StudyDate="31/01/2024",
        )
    )
    expected["hostile tags.dcm"] = Expected("done")
    (folder / "deleted before decoding.jpg").write_bytes(replacement_image()[:-10] + b"\xff\xd9")
    (folder / "replaced before decoding.png").write_bytes(b"\x89PNG placeholder")
    expected["deleted before decoding.jpg"] = Expected("failed", "deleted or moved")
    expected["replaced before decoding.png"] = Expected(
        "failed", "replaced after it was registered"
    )

    ids = register(processor, folder, sorted(expected))
    (folder / "deleted before decoding.jpg").unlink()
    (folder / "replaced before decoding.png").write_bytes(replacement_image())

    outcome = processor.process(list(ids.values()))

    assert set(outcome.done).isdisjoint(outcome.failed)
    assert set(outcome.done) | set(outcome.failed) == set(ids.values())
    assert not outcome.skipped
    with processor.factory() as session:
        rows = {row.filename: row for row in session.scalars(select(Image))}
        predictions = dict(
            session.execute(
                select(Prediction.image_id, func.count()).group_by(Prediction.image_id)
            ).all()
        )
    for name, want in expected.items():
        row = rows[name]
        assert row.status == want.status, (name, row.status, row.error)
        if want.status == "failed":
            assert want.text and want.text in (row.error or ""), (name, row.error)
            assert row.id not in predictions
            assert row.error and row.error.isprintable() and "Traceback" not in row.error
        else:
            assert predictions.get(row.id) == 1, name
            assert row.error is None
            if want.text:
                assert want.text in (row.warning or ""), (name, row.warning)
            else:
                assert row.warning is None, (name, row.warning)

    dicom = rows["hand MONOCHROME1 12-bit RLE.dcm"]
    assert (dicom.format, dicom.modality, dicom.body_part, dicom.view_position) == (
        "DICOM", "DX", "HAND", "PA",
    )  # fmt: skip
    assert (dicom.study_date, dicom.photometric, dicom.bits_stored) == (
        "20240131",
        "MONOCHROME1",
        12,
    )
    assert dicom.patient_hash is None  # no salt configured: nothing patient-derived stored
    assert (dicom.width, dicom.height) == (373, 454)
    hostile = rows["hostile tags.dcm"]
    assert hostile.modality == "DX" and len(hostile.body_part or "") == 64
    assert len(hostile.view_position or "") == 16 and hostile.study_date is None
    png = rows["xray 16-bit.png"]
    assert (png.format, png.modality) == ("PNG", None)


def test_batch_of_only_bad_files_fails_each_and_predicts_nothing(
    tmp_path: Path, processor: BatchProcessor
) -> None:
    folder = tmp_path / "inbox"
    expected = {n: e for n, e in hostile_set(folder).items() if e.status == "failed"}
    ids = register(processor, folder, sorted(expected))
    outcome = processor.process(list(ids.values()))
    assert sorted(outcome.failed) == sorted(ids.values()) and not outcome.done
    with processor.factory() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0
        errors = dict(session.execute(select(Image.filename, Image.error)).all())
    for name, want in expected.items():
        assert want.text and want.text in (errors[name] or ""), (name, errors[name])
