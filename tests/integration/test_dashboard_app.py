"""The Streamlit app through AppTest: upload (answered), browse filters, the three verdicts,
fracture boxes, earlier predictions and model-version agreement, review saved, DICOM studies
and results sent to PACS, sign-in."""

from __future__ import annotations

import hashlib
import html
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from config import Settings
from dashboard import access, signin
from db import browse, queries
from db.models import DicomExport, ExportState, Image, Prediction, Review
from db.session import make_engine, make_session_factory, transaction
from model.inference import Classifier, Result
from tests.helpers import REPO, new_prediction, sample_images
from worker.app import BULK_QUEUE, UPLOAD_QUEUE
from worker.processing import BatchProcessor

APP = REPO / "dashboard" / "app.py"
NOTICE = "Decision support only — not for clinical use."
BOXES_TOGGLE = "Show fracture boxes"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """FRACTURE_* variables for the app under test (the app builds its Settings from them)."""
    import os

    for key in [k for k in os.environ if k.startswith("FRACTURE_")]:
        monkeypatch.delenv(key)
    values = {
        "FRACTURE_DATA_DIR": str(tmp_path / "data"),
        "FRACTURE_INBOX": str(tmp_path / "inbox"),
        "FRACTURE_UPLOAD_TIMEOUT_S": "30",
        "FRACTURE_LOG_LEVEL": "DEBUG",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def settings() -> Settings:
    return Settings()


def app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=90)


def texts(at: AppTest) -> str:
    """Everything the page says, as one string."""
    parts = [m.value for m in at.markdown]
    for kind in (at.info, at.warning, at.error, at.success, at.caption, at.subheader):
        parts += [str(e.value) for e in kind]
    return "\n".join(parts)


def verdict_card(at: AppTest) -> str:
    """The verdict card's HTML."""
    return next(m.value for m in at.markdown if '<div class="fx-label">' in m.value)


def heading(card: str) -> str:
    """The card's headline, as the reader sees it."""
    found = re.search(r'<div class="fx-label">(.*?)</div>', card)
    assert found is not None
    return html.unescape(found.group(1))


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert NOTICE in texts(at)


@contextmanager
def worker_thread(model: Path) -> Iterator[None]:
    """Stands in for `fracture worker`: runs the real batch processor on each queued image."""
    config = settings()
    factory = make_session_factory(make_engine(config.resolved_database_url))
    processor = BatchProcessor(
        Classifier.load(model, device="cpu"), factory, heatmaps_dir=config.heatmaps_dir
    )
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.1):
            with factory() as session:
                queued = queries.list_images(session=session, status="queued")
            if queued:
                processor.process([image.id for image in queued])

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def seed(
    cases: Sequence[tuple[str, float | None, str]],
    regions: dict[str, tuple[str, float, bool | None]] | None = None,
    *,
    model_version: str = "seed_cnn-test",
    threshold: float = 0.5,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, int]:
    """(file name, probability or None for a failure, source) → image ids, via db.queries;
    `regions` gives some files a (region, region probability, disagrees with DICOM), `extra`
    more prediction fields (verdict, doubt threshold, boxes). Seeding the same files again
    with another `model_version` adds that model's predictions beside the first."""
    regions = regions or {}
    extra = extra or {}
    from db.migrate import upgrade

    config = settings()
    config.ensure_dirs()
    upgrade(config.resolved_database_url)
    factory = make_session_factory(make_engine(config.resolved_database_url))
    fixtures = sample_images()
    ids: dict[str, int] = {}
    with transaction(factory) as session:
        for index, (name, probability, source) in enumerate(cases):
            path = fixtures[index % len(fixtures)]
            image, _ = queries.register_image(
                session=session,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                path=str(path),
                filename=name,
                size=path.stat().st_size,
                source=source,
            )
            session.flush()
            ids[name] = image.id
            if probability is None:
                queries.store_batch(
                    session=session, predictions=[], failures={image.id: "truncated image file"}
                )
                continue
            queries.store_batch(
                session=session,
                predictions=[
                    new_prediction(
                        image.id,
                        probability=probability,
                        threshold=threshold,
                        model_version=model_version,
                        region=regions[name][0] if name in regions else None,
                        region_probability=regions[name][1] if name in regions else None,
                        region_disagrees=regions[name][2] if name in regions else None,
                        **extra.get(name, {}),
                    )
                ],
                failures={},
            )
    return ids


# -- upload --------------------------------------------------------------------------------------


def test_upload_is_answered_with_label_probability_and_heatmap(
    env: dict[str, str], broker_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRACTURE_BROKER_URL", broker_url)
    monkeypatch.setenv("FRACTURE_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("FRACTURE_HEATMAPS", "all")
    source = sample_images()[0]
    data = source.read_bytes()
    (expected,) = Classifier.load(tiny_model, device="cpu").predict_sources([data])
    assert isinstance(expected, Result)
    at = app().run()
    assert_clean(at)
    with worker_thread(tiny_model):
        at.file_uploader(key="upload").upload(source.name, data, "image/jpeg").run()
    assert_clean(at)
    page = texts(at)
    label = "Fracture suspected" if expected.label == "fractured" else "No fracture suspected"
    assert label in page
    assert f"Fracture probability <b>{expected.probability:.3f}</b>" in page
    # The tiny model has one operating point: no doubt band, and no boxes to draw.
    assert (
        f"p = {expected.probability:.3f}; the fracture threshold is 0.500 (one operating point"
        in page
    )
    assert expected.model_version in page
    assert BOXES_TOGGLE not in [t.label for t in at.toggle]
    assert "answered in" in page and "model " in page
    spec = viewer_spec(at)  # the original in the viewer, its Grad-CAM map as an overlay
    assert spec["image"].startswith("/viewer/pixels/") and spec["heat"] is not None

    config = settings()
    sha = hashlib.sha256(data).hexdigest()
    factory = make_session_factory(make_engine(config.resolved_database_url))
    with factory() as session:
        image = queries.get_image_by_sha(session=session, sha256=sha)
        assert image is not None
        assert (image.source, image.status, image.filename) == ("upload", "done", source.name)
        assert image.path == str(config.uploads_dir / f"{sha}.jpg")
        assert image.enqueued_at is not None
    # The message went to the broker's priority queue (the stand-in worker reads the database).
    broker = redis.Redis.from_url(broker_url)
    assert broker.llen(UPLOAD_QUEUE) == 1 and broker.llen(BULK_QUEUE) == 0

    again = app().run()  # another browser session, same bytes
    again.file_uploader(key="upload").upload("copy.jpg", data, "image/jpeg").run()
    assert_clean(again)
    assert "answered from the database" in texts(again) and label in texts(again)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1
    assert broker.llen(UPLOAD_QUEUE) == 1  # nothing sent twice


def test_upload_without_a_worker_says_it_stays_queued(
    env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRACTURE_BROKER_URL", broker_url)
    monkeypatch.setenv("FRACTURE_UPLOAD_TIMEOUT_S", "1")
    at = app().run()
    source = sample_images()[3]
    at.file_uploader(key="upload").upload(source.name, source.read_bytes(), "image/jpeg").run()
    assert_clean(at)
    page = texts(at)
    assert "No worker answered within 1 s" in page and "stays queued" in page
    assert any(b.label == "Check again" for b in at.button)


def test_upload_refuses_what_is_not_a_radiograph_file(env: dict[str, str]) -> None:
    at = app().run()
    at.file_uploader(key="upload").upload("notes.png", b"%PDF-1.7 not an image", "image/png")
    at.run()
    assert_clean(at)
    assert "Upload refused: not a PNG, JPEG, BMP, TIFF or DICOM file" in texts(at)
    assert list(settings().uploads_dir.iterdir()) == []


# -- browse and review ---------------------------------------------------------------------------


def table_files(at: AppTest) -> list[str]:
    if not at.dataframe:
        return []
    return list(at.dataframe[0].value["File"])


def test_browse_filters_run_in_the_database(env: dict[str, str]) -> None:
    seed(
        [
            ("ward1/hand.jpg", 0.91, "watch"),
            ("ward2/wrist.jpg", 0.12, "watch"),
            ("ward2/broken-file.jpg", None, "watch"),
            ("clinic/upload.jpg", 0.55, "upload"),
        ]
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    assert_clean(at)
    assert "**4** matching rows" in texts(at)
    assert len(table_files(at)) == 4

    at.multiselect(key="f-verdicts").select("fracture").run()
    assert sorted(table_files(at)) == ["clinic/upload.jpg", "ward1/hand.jpg"]
    at.multiselect(key="f-sources").select("upload").run()
    assert table_files(at) == ["clinic/upload.jpg"]

    next(b for b in at.button if b.label == "Clear filters").click().run()
    at.text_input(key="f-name").input("WARD2").run()
    assert sorted(table_files(at)) == ["ward2/broken-file.jpg", "ward2/wrist.jpg"]
    at.multiselect(key="f-statuses").select("failed").run()
    assert table_files(at) == ["ward2/broken-file.jpg"]
    assert list(at.dataframe[0].value["Problem"]) == ["truncated image file"]

    at.selectbox(key="f-review").select(browse.ReviewState.REVIEWED).run()
    assert table_files(at) == []
    assert "No stored prediction matches these filters." in texts(at)
    assert_clean(at)


def test_clear_filters_resets_every_control_and_a_later_sort_keeps_all_rows(
    env: dict[str, str],
) -> None:
    seed(
        [
            ("ward1/hand.jpg", 0.91, "watch"),
            ("ward2/wrist.jpg", 0.12, "watch"),
            ("ward2/broken-file.jpg", None, "watch"),
            ("clinic/upload.jpg", 0.55, "upload"),
        ]
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.multiselect(key="f-verdicts").select("fracture").run()
    at.multiselect(key="f-sources").select("upload").run()
    at.text_input(key="f-name").input("clinic").run()
    at.slider(key="f-prob").set_range(0.5, 0.9).run()
    assert table_files(at) == ["clinic/upload.jpg"]

    next(b for b in at.button if b.label == "Clear filters").click().run()
    at.selectbox(key="sort").select(browse.SortKey.FILENAME).run()
    assert_clean(at)
    assert at.multiselect(key="f-verdicts").value == []
    assert at.multiselect(key="f-sources").value == []
    assert at.text_input(key="f-name").value == ""
    assert at.slider(key="f-prob").value == (0.0, 1.0)
    assert table_files(at) == sorted(table_files(at)) and len(table_files(at)) == 4
    assert "**4** matching rows" in texts(at)


def test_a_link_opens_its_record_and_the_table_highlights_the_open_row(
    env: dict[str, str],
) -> None:
    ids = seed([("ward1/a.jpg", 0.91, "watch"), ("ward1/b.jpg", 0.2, "watch")])
    at = app()
    at.query_params["image"] = str(ids["ward1/b.jpg"])
    at.run()
    at.switch_page("views/browse.py").run()
    assert_clean(at)
    assert at.number_input(key="open-image").value == ids["ward1/b.jpg"]
    assert "ward1/b.jpg" in texts(at) and "Reader review" in texts(at)

    def highlighted() -> list[str]:
        rows = at.session_state["table"]["selection"]["rows"]
        return [table_files(at)[row] for row in rows]

    assert highlighted() == ["ward1/b.jpg"]
    at.number_input(key="open-image").set_value(ids["ward1/a.jpg"]).run()
    assert highlighted() == ["ward1/a.jpg"]  # typed, not clicked: the row follows
    assert at.query_params["image"] == str(ids["ward1/a.jpg"])  # the address links to it
    next(b for b in at.button if b.label == "Close record").click().run()
    assert highlighted() == [] and at.number_input(key="open-image").value is None


def test_a_negative_with_a_confident_region_reads_as_a_negative(env: dict[str, str]) -> None:
    """The headline is the verdict alone; the region's confidence is on its own line."""
    ids = seed(
        [("ward4/mixed.jpg", 0.018, "watch")],
        regions={"ward4/mixed.jpg": ("mixed", 0.92, None)},
        threshold=0.05,
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.number_input(key="open-image").set_value(ids["ward4/mixed.jpg"]).run()
    assert_clean(at)
    card = verdict_card(at)
    assert heading(card) == "No fracture suspected" and 'class="fx-card neg"' in card
    assert "p = 0.018; the fracture threshold is 0.050 (one operating point" in card
    assert "chosen on validation images for a target sensitivity" in card
    assert "Body region (model's guess): mixed, 92%" in card
    assert "fracture threshold 0.050</div>" in card  # the bar's legend, same digits


def test_region_on_the_card_in_the_filters_and_on_the_overview(env: dict[str, str]) -> None:
    ids = seed(
        [
            ("ward1/a.jpg", 0.91, "watch"),
            ("ward1/b.jpg", 0.20, "watch"),
            ("ward2/c.jpg", 0.70, "watch"),
            ("ward3/old-model.jpg", 0.10, "watch"),
        ],
        regions={
            "ward1/a.jpg": ("hand", 0.87, False),
            "ward1/b.jpg": ("leg", 0.99, None),
            "ward2/c.jpg": ("hand", 0.64, True),
        },
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    assert_clean(at)
    assert sorted(at.dataframe[0].value["Region"]) == ["hand", "hand ⚠ DICOM differs", "leg", "—"]
    at.multiselect(key="f-regions").select("hand").run()
    assert sorted(table_files(at)) == ["ward1/a.jpg", "ward2/c.jpg"]
    at.multiselect(key="f-regions").select(browse.NO_REGION).run()
    assert sorted(table_files(at)) == ["ward1/a.jpg", "ward2/c.jpg", "ward3/old-model.jpg"]
    next(b for b in at.button if b.label == "Clear filters").click().run()
    at.checkbox(key="f-disagree").check().run()
    assert table_files(at) == ["ward2/c.jpg"]

    at.number_input(key="open-image").set_value(ids["ward1/a.jpg"]).run()
    assert_clean(at)
    card = verdict_card(at)
    assert heading(card) == "Fracture suspected"  # the region's confidence is not the finding's
    assert "Body region (model's guess): hand, 87%" in card
    at.number_input(key="open-image").set_value(ids["ward2/c.jpg"]).run()
    assert "the model sees hand" in texts(at)

    at.switch_page("views/overview.py").run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "Region (predicted)" in d.value.columns)
    assert list(table["Region (predicted)"]) == [
        "Hand",
        "Leg",
        "no region (single-head model)",
    ]
    assert list(table["Predictions"]) == [2, 1, 1]
    assert list(table["Fracture suspected"]) == [2, 0, 0]
    assert list(table["DICOM body part differs"]) == [1, 0, 0]


def test_review_is_saved_beside_the_prediction_and_counted(env: dict[str, str]) -> None:
    ids = seed([("ward1/hand.jpg", 0.91, "watch"), ("ward1/foot.jpg", 0.2, "watch")])
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.number_input(key="open-image").set_value(ids["ward1/hand.jpg"]).run()
    assert_clean(at)
    assert "Fracture suspected" in texts(at) and "Not reviewed yet." in texts(at)

    reader = next(t for t in at.text_input if t.label == "Reader")
    reader.input("Dr Example")
    next(t for t in at.text_area if t.label == "Note (optional)").input("old callus")
    next(b for b in at.button if b.label.startswith("Correct to:")).click().run()
    assert_clean(at)
    assert "Review saved: No fracture suspected." in texts(at)
    assert "Dr Example" in texts(at) and "old callus" in texts(at)

    factory = make_session_factory(make_engine(settings().resolved_database_url))
    with factory() as session:
        (review,) = session.scalars(select(Review)).all()
        prediction = session.get(Prediction, review.prediction_id)
        assert prediction is not None and prediction.image_id == ids["ward1/hand.jpg"]
        assert (prediction.label, prediction.probability) == (browse.POSITIVE_LABEL, 0.91)
    assert (review.reviewer, review.verdict, review.agrees, review.note) == (
        "Dr Example",
        browse.NEGATIVE_LABEL,
        False,
        "old callus",
    )

    at.selectbox(key="f-review").select(browse.ReviewState.DISAGREED).run()
    assert table_files(at) == ["ward1/hand.jpg"]
    assert list(at.dataframe[0].value["Review"]) == ["✗ No fracture suspected Dr Example"]

    at.switch_page("views/overview.py").run()
    assert_clean(at)
    agreement = at.dataframe[-1].value
    assert list(agreement["Reviewed cases"]) == [1]
    assert list(agreement["FP"]) == [1] and list(agreement["Specificity"]) == ["too few reviews"]


# -- model v2: three verdicts, boxes, history ----------------------------------------------------

TWO_POINTS = {"doubt_threshold": 0.12}  # a model with a doubt operating point below 0.35


def caption_texts(at: AppTest) -> list[str]:
    """Image captions (st.image) and st.caption lines."""
    captions = [str(c.value) for c in at.caption]
    for element in at.image:
        captions += [str(c) for c in element.captions]
    return captions


def test_three_verdicts_with_both_operating_points_and_a_filter(env: dict[str, str]) -> None:
    ids = seed(
        [
            ("a/fracture.jpg", 0.81, "watch"),
            ("a/doubt.jpg", 0.2, "watch"),
            ("a/none.jpg", 0.05, "watch"),
        ],
        threshold=0.35,
        extra={
            "a/fracture.jpg": {"verdict": "fracture", **TWO_POINTS, "boxes": []},
            "a/doubt.jpg": {"verdict": "doubt", **TWO_POINTS, "boxes": []},
            "a/none.jpg": {"verdict": "no_fracture", **TWO_POINTS, "boxes": []},
        },
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    assert_clean(at)
    verdicts = dict(zip(table_files(at), at.dataframe[0].value["Verdict"], strict=True))
    assert verdicts == {
        "a/fracture.jpg": "Fracture suspected",
        "a/doubt.jpg": "Doubt — review",
        "a/none.jpg": "No fracture suspected",
    }
    expected = {
        "a/fracture.jpg": ("pos", "Fracture suspected", "p = 0.810"),
        "a/doubt.jpg": ("doubt", "Doubt — review", "p = 0.200"),
        "a/none.jpg": ("neg", "No fracture suspected", "p = 0.050"),
    }
    for name, (colour, label, probability) in expected.items():
        at.number_input(key="open-image").set_value(ids[name]).run()
        assert_clean(at)
        card = verdict_card(at)
        assert f'class="fx-card {colour}"' in card and heading(card) == label
        assert f"{probability}; the fracture threshold is 0.350, the doubt threshold 0.120" in card
        assert "fracture threshold 0.350 · " in card and "doubt threshold 0.120</div>" in card
        # A heat-head model that found no fracture region says so instead of drawing boxes.
        assert BOXES_TOGGLE not in [t.label for t in at.toggle]
        assert any("no fracture region marked" in c for c in caption_texts(at))
        # A doubt has nothing to confirm: the reader settles it either way.
        settles = any(b.label.startswith("Reader sees:") for b in at.button)
        assert settles == (colour == "doubt")

    at.multiselect(key="f-verdicts").select("doubt").run()
    assert table_files(at) == ["a/doubt.jpg"]
    at.multiselect(key="f-verdicts").select("fracture").run()
    assert sorted(table_files(at)) == ["a/doubt.jpg", "a/fracture.jpg"]
    assert_clean(at)


def viewer_spec(at: AppTest) -> dict[str, Any]:
    """What the page hands the browser's image viewer (dashboard/viewer.py)."""
    import json

    (frame,) = at.get("iframe")
    found = re.search(
        r'<script id="spec" type="application/json">(.*?)</script>', frame.proto.srcdoc
    )
    assert found is not None
    return dict(json.loads(found.group(1).replace("<\\/", "</")))


def test_fracture_boxes_go_to_the_viewer_in_the_originals_pixels(env: dict[str, str]) -> None:
    boxes = [[40.0, 60.0, 120.0, 90.0, 0.82], [200.0, 300.0, 50.0, 40.0, 0.41]]
    ids = seed(
        [("b/boxes.jpg", 0.9, "watch")],
        threshold=0.35,
        extra={"b/boxes.jpg": {"verdict": "fracture", **TWO_POINTS, "boxes": boxes}},
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.number_input(key="open-image").set_value(ids["b/boxes.jpg"]).run()
    assert_clean(at)
    spec = viewer_spec(at)
    # The viewer draws them over the image (shown on by default, toggled in the browser).
    assert spec["boxes"] == boxes
    assert spec["image"].startswith("/viewer/pixels/")
    assert any("2 fracture boxes (score 0.82, 0.41)" in c for c in caption_texts(at))
    fields = at.expander[-1].dataframe[0].value  # All stored fields
    shown = dict(zip(fields["Field"], fields["Value"], strict=True))
    assert shown["Fracture boxes"] == "[40, 60, 120, 90, 0.82]; [200, 300, 50, 40, 0.41]"
    assert shown["Verdict"] == "Fracture suspected" and shown["Doubt threshold"] == "0.1200"


def test_latest_prediction_shown_with_earlier_ones_and_version_agreement(
    env: dict[str, str],
) -> None:
    cases = [
        ("c/one.jpg", 0.9, "watch"),
        ("c/two.jpg", 0.3, "watch"),
        ("c/three.jpg", 0.1, "watch"),
    ]
    ids = seed(cases, model_version="seed_cnn-v1")  # one operating point, no verdict stored
    seed(
        [("c/one.jpg", 0.7, "watch"), ("c/two.jpg", 0.2, "watch"), ("c/three.jpg", 0.05, "watch")],
        model_version="heat-v2",
        threshold=0.35,
        extra={
            "c/one.jpg": {"verdict": "fracture", **TWO_POINTS, "boxes": []},
            "c/two.jpg": {"verdict": "doubt", **TWO_POINTS, "boxes": []},
            "c/three.jpg": {"verdict": "no_fracture", **TWO_POINTS, "boxes": []},
        },
    )
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.number_input(key="open-image").set_value(ids["c/two.jpg"]).run()
    assert_clean(at)
    assert "Doubt — review" in texts(at)  # the latest model's answer
    assert at.selectbox(key="browse-version").value == "heat-v2"
    history = next(e for e in at.expander if e.label.startswith("Earlier predictions"))
    assert history.label.startswith("Earlier predictions (1)")
    earlier = history.dataframe[0].value
    assert list(earlier["Model version"]) == ["seed_cnn-v1"]
    assert list(earlier["Verdict"]) == ["No fracture suspected"]
    assert list(earlier["Probability"]) == [0.3]

    at.switch_page("views/overview.py").run()
    assert_clean(at)
    pairs = next(d.value for d in at.dataframe if "Later model" in d.value.columns)
    assert list(pairs["Earlier model"]) == ["seed_cnn-v1"]
    assert list(pairs["Later model"]) == ["heat-v2"]
    assert list(pairs["Images scored by both"]) == [3] and list(pairs["Same verdict"]) == [2]
    assert list(pairs["Agreement"]) == ["66.7%"]
    cross = next(d.value for d in at.dataframe if d.value.index.name == "Earlier ↓ / later →")
    assert cross.loc["seed_cnn-v1: No fracture suspected", "heat-v2: Doubt — review"] == 1
    assert cross.loc["seed_cnn-v1: Fracture suspected", "heat-v2: Fracture suspected"] == 1
    assert int(cross.to_numpy().sum()) == 3


# -- access --------------------------------------------------------------------------------------


def test_a_page_run_needs_a_valid_sign_in(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's gate keeps out a browser that never signed in (test_dashboard_access); each
    run checks again, so a session whose sign-in ended shows nothing more."""
    secret = "ward-7 s3cret"
    monkeypatch.setenv("FRACTURE_DASHBOARD_PASSWORD", secret)
    caplog.set_level(logging.DEBUG)
    presented: list[str | None] = [None]
    monkeypatch.setattr(signin, "sign_in_token", lambda: presented[0])
    at = app().run()
    assert_clean(at)
    assert not at.file_uploader and "Signed out" in texts(at)
    assert "[Sign in again](/signin?next=%2F)" in texts(at)
    at.switch_page("views/browse.py").run()
    assert not at.dataframe and "matching rows" not in texts(at)

    presented[0] = "forged.token." + "0" * 64
    at.run()
    assert not at.dataframe

    tokens = access.Tokens(secret)
    presented[0] = tokens.issue()
    at.run()
    assert_clean(at)
    assert "Signed out" not in texts(at) and "matching rows" in texts(at)

    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    assert_clean(at)
    assert not at.dataframe and "Signed out" in texts(at)
    assert not tokens.valid(presented[0])  # refused by the server's gate from now on too
    assert secret not in caplog.text
    assert secret not in repr(at.session_state.to_dict())


# -- DICOM network: studies and results sent to PACS -------------------------------------------

STUDY_A = "1.2.826.0.1.3680043.8.498.11111111111111111111111"
STUDY_B = "1.2.826.0.1.3680043.8.498.22222222222222222222222"
DESTINATION = "PACS@pacs.example:104"
SENT_AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NEXT_TRY = datetime(2099, 1, 1, 8, 30, tzinfo=UTC)
PATIENT_NAME = "Doe^Jane"  # what a PatientName looks like; the database never holds one


def instance_path(study: str, number: int) -> str:
    """A file name as the listener stores it: dicom/<study UID>/<SOP instance UID>.dcm."""
    return f"dicom/{study}/{study}.{number}.dcm"


A1, A2 = instance_path(STUDY_A, 1), instance_path(STUDY_A, 2)
B1, B2 = instance_path(STUDY_B, 1), instance_path(STUDY_B, 2)


def seed_dicom() -> dict[str, int]:
    """Four instances received over DICOM, two per study, each prediction's export in another
    state (A1 sent, A2 pending, B1 failed, B2 none yet), and an inbox file beside them."""
    ids = seed(
        [
            (A1, 0.91, "dicom"),
            (A2, 0.12, "dicom"),
            (B1, 0.77, "dicom"),
            (B2, 0.05, "dicom"),
            ("ward1/hand.jpg", 0.6, "watch"),
        ]
    )
    factory = make_session_factory(make_engine(settings().resolved_database_url))
    states: dict[str, dict[str, Any]] = {
        A1: {"state": ExportState.SENT, "attempts": 1, "sent_at": SENT_AT},
        A2: {
            "state": ExportState.PENDING,
            "attempts": 2,
            "error": f"destination {DESTINATION} unreachable",
            "next_attempt_at": NEXT_TRY,
        },
        B1: {
            "state": ExportState.FAILED,
            "attempts": 10,
            "error": "gave up after 10 attempt(s): destination refused SR object: status 0xA700",
        },
    }
    with transaction(factory) as session:
        for name in (A1, A2, B1, B2):
            image = session.get(Image, ids[name])
            assert image is not None
            study = STUDY_A if name in (A1, A2) else STUDY_B
            image.study_uid = study
            image.series_uid = f"{study}.{'1' if name in (A1, B1) else '2'}"
            image.sop_instance_uid = name.rsplit("/", 1)[-1].removesuffix(".dcm")
            image.sop_class_uid = "1.2.840.10008.5.1.4.1.1.1.1"
            image.calling_ae = "MODALITY_7"
            image.modality, image.body_part = "DX", "HAND"
            if name in states:
                prediction = session.scalars(
                    select(Prediction).where(Prediction.image_id == image.id)
                ).one()
                session.add(
                    DicomExport(
                        prediction_id=prediction.id,
                        image_id=image.id,
                        destination=DESTINATION,
                        **states[name],
                    )
                )
    return ids


def page_text(at: AppTest) -> str:
    """What the page says, table cells and metrics included."""
    cells = [d.value.to_csv() for d in at.dataframe]
    metrics = [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join([texts(at), *cells, *metrics])


def exports_by_image(ids: dict[str, int]) -> dict[str, tuple[str, int]]:
    factory = make_session_factory(make_engine(settings().resolved_database_url))
    with factory() as session:
        rows = session.scalars(select(DicomExport)).all()
    names = {image_id: name for name, image_id in ids.items()}
    return {names[e.image_id]: (e.state, e.attempts) for e in rows}


def test_browse_groups_dicom_instances_by_study_and_filters_by_send_state(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRACTURE_DICOM_DESTINATION", DESTINATION)
    seed_dicom()
    at = app().run()
    at.switch_page("views/browse.py").run()
    assert_clean(at)
    table = at.dataframe[0].value
    study = dict(zip(table["File"], table["Study"], strict=True))
    assert study == {
        A1: "…" + STUDY_A[-12:],
        A2: "…" + STUDY_A[-12:],
        B1: "…" + STUDY_B[-12:],
        B2: "…" + STUDY_B[-12:],
        "ward1/hand.jpg": "—",
    }
    sent = dict(zip(table["File"], table["PACS"], strict=True))
    assert sent == {A1: "sent", A2: "pending", B1: "failed", B2: "—", "ward1/hand.jpg": "—"}

    at.multiselect(key="f-sources").select("dicom").run()
    assert sorted(table_files(at)) == sorted([A1, A2, B1, B2])
    assert set(at.dataframe[0].value["Source"]) == {"DICOM network"}
    study_filter = at.selectbox(key="f-study")
    # Newest study first (B's instances came last), each with its instances and latest arrival.
    assert [option.split(" · ")[:2] for option in study_filter.options] == [
        [f"…{STUDY_B[-12:]}", "2 instances"],
        [f"…{STUDY_A[-12:]}", "2 instances"],
    ]
    study_filter.set_value(STUDY_A).run()
    assert_clean(at)
    assert sorted(table_files(at)) == [A1, A2]
    assert "**2** matching rows" in texts(at)

    next(b for b in at.button if b.label == "Clear filters").click().run()
    assert at.selectbox(key="f-study").value is None and len(table_files(at)) == 5
    at.multiselect(key="f-export").select(ExportState.FAILED).run()
    assert table_files(at) == [B1]
    at.multiselect(key="f-export").select(browse.NOT_EXPORTED).run()
    assert sorted(table_files(at)) == [B1, B2, "ward1/hand.jpg"]
    assert_clean(at)
    assert PATIENT_NAME not in page_text(at)


def test_record_view_shows_the_study_and_each_results_send_state(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRACTURE_DICOM_DESTINATION", DESTINATION)
    ids = seed_dicom()
    at = app().run()
    at.switch_page("views/browse.py").run()

    at.number_input(key="open-image").set_value(ids[A1]).run()
    assert_clean(at)
    page = page_text(at)
    assert f"Study UID <code>{STUDY_A}</code>" in page
    assert f"Series UID <code>{STUDY_A}.1</code>" in page
    assert f"SOP instance UID <code>{STUDY_A}.1</code>" in page
    assert "Sent by AE title <code>MODALITY_7</code>" in page
    assert "**1** other instance in this study" in page
    others = next(d.value for d in at.dataframe if "Series" in d.value.columns)
    assert list(others["Image"]) == [ids[A2]] and list(others["Series"]) == [
        "…" + f"{STUDY_A}.2"[-12:]
    ]
    assert f"to <code>{DESTINATION}</code>" in page
    assert f"seed_cnn-test: sent to PACS at 2026-03-10 12:00 UTC ({DESTINATION})" in page
    assert not any(b.label == "Send again" for b in at.button)

    at.number_input(key="open-image").set_value(ids[A2]).run()
    assert (
        "seed_cnn-test: pending — attempt 3 of 10, next try at 2099-01-01 08:30 UTC: "
        f"destination {DESTINATION} unreachable" in page_text(at)
    )

    at.number_input(key="open-image").set_value(ids[B2]).run()
    assert f"seed_cnn-test: not queued yet for {DESTINATION}" in page_text(at)

    at.number_input(key="open-image").set_value(ids[B1]).run()
    assert_clean(at)
    assert (
        "seed_cnn-test: failed after 10 attempt(s): destination refused SR object: status 0xA700"
        in page_text(at)
    )
    next(b for b in at.button if b.label == "Send again").click().run()
    assert_clean(at)
    page = page_text(at)
    assert "1 result(s) queued again." in page and "within a second or so" in page
    assert (
        "seed_cnn-test: pending — attempt 1 of 10, due now: destination refused SR object: "
        "status 0xA700" in page
    )
    assert not any(b.label == "Send again" for b in at.button)
    assert exports_by_image(ids)[B1] == (ExportState.PENDING, 0)
    assert exports_by_image(ids)[A1] == (ExportState.SENT, 1)  # other images untouched

    next(b for b in at.button if b.label == "Show this study in Browse").click().run()
    assert_clean(at)
    assert at.selectbox(key="f-study").value == STUDY_B
    assert sorted(table_files(at)) == [B1, B2]
    assert PATIENT_NAME not in page_text(at)

    # Without a destination, a result with no export row says why it is not sent.
    monkeypatch.delenv("FRACTURE_DICOM_DESTINATION")
    bare = app().run()
    bare.switch_page("views/browse.py").run()
    bare.number_input(key="open-image").set_value(ids[B2]).run()
    assert_clean(bare)
    assert "seed_cnn-test: not sent: no DICOM destination configured" in page_text(bare)
    bare.number_input(key="open-image").set_value(ids["ward1/hand.jpg"]).run()
    assert "Results to PACS" not in page_text(bare) and "Study UID <code>" not in page_text(bare)


def test_overview_counts_results_sent_to_pacs_and_links_the_failed_ones(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed([("ward1/hand.jpg", 0.6, "watch")])
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    assert "Results to PACS" not in texts(at)  # no destination, nothing ever sent

    seed_dicom()
    at.run()
    assert_clean(at)
    assert "Results to PACS" in texts(at) and "no destination configured now" in texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Sent"], metrics["Pending"], metrics["Failed"]) == ("1", "1", "1")
    assert PATIENT_NAME not in page_text(at)

    next(b for b in at.button if b.label == "Show failed in Browse").click().run()
    assert_clean(at)
    assert "Browse predictions" in texts(at)
    assert at.multiselect(key="f-export").value == [ExportState.FAILED]
    assert at.selectbox(key="f-model").value == browse.ALL_VERSIONS
    assert table_files(at) == [B1]


def test_draw_heatmap_asks_the_workers_and_says_why_when_none_can(
    env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard runs no model: a heat map for a negative is a worker's job, asked for only
    where a live worker runs the model that made the prediction."""
    monkeypatch.setenv("FRACTURE_BROKER_URL", broker_url)
    ids = seed([("n/negative.jpg", 0.02, "watch")], model_version="seed_cnn-test")
    at = app().run()
    at.switch_page("views/browse.py").run()
    at.number_input(key="open-image").set_value(ids["n/negative.jpg"]).run()
    assert_clean(at)
    at = next(b for b in at.button if b.label == "Draw heatmap").click().run()
    assert "A heatmap cannot be drawn now: no worker is running." in texts(at)

    factory = make_session_factory(make_engine(settings().resolved_database_url))
    with transaction(factory) as session:
        queries.heartbeat(session=session, worker="w1", model_version="seed_cnn-newer")
    at = next(b for b in at.button if b.label == "Draw heatmap").click().run()
    assert (
        "it can only be drawn by the model that made this prediction (seed_cnn-test); "
        "the workers run seed_cnn-newer." in texts(at)
    )
    assert viewer_spec(at)["heat"] is None
