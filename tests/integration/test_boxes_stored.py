"""Verdicts, doubt thresholds and fracture boxes through the worker's batch processor into
SQLite and PostgreSQL, and out of `fracture results` (one heat-head model, one without)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from fracture.cli import app
from model.inference import Classifier
from tests.helpers import make_tiny_heat_checkpoint
from tests.make_inputs import grey_radiograph, png_bytes
from worker.processing import BatchProcessor

WIDTH, HEIGHT = 96, 120


def test_boxes_and_verdicts_are_stored_and_listed(
    tmp_path: Path, database_url: str, tiny_model: Path
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    grey = grey_radiograph(size=(WIDTH, HEIGHT))
    files = {"heat.png": png_bytes(grey), "old.png": png_bytes(grey[::-1].copy())}
    ids = {}
    with transaction(factory) as session:
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            image, _ = queries.register_image(
                session=session,
                sha256=hashlib.sha256(data).hexdigest(),
                path=str(tmp_path / name),
                filename=name,
                size=len(data),
            )
            session.flush()
            ids[name] = image.id
    # Threshold 1 and doubt threshold 0: every image is answered "doubt", with boxes.
    heat = make_tiny_heat_checkpoint(tmp_path / "heat.pt", threshold=1.0, doubt_threshold=0.0)
    for model, name in ((heat, "heat.png"), (tiny_model, "old.png")):
        classifier = Classifier.load(model, device="cpu")
        processor = BatchProcessor(classifier, factory, heatmaps_dir=tmp_path / "maps")
        assert processor.process([ids[name]]).done == [ids[name]]
        classifier.close()

    with factory() as session:
        stored = {
            image.filename: prediction
            for image, prediction in session.execute(
                select(Image, Prediction).join(Prediction, Prediction.image_id == Image.id)
            ).all()
        }
    localised, old = stored["heat.png"], stored["old.png"]
    assert (localised.label, localised.verdict, localised.doubt_threshold) == (
        "not_fractured",
        "doubt",
        0.0,
    )
    assert localised.boxes, "a doubt answer of a heat-head model has at least one box"
    for x, y, w, h, score in localised.boxes:
        assert 0 <= x < x + w <= WIDTH and 0 <= y < y + h <= HEIGHT  # original pixels
        assert 0.0 <= score <= 1.0
    assert [b[4] for b in localised.boxes] == sorted((b[4] for b in localised.boxes), reverse=True)
    expected = "fracture" if old.label == "fractured" else "no_fracture"
    assert (old.verdict, old.doubt_threshold, old.boxes) == (expected, None, None)

    listed = CliRunner().invoke(
        app, ["results", "--json", "--database-url", database_url, "--data-dir", str(tmp_path)]
    )
    assert listed.exit_code == 0, listed.output
    records = {r["path"]: r for r in map(json.loads, listed.output.splitlines())}
    assert records["heat.png"]["verdict"] == "doubt"
    assert records["heat.png"]["doubt_threshold"] == 0.0
    assert records["heat.png"]["boxes"] == localised.boxes
    assert (records["old.png"]["verdict"], records["old.png"]["boxes"]) == (expected, [])
    assert records["old.png"]["doubt_threshold"] is None

    text = CliRunner().invoke(
        app, ["results", "--database-url", database_url, "--data-dir", str(tmp_path)]
    )
    assert text.exit_code == 0, text.output
    lines = {line.split()[2]: line for line in text.output.splitlines()[:-1]}
    count = len(localised.boxes)
    assert " Doubt p=" in lines["heat.png"]
    assert lines["heat.png"].endswith(f", {count} box" if count == 1 else f", {count} boxes")
    assert (" Fracture p=" if expected == "fracture" else " No fracture p=") in lines["old.png"]
    assert "box" not in lines["old.png"]
    assert "not for clinical use" in text.output
    engine.dispose()
