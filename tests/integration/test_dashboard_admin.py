"""The Overview's admin figures in the real app script (Streamlit AppTest, real SQLite): time to
result, the oldest waiting image, the rate alert with its stated rule, failure reasons that open
Browse filtered to them, and agreement figures that wait for enough reviews."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from dashboard import admin as admin_view
from db.migrate import upgrade
from db.models import Image, Prediction, Review
from db.session import make_engine
from tests.integration import test_dashboard_app
from tests.integration.test_dashboard_app import app, assert_clean, settings, texts

env = test_dashboard_app.env  # the app's FRACTURE_* variables, in a temp folder

FAILURES = {
    "bad/1.png": "corrupt image data: broken PNG file",
    "bad/2.png": "corrupt image data: bad Huffman code",
    "bad/3.png": "empty file (0 bytes)",
}


def seed(
    now: datetime,
    *,
    history: int,
    history_positive: float,
    recent: int,
    recent_positive: float,
    reviewed: int = 0,
) -> None:
    """`history` predictions spread over days 2–30 before `now`, `recent` in the last day (each
    stored 10 s after arrival), the failures above and one image queued for two hours."""
    url = settings().resolved_database_url
    settings().ensure_dirs()
    upgrade(url)
    images, predictions, reviews = [], [], []

    def image(index: int, name: str, received: datetime, status: str, error: str | None) -> None:
        images.append(
            {
                "id": index,
                "sha256": f"{index:064x}",
                "path": f"/nowhere/{name}",
                "filename": name,
                "source": "watch",
                "bytes": 1,
                "received_at": received,
                "status": status,
                "error": error,
                "attempts": 1,
                "updated_at": received + timedelta(seconds=10),
            }
        )

    plan = [(2 + 28 * i / history, i < history * history_positive) for i in range(history)]
    plan += [(0.9 * i / recent, i < recent * recent_positive) for i in range(recent)]
    for index, (days_ago, positive) in enumerate(plan, start=1):
        received = now - timedelta(days=days_ago, seconds=30)
        image(index, f"ward/{index}.png", received, "done", None)
        predictions.append(
            {
                "id": index,
                "image_id": index,
                "model_version": "seed_cnn-admin",
                "label": "fractured" if positive else "not_fractured",
                "probability": 0.9 if positive else 0.1,
                "threshold": 0.5,
                "threshold_source": "global",
                "batch_size": 1,
                "inference_ms": 1.0,
                "created_at": received + timedelta(seconds=10),
            }
        )
        if index <= reviewed:
            reviews.append(
                {
                    "prediction_id": index,
                    "reviewer": "Dr A",
                    "verdict": "fractured" if positive else "not_fractured",
                    "agrees": True,
                    "created_at": received + timedelta(hours=1),
                }
            )
    start = len(plan) + 1
    for offset, (name, error) in enumerate(FAILURES.items()):
        image(start + offset, name, now - timedelta(days=5), "failed", error)
    image(start + len(FAILURES), "waiting.png", now - timedelta(hours=2), "queued", None)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(Image), images)
        connection.execute(insert(Prediction), predictions)
        if reviews:
            connection.execute(insert(Review), reviews)
    engine.dispose()


def test_a_last_day_out_of_its_usual_range_raises_an_alert_with_its_rule(
    env: dict[str, str],
) -> None:
    seed(datetime.now(UTC), history=300, history_positive=0.2, recent=40, recent_positive=0.8)
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    (warning,) = [str(w.value) for w in at.warning]
    assert warning.startswith("Positive rate in the last 24 h: 80.0% (32 of 40); usual range")
    assert "the 30 days before: 20.0% of 300" in warning
    assert "Failure rate in the last 24 h: 0.0% (0 of 40)" in texts(at)  # inside its range
    assert admin_view.RULE in texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Time to result, last 24 h (p50 / p95)"] == "10 s / 10 s"
    assert metrics["Time to result, all time (p50 / p95)"] == "10 s / 10 s"
    assert metrics["Oldest waiting image"] == "2.0 h ago"


def test_an_ordinary_day_raises_no_alert(
    env: dict[str, str],
) -> None:
    seed(datetime.now(UTC), history=300, history_positive=0.2, recent=40, recent_positive=0.2)
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    assert not at.warning
    assert "Positive rate in the last 24 h: 20.0% (8 of 40); usual range" in texts(at)


def test_too_few_results_are_not_judged(env: dict[str, str]) -> None:
    seed(datetime.now(UTC), history=300, history_positive=0.2, recent=5, recent_positive=1.0)
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    assert not at.warning
    assert "Positive rate in the last 24 h: 100.0% (5 of 5); too few results to judge" in texts(at)


def test_failure_reasons_open_browse_filtered_to_that_reason(env: dict[str, str]) -> None:
    seed(datetime.now(UTC), history=10, history_positive=0.5, recent=2, recent_positive=0.5)
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    assert "corrupt image data" in texts(at) and "empty file" in texts(at)
    assert "3 failed images in all" in texts(at)

    at.button(key="reason-corrupt image data").click().run()
    assert_clean(at)
    assert "Browse predictions" in texts(at)
    assert at.selectbox(key="f-reason").value == "corrupt image data"
    assert sorted(at.dataframe[0].value["File"]) == ["bad/1.png", "bad/2.png"]
    assert set(at.dataframe[0].value["Problem"]) == {
        FAILURES["bad/1.png"],
        FAILURES["bad/2.png"],
    }


def test_agreement_waits_for_enough_reviews_then_shows_intervals(env: dict[str, str]) -> None:
    seed(datetime.now(UTC), history=40, history_positive=0.5, recent=0, recent_positive=0.0)
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    assert "No reviews yet" in texts(at)
    assert "Too few reviews: 0 predictions reviewed by two readers" in texts(at)


def test_agreement_with_enough_reviews_shows_each_figure_with_its_interval(
    env: dict[str, str],
) -> None:
    seed(
        datetime.now(UTC),
        history=40,
        history_positive=0.5,
        recent=0,
        recent_positive=0.0,
        reviewed=30,
    )
    at = app().run()
    at.switch_page("views/overview.py").run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "Reviewed cases" in d.value.columns)
    assert list(table["Reviewed cases"]) == [30]
    (sensitivity,) = table["Sensitivity"]
    # 20 positives of the 30 reviewed, all confirmed: 100 %, Wilson's lower bound below it.
    assert sensitivity.startswith("100.0% (") and sensitivity.endswith("–100.0%)")
    (kappa,) = table["Cohen's κ"]
    assert kappa.startswith("1.00 (")
