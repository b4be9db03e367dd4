"""`fracture up`: one broker (if none configured) and worker, watcher, dashboard (and DICOM
listener, when FRACTURE_DICOM_PORT is set) child processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from db.migrate import upgrade
from fracture.broker import URL_FILE, PrivateBroker, die_with_parent
from fracture.settings import Settings

log = logging.getLogger(__name__)

DASHBOARD_APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def dashboard_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP),
        "--server.port", str(settings.dashboard_port),
        "--server.headless", "true",
        "--server.maxUploadSize", str(settings.upload_max_mb),
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def child_environment(settings: Settings, broker_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FRACTURE_BROKER_URL=broker_url,
        FRACTURE_INBOX=str(settings.inbox.resolve()),
        FRACTURE_DATA_DIR=str(settings.data_dir.resolve()),
        FRACTURE_DATABASE_URL=settings.resolved_database_url,
        FRACTURE_MODEL_PATH=str(settings.resolved_model_path.resolve()),
        FRACTURE_DEVICE=settings.device,
    )
    return env


def run_all(settings: Settings, *, with_dashboard: bool = True) -> int:
    """Start everything, wait for Ctrl-C / SIGTERM or a child's death, stop everything."""
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    if not settings.resolved_model_path.is_file():
        log.error("model file not found: %s", settings.resolved_model_path)
        return 2

    broker: PrivateBroker | None = None
    if settings.broker_url:
        broker_url = settings.broker_url
    else:
        broker = PrivateBroker(settings.broker_dir).start()
        broker_url = broker.url
        (settings.broker_dir / URL_FILE).write_text(broker_url)

    env = child_environment(settings, broker_url)
    cli = [sys.executable, "-m", "fracture"]
    commands = {"worker": [*cli, "worker"], "watcher": [*cli, "watch"]}
    if settings.dicom_port is not None:
        commands["dicom"] = [*cli, "dicom-listen"]
    if with_dashboard and DASHBOARD_APP.is_file():
        commands["dashboard"] = dashboard_command(settings)

    stopping = False

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s, stopping", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)

    children: dict[str, subprocess.Popen[bytes]] = {}
    status = 0
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(
                command, env=env, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL
            )
            log.info("started %s (pid %d)", name, children[name].pid)
        log.info("inbox: %s", settings.inbox.resolve())
        if "dicom" in children:
            log.info(
                "DICOM: AE title %s on %s:%d",
                settings.dicom_ae_title,
                settings.dicom_host,
                settings.dicom_port,
            )
        if "dashboard" in children:
            log.info("dashboard: http://localhost:%d", settings.dashboard_port)
        log.info("press Ctrl-C to stop. Decision support only, not for clinical use.")
        while not stopping:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    log.error("%s exited with status %d; stopping everything", name, code)
                    status = code or 1
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        _stop_children(children)
        if broker is not None:
            (settings.broker_dir / URL_FILE).unlink(missing_ok=True)
            broker.stop()
        log.info("stopped")
    return status


def _stop_children(children: dict[str, subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", name)
            child.kill()
            child.wait()
