"""`fracture up`: one broker (if none configured) and worker, watcher, dashboard (and DICOM
listener, when FRACTURE_DICOM_PORT is set) child processes."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from config import Settings
from db.migrate import upgrade
from telemetry import metrics
from worker.broker import URL_FILE, PrivateBroker, die_with_parent

log = logging.getLogger(__name__)

# Streamlit serving dashboard/app.py behind the dashboard's sign-in gate (dashboard/access.py).
DASHBOARD_APP = Path(__file__).resolve().parent.parent / "dashboard" / "server.py"


def dashboard_command(settings: Settings) -> list[str]:
    host = settings.dashboard_host
    password = settings.dashboard_password
    if not (password and password.get_secret_value()) and not _loopback(host):
        log.warning(
            "the dashboard listens on %s without a password: anyone who can reach this machine "
            "sees the radiographs and their file names (set FRACTURE_DASHBOARD_PASSWORD)",
            host,
        )
    return [
        sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP),
        "--server.address", host,
        "--server.port", str(settings.dashboard_port),
        "--server.headless", "true",
        "--server.maxUploadSize", str(settings.upload_max_mb),
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
        # Browse clears its filters by setting their widgets' values in Session State, on purpose.
        "--global.disableWidgetStateDuplicationWarning", "true",
    ]  # fmt: skip


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


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
    """Start everything and keep it running until Ctrl-C / SIGTERM: a child that dies is
    restarted with backoff (the private broker too, on its port and data); one that keeps dying
    stops everything, except the dashboard, which is left stopped while intake goes on."""
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    if not settings.resolved_model_path.is_file():
        log.error("model file not found: %s", settings.resolved_model_path)
        return 2
    metrics.serve(settings, "supervisor")

    broker: PrivateBroker | None = None
    if settings.broker_url:
        broker_url = settings.broker_url
    else:
        broker = PrivateBroker(settings.broker_dir).start()
        broker_url = broker.url
        (settings.broker_dir / URL_FILE).write_text(broker_url)

    env = child_environment(settings, broker_url)
    cli = [sys.executable, "-m", "fracture"]
    # The worker creates this file once it consumes: only then does `up` say it is ready.
    ready_dir = Path(tempfile.mkdtemp(prefix="fracture-up-"))
    worker_ready = ready_dir / "worker"
    workers = worker_names(settings)
    commands = {
        **{
            name: [*cli, "worker", *(["--ready-file", str(worker_ready)] if index == 0 else [])]
            for index, name in enumerate(workers)
        },
        "watcher": [*cli, "watch"],
    }
    if settings.dicom_port is not None:
        commands["dicom"] = [*cli, "dicom-listen"]
    # Streamlit's start-up lines (and its URLs, the network one too) are noise beside ours.
    quiet = set() if settings.debug else {"dashboard"}
    if with_dashboard and DASHBOARD_APP.is_file():
        commands["dashboard"] = dashboard_command(settings)
        if not settings.debug:
            commands["dashboard"] += ["--logger.level", "warning"]

    stopping = False

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s, stopping", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)

    restarts = Restarts(settings.restart_limit, settings.restart_window_s)
    shares = threads_env(settings)
    children = {
        name: Child(
            name,
            command,
            quiet=name in quiet,
            env={**metrics_env(settings, name), **(shares if name in workers else {})},
        )
        for name, command in commands.items()
    }
    status = 0
    announced = False
    try:
        for child in children.values():
            child.start(env)
        log.info("starting %s; ready once the worker has loaded the model", ", ".join(children))
        while not stopping:
            now = time.monotonic()
            if broker is not None and broker.process is not None:
                code = broker.process.poll()
                if code is not None:
                    if not restarts.allow("broker", now):
                        log.error("the broker keeps failing; stopping everything")
                        status, stopping = 1, True
                        break
                    log.error("broker exited with status %d; restarting it", code)
                    metrics.RESTARTS.labels("broker").inc()
                    try:
                        broker.start()  # same port and data: clients reconnect
                    except RuntimeError as exc:
                        log.error("broker restart failed: %s", exc)
            for child in children.values():
                outcome = child.check(env, now, restarts)
                if outcome == "fatal":
                    status, stopping = 1, True
                    break
            if not announced and not stopping and all_ready(settings, worker_ready, children):
                running = [name for name, child in children.items() if not child.given_up]
                log.info("%s", ready_message(settings, running))
                announced = True
            time.sleep(0.5)
    finally:
        _stop_children({n: c.process for n, c in children.items() if c.process is not None})
        if broker is not None:
            (settings.broker_dir / URL_FILE).unlink(missing_ok=True)
            broker.stop()
        shutil.rmtree(ready_dir, ignore_errors=True)
        log.info("stopped")
    return status


def worker_names(settings: Settings) -> list[str]:
    """`worker`, then `worker-2`, `worker-3`, … up to FRACTURE_WORKERS."""
    return ["worker", *(f"worker-{number}" for number in range(2, settings.workers + 1))]


def threads_env(settings: Settings) -> dict[str, str]:
    """With more than one worker, each one's equal share of this machine's cores (unless
    FRACTURE_WORKER_THREADS says otherwise): two single-threaded workers on 2 cores kept both
    busy where one worker left one idle after each batch's network (docs/PERFORMANCE.md)."""
    if settings.workers == 1 or settings.worker_threads:
        return {}
    cores = len(os.sched_getaffinity(0))
    return {"FRACTURE_WORKER_THREADS": str(max(1, cores // settings.workers))}


def metrics_env(settings: Settings, name: str) -> dict[str, str]:
    """A child's own metrics port (FRACTURE_METRICS_PORT plus its offset), or none for it."""
    try:
        port = metrics.child_port(settings, name)
    except KeyError:
        return {"FRACTURE_METRICS_PORT": "0"}
    return {"FRACTURE_METRICS_PORT": str(port or 0)}


def dashboard_url(settings: Settings) -> str:
    return f"http://localhost:{settings.dashboard_port}"


def ready_message(settings: Settings, running: Collection[str]) -> str:
    """The one line that says where files go, where results show and how to stop."""
    parts = [f"ready: drop files into {settings.inbox.resolve()}"]
    if "dicom" in running:
        parts.append(
            f"DICOM: AE title {settings.dicom_ae_title} on {settings.dicom_host}:"
            f"{settings.dicom_port}"
        )
    if "dashboard" in running:
        parts.append(f"dashboard at {dashboard_url(settings)}")
    parts.append("press Ctrl-C to stop. Decision support only, not for clinical use.")
    return "; ".join(parts)


def all_ready(settings: Settings, worker_ready: Path, children: dict[str, Child]) -> bool:
    """The worker consumes and the dashboard answers (or was given up on). The watcher needs no
    wait: files dropped before it runs are found by its first scan."""
    if not worker_ready.exists():
        return False
    dashboard = children.get("dashboard")
    if dashboard is None or dashboard.given_up:
        return True
    try:
        with urllib.request.urlopen(f"{dashboard_url(settings)}/_stcore/health", timeout=0.5):
            return True
    except OSError:  # not listening yet (URLError), or not answering in time
        return False


# Giving up on these leaves intake (watcher, worker, DICOM listener) running.
OPTIONAL_CHILDREN = frozenset({"dashboard"})
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class Restarts:
    """Crash times per child: a child that dies more than `limit` times within `window_s`
    is given up on; before that, restarts wait 0.5 s, 1 s, 2 s, … (at most 30 s)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._crashes: dict[str, deque[float]] = {}

    def allow(self, name: str, now: float) -> bool:
        crashes = self._crashes.setdefault(name, deque())
        crashes.append(now)
        while crashes and now - crashes[0] > self.window_s:
            crashes.popleft()
        return len(crashes) <= self.limit

    def delay(self, name: str) -> float:
        count = len(self._crashes.get(name, ()))
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, count - 1))


@dataclass
class Child:
    """One supervised process: started, watched, restarted with backoff or given up on."""

    name: str
    command: list[str]
    quiet: bool = False  # its standard output discarded
    env: dict[str, str] = field(default_factory=dict)  # its own, over the shared environment
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    given_up: bool = False

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            self.command,
            env={**env, **self.env},
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.quiet else None,
        )
        self.restart_at = None
        log.debug("started %s (pid %d)", self.name, self.process.pid)

    def check(self, env: dict[str, str], now: float, restarts: Restarts) -> str:
        """ "running", "restarting", "given up" or "fatal" (stop everything)."""
        if self.given_up:
            return "given up"
        if self.process is None:
            if self.restart_at is not None and now >= self.restart_at:
                self.start(env)
            return "restarting"
        code = self.process.poll()
        if code is None:
            return "running"
        self.process = None
        if not restarts.allow(self.name, now):
            window = f"{restarts.limit + 1} exits within {restarts.window_s:.0f} s"
            if self.name in OPTIONAL_CHILDREN:
                log.error("%s keeps failing (%s); left stopped, intake goes on", self.name, window)
                self.given_up = True
                return "given up"
            log.error("%s keeps failing (%s); stopping everything", self.name, window)
            return "fatal"
        delay = restarts.delay(self.name)
        log.error("%s exited with status %d; restarting it in %.1f s", self.name, code, delay)
        metrics.RESTARTS.labels(self.name).inc()
        self.restart_at = now + delay
        return "restarting"


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
