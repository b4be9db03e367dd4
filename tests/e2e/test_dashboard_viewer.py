"""The record view's image viewer (OpenSeadragon) in Chromium against a real server (`fracture
dashboard`): zoom changes the view, window/level the pixels (the served 16 bits through the
chosen window), and the overlays toggle, all without a request or a websocket message to the
server; a DICOM file's own window is offered as a preset; the pixel links are refused without the
session's sign-in. On a 390 x 844 phone the Upload answer's verdict is on the first screen."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from config import Settings
from dashboard import access
from dashboard import viewer as viewer_module
from db import queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction
from model.explain import save_map
from tests.e2e.test_browser import CHROMIUM_ARGS, chromium
from tests.e2e.test_dashboard_gate import NOTICE, PASSWORD, dashboard, fetch
from tests.helpers import new_prediction, sample_images
from tests.make_inputs import dicom_bytes

BOX = [60.0, 80.0, 120.0, 100.0, 0.82]


def seed_record(data_dir: Path, source: Path | None = None) -> tuple[int, Path]:
    """One scored radiograph with a fracture box and a stored heat map; its id and file."""
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    source = source or sample_images()[0]
    grid = np.zeros((14, 14), dtype=np.float32)
    grid[3:8, 2:7] = 1.0
    heat = save_map(grid, settings.heatmaps_dir / f"seed-{source.stem}.cam.png")
    with transaction(factory) as session:
        image, _ = queries.register_image(
            session=session,
            sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            path=str(source),
            filename=f"ward3/{source.name}",
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


def dicom_record(data_dir: Path) -> int:
    """A 16-bit DICOM radiograph with two windows of its own, seeded like seed_record."""
    from PIL import Image

    grey = np.asarray(Image.open(sample_images()[1]).convert("L"))
    path = data_dir.parent / "study.dcm"
    # Two windows: the decoder applies the first (stretching 8-bit grey over 16 bits that are
    # all used); the second is offered as a preset.
    data = dicom_bytes(
        grey,
        bits=16,
        VOILUTFunction=None,
        WindowCenter=[15000.0, 20000.0],
        WindowWidth=[30000.0, 16384.0],
        WindowCenterWidthExplanation=["FULL", "BONE"],
    )
    path.write_bytes(data)
    return seed_record(data_dir, path)[0]


def settle(frame: Any) -> None:
    """Wait until the viewer's tiles, windowing and animation are at rest."""
    frame.wait_for_function("() => window.fxSettled")
    frame.evaluate("() => window.fxSettled()")


def view_digest(viewer: Any) -> str:
    """A digest of what the viewer shows: OpenSeadragon's canvas and its overlays."""
    return hashlib.sha256(viewer.locator("#view").screenshot()).hexdigest()


def shown_grey(frame: Any) -> np.ndarray:
    """OpenSeadragon's canvas (the image layers, not the overlays), as grey."""
    import base64

    import cv2

    url = frame.evaluate("() => document.querySelector('#view canvas').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert picture is not None
    return picture.astype(np.float64)


def middle(picture: np.ndarray, width: int = 0, height: int = 0) -> np.ndarray:
    """The middle 80% of an image; in a viewer's picture at Fit (`width` x `height` fitted in
    and centred), of where the image is shown."""
    rows, columns = picture.shape
    scale = min(columns / width, rows / height) if width else 1.0
    shown_w, shown_h = (width * scale, height * scale) if width else (columns, rows)
    left, top = (columns - shown_w) / 2, (rows - shown_h) / 2
    return picture[
        int(top + 0.1 * shown_h) : int(top + 0.9 * shown_h),
        int(left + 0.1 * shown_w) : int(left + 0.9 * shown_w),
    ]


def assert_windowed(frame: Any, grey16: np.ndarray, level: float, width: float) -> None:
    """OpenSeadragon's canvas, at Fit, shows these 16 bits through this window (the mean grey of
    the middle of the image, within 3 of 255)."""
    grey = grey16.astype(np.float64) / 65535
    expected = np.clip((grey - (level - width / 2) / 100) / (width / 100), 0, 1) * 255
    shown = middle(shown_grey(frame), grey16.shape[1], grey16.shape[0])
    assert abs(shown.mean() - middle(expected).mean()) < 3, (level, width)


def viewer_frame(page: Any) -> tuple[Any, Any]:
    """The viewer's frame locator and frame, once its first tiles are drawn and at rest."""
    from playwright.sync_api import expect

    viewer = page.frame_locator('iframe[title^="Radiograph viewer"]')
    expect(viewer.locator("#view")).to_be_visible()
    expect(viewer.locator("#msg")).to_have_count(0)  # the first tiles are drawn
    element = page.locator('iframe[title^="Radiograph viewer"]').element_handle()
    element.evaluate("(e) => e.scrollIntoView({block: 'center'})")  # clear of the page's header
    frame = element.content_frame()
    assert frame is not None
    settle(frame)
    return viewer, frame


def test_viewer_zooms_windows_in_the_browser_and_toggles_overlays(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    image_id, _ = seed_record(tmp_path / "data")
    dicom_id = dicom_record(tmp_path / "data")
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
            viewer, frame = viewer_frame(page)
            page.wait_for_timeout(1000)  # the page's own run has settled
            settle(frame)
            link = frame.evaluate("() => JSON.parse(document.getElementById('spec').text).image")
            # The radiograph came as Deep Zoom tiles of the full resolution (373 x 454: one tile).
            assert f"{url}{link}/9/0_0.png" in sent

            # Zoom: OpenSeadragon scales the tiles it holds.
            scale = lambda: float(viewer.locator("#view").get_attribute("data-scale") or 0)  # noqa: E731
            fitted, fitted_view, quiet = scale(), view_digest(viewer), len(sent)
            viewer.get_by_role("button", name="Zoom in").click()
            frame.wait_for_function("(f) => Number(view.dataset.scale) > f * 1.4", arg=fitted)
            settle(frame)
            expect(viewer.locator("#zoom")).not_to_have_text(f"{round(fitted * 100)}%")
            assert view_digest(viewer) != fitted_view
            viewer.get_by_role("button", name="Fit").click()
            frame.wait_for_function("(f) => Math.abs(view.dataset.scale - f) < 1e-3", arg=fitted)
            settle(frame)
            assert len(sent) == quiet, sent[quiet:]  # zooming asked nothing of the server

            # Window/level: the tiles the browser holds, windowed again in the page.
            before = view_digest(viewer)
            viewer.locator("#width").fill("30")
            viewer.locator("#level").fill("40")
            settle(frame)
            windowed = view_digest(viewer)
            assert windowed != before
            expect(viewer.locator("#info")).to_contain_text("L 40.0 W 30.0")
            viewer.get_by_label("Invert").check()
            settle(frame)
            assert view_digest(viewer) != windowed
            assert len(sent) == quiet, sent[quiet:]  # windowing asked nothing of the server

            # Overlays: the heat map (a second tiled image) and the boxes (OpenSeadragon overlays).
            box = viewer.locator(".fx-box")
            expect(box).to_have_count(1)
            expect(box).to_be_visible()
            expect(box).to_have_text("0.82")
            heat_on = view_digest(viewer)
            viewer.get_by_label("Heat map", exact=True).uncheck()
            settle(frame)
            heat_off = view_digest(viewer)
            assert heat_off != heat_on
            viewer.get_by_label("Fracture boxes", exact=True).uncheck()
            settle(frame)
            expect(box).to_be_hidden()
            assert view_digest(viewer) != heat_off
            viewer.get_by_label("Heat map", exact=True).check()
            viewer.get_by_label("Heat map opacity").fill("100")
            settle(frame)
            assert view_digest(viewer) not in (heat_on, heat_off)
            Path("artifacts").mkdir(exist_ok=True)
            page.screenshot(path="artifacts/dashboard-viewer.png")
            assert len(sent) == quiet, sent[quiet:]

            # The pixel links: served with this browser's sign-in, refused without it.
            assert re.fullmatch(r"/viewer/pixels/[\w-]{20,}", link)
            (cookie,) = [c["value"] for c in context.cookies() if c["name"] == access.COOKIE]
            info = fetch(f"{url}{link}/info", cookie)
            assert info.status_code == 200
            assert (info.json()["width"], info.json()["height"]) == (373, 454)
            tile = fetch(f"{url}{link}/9/0_0.png", cookie)
            assert viewer_module.decode_grey16(tile.content).shape == (454, 373)
            served = fetch(url + link, cookie)
            assert served.status_code == 200 and served.content[:4] == b"\x89PNG"
            assert served.headers["X-Original-Size"] == "373x454"
            assert np.array_equal(
                viewer_module.decode_grey16(served.content),
                viewer_module.decode_grey16(tile.content),
            )
            # What the page shows is the served 16 bits through the chosen window, in the page.
            viewer.get_by_label("Heat map", exact=True).uncheck()
            viewer.get_by_label("Invert").uncheck()
            for level, width in ((50, 100), (20, 15)):
                viewer.locator("#width").fill(str(width))
                viewer.locator("#level").fill(str(level))
                settle(frame)
                assert_windowed(frame, viewer_module.decode_grey16(tile.content), level, width)
            for path in (link, f"{link}/info", f"{link}/9/0_0.png"):
                assert fetch(url + path).status_code == 401
                assert fetch(url + path, "forged.token.value").status_code == 401

            # A DICOM file's own window is offered, and choosing it windows its 16 bits in the
            # page. Its first window (applied by the decoder) is the full range: the second is
            # placed relative to it, C 20000 / W 16384 in C 15000 / W 30000.
            page.goto(f"{url}/browse?image={dicom_id}")
            expect(page.get_by_text("Reader review")).to_be_visible()
            viewer, frame = viewer_frame(page)
            bone = "DICOM BONE (C 20000 / W 16384)"
            expect(viewer.locator("#preset option").filter(has_text=bone)).to_have_count(1)
            viewer.get_by_label("Heat map", exact=True).uncheck()
            settle(frame)
            before, quiet = view_digest(viewer), len(sent)
            viewer.get_by_label("Window preset").select_option(label=bone)
            settle(frame)
            expect(viewer.locator("#info")).to_contain_text("L 66.7 W 54.6")
            assert view_digest(viewer) != before
            assert len(sent) == quiet, sent[quiet:]
            link = frame.evaluate("() => JSON.parse(document.getElementById('spec').text).image")
            grey = viewer_module.decode_grey16(fetch(f"{url}{link}/9/0_0.png", cookie).content)
            assert ((grey >> 8) != (grey & 0xFF)).mean() > 0.5  # not 8 bits stretched
            assert_windowed(frame, grey, 50 + 5000 / 300, 16384 / 300)

            # Shift-drag: up raises the level, right widens the window (and nothing pans).
            box = viewer.locator("#view").bounding_box()
            assert box is not None
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.keyboard.down("Shift")
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + 25, y - 25, steps=5)
            page.mouse.move(x + 50, y - 50, steps=5)
            page.mouse.up()
            page.keyboard.up("Shift")
            settle(frame)
            expect(viewer.locator("#info")).to_contain_text("L 76.7 W 64.6")
            assert_windowed(frame, grey, 50 + 5000 / 300 + 10, 16384 / 300 + 10)
            assert len(sent) == quiet, sent[quiet:]

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
