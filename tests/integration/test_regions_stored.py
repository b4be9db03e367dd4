"""Region predictions through the worker's batch processor into SQLite and PostgreSQL: stored,
flagged against the DICOM body part, filtered and counted by the dashboard's queries, listed by
`fracture results --json`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from db import browse, queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from fracture.cli import app
from model.inference import Classifier
from model.regions import REGIONS
from tests.helpers import make_tiny_checkpoint
from tests.make_inputs import dicom_bytes, grey_radiograph
from worker.processing import BatchProcessor


@pytest.fixture
def processor(tmp_path: Path, database_url: str) -> Iterator[BatchProcessor]:
    """The tiny model with a region head that always answers `hand`; no hand threshold."""
    model = make_tiny_checkpoint(
        tmp_path / "hand.pt",
        regions=REGIONS,
        always_region="hand",
        region_thresholds={"leg": 0.3},
    )
    upgrade(database_url)
    engine = make_engine(database_url)
    classifier = Classifier.load(model, device="cpu")
    yield BatchProcessor(
        classifier, make_session_factory(engine), heatmaps_dir=tmp_path / "heatmaps"
    )
    classifier.close()
    engine.dispose()


def _register(processor: BatchProcessor, files: dict[str, bytes], folder: Path) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = {}
    with transaction(processor.factory) as session:
        for name, data in files.items():
            (folder / name).write_bytes(data)
            image, _ = queries.register_image(
                session=session,
                sha256=hashlib.sha256(data).hexdigest(),
                path=str(folder / name),
                filename=name,
                size=len(data),
            )
            session.flush()
            ids[name] = image.id
    return ids


def test_region_is_stored_and_a_disagreeing_body_part_is_flagged(
    processor: BatchProcessor, tmp_path: Path, database_url: str
) -> None:
    grey = grey_radiograph(size=(96, 120))
    png = tmp_path / "plain.png"
    PILImage.fromarray(grey).save(png)
    files = {
        "shoulder.dcm": dicom_bytes(grey, BodyPartExamined="SHOULDER"),
        "hand.dcm": dicom_bytes(grey[::-1].copy(), BodyPartExamined="HAND"),
        "elbow.dcm": dicom_bytes(grey[:, ::-1].copy(), BodyPartExamined="ELBOW"),
        "plain.png": png.read_bytes(),
    }
    ids = _register(processor, files, tmp_path / "inbox")
    outcome = processor.process(list(ids.values()))
    assert sorted(outcome.done) == sorted(ids.values())

    with processor.factory() as session:
        stored = {
            image.filename: (image.body_part, prediction)
            for image, prediction in session.execute(
                select(Image, Prediction).join(Prediction, Prediction.image_id == Image.id)
            ).all()
        }
    expected = {"shoulder.dcm": True, "hand.dcm": False, "elbow.dcm": None, "plain.png": None}
    for name, disagrees in expected.items():
        _, prediction = stored[name]
        assert prediction.region == "hand"
        assert prediction.region_probability > 0.99
        assert prediction.region_disagrees is disagrees, name
        # hand has no threshold of its own in this checkpoint: the global one applies
        assert (prediction.threshold, prediction.threshold_source) == (0.5, "global")
    assert stored["shoulder.dcm"][0] == "SHOULDER"

    with processor.factory() as session:
        flagged = browse.browse(session=session, flt=browse.BrowseFilter(region_disagrees=True))
        hands = browse.browse(session=session, flt=browse.BrowseFilter(regions=("hand",)))
        legs = browse.count_rows(session=session, flt=browse.BrowseFilter(regions=("leg",)))
        none = browse.count_rows(
            session=session, flt=browse.BrowseFilter(regions=(browse.NO_REGION,))
        )
        counts = browse.counts_by_region(session=session)
        assert browse.predicted_regions(session=session) == ["hand"]
    assert [r.filename for r in flagged.rows] == ["shoulder.dcm"]
    assert flagged.rows[0].region == "hand" and flagged.rows[0].region_disagrees is True
    assert hands.total == 4 and legs == 0 and none == 0
    assert [(c.region, c.total, c.disagreements) for c in counts] == [("hand", 4, 1)]
    assert counts[0].positives == sum(
        1 for _, p in stored.values() if p.label == browse.POSITIVE_LABEL
    )

    result = CliRunner().invoke(
        app, ["results", "--json", "--database-url", database_url, "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    records = {r["path"]: r for r in map(json.loads, result.output.splitlines())}
    assert records["shoulder.dcm"]["region"] == "hand"
    assert records["shoulder.dcm"]["region_disagrees"] is True
    assert records["shoulder.dcm"]["body_part"] == "SHOULDER"
    assert records["plain.png"]["region_disagrees"] is None


def test_single_head_predictions_have_no_region(
    tmp_path: Path, database_url: str, tiny_model: Path
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    classifier = Classifier.load(tiny_model, device="cpu")
    processor = BatchProcessor(
        classifier, make_session_factory(engine), heatmaps_dir=tmp_path / "h", heatmaps="none"
    )
    grey = grey_radiograph(size=(96, 120))
    ids = _register(processor, {"a.dcm": dicom_bytes(grey, BodyPartExamined="KNEE")}, tmp_path)
    processor.process(list(ids.values()))
    classifier.close()
    with processor.factory() as session:
        prediction = session.scalars(select(Prediction)).one()
        assert (prediction.region, prediction.region_disagrees) == (None, None)
        assert prediction.threshold_source == "global"
        none = browse.count_rows(
            session=session, flt=browse.BrowseFilter(regions=(browse.NO_REGION,))
        )
        assert none == 1
        assert [(c.region, c.total) for c in browse.counts_by_region(session=session)] == [
            (None, 1)
        ]
    engine.dispose()
