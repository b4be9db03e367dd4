"""Browse in Chromium against a real server: Clear filters resets the controls the browser
shows, so a later sort keeps every row, and the CSV export holds the rows the table shows."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from playwright.sync_api import Locator

from tests.e2e.test_browser import CHROMIUM_ARGS, chromium
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
                page.get_by_role("button", name="Export CSV").click()
            exported = fetch(download.value.url).text
            filenames = [row["filename"] for row in csv.DictReader(io.StringIO(exported))]
            assert filenames == sorted(NAMES)
        finally:
            browser.close()
