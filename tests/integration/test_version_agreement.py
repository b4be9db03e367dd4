"""Agreement between model versions (db.versions), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import queries, versions
from db.models import Prediction
from db.session import transaction

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def scored(
    session: Session, image_id: int, version: str, verdict: str | None, label: str, day: int
) -> None:
    session.add(
        Prediction(
            image_id=image_id,
            model_version=version,
            label=label,
            probability=0.5,
            threshold=0.5,
            verdict=verdict,
            batch_size=1,
            inference_ms=1.0,
            created_at=START + timedelta(days=day),
        )
    )


def test_versions_compared_on_the_images_both_scored(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        ids = []
        for n in range(5):
            image, _ = queries.register_image(
                session=session, sha256=f"{n:064x}", path=f"/x/{n}", filename=f"{n}.jpg", size=1
            )
            session.flush()
            ids.append(image.id)
        # "zz-old" named after "aa-new" but scored first: the earlier model is the older one.
        # A row without a verdict answers as its label implies.
        old = [("fractured", None), ("not_fractured", None), ("not_fractured", "no_fracture")]
        for image_id, (label, verdict) in zip(ids, old, strict=False):
            scored(session, image_id, "zz-old", verdict, label, day=0)
        scored(session, ids[4], "zz-old", "fracture", "fractured", day=0)  # only one version
        new = ["fracture", "doubt", "no_fracture"]
        for image_id, verdict in zip(ids, new, strict=False):
            label = "fractured" if verdict == "fracture" else "not_fractured"
            scored(session, image_id, "aa-new", verdict, label, day=3)
    with factory() as session:
        (pair,) = versions.version_agreement(session=session)
    assert (pair.earlier, pair.later) == ("zz-old", "aa-new")
    assert pair.counts == {
        ("fracture", "fracture"): 1,
        ("no_fracture", "doubt"): 1,
        ("no_fracture", "no_fracture"): 1,
    }
    assert (pair.images, pair.same) == (3, 2)
    assert pair.agreement == pytest.approx(2 / 3)


def test_one_model_version_has_nothing_to_compare(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        image, _ = queries.register_image(
            session=session, sha256="f" * 64, path="/x/f", filename="f.jpg", size=1
        )
        session.flush()
        scored(session, image.id, "only", "fracture", "fractured", day=0)
    with factory() as session:
        assert versions.version_agreement(session=session) == []
