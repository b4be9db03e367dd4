"""A heat map the dashboard asks for is drawn and stored by a real worker (the dashboard runs no
model): only by a worker running the model that made the prediction."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from config import Settings
from dashboard import services
from db import queries
from db.models import Image, Prediction
from db.session import transaction
from model.explain import load_map
from tests.helpers import make_distinct_images, new_prediction, process_pipeline, wait_for
from tests.integration.test_rescore import register, version_of


def test_a_worker_draws_and_stores_a_heatmap_the_dashboard_asks_for(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    from worker import client
    from worker.app import make_celery

    version = version_of(tiny_model)
    # The worker stores no map at scoring time, so every one here is drawn on request.
    with process_pipeline(tmp_path, broker_url, tiny_model, heatmaps="none") as p:
        ids = register(p, make_distinct_images(tmp_path / "store", 3))
        settings = Settings(database_url=p.database_url, broker_url=broker_url)
        app = make_celery(settings, broker_url)
        dashboard = services.Dashboard(settings=settings, factory=p.factory, celery=app)
        p.start("worker")
        assert client.enqueue(app, p.factory, ids[:2])
        assert wait_for(lambda: p.settled(3) or p.counts().get("done") == 2, timeout=90), p.logs()
        # The third image, scored by a model no worker runs: a request is refused with why.
        with transaction(p.factory) as session:
            queries.store_batch(
                session=session,
                predictions=[new_prediction(ids[2], model_version="retired-model")],
                failures={},
            )
        with p.factory() as session:
            first, second, other = session.scalars(select(Prediction).order_by(Prediction.id))
            assert first.heatmap_path is None and second.heatmap_path is None
            assert queries.live_model_versions(
                session=session, alive_within=timedelta(seconds=settings.dead_after_s)
            ) == {version}

        refused = services.request_heatmap(dashboard, other)
        assert refused is not None
        assert "retired-model" in refused and version in refused

        # A request naming a version this worker does not run is answered by a log line, not a
        # map drawn with the wrong model; the worker takes requests in order, so once the next
        # one is stored, the first was handled.
        assert client.send_heatmap(app, first.id, "retired-model")
        assert services.request_heatmap(dashboard, second) is None
        path = services.wait_for_heatmap(p.factory, second.id, timeout_s=60)
        assert path is not None, p.logs()
        grid = load_map(Path(path))
        assert grid.ndim == 2 and grid.min() >= 0.0 and grid.max() <= 1.0
        assert "model retired-model is not loaded here" in p.logs(20000)
        with p.factory() as session:
            assert session.get(Prediction, first.id).heatmap_path is None  # type: ignore[union-attr]
            assert session.get(Prediction, second.id).heatmap_path == path  # type: ignore[union-attr]
            assert session.get(Image, ids[1]).status == "done"  # type: ignore[union-attr]
        assert p.alive()
