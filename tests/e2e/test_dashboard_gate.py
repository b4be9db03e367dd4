"""The dashboard's gate on a real server (`fracture dashboard`): a deep link survives sign-in in
Chromium; that session's radiograph and CSV export URLs are refused to a client without its
cookie and once it signed out; the sign-in survives a reload and a new tab. With no password the
server listens on loopback only."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from config import Settings
from dashboard import access
from db import queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction
from tests.e2e.test_browser import CHROMIUM_ARGS, chromium, healthy, settled
from tests.helpers import (
    fracture_cli,
    fracture_env,
    new_prediction,
    running,
    sample_images,
    wait_for,
)
from worker.broker import free_port

PASSWORD = "ward-7 s3cret"
NOTICE = "Decision support only — not for clinical use."


def seed(data_dir: Path, names: tuple[str, ...] = ("ward3/hand.jpg",)) -> list[int]:
    """Scored radiographs under these file names in the dashboard's database; their ids."""
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    ids: list[int] = []
    with transaction(factory) as session:
        for index, name in enumerate(names):
            source = sample_images()[index]  # one radiograph per name: ids are per content
            image, _ = queries.register_image(
                session=session,
                sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
                path=str(source),
                filename=name,
                size=source.stat().st_size,
                source="watch",
            )
            session.flush()
            queries.store_batch(
                session=session,
                predictions=[
                    new_prediction(image.id, probability=0.81, model_version="seed_cnn-e2e")
                ],
                failures={},
            )
            ids.append(image.id)
    return ids


@contextmanager
def dashboard(tmp_path: Path, **settings: str) -> Iterator[str]:
    """`fracture dashboard` alone on a free port; yields its URL."""
    port = free_port()
    env = fracture_env(
        data_dir=tmp_path / "data", inbox=tmp_path / "inbox", dashboard_port=port, **settings
    )
    log = tmp_path / "dashboard.log"
    with running(fracture_cli("dashboard"), env=env, log_path=log) as process:
        if not wait_for(lambda: healthy(port) or process.poll() is not None, timeout=120):
            pytest.fail(f"dashboard did not start:\n{log.read_text()[-3000:]}")
        assert process.poll() is None, log.read_text()[-3000:]
        yield f"http://127.0.0.1:{port}"
    assert PASSWORD not in log.read_text()


def fetch(url: str, cookie: str | None = None) -> requests.Response:
    cookies = {access.COOKIE: cookie} if cookie is not None else None
    return requests.get(url, cookies=cookies, timeout=30, allow_redirects=False)


def test_media_and_export_urls_need_the_sessions_sign_in(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    (image_id,) = seed(tmp_path / "data")
    with (
        dashboard(tmp_path, dashboard_password=PASSWORD) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(60_000)

            # A deep link: sign in first, then the record it names.
            page.goto(f"{url}/browse?image={image_id}")
            expect(page.get_by_text(NOTICE)).to_be_visible()
            page.get_by_label("Dashboard password").fill("guess")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Wrong password.")).to_be_visible()
            page.get_by_label("Dashboard password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Reader review")).to_be_visible(timeout=180_000)
            assert page.url.endswith(f"/browse?image={image_id}")
            settled(page)
            viewer = page.locator('iframe[title^="Radiograph viewer"]')
            expect(
                page.frame_locator('iframe[title^="Radiograph viewer"]').locator("#msg")
            ).to_have_count(0)  # the viewer has its pixels
            frame = viewer.element_handle().content_frame()
            assert frame is not None
            source = frame.evaluate("() => JSON.parse(document.getElementById('spec').text).image")
            assert source.startswith("/viewer/pixels/")
            image_url = url + source
            with page.expect_download() as download:
                page.get_by_role("link", name="Export CSV").click()
            csv_url = download.value.url
            assert "/export/" in csv_url  # streamed by the server, not built in the page

            (cookie,) = [c["value"] for c in context.cookies() if c["name"] == access.COOKIE]
            served = fetch(image_url, cookie)
            assert served.status_code == 200 and served.content[:4] == b"\x89PNG"
            assert b"ward3/hand.jpg" in fetch(csv_url, cookie).content
            # A client without this browser's cookie gets nothing.
            for media in (image_url, csv_url):
                refused = fetch(media)
                assert refused.status_code == 401 and b"ward3" not in refused.content
                assert fetch(media, "forged.token.value").status_code == 401

            page.reload()  # the sign-in survives a reload and a new tab
            expect(page.get_by_text("Reader review")).to_be_visible()
            other = context.new_page()
            other.goto(f"{url}/overview")
            expect(other.get_by_text(NOTICE)).to_be_visible()
            expect(other.get_by_label("Dashboard password")).to_have_count(0)
            other.close()

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_text("Signed out", exact=True)).to_be_visible()
            for media in (image_url, csv_url):
                assert fetch(media, cookie).status_code == 401
            page.reload()
            expect(page.get_by_label("Dashboard password")).to_be_visible()
        finally:
            browser.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (Linux /proc)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def test_without_a_password_the_dashboard_listens_on_loopback_only(tmp_path: Path) -> None:
    with dashboard(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
        assert fetch(f"{url}/_stcore/health").status_code == 200
