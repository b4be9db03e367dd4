"""Dashboard page times at scale: seed N images, start the real dashboard (`fracture dashboard`)
on them, drive it in Chromium, print how long each step takes until its result is on screen.

Run: `.venv/bin/python -m bench.pages [--rows 100000] [--repeats 3]`. Needs Debian's Chromium
(/usr/bin/chromium, never a downloaded browser). Prints figures; asserts nothing (the targets:
a first render under 1 s, a filter change under 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError

from bench.browse import machine, say, seed
from config import Settings
from db import browse
from db.migrate import upgrade
from db.session import make_engine, make_session_factory

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
NOTICE = "Decision support only — not for clinical use."
TIMEOUT_MS = 120_000
FILTER_TEXT = "ward3/"  # File name contains: a seventh of the rows


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return bool(r.status == 200)
    except (URLError, OSError):
        return False


@contextmanager
def dashboard(data_dir: Path, log_path: Path) -> Iterator[str]:
    """`fracture dashboard` on a free port, on this data folder; yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_")}
    env |= {"FRACTURE_DATA_DIR": str(data_dir), "FRACTURE_DASHBOARD_PORT": str(port)}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fracture", "dashboard"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the dashboard did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def rows_text(count: int) -> re.Pattern[str]:
    return re.compile(rf"^{count:,} matching rows")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _browse_drawn(page: Page, total: int) -> None:
    """Wait until Browse shows its row count and table."""
    from playwright.sync_api import expect

    expect(page.get_by_text(rows_text(total))).to_be_visible()
    expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()


def _overview_drawn(page: Page) -> None:
    """Wait until Overview has drawn every section (its last heading and a chart)."""
    from playwright.sync_api import expect

    expect(page.get_by_text("Model versions against each other")).to_be_visible()
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()


class Driver:
    """One browser; each measurement in a fresh tab (a new Streamlit session)."""

    def __init__(self, browser: Browser, url: str, total: int, filtered: int) -> None:
        self.browser, self.url, self.total, self.filtered = browser, url, total, filtered

    def _page(self) -> Page:
        page = self.browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        return page

    def _browse(self) -> tuple[Page, float, float]:
        """A new tab on Browse: (page, notice shown, row count and table shown)."""
        from playwright.sync_api import expect

        page = self._page()
        started = time.perf_counter()
        page.goto(f"{self.url}/browse")
        expect(page.get_by_text(NOTICE)).to_be_visible()  # the app's first element
        notice = _ms(started)
        _browse_drawn(page, self.total)
        return page, notice, _ms(started)

    def browse_first_render(self) -> tuple[float, float]:
        """(the notice, drawn before any page's own work; the row count and table)."""
        page, notice, table = self._browse()
        page.close()
        return notice, table

    def overview_first_render(self) -> tuple[float, float, float]:
        """(the notice, metrics visible, every section drawn)."""
        from playwright.sync_api import expect

        page = self._page()
        started = time.perf_counter()
        page.goto(f"{self.url}/overview")
        expect(page.get_by_text(NOTICE)).to_be_visible()
        notice = _ms(started)
        expect(page.locator('[data-testid="stMetric"]').first).to_be_visible()
        metrics = _ms(started)
        _overview_drawn(page)
        whole = _ms(started)
        page.close()
        return notice, metrics, whole

    def switch_pages(self) -> tuple[float, float]:
        """In one session, as a reader moves around: (Browse → Overview, every section drawn;
        Overview → Browse, row count and table drawn). No script bundle to load, no new
        session: what a page costs inside the app."""
        page, _, _ = self._browse()
        started = time.perf_counter()
        page.get_by_role("link", name="Overview").click()
        _overview_drawn(page)
        overview = _ms(started)
        started = time.perf_counter()
        page.get_by_role("link", name="Browse").click()
        _browse_drawn(page, self.total)
        browse = _ms(started)
        page.close()
        return overview, browse

    def bundle_loaded(self) -> float:
        """A new tab: until the browser has loaded and run Streamlit's own script bundle
        (DOMContentLoaded), before any session exists; the floor under a first render."""
        page = self._page()
        page.goto(f"{self.url}/browse", wait_until="domcontentloaded")
        elapsed = float(
            page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
        )
        page.close()
        return elapsed

    def filter_change(self) -> float:
        from playwright.sync_api import expect

        page, _, _ = self._browse()
        page.get_by_text("Filters", exact=True).click()
        name = page.get_by_label("File name contains")
        name.fill(FILTER_TEXT)
        started = time.perf_counter()
        name.press("Enter")
        expect(page.get_by_text(rows_text(self.filtered))).to_be_visible()
        elapsed = _ms(started)
        page.close()
        return elapsed

    def page_change(self) -> float:
        from playwright.sync_api import expect

        page, _, _ = self._browse()
        started = time.perf_counter()
        page.get_by_role("button", name="Next", exact=True).click()
        expect(page.get_by_text(re.compile(r"· page 2 of"))).to_be_visible()
        elapsed = _ms(started)
        page.close()
        return elapsed

    def open_record(self) -> tuple[float, float]:
        """(typed image number → record shown, then Next record → the next one shown)."""
        from playwright.sync_api import expect

        page, _, _ = self._browse()
        number = page.get_by_label("Open image #")
        number.fill("1")
        started = time.perf_counter()
        number.press("Enter")
        expect(page.get_by_text("Reader review")).to_be_visible()
        expect(page.get_by_text("image #1 ·")).to_be_visible()
        opened = _ms(started)
        step = page.get_by_role("button", name="Next record")
        if not step.count():
            page.close()
            return opened, float("nan")
        started = time.perf_counter()
        step.click()
        expect(page.get_by_text("image #1 ·")).to_have_count(0)
        expect(page.get_by_text("Reader review")).to_be_visible()
        stepped = _ms(started)
        page.close()
        return opened, stepped


def measure(name: str, action: Callable[[], float | tuple[float, ...]], repeats: int) -> None:
    """The first run (a new tab after the warm-up) and the median of the following ones."""
    from playwright.sync_api import Error

    try:
        runs = [action() for _ in range(repeats + 1)]
    except (AssertionError, Error) as exc:  # the step never finished: say where, then stop
        say(f"{name}: did not finish within {TIMEOUT_MS // 1000} s: {str(exc).splitlines()[0]}")
        raise
    columns = list(zip(*[r if isinstance(r, tuple) else (r,) for r in runs], strict=True))
    for index, values in enumerate(columns):
        label = name if len(columns) == 1 else f"{name} [{index + 1}]"
        say(f"{label:<58} {values[0]:8.0f}ms {statistics.median(values[1:]):8.0f}ms")


def run(rows: int, data_dir: Path, repeats: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        raise SystemExit("needs Debian's Chromium: apt-get install chromium")
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    url = settings.resolved_database_url
    upgrade(url)
    started = time.perf_counter()
    seed(url, rows, now=datetime.now(UTC))
    say(f"seeded {rows:,} images in {time.perf_counter() - started:.1f} s ({data_dir})")
    say(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    with make_session_factory(make_engine(url))() as session:
        total = browse.count_rows(session=session)
        filtered = browse.count_rows(session=session, flt=browse.BrowseFilter(filename=FILTER_TEXT))
    with (
        dashboard(data_dir, data_dir / "dashboard.log") as base,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            driver = Driver(browser, base, total, filtered)
            warm = time.perf_counter()
            driver.browse_first_render()  # imports, caches: the cost of the first visitor only
            driver.overview_first_render()
            say(f"warm-up (first visitor after start, both pages): {_ms(warm):.0f} ms")
            say(f"{'step (until its result is on screen)':<58} {'first':>10} {'median':>10}")
            measure(
                "Browse: first render [1 notice, 2 row count and table]",
                driver.browse_first_render,
                repeats,
            )
            measure(
                "Overview: first render [1 notice, 2 metrics, 3 every section]",
                driver.overview_first_render,
                repeats,
            )
            measure("New tab: Streamlit's script bundle loaded", driver.bundle_loaded, repeats)
            measure(
                "In the app: page switch [1 to Overview, 2 back to Browse]",
                driver.switch_pages,
                repeats,
            )
            measure(
                f"Browse: filter change (file name '{FILTER_TEXT}')", driver.filter_change, repeats
            )
            measure("Browse: page change (Next)", driver.page_change, repeats)
            measure(
                "Browse: open a record [1 typed number, 2 Next record]", driver.open_record, repeats
            )
        finally:
            browser.close()
    say(f"load average after: {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="a new folder to seed (default: temporary)")
    args = parser.parse_args(argv)
    if args.data_dir is not None:
        if args.data_dir.exists():
            parser.error(f"{args.data_dir} exists; give a new folder")
        run(args.rows, args.data_dir.resolve(), args.repeats)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        run(args.rows, Path(tmp) / "data", args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
