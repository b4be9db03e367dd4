"""The deployment as shipped: the images built from the Dockerfile (debootstrapped Debian base,
no registry), docker-compose.yml run by docker-compose through podman's Docker API, drops of
real radiographs into the storage volume's inbox, and the faults an operator meets: a second
worker added mid-drop, a worker killed mid-batch, Redis restarted mid-drop, `down` and `up`.

One stack serves the whole module, in file order: each test drops its own radiographs (FracAtlas
val, all distinct) and checks every image so far is done exactly once.

Opt-in: FRACTURE_CONTAINER_TESTS=1 (`make test-containers`, alias `make deploy-test`). Needs
root, podman, catatonit (compose's `init: true`), debootstrap and docker-compose 1.29.
"""

from __future__ import annotations

import functools
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import (
    BATCH_LINE,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    FRACATLAS,
    IN_CI,
    REPO,
    read_env_file,
    wait_for,
)
from worker.broker import free_port

pytestmark = pytest.mark.containers

STATE = Path(os.environ.get("FRACTURE_PODMAN_STATE", "/var/tmp/fracture-podman"))
BUILD_SCRIPT = REPO / "deploy" / "podman" / "build-local-images.sh"
APP_UID = "10001"
INBOX = "/srv/fracture/inbox"
DROP = "/srv/fracture/drop"  # same filesystem as the inbox, so mv is a rename
WORKER = "worker-cpu"  # the GPU `worker` service cannot run here: it stays at zero replicas
MAIN_DROP, FAULT_DROP = 200, 100
# The worker kill needs batches still in flight once its set-up (a few podman calls, seconds)
# is done: two workers store 100 radiographs in batches of 32 in about that time. (600 of
# val's 602 radiographs in all.)
KILL_DROP = 200
HEALTH_CHECKED = {"redis", "postgres", "dashboard"}  # the services with a healthcheck


def report(what: str, value: float, unit: str = "s") -> None:
    print(f"\n[containers] {what}: {value:.1f} {unit}", flush=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(STATE / "containers.conf"))
    return env


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )


def radiographs() -> list[Path]:
    """FracAtlas's validation radiographs (both classes), in a fixed order."""
    files = sorted((FRACATLAS / "val").glob("*/*.jpg"), key=lambda p: p.name)
    needed = MAIN_DROP + 2 * FAULT_DROP + KILL_DROP
    if len(files) < needed:
        reason = f"needs {needed} FracAtlas val radiographs in {FRACATLAS / 'val'}"
        if IN_CI:
            pytest.fail(f"{reason} (CI has ../shared)")
        pytest.skip(f"{reason}; found {len(files)} (no ../shared checkout here)")
    return files


@pytest.fixture(scope="module")
def drops() -> Callable[[], list[Path]]:
    """Disjoint sets of files, handed out in order: the main drop, then one per fault."""
    files = radiographs()
    sizes = iter([MAIN_DROP, FAULT_DROP, KILL_DROP, FAULT_DROP])

    def take() -> list[Path]:
        size = next(sizes)
        taken = files[:size]
        del files[:size]
        return taken

    return take


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
    for name in names.values():
        size = podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip()
        report(f"image size {name}", int(size) / 1e6, "MB")
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
        self.user, self.database = variables["POSTGRES_USER"], variables["POSTGRES_DB"]
        variables.update(images)
        variables.update(
            REDIS_PASSWORD=password["redis"],
            FRACTURE_BROKER_URL=f"redis://:{password['redis']}@redis:6379/0",
            POSTGRES_PASSWORD=password["postgres"],
            FRACTURE_DATABASE_URL=(
                f"postgresql+psycopg://{self.user}:{password['postgres']}@postgres:5432/"
                f"{self.database}"
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
        self.dropped = 0
        self._stop = threading.Event()
        self._health = threading.Thread(target=self._run_healthchecks, daemon=True)
        self._health.start()

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE)]
        command += ["--env-file", str(self.env_file), "--profile", "cpu", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=REPO, timeout=timeout
        )

    def containers(self, service: str | None = None, *, stopped: bool = False) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        listed = podman("ps", *(["-a"] if stopped else []), *filters, "--format", "{{.Names}}")
        return sorted(listed.stdout.split())

    def container(self, service: str) -> str:
        names = self.containers(service)
        assert names, f"no running {service} container: {self.containers(stopped=True)}"
        return names[0]

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", "-i", self.container(service), *command)

    def _run_healthchecks(self) -> None:
        # podman 4.3 schedules health checks with systemd timers; without systemd (as in this
        # sandbox and most CI containers) nothing runs them, so compose's service_healthy would
        # wait for ever. Run each container's own check, as its timer would.
        while not self._stop.wait(3):
            for name in self.containers():
                if name.split("_")[-2] in HEALTH_CHECKED:
                    podman("healthcheck", "run", name, timeout=30)

    def up(self, workers: int = 1) -> None:
        """`up -d`: returns once Redis and PostgreSQL are healthy and migrate has completed."""
        scale = ["--scale", "worker=0", "--scale", f"{WORKER}={workers}"]
        result = self.compose("up", "-d", *scale, timeout=600)
        assert result.returncode == 0, f"compose up failed:\n{result.stdout}\n{result.stderr}"

    def health(self, service: str) -> str:
        result = podman("inspect", "--format", "{{.State.Health.Status}}", self.container(service))
        return result.stdout.strip()

    def sql(self, query: str) -> list[list[str]]:
        """Rows from PostgreSQL, asked through psql inside its container (cheap to poll)."""
        result = self.exec(
            "postgres", "psql", "-U", self.user, "-d", self.database, "-At", "-F", "\t", "-c", query
        )
        assert result.returncode == 0, result.stderr
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def status_counts(self) -> dict[str, int]:
        rows = self.sql("SELECT status, count(*) FROM images GROUP BY status")
        return {status: int(count) for status, count in rows}

    def all_done(self) -> bool:
        return self.status_counts() == {"done": self.dropped}

    def results(self) -> list[dict[str, object]]:
        """What an operator sees: `fracture results --json` inside an application container."""
        result = self.exec("dashboard", "fracture", "results", "--json", "--limit", "10000")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def drop(self, files: list[Path]) -> float:
        """Files unpacked beside the inbox as the app user, then moved in: each appears whole.
        Returns the monotonic time of the move."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in files:
                tar.add(path, arcname=path.name)
        folder = f"{DROP}/{secrets.token_hex(4)}"
        script = f"mkdir -p {folder} && tar -x -C {folder} && mv {folder}/*.jpg {INBOX}/"
        unpack = subprocess.run(
            ["podman", "exec", "-i", self.container("watcher"), "sh", "-c", script],
            input=buffer.getvalue(), capture_output=True, env=podman_env(), timeout=120,
        )  # fmt: skip
        assert unpack.returncode == 0, unpack.stderr
        self.dropped += len(files)
        return time.monotonic()

    def scored_per_container(self) -> dict[str, int]:
        """Images each worker container scored, from its batch log lines ("N done")."""
        scored = {}
        for name in self.containers(WORKER, stopped=True):
            log = podman("logs", name, timeout=60)
            scored[name] = sum(int(m[2]) for m in BATCH_LINE.finditer(log.stdout + log.stderr))
        return scored

    def check_each_image_done_once(self, files: list[Path]) -> None:
        """Every image dropped so far is done, with one prediction, and no worker scored any
        image twice (the batch lines of all workers add up to the images)."""
        assert self.status_counts() == {"done": self.dropped}, self.logs()
        per_image = self.sql(
            "SELECT i.id, count(p.id) FROM images i LEFT JOIN predictions p ON p.image_id = i.id"
            " GROUP BY i.id HAVING count(p.id) <> 1"
        )
        assert per_image == [], f"images without exactly one prediction: {per_image}"
        assert self.sql("SELECT count(*) FROM duplicates") == [["0"]]
        scored = self.scored_per_container()
        assert sum(scored.values()) == self.dropped, scored
        names = {Path(str(row["path"])).name for row in self.results()}
        assert {p.name for p in files} <= names

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", timeout=120).stdout

    def close(self) -> None:
        self._stop.set()
        result = self.compose("down", "--volumes", "--remove-orphans", timeout=300)
        assert result.returncode == 0, f"compose down failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, str], docker_host: str
) -> Iterator[Stack]:
    # images first: the build script also writes the containers.conf podman's service reads
    stack = Stack(tmp_path_factory.mktemp("compose"), docker_host, images)
    try:
        yield stack
    finally:
        start = time.monotonic()
        stack.close()
        left = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [v for v in left if v.startswith(stack.project)], left
        assert not stack.containers(stopped=True)
        report("compose down --volumes", time.monotonic() - start)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 2.0) -> bool:
    return wait_for(check, timeout, interval)


def drop_and_time(stack: Stack, files: list[Path], what: str, during: Callable[[], None]) -> None:
    """Drops `files`, runs `during` (which may drop more) once some of them are done, waits
    until every image is done, and reports the time and rate."""
    before, done_before = stack.dropped, stack.status_counts().get("done", 0)
    dropped_at = stack.drop(files)
    assert wait_until(lambda: stack.status_counts().get("done", 0) > done_before, 300, 0.5), (
        stack.logs()
    )
    during()
    assert wait_until(stack.all_done, 900), f"{stack.status_counts()}\n{stack.logs()}"
    took, count = time.monotonic() - dropped_at, stack.dropped - before
    report(f"{count} radiographs, {what}: dropped -> all done", took)
    report(f"{count} radiographs, {what}: rate", count / took, "images/s")


def test_compose_up_brings_every_service_to_healthy(stack: Stack) -> None:
    start = time.monotonic()
    stack.up()
    report("compose up -d (Redis, PostgreSQL healthy; schema migrated)", time.monotonic() - start)

    assert wait_until(lambda: stack.health("dashboard") == "healthy", 180), stack.logs()
    for service in ("redis", "postgres"):
        assert stack.health(service) == "healthy", stack.logs()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.dashboard_port}/_stcore/health", timeout=10
    ) as response:
        assert response.status == 200 and response.read().strip() == b"ok"
    report("compose up -d -> every health check healthy", time.monotonic() - start)

    # The image as shipped: unprivileged, both models the docs name, the bench's samples.
    probe = stack.exec(
        WORKER, "sh", "-c",
        "id -u; ls /opt/fracture/model; python -c "
        "\"import bench.pipeline as b; print(len(list(b.SAMPLES.glob('*.jpg'))))\"",
    )  # fmt: skip
    uid, *rest = probe.stdout.split()
    assert uid == APP_UID, probe.stdout + probe.stderr
    assert {"fracture.pt", "fracture-single-pass.pt"} <= set(rest[:-1]), probe.stdout
    assert int(rest[-1]) > 0, probe.stdout


def test_a_drop_of_200_radiographs_ends_done_once_each(
    stack: Stack, drops: Callable[[], list[Path]]
) -> None:
    files = drops()
    drop_and_time(stack, files, "one worker", lambda: None)
    stack.check_each_image_done_once(files)
    rows = [r for r in stack.results() if Path(str(r["path"])).name in {p.name for p in files}]
    assert len(rows) == len(files)
    assert all(r["label"] in {"fractured", "not_fractured"} for r in rows), rows[:3]


def test_a_worker_added_mid_drop_shares_the_queue_and_scores_nothing_twice(
    stack: Stack, drops: Callable[[], list[Path]]
) -> None:
    files = drops()
    half = len(files) // 2
    first = stack.containers(WORKER)

    def add_worker() -> None:
        start = time.monotonic()
        stack.up(workers=2)
        assert len(stack.containers(WORKER)) == 2
        # Its heartbeat is written once its model is loaded: from then on it takes batches.
        assert wait_until(lambda: len(live_workers(stack)) == 2, 120), stack.logs()
        report("up -d --scale worker-cpu=2 -> second worker consuming", time.monotonic() - start)
        stack.drop(files[half:])

    what = "second worker added mid-drop (its start-up included)"
    drop_and_time(stack, files[:half], what, add_worker)
    stack.check_each_image_done_once(files)
    scored = stack.scored_per_container()
    added = [name for name in stack.containers(WORKER) if name not in first]
    assert added and scored[added[0]] > 0, f"the added worker scored nothing: {scored}"
    print(f"\n[containers] images scored per worker container: {scored}", flush=True)


def live_workers(stack: Stack) -> list[list[str]]:
    return stack.sql("SELECT name FROM workers WHERE heartbeat_at > now() - interval '15 seconds'")


@dataclass
class Crash:
    container: str = ""
    held: list[str] = field(default_factory=list)  # ids of the images it was scoring


def worker_process(container: str) -> int:
    """The host pid of the worker process: the only child of the container's init."""
    init = podman("inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, f"{container}: init has children {children}"
    return int(children[0])


def restart_count(container: str) -> int:
    return int(podman("inspect", "--format", "{{.RestartCount}}", container).stdout)


def running_again(container: str, restarts: int) -> bool:
    state = podman("inspect", "--format", "{{.RestartCount}} {{.State.Running}}", container)
    return state.stdout.split() == [str(restarts + 1), "true"]


def test_a_worker_crashed_mid_batch_is_restarted_and_every_image_ends_done_once(
    stack: Stack, drops: Callable[[], list[Path]]
) -> None:
    files = drops()
    crash = Crash()
    claims: list[str] = []

    def some_batch_claimed() -> bool:
        rows = stack.sql("SELECT claimed_by FROM images WHERE status = 'processing'")
        claims[:] = [row[0] for row in rows]
        return bool(claims)

    def crash_a_worker_mid_batch() -> None:
        # Worker names end with their container's id; a worker's pid is known beforehand, so
        # the kill lands within milliseconds of seeing its batch.
        ids = {podman("inspect", "--format", "{{.Id}}", n).stdout: n for n in stack.containers()}
        for _ in range(3):
            pids = {name: worker_process(name) for name in stack.containers(WORKER)}
            assert wait_until(some_batch_claimed, 120, 0.2), stack.status_counts()
            worker = claims[0]
            host = worker.rpartition("@")[2]
            crash.container = next(name for id_, name in ids.items() if id_.startswith(host))
            restarts = restart_count(crash.container)
            # SIGKILL, as the kernel's OOM killer would: the container exits 137, and its
            # restart policy must start it again. (`docker-compose kill` would not do: Docker
            # and podman both count it as a deliberate stop, which no restart policy undoes.)
            os.kill(pids[crash.container], signal.SIGKILL)
            killed_at = time.monotonic()
            held = stack.sql(
                f"SELECT id FROM images WHERE status = 'processing' AND claimed_by = '{worker}'"
            )
            crash.held = [row[0] for row in held]
            back = functools.partial(running_again, crash.container, restarts)
            assert wait_until(back, 120, 0.5), podman("inspect", crash.container).stdout
            report("worker killed -> restarted by its restart policy", time.monotonic() - killed_at)
            if crash.held:
                return  # killed in the middle of a batch; else its batch was stored: again
        pytest.fail("three kills, each just after a batch was stored: none in the middle")

    drop_and_time(stack, files, "a worker killed mid-batch", crash_a_worker_mid_batch)
    policy = podman("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", crash.container)
    assert policy.stdout.strip() == "unless-stopped"
    stack.check_each_image_done_once(files)
    # The batch the killed worker held was sent again and scored on a second try.
    held = ",".join(crash.held)
    tries = stack.sql(f"SELECT attempts FROM images WHERE id IN ({held})")
    assert all(int(attempts) >= 2 for (attempts,) in tries), tries
    print(f"\n[containers] the killed worker held {len(crash.held)} images", flush=True)


def test_redis_restarted_mid_drop_loses_nothing(
    stack: Stack, drops: Callable[[], list[Path]]
) -> None:
    files = drops()

    def restart_redis() -> None:
        start = time.monotonic()
        result = stack.compose("restart", "redis", timeout=120)
        assert result.returncode == 0, result.stderr
        assert wait_until(lambda: stack.health("redis") == "healthy", 60), stack.logs()
        report("compose restart redis -> healthy", time.monotonic() - start)

    drop_and_time(stack, files, "Redis restarted mid-drop", restart_redis)
    stack.check_each_image_done_once(files)


def test_down_and_up_again_keeps_every_result(stack: Stack) -> None:
    def snapshot() -> dict[str, tuple[object, ...]]:
        rows = stack.results()
        return {str(r["sha256"]): (r["status"], r["label"], r["probability"]) for r in rows}

    before = snapshot()
    assert len(before) == stack.dropped
    start = time.monotonic()
    down = stack.compose("down", "--remove-orphans", timeout=300)
    assert down.returncode == 0, down.stderr
    assert not stack.containers(stopped=True)
    report("compose down (volumes kept)", time.monotonic() - start)

    start = time.monotonic()
    stack.up()
    assert wait_until(lambda: stack.health("dashboard") == "healthy", 180), stack.logs()
    report("compose up -d again -> every health check healthy", time.monotonic() - start)
    assert snapshot() == before
    assert stack.status_counts() == {"done": stack.dropped}
