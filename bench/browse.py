"""Browse-page query time at scale: seed N predictions in a SQLite file, time filtered pages.

Run: `.venv/bin/python -m bench.browse [--rows 100000] [--db PATH] [--keep]`. Prints figures;
asserts nothing (the target for one filtered, sorted page plus its count is < 200 ms).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.machine import cpu_name
from db import browse, reviews
from db.migrate import upgrade
from db.models import Image, Prediction, Review
from db.session import make_engine, make_session_factory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MODEL_VERSIONS = ("efficientnet_lite0-aaaaaaaaaaaa", "efficientnet_lite0-bbbbbbbbbbbb")
FAILURES = (  # stored failure reasons, in the decoders' words
    "corrupt image data: broken PNG file",
    "not a recognised image format (expected PNG, JPEG, TIFF, BMP or DICOM)",
    "empty file (0 bytes)",
)


def say(line: str) -> None:
    """A figure for the reader (a benchmark's output, not a log line)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def seed(
    url: str, rows: int, *, seed_value: int = 7, chunk: int = 20_000, now: datetime = NOW
) -> None:
    """`rows` images over the 90 days before `now`, ~96% with a prediction, ~2% of those
    reviewed."""
    rng = random.Random(seed_value)
    engine = make_engine(url)
    with engine.begin() as connection:
        for start in range(0, rows, chunk):
            images, predictions, reviews = [], [], []
            for index in range(start + 1, min(rows, start + chunk) + 1):
                received = now - timedelta(seconds=rng.uniform(0, 90 * 86_400))
                roll = rng.random()
                status = "done" if roll < 0.96 else "failed" if roll < 0.98 else "queued"
                images.append(
                    {
                        "id": index,
                        "sha256": f"{index:064x}",
                        "path": f"/inbox/ward{index % 7}/xray_{index:07d}.png",
                        "filename": f"ward{index % 7}/xray_{index:07d}.png",
                        "source": "upload" if index % 20 == 0 else "watch",
                        "bytes": 200_000,
                        "format": "PNG",
                        "received_at": received,
                        "status": status,
                        "error": FAILURES[index % len(FAILURES)] if status == "failed" else None,
                        "attempts": 1,
                        "updated_at": received,
                    }
                )
                if status != "done":
                    continue
                probability = rng.betavariate(0.6, 1.4)
                label = "fractured" if probability >= 0.5 else "not_fractured"
                predictions.append(
                    {
                        "id": index,
                        "image_id": index,
                        "model_version": MODEL_VERSIONS[index % 10 == 0],
                        "label": label,
                        "probability": probability,
                        "threshold": 0.5,
                        "threshold_source": "global",
                        "batch_size": 16,
                        "inference_ms": 40.0,
                        "created_at": received + timedelta(seconds=2),
                    }
                )
                if rng.random() < 0.02:
                    verdict = label if rng.random() < 0.85 else _other(label)
                    reviews.append(
                        {
                            "prediction_id": index,
                            "reviewer": "bench",
                            "verdict": verdict,
                            "agrees": verdict == label,
                            "created_at": received + timedelta(hours=1),
                        }
                    )
            connection.execute(insert(Image), images)
            if predictions:
                connection.execute(insert(Prediction), predictions)
            if reviews:
                connection.execute(insert(Review), reviews)
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def _other(label: str) -> str:
    return browse.NEGATIVE_LABEL if label == browse.POSITIVE_LABEL else browse.POSITIVE_LABEL


def timed(action: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first run, median of the following runs) in milliseconds."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:])


SCENARIOS: dict[str, tuple[browse.BrowseFilter, browse.SortKey, int]] = {
    "no filter, newest first, page 1": (browse.BrowseFilter(), browse.SortKey.NEWEST, 1),
    "fractured, p ≥ 0.7, last 30 days, newest first, page 1": (
        browse.BrowseFilter(
            labels=(browse.POSITIVE_LABEL,),
            probability_min=0.7,
            received_from=NOW - timedelta(days=30),
        ),
        browse.SortKey.NEWEST,
        1,
    ),
    "fractured, highest probability first, page 20": (
        browse.BrowseFilter(labels=(browse.POSITIVE_LABEL,)),
        browse.SortKey.PROBABILITY_DESC,
        20,
    ),
    "file name contains 'ward3/xray_00', oldest first": (
        browse.BrowseFilter(filename="ward3/xray_00"),
        browse.SortKey.OLDEST,
        1,
    ),
    "unreviewed, uploads only, newest first": (
        browse.BrowseFilter(review_state=browse.ReviewState.UNREVIEWED, sources=("upload",)),
        browse.SortKey.NEWEST,
        1,
    ),
    "reader disagreed, newest first": (
        browse.BrowseFilter(review_state=browse.ReviewState.DISAGREED),
        browse.SortKey.NEWEST,
        1,
    ),
    "failed images, newest first": (
        browse.BrowseFilter(statuses=("failed",)),
        browse.SortKey.NEWEST,
        1,
    ),
    "no filter, highest probability first, page 1": (
        browse.BrowseFilter(),
        browse.SortKey.PROBABILITY_DESC,
        1,
    ),
    "no filter, by file name, page 100": (browse.BrowseFilter(), browse.SortKey.FILENAME, 100),
    "no filter, newest first, last page": (browse.BrowseFilter(), browse.SortKey.NEWEST, 10**9),
}


def machine() -> str:
    """CPU model and logical core count, for the record beside the figures."""
    model = cpu_name() or platform.machine()
    return f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def _page_into(pages: list[browse.Page], **kwargs: Any) -> None:
    pages.append(browse.browse(page_size=50, **kwargs))


def run(rows: int, db_path: Path, repeats: int) -> None:
    url = f"sqlite:///{db_path}"
    upgrade(url)
    started = time.perf_counter()
    seed(url, rows)
    say(f"seeded {rows:,} images in {time.perf_counter() - started:.1f} s ({db_path})")
    say(f"machine: {machine()}; SQLite {sqlite3.sqlite_version}")
    factory = make_session_factory(make_engine(url))
    say(
        f"{'browse: count + one page of 50 rows':<58} {'first':>8} {'median':>8} {'count':>8}  rows"
    )
    with factory() as session:
        for name, (flt, sort, page) in SCENARIOS.items():
            pages: list[browse.Page] = []
            first, median = timed(
                partial(_page_into, pages, session=session, flt=flt, sort=sort, page=page), repeats
            )
            _, counting = timed(partial(browse.count_rows, session=session, flt=flt), repeats)
            say(f"{name:<58} {first:7.1f}ms {median:7.1f}ms {counting:7.1f}ms  {pages[-1].total:,}")
        overview: list[tuple[str, Callable[[], object]]] = [
            ("overview: status counts", lambda: browse.status_counts(session=session)),
            ("overview: label counts", lambda: browse.label_counts(session=session)),
            (
                "overview: positive rate per day (90 days)",
                lambda: browse.positive_rate_by_day(session=session, days=90, now=NOW),
            ),
            (
                "overview: throughput per hour (48 h)",
                lambda: browse.throughput_by_hour(session=session, now=NOW),
            ),
            ("overview: agreement per model", lambda: reviews.agreement_by_model(session=session)),
        ]
        for name, action in overview:
            first, median = timed(action, repeats)
            say(f"{name:<58} {first:7.1f}ms {median:7.1f}ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, help="SQLite file to create (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.db is not None:
        if args.db.exists():
            parser.error(f"{args.db} exists; give a new file name")
        run(args.rows, args.db.resolve(), args.repeats)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-browse-") as tmp:
        run(args.rows, Path(tmp) / "browse.db", args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
