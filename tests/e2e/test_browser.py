"""The whole product in a real browser: `fracture up`, then headless Chromium drives the dashboard.

Upload a radiograph and read the answer; drop files into the inbox and find them under Browse;
open a record that a second model version scored with fracture boxes, toggle the boxes off;
correct one prediction and see it counted on the overview. Screenshots go to artifacts/.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
from playwright.sync_api import Page

from config import Settings
from db import queries
from db.session import make_engine, make_session_factory, transaction
from tests.helpers import (
    IN_CI,
    REPO,
    fracture_cli,
    fracture_env,
    new_prediction,
    running,
    sample_images,
    wait_for,
)
from worker.broker import free_port

ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if IN_CI:
            pytest.fail("chromium is required in CI (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def settled(page: Page, images: int = 0) -> None:
    """Wait until the app has finished its run and `images` pictures have loaded (screenshots)."""
    page.wait_for_function(
        """(count) => !document.querySelector('[data-testid="stStatusWidget"]')
            && [...document.querySelectorAll('[data-testid="stImage"] img')]
                .filter((img) => img.complete && img.naturalWidth > 0).length >= count""",
        arg=images,
        timeout=60_000,
    )
    page.wait_for_timeout(500)


def viewer_loaded(page: Page) -> Any:
    """The radiograph viewer's frame, once its pixels have loaded and the app has settled."""
    from playwright.sync_api import expect

    viewer = page.frame_locator('iframe[title^="Radiograph viewer"]')
    expect(viewer.locator("#view")).to_be_visible()
    expect(viewer.locator("#msg")).to_have_count(0)  # the message goes once pixels are drawn
    settled(page)
    return viewer


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (URLError, OSError):
        return False


def add_boxed_prediction(data_dir: Path, image_id: int) -> None:
    """A second model version's prediction, with fracture boxes, for an image already scored.

    The tiny test model has no heat head, so it draws no boxes; this row stands for what a
    heat-head model stores (through `fracture rescore`), written as the worker writes it."""
    settings = Settings(data_dir=data_dir)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with transaction(factory) as session:
        queries.store_batch(
            session=session,
            predictions=[
                new_prediction(
                    image_id,
                    probability=0.91,
                    model_version="heat_e2e-v2",
                    verdict="fracture",
                    doubt_threshold=0.2,
                    boxes=[[60.0, 80.0, 120.0, 100.0, 0.87]],
                )
            ],
            failures={},
        )


@pytest.fixture
def product(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[str, Path]]:
    """`fracture up` on free ports with the tiny model; yields (dashboard URL, inbox)."""
    port = free_port()
    inbox = tmp_path / "inbox"
    env = fracture_env(
        model_path=tiny_model,
        data_dir=tmp_path / "data",
        inbox=inbox,
        dashboard_port=port,
        device="cpu",
        settle_s=0.3,
        upload_timeout_s=90,
    )
    log = tmp_path / "up.log"
    with running(fracture_cli("up"), env=env, log_path=log) as process:
        if not wait_for(lambda: healthy(port) or process.poll() is not None, timeout=120):
            pytest.fail(f"dashboard did not start:\n{log.read_text()[-3000:]}")
        assert process.poll() is None, log.read_text()[-3000:]
        yield f"http://127.0.0.1:{port}", inbox


def test_upload_browse_review_in_a_real_browser(product: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, inbox = product
    ARTIFACTS.mkdir(exist_ok=True)
    radiograph = next(p for p in sample_images() if p.name.startswith("fractured"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(60_000)
            # Hospitals run it offline and radiographs stay in: nothing is fetched elsewhere.
            elsewhere: list[str] = []
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((url, "data:", "blob:")) else elsewhere.append(r.url)
                ),
            )

            page.goto(url)
            notice = page.get_by_text("Decision support only — not for clinical use.")
            expect(notice).to_be_visible(timeout=180_000)  # the first run imports everything
            page.locator("input[type=file]").set_input_files(radiograph)
            expect(page.get_by_text("Fracture probability")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("suspected").first).to_be_visible()
            expect(page.get_by_text("answered in")).to_be_visible()
            expect(page.get_by_text("p = ").first).to_be_visible()  # both operating points
            expect(page.get_by_text("Grad-CAM").first).to_be_visible()
            viewer_loaded(page)
            page.screenshot(path=ARTIFACTS / "dashboard-upload.png")

            dropped = [p for p in sample_images() if p != radiograph][:3]
            (inbox / "ward9").mkdir(parents=True, exist_ok=True)
            for source in dropped:
                shutil.copy(source, inbox / "ward9" / source.name)

            page.get_by_role("link", name="Browse").click()
            page.get_by_text("Filters", exact=True).click()  # the filters' expander
            page.get_by_label("File name contains").fill("ward9/")
            page.keyboard.press("Enter")
            refresh = page.get_by_role("button", name="Refresh")

            def all_listed() -> bool:
                refresh.click()
                page.wait_for_timeout(1500)
                listed = re.compile(rf"^{len(dropped)} matching rows")
                return page.get_by_text(listed).count() > 0

            assert wait_for(all_listed, timeout=120, interval=1.0), "inbox files not listed"

            add_boxed_prediction(tmp_path / "data", image_id=1)  # the uploaded radiograph
            page.get_by_label("Open image #").fill("1")
            page.keyboard.press("Enter")
            expect(page.get_by_text("Reader review")).to_be_visible()
            # The latest prediction, its boxes (an overlay, on by default) and the earlier one.
            expect(page.get_by_text("1 fracture box (score 0.87)").first).to_be_visible()
            expect(page.get_by_text("Earlier predictions (1)")).to_be_visible()
            viewer = viewer_loaded(page)
            boxes = viewer.get_by_label("Fracture boxes", exact=True)
            expect(boxes).to_be_checked()
            page.screenshot(path=ARTIFACTS / "dashboard-boxes.png")
            boxes.uncheck()
            expect(boxes).not_to_be_checked()
            page.get_by_label("Reader", exact=True).fill("Dr Browser")
            page.get_by_role("button", name="Correct to:").click()
            expect(page.get_by_text("Review saved")).to_be_visible()
            viewer_loaded(page)
            page.screenshot(path=ARTIFACTS / "dashboard-browse.png")

            page.get_by_role("link", name="Overview").click()
            expect(page.get_by_text("Model against readers")).to_be_visible()
            expect(page.get_by_text("Readers' verdicts are the reference")).to_be_visible()
            expect(page.get_by_text("Model versions against each other")).to_be_visible()
            expect(notice).to_be_visible()
            settled(page)
            page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=ARTIFACTS / "dashboard-overview.png")
            assert not elsewhere, f"the page fetched from other hosts: {elsewhere}"
        finally:
            browser.close()
