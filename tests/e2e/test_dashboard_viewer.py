"""The record view's image viewer in Chromium against a real server (`fracture dashboard`): zoom
changes the displayed scale, window/level changes the pixels without a request or a websocket
message to the server, the heat map and boxes toggle; the pixel link is refused without the
session's sign-in. On a 390 x 844 phone the Upload answer's verdict is on the first screen."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from config import Settings
from dashboard import access
from db import queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction
from model.explain import save_map
from tests.e2e.test_browser import CHROMIUM_ARGS, chromium
from tests.e2e.test_dashboard_gate import NOTICE, PASSWORD, dashboard, fetch
from tests.helpers import new_prediction, sample_images

BOX = [60.0, 80.0, 120.0, 100.0, 0.82]


def seed_record(data_dir: Path) -> tuple[int, Path]:
    """One scored radiograph with a fracture box and a stored heat map; its id and file."""
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    source = sample_images()[0]
    grid = np.zeros((14, 14), dtype=np.float32)
    grid[3:8, 2:7] = 1.0
    heat = save_map(grid, settings.heatmaps_dir / "seed.cam.png")
    with transaction(factory) as session:
        image, _ = queries.register_image(
            session=session,
            sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            path=str(source),
            filename="ward3/hand.jpg",
            size=source.stat().st_size,
            source="watch",
        )
        session.flush()
        queries.store_batch(
            session=session,
            predictions=[
                new_prediction(
                    image.id,
                    probability=0.81,
                    threshold=0.35,
                    model_version="heat-e2e",
                    verdict="fracture",
                    doubt_threshold=0.12,
                    boxes=[BOX],
                    heatmap_path=str(heat),
                )
            ],
            failures={},
        )
        return image.id, source


def canvas_digest(frame: Any) -> str:
    """A digest of the viewer's drawn pixels."""
    return str(
        frame.evaluate(
            """() => { const c = document.getElementById('view');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let h = 0; for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) | 0;
                return h; }"""
        )
    )


def test_viewer_zooms_windows_in_the_browser_and_toggles_overlays(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    image_id, _ = seed_record(tmp_path / "data")
    with (
        dashboard(tmp_path, dashboard_password=PASSWORD) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(60_000)
            sent: list[str] = []  # every request and websocket message the page sends
            page.on("request", lambda request: sent.append(request.url))
            page.on("websocket", lambda ws: ws.on("framesent", lambda _: sent.append("ws")))

            page.goto(f"{url}/browse?image={image_id}")
            page.get_by_label("Dashboard password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Reader review")).to_be_visible(timeout=180_000)
            viewer = page.frame_locator('iframe[title^="Radiograph viewer"]')
            expect(viewer.locator("#msg")).to_have_count(0)  # the pixels have loaded
            frame = (
                page.locator('iframe[title^="Radiograph viewer"]').element_handle().content_frame()
            )
            assert frame is not None
            page.wait_for_timeout(1000)  # the page's own run has settled

            scale = lambda: float(viewer.locator("#view").get_attribute("data-scale") or 0)  # noqa: E731
            fitted = scale()
            viewer.get_by_role("button", name="Zoom in").click()
            assert scale() > fitted * 1.4
            expect(viewer.locator("#zoom")).not_to_have_text(f"{round(fitted * 100)}%")
            viewer.get_by_role("button", name="Fit").click()
            assert abs(scale() - fitted) < 1e-3

            before, quiet = canvas_digest(frame), len(sent)
            viewer.locator("#width").fill("30")
            viewer.locator("#level").fill("40")
            page.wait_for_timeout(300)
            windowed = canvas_digest(frame)
            assert windowed != before
            expect(viewer.locator("#info")).to_contain_text("L 40.0 W 30.0")
            viewer.get_by_label("Invert").check()
            page.wait_for_timeout(300)
            assert canvas_digest(frame) != windowed
            assert len(sent) == quiet, sent[quiet:]  # windowing asked nothing of the server

            heat_on = canvas_digest(frame)
            viewer.get_by_label("Heat map", exact=True).uncheck()
            page.wait_for_timeout(200)
            heat_off = canvas_digest(frame)
            assert heat_off != heat_on
            viewer.get_by_label("Fracture boxes", exact=True).uncheck()
            page.wait_for_timeout(200)
            assert canvas_digest(frame) != heat_off
            assert len(sent) == quiet, sent[quiet:]

            # The pixel link: served with this browser's sign-in, refused without it.
            link = frame.evaluate("() => JSON.parse(document.getElementById('spec').text).image")
            assert re.fullmatch(r"/viewer/pixels/[\w-]{20,}", link)
            (cookie,) = [c["value"] for c in context.cookies() if c["name"] == access.COOKIE]
            served = fetch(url + link, cookie)
            assert served.status_code == 200 and served.content[:4] == b"\x89PNG"
            assert served.headers["X-Original-Size"] == "373x454"
            assert fetch(url + link).status_code == 401
            assert fetch(url + link, "forged.token.value").status_code == 401
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_text("Signed out", exact=True)).to_be_visible()
            assert fetch(url + link, cookie).status_code == 401
        finally:
            browser.close()


def test_phone_upload_shows_the_verdict_on_the_first_screen(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _, source = seed_record(tmp_path / "data")  # the upload is answered from the database
    with dashboard(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
            )
            page.set_default_timeout(60_000)
            page.goto(url)
            expect(page.get_by_text(NOTICE)).to_be_visible(timeout=180_000)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(source))
            card = page.locator(".fx-card .fx-label").first
            expect(card).to_have_text("Fracture suspected", timeout=60_000)
            page.wait_for_timeout(1000)
            page.evaluate("() => window.scrollTo(0, 0)")
            box = card.bounding_box()
            assert box is not None and box["y"] + box["height"] <= 844, box
            Path("artifacts").mkdir(exist_ok=True)
            page.screenshot(path="artifacts/phone-upload.png")

            # Browse on a phone: the filters are on the page, not in the closed sidebar.
            page.goto(f"{url}/browse")
            expect(page.get_by_text(re.compile(r"^1 matching rows"))).to_be_visible()
            page.get_by_text("Filters", exact=True).click()
            expect(page.get_by_label("File name contains")).to_be_visible()
            sidebar = page.locator('[data-testid="stSidebar"]')
            assert sidebar.count() == 0 or sidebar.get_attribute("aria-expanded") != "true"
            page.screenshot(path="artifacts/phone-browse.png")
        finally:
            browser.close()
