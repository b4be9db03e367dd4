"""The deployment as shipped: the images built from the Dockerfile (debootstrapped Debian base,
no registry), docker-compose.yml run by docker-compose through podman's Docker API, a drop of
real radiographs into the storage volume's inbox, and every file scored by the CPU worker.

Opt-in: FRACTURE_CONTAINER_TESTS=1 (`make test-containers`). Needs root, podman, catatonit
(compose's `init: true`), debootstrap and docker-compose 1.29.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import COMPOSE_FILE, ENV_EXAMPLE, REPO, read_env_file
from worker.broker import free_port

pytestmark = pytest.mark.containers

STATE = Path(os.environ.get("FRACTURE_PODMAN_STATE", "/var/tmp/fracture-podman"))
BUILD_SCRIPT = REPO / "deploy" / "podman" / "build-local-images.sh"
FIXTURES = REPO / "tests" / "fixtures"
APP_UID = "10001"
INBOX = "/srv/fracture/inbox"
DROP = "/srv/fracture/drop"  # same filesystem as the inbox, so mv is a rename


def report(what: str, seconds: float) -> None:
    print(f"\n[containers] {what}: {seconds:.1f} s", flush=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(STATE / "containers.conf"))
    return env


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    tools = ("podman", "debootstrap", "catatonit", "docker-compose")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install -y {' '.join(tools)}")
    start = time.monotonic()
    built = subprocess.run(
        [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, timeout=3600, check=True
    )
    report("images (build, or hash check when cached)", time.monotonic() - start)
    names = dict(line.split("=", 1) for line in built.stdout.splitlines() if "=" in line)
    assert set(names) == {"FRACTURE_IMAGE", "REDIS_IMAGE", "POSTGRES_IMAGE"}, built.stdout
    return names


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    """podman's Docker-compatible API on a private socket, for docker-compose."""
    STATE.mkdir(parents=True, exist_ok=True)
    socket = STATE / f"podman-{os.getpid()}.sock"
    socket.unlink(missing_ok=True)
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=podman_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert service.poll() is None, "podman system service exited"
            assert time.monotonic() < deadline, "podman system service made no socket in 30 s"
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)
        socket.unlink(missing_ok=True)


class Stack:
    """One compose project: its own name, env file, volumes and published ports."""

    def __init__(self, directory: Path, docker_host: str, images: dict[str, str]) -> None:
        self.project = f"fracture-ct-{secrets.token_hex(3)}"
        self.dashboard_port = free_port()
        variables = read_env_file(ENV_EXAMPLE)
        password = {key: secrets.token_hex(12) for key in ("redis", "postgres", "dashboard")}
        user, database = variables["POSTGRES_USER"], variables["POSTGRES_DB"]
        variables.update(images)
        variables.update(
            REDIS_PASSWORD=password["redis"],
            FRACTURE_BROKER_URL=f"redis://:{password['redis']}@redis:6379/0",
            POSTGRES_PASSWORD=password["postgres"],
            FRACTURE_DATABASE_URL=(
                f"postgresql+psycopg://{user}:{password['postgres']}@postgres:5432/{database}"
            ),
            FRACTURE_DASHBOARD_PASSWORD=password["dashboard"],
            DASHBOARD_PUBLISH=f"127.0.0.1:{self.dashboard_port}",
            DICOM_PUBLISH=f"127.0.0.1:{free_port()}",
            FRACTURE_DEVICE="cpu",
        )
        self.env_file = directory / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
        # Only the env file supplies variables: a developer's shell or .env must not leak in.
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(directory),
            "DOCKER_HOST": docker_host,
        }
        self._stop = threading.Event()
        self._health = threading.Thread(target=self._run_healthchecks, daemon=True)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE)]
        command += ["--env-file", str(self.env_file), "--profile", "cpu", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=REPO, timeout=timeout
        )

    def containers(self) -> list[str]:
        result = podman(
            "ps", "--filter", f"label=com.docker.compose.project={self.project}",
            "--format", "{{.Names}}",
        )  # fmt: skip
        return result.stdout.split()

    def container(self, service: str) -> str:
        names = [n for n in self.containers() if n.startswith(f"{self.project}_{service}_")]
        assert names, f"no running {service} container: {self.containers()}"
        return names[0]

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", "-i", self.container(service), *command)

    def _run_healthchecks(self) -> None:
        # podman 4.3 schedules health checks with systemd timers; without systemd (as in this
        # sandbox and most CI containers) nothing runs them, so compose's service_healthy would
        # wait for ever. Run each container's own check, as its timer would.
        while not self._stop.wait(3):
            for name in self.containers():
                podman("healthcheck", "run", name, timeout=30)

    def up(self) -> None:
        self._health.start()
        result = self.compose("up", "-d", "--scale", "worker=0", timeout=600)
        assert result.returncode == 0, f"compose up failed:\n{result.stdout}\n{result.stderr}"

    def health(self, service: str) -> str:
        result = podman("inspect", "--format", "{{.State.Health.Status}}", self.container(service))
        return result.stdout.strip()

    def results(self) -> list[dict[str, object]]:
        result = self.exec("dashboard", "fracture", "results", "--json", "--limit", "1000")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", timeout=120).stdout

    def down(self) -> None:
        self._stop.set()
        result = self.compose("down", "--volumes", "--remove-orphans", timeout=300)
        assert result.returncode == 0, f"compose down failed:\n{result.stderr}"


@pytest.fixture
def stack(tmp_path: Path, images: dict[str, str], docker_host: str) -> Iterator[Stack]:
    # images first: the build script also writes the containers.conf podman's service reads
    stack = Stack(tmp_path, docker_host, images)
    try:
        yield stack
    finally:
        start = time.monotonic()
        stack.down()
        left = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [v for v in left if v.startswith(stack.project)], left
        report("compose down --volumes", time.monotonic() - start)


def wait_until(check: object, timeout: float, interval: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def test_compose_stack_in_containers_scores_a_drop(stack: Stack) -> None:
    start = time.monotonic()
    stack.up()  # returns once redis and postgres are healthy and migrate has completed
    report("compose up -d (dependencies healthy, schema migrated)", time.monotonic() - start)

    assert wait_until(lambda: stack.health("dashboard") == "healthy", 180), stack.logs()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.dashboard_port}/_stcore/health", timeout=10
    ) as response:
        assert response.status == 200 and response.read().strip() == b"ok"
    report("up to a healthy dashboard on its published port", time.monotonic() - start)

    # The image as shipped: unprivileged, both models the docs name, the bench's samples.
    probe = stack.exec(
        "worker-cpu", "sh", "-c",
        "id -u; ls /opt/fracture/model; python -c "
        "\"import bench.pipeline as b; print(len(list(b.SAMPLES.glob('*.jpg'))))\"",
    )  # fmt: skip
    uid, *rest = probe.stdout.split()
    assert uid == APP_UID, probe.stdout + probe.stderr
    assert {"fracture.pt", "fracture-single-pass.pt"} <= set(rest[:-1]), probe.stdout
    assert int(rest[-1]) > 0, probe.stdout

    drop = sorted(FIXTURES.glob("*.jpg"))
    tar = subprocess.run(
        ["tar", "-c", "-C", str(FIXTURES), *(p.name for p in drop)], capture_output=True, check=True
    )
    # Unpacked beside the inbox as the app user, then moved in: each file appears whole.
    dropped_at = time.monotonic()
    script = f"mkdir -p {DROP} && tar -x -C {DROP} && mv {DROP}/*.jpg {INBOX}/"
    unpack = subprocess.run(
        ["podman", "exec", "-i", stack.container("watcher"), "sh", "-c", script],
        input=tar.stdout, capture_output=True, env=podman_env(), timeout=60, check=False,
    )  # fmt: skip
    assert unpack.returncode == 0, unpack.stderr

    def all_done() -> bool:
        return sum(r.get("status") == "done" for r in stack.results()) == len(drop)

    assert wait_until(all_done, 600), f"{stack.results()}\n{stack.logs()}"
    took = time.monotonic() - dropped_at
    report(f"{len(drop)} radiographs dropped -> done (worker start included)", took)
    rows = stack.results()
    assert len(rows) == len(drop), rows
    assert {Path(str(r["path"])).name for r in rows} == {p.name for p in drop}
    assert all(r["status"] == "done" for r in rows), rows
