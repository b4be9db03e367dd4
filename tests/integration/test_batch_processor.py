"""The worker's batch processor decodes a batch, then runs it through the network whole or in
micro-batches: every stored result must still be the one for its own file, and the stored
Grad-CAM grid the map that the prediction's own forward pass gave."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from db import queries
from db.migrate import upgrade
from db.models import Image, Prediction
from db.session import make_engine, make_session_factory, transaction
from model.explain import MAP_SUFFIX, load_map
from model.inference import Classifier, Prepared
from tests.helpers import sample_images
from worker.processing import BatchProcessor


@pytest.mark.parametrize("micro_batch", [3, 0])
def test_batch_matches_one_image_at_a_time(
    tmp_path: Path, database_url: str, tiny_model: Path, micro_batch: int
) -> None:
    files = {path.name: path.read_bytes() for path in sample_images()}
    files["broken.jpg"] = files[next(iter(files))][:300]  # a cut-off JPEG mid-batch
    order = sorted(files)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    ids: dict[str, int] = {}
    with transaction(factory) as session:
        for name in order:
            (inbox / name).write_bytes(files[name])
            image, _ = queries.register_image(
                session=session,
                sha256=hashlib.sha256(files[name]).hexdigest(),
                path=str(inbox / name),
                filename=name,
                size=len(files[name]),
            )
            session.flush()
            ids[name] = image.id

    classifier = Classifier.load(tiny_model, device="cpu", micro_batch=micro_batch)
    processor = BatchProcessor(classifier, factory, heatmaps_dir=tmp_path / "maps", heatmaps="all")
    outcome = processor.process([ids[name] for name in order])
    assert list(outcome.failed) == [ids["broken.jpg"]]
    assert sorted(outcome.done) == sorted(ids[n] for n in order if n != "broken.jpg")

    with factory() as session:
        stored = {
            name: prediction
            for name, prediction in session.execute(
                select(Image.filename, Prediction).join(Prediction, Prediction.image_id == Image.id)
            ).all()
        }
    for name in order:
        if name == "broken.jpg":
            continue
        prepared = classifier.prepare(files[name])
        assert isinstance(prepared, Prepared)
        (alone,), maps = classifier.predict_explained(prepared.tensor[None], "all")
        prediction = stored[name]
        assert prediction.probability == pytest.approx(alone.probability, abs=1e-5), name
        assert prediction.label == alone.label
        assert prediction.heatmap_path is not None and prediction.heatmap_path.endswith(MAP_SUFFIX)
        grid = load_map(Path(prediction.heatmap_path))
        assert grid.shape == maps[0].shape
        assert np.abs(grid - maps[0]).max() <= 1 / 255 + 1e-6
        assert Path(prediction.heatmap_path).stat().st_size < 2_000
    classifier.close()
    engine.dispose()
