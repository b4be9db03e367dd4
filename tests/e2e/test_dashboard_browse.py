"""Browse in Chromium against a real server: Clear filters resets the controls the browser
shows, so a later sort keeps every row, and the CSV export holds the rows the table shows."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from playwright.sync_api import Locator

from tests.e2e.test_browser import CHROMIUM_ARGS, chromium, settled
from tests.e2e.test_dashboard_gate import NOTICE, dashboard, fetch, seed

NAMES = ("ward1/a.jpg", "ward1/b.jpg", "ward2/c.jpg", "ward3/d.jpg")


def _shown(locator: Locator) -> bool:
    from playwright.sync_api import TimeoutError as NotYet

    try:
        locator.wait_for(state="visible", timeout=3000)
    except NotYet:
        return False
    return True


def test_clear_filters_then_a_sort_keeps_all_rows_and_the_export_matches(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    seed(tmp_path / "data", NAMES)
    with dashboard(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/browse")
            expect(page.get_by_text(NOTICE)).to_be_visible(timeout=180_000)
            rows = lambda count: page.get_by_text(re.compile(rf"^{count} matching rows"))  # noqa: E731
            expect(rows(4)).to_be_visible()

            page.get_by_text("Filters", exact=True).click()  # the filters' expander
            name = page.get_by_label("File name contains")
            name.fill("ward1/")
            name.press("Enter")
            expect(rows(2)).to_be_visible()
            page.get_by_role("button", name="Clear filters").click()
            expect(rows(4)).to_be_visible()
            expect(name).to_have_value("")  # the control shows what the table applies

            page.wait_for_timeout(1000)  # the run Clear filters starts
            option = page.get_by_role("option", name="File name")
            for _ in range(3):  # a first click may only take the focus from the filters
                page.get_by_role("combobox", name="Sort").click()
                if _shown(option):
                    break
            option.click()
            page.wait_for_timeout(1500)  # the run the sort starts
            expect(rows(4)).to_be_visible()
            expect(name).to_have_value("")

            page.mouse.move(0, 0)  # off the table, whose hover toolbar covers the button
            with page.expect_download() as download:
                page.get_by_role("link", name="Export CSV").click()
            exported = fetch(download.value.url).text
            filenames = [row["filename"] for row in csv.DictReader(io.StringIO(exported))]
            assert filenames == sorted(NAMES)
        finally:
            browser.close()


def _seed_rows(data_dir: Path, count: int, reviewed: set[int], failures: dict[int, str]) -> None:
    """`count` images, image k received k minutes ago (newest first: 1, 2, …), each scored
    except the failed ones; the `reviewed` ones carry a reader's review. Written straight into
    the dashboard's database: the list needs more rows than the test radiographs."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from config import Settings
    from db.migrate import upgrade
    from db.models import Image, Prediction, Review
    from db.session import make_engine

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    now = datetime.now(UTC)
    images, predictions, reviews = [], [], []
    for k in range(1, count + 1):
        received = now - timedelta(minutes=k)
        images.append(
            {
                "id": k,
                "sha256": f"{k:064x}",
                "path": f"/nowhere/list/{k:02d}.png",
                "filename": f"list/{k:02d}.png",
                "source": "watch",
                "bytes": 1,
                "received_at": received,
                "status": "failed" if k in failures else "done",
                "error": failures.get(k),
                "attempts": 1,
                "updated_at": received,
            }
        )
        if k in failures:
            continue
        predictions.append(
            {
                "id": k,
                "image_id": k,
                "model_version": "seed_cnn-e2e",
                "label": "fractured" if k % 2 else "not_fractured",
                "probability": 0.8 if k % 2 else 0.2,
                "threshold": 0.5,
                "threshold_source": "global",
                "batch_size": 1,
                "inference_ms": 1.0,
                "created_at": received + timedelta(seconds=5),
            }
        )
        if k in reviewed:
            reviews.append(
                {
                    "prediction_id": k,
                    "reviewer": "Dr A",
                    "verdict": predictions[-1]["label"],
                    "agrees": True,
                    "created_at": received + timedelta(seconds=30),
                }
            )
    engine = make_engine(settings.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(insert(Image), images)
        connection.execute(insert(Prediction), predictions)
        if reviews:
            connection.execute(insert(Review), reviews)
    engine.dispose()


def test_next_previous_and_next_unreviewed_walk_the_list_across_pages(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _seed_rows(tmp_path / "data", 30, reviewed={2, 3, 26}, failures={})
    with dashboard(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/browse")
            expect(page.get_by_text(NOTICE)).to_be_visible(timeout=180_000)
            expect(page.get_by_text(re.compile(r"^30 matching rows"))).to_be_visible()
            page.get_by_role("combobox", name="Rows per page").click()
            page.get_by_role("option", name="25", exact=True).click()
            listing = lambda n: page.get_by_text(re.compile(rf"· page {n} of 2"))  # noqa: E731
            expect(listing(1)).to_be_visible()

            def shown(image: int) -> None:
                expect(page.get_by_text(f"image #{image} ·")).to_be_visible()
                expect(page).to_have_url(re.compile(rf"/browse\?image={image}$"))
                settled(page)  # the run is over: a value typed now is not overwritten

            number = page.get_by_label("Open image #")
            number.fill("25")  # the last row of page 1
            number.press("Enter")
            shown(25)
            expect(page.get_by_text("Row 25 of 30 in this list")).to_be_visible()

            page.get_by_role("button", name="Next record").click()
            shown(26)  # on page 2 now: the table turned with the record
            expect(listing(2)).to_be_visible()
            expect(page.get_by_text("Row 26 of 30 in this list")).to_be_visible()

            page.get_by_role("button", name="Previous record").click()
            shown(25)
            expect(listing(1)).to_be_visible()

            page.get_by_role("button", name="Next unreviewed").click()
            shown(27)  # 26 is reviewed
            expect(listing(2)).to_be_visible()

            number.fill("1")
            number.press("Enter")
            shown(1)
            expect(listing(1)).to_be_visible()
            page.get_by_role("button", name="Next unreviewed").click()
            shown(4)  # 2 and 3 are reviewed
            page.get_by_role("button", name="Next record").click()
            shown(5)

            number.fill("30")  # the end of the list
            number.press("Enter")
            shown(30)
            expect(page.get_by_role("button", name="Next record")).to_be_disabled()
            page.get_by_role("button", name="Next unreviewed").click()
            expect(
                page.get_by_text("No unreviewed row after this one in this list.")
            ).to_be_visible()
            shown(30)
        finally:
            browser.close()


def test_a_failure_reason_on_the_overview_opens_browse_filtered_to_it(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    failures = {
        3: "corrupt image data: broken PNG file",
        5: "corrupt image data: bad Huffman code",
        7: "empty file (0 bytes)",
    }
    _seed_rows(tmp_path / "data", 8, reviewed=set(), failures=failures)
    with dashboard(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/overview")
            expect(page.get_by_text(NOTICE)).to_be_visible(timeout=180_000)
            expect(page.get_by_text("Failure reasons", exact=True)).to_be_visible()
            expect(page.get_by_text("3 failed images in all", exact=False)).to_be_visible()
            reason = page.locator('[class*="st-key-reason-corrupt"]').get_by_role("button")
            reason.click()
            expect(page).to_have_url(re.compile(r"/browse"))
            expect(page.get_by_text(re.compile(r"^2 matching rows"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"filtered by failure reason"))).to_be_visible()
            page.get_by_text("Filters", exact=True).click()
            expect(page.get_by_role("combobox", name="Failure reason")).to_have_value(
                "corrupt image data (2)"
            )
        finally:
            browser.close()


def test_on_a_phone_the_sidebar_closes_after_picking_a_page(tmp_path: Path) -> None:
    """At 390 × 844 without a mobile user agent (a narrow window, or a phone browser asking for
    the desktop site), which Streamlit alone leaves open over the page."""
    from playwright.sync_api import expect, sync_playwright

    _seed_rows(tmp_path / "data", 3, reviewed=set(), failures={})
    with dashboard(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/overview")
            expect(page.get_by_text(NOTICE)).to_be_visible(timeout=180_000)
            settled(page)
            sidebar = page.locator('[data-testid="stSidebar"]')
            opener = page.locator('[data-testid="stExpandSidebarButton"]')
            opener.click()
            link = sidebar.locator('[data-testid="stSidebarNavLink"]', has_text="Browse")
            expect(link).to_be_in_viewport()
            link.click()
            expect(page.get_by_text(re.compile(r"^3 matching rows"))).to_be_visible()
            expect(opener).to_be_visible()  # the sidebar is closed: its opener is back
            expect(link).not_to_be_in_viewport()
        finally:
            browser.close()
