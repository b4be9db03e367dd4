"""The record view's image viewer on a large radiograph: a 4600 x 5760 16-bit PNG, shown at full
resolution by the real dashboard (`fracture dashboard`) in Chromium. Prints how long the server
takes to decode it and cut tiles, how long the viewer takes to show it, and how long one
window/level step takes in the browser at fit and at 1:1 (no server round trip).

Run: `.venv/bin/python -m bench.viewer [--steps 10]`. Needs Debian's Chromium (/usr/bin/chromium,
never a downloaded browser). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.browse import machine, say
from bench.pages import CHROMIUM_ARGS, TIMEOUT_MS, dashboard
from config import Settings
from dashboard.viewer import grey16
from db import queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction

SIZE = (4600, 5760)  # (width, height): the TIFF of issue 16, as a 16-bit PNG
SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def large_radiograph(path: Path) -> Path:
    """A real radiograph enlarged to SIZE with 16-bit grey (fine noise keeps every bit busy)."""
    sample = sorted(SAMPLE.glob("*.jpg"))[0]
    read = cv2.imread(str(sample), cv2.IMREAD_GRAYSCALE)
    if read is None:
        raise SystemExit(f"cannot read {sample}")
    large = cv2.resize(read.astype(np.float32) / 255.0, SIZE, interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0.0, 0.002, size=(SIZE[1], SIZE[0]))
    cv2.imwrite(str(path), grey16(np.asarray(large + noise)))
    return path


def seed(data_dir: Path, image: Path) -> int:
    """The image as a scored record with one fracture box; its id."""
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with transaction(factory) as session:
        row, _ = queries.register_image(
            session=session,
            sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
            path=str(image),
            filename="bench/large.png",
            size=image.stat().st_size,
            source="watch",
        )
        session.flush()
        scored = queries.NewPrediction(
            image_id=row.id,
            model_version="bench",
            label="fractured",
            probability=0.8,
            threshold=0.5,
            batch_size=1,
            inference_ms=1.0,
            boxes=[[1800.0, 2600.0, 600.0, 500.0, 0.8]],
        )
        queries.store_batch(session=session, predictions=[scored], failures={})
        return int(row.id)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def server_side(image: Path) -> None:
    """The server's share, in this process: decode, the pyramid's levels, one tile's PNG."""
    from dashboard import viewer

    source = viewer.Source(
        kind="image",
        path=str(image),
        sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
        max_pixels=Settings().max_pixels,
    )
    started = time.perf_counter()
    pyramid = viewer.load_pyramid(source)
    say(f"server: decode to 16-bit grey {_ms(started):,.0f} ms")
    started = time.perf_counter()
    pyramid.level(0)
    say(f"server: every Deep Zoom level below full resolution {_ms(started):,.0f} ms")
    started = time.perf_counter()
    pyramid.info()
    say(f"server: sizes and automatic window {_ms(started):,.0f} ms")
    started = time.perf_counter()
    viewer.encode_grey16(pyramid.tile(pyramid.max_level, 4, 5))
    say(f"server: one full-resolution 512 px tile as PNG {_ms(started):,.0f} ms")


STEP = """async ([level, width]) => {
    const started = performance.now();
    document.getElementById('width').value = width;
    document.getElementById('width').dispatchEvent(new Event('input'));
    document.getElementById('level').value = level;
    document.getElementById('level').dispatchEvent(new Event('input'));
    await window.fxSettled();
    return performance.now() - started;
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="window/level steps per zoom")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    say(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image = large_radiograph(root / "large.png")
        image_id = seed(root / "data", image)
        say(f"image: {SIZE[0]} x {SIZE[1]} 16-bit PNG, {image.stat().st_size / 1e6:.1f} MB")
        server_side(image)
        with dashboard(root / "data", root / "dashboard.log") as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            tiles: list[str] = []
            page.on(
                "request", lambda r: tiles.append(r.url) if "/viewer/pixels/" in r.url else None
            )
            page.goto(f"{url}/browse?image={image_id}")
            viewer = page.frame_locator('iframe[title^="Radiograph viewer"]')
            expect(viewer.locator("#view")).to_be_attached(timeout=TIMEOUT_MS)
            started = time.perf_counter()
            expect(viewer.locator("#msg")).to_have_count(0, timeout=TIMEOUT_MS)
            frame = (
                page.locator('iframe[title^="Radiograph viewer"]').element_handle().content_frame()
            )
            assert frame is not None
            frame.evaluate("() => window.fxSettled()")
            say(f"viewer: first tiles drawn {_ms(started):,.0f} ms after the viewer appeared")
            say(f"  (server decoded the image and cut {len(tiles)} tiles for the fitted view)")
            link = frame.evaluate("() => JSON.parse(document.getElementById('spec').text).image")
            info = requests.get(f"{url}{link}/info", timeout=60).json()
            say(f"  served at {info['width']} x {info['height']} (full resolution)")
            for zoom, button in (("fit", "Fit"), ("1:1", "1:1")):
                viewer.get_by_role("button", name=button).click()
                frame.evaluate("() => window.fxSettled()")
                held = len(tiles)
                windowed = int(viewer.locator("#view").get_attribute("data-windowed") or 0)
                times = [
                    float(frame.evaluate(STEP, [30 + i * 3, 40 + (i % 3) * 10]))
                    for i in range(args.steps)
                ]
                say(
                    f"window/level step at {zoom}: median {statistics.median(times):.0f} ms, "
                    f"max {max(times):.0f} ms over {args.steps} steps; "
                    f"{len(tiles) - held} tile requests during them"
                )
                done = int(viewer.locator("#view").get_attribute("data-windowed") or 0)
                say(f"  tiles windowed per step: {(done - windowed) / args.steps:.1f}")
            browser.close()


if __name__ == "__main__":
    main()
