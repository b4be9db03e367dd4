"""The compose deployment: the file validates, and its service commands work as local processes.

Docker does not run here, so each application service's `command` runs as a local process with
that service's interpolated environment (.env.example as the .env). Only what a container
would provide differently is replaced: host names and ports (a local valkey started with the
redis service's own command line, the PostgreSQL fixture server), the storage mount (a temp
dir), the model (the tiny checkpoint), the device (cpu) and, for speed, the settle time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from config import Settings
from fracture.supervisor import DASHBOARD_APP
from tests.helpers import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    IN_CI,
    REPO,
    load_compose,
    local_stack,
    read_env_file,
    sample_images,
    service_environment,
    wait_for,
)
from tests.make_inputs import dicom_bytes, grey_radiograph

DOCKERFILE = REPO / "Dockerfile"
APP_SERVICES = ("migrate", "worker", "worker-cpu", "watcher", "dashboard", "dicom")
LONG_RUNNING = (
    "redis", "postgres", "worker", "worker-cpu", "watcher", "dashboard", "dicom", "flower"
)  # fmt: skip
STORAGE = "/srv/fracture"
SHIPPED_MODEL_IN_IMAGE = "/opt/fracture/model/fracture.pt"


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-compose is required in CI (Debian package docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return binary


def run_compose_config(env_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # Only the env file may supply variables: a developer's shell or .env must not leak in.
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [
            docker_compose(),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *options,
            "config",
        ],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=REPO,
        timeout=60,
    )


# -- (a) the file is valid compose, and says what the deployment needs -------------------------
def test_compose_config_validates_and_matches_our_reading(tmp_path: Path) -> None:
    # With every profile on: Compose v2 leaves inactive profiles out of `config`.
    result = run_compose_config(
        ENV_EXAMPLE, "--profile", "cpu", "--profile", "flower", "--profile", "monitoring"
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    ours = load_compose()["services"]
    assert set(resolved) == set(ours)
    # The local-process tests below rely on reading commands and environments as compose does.
    for name in APP_SERVICES:
        assert resolved[name]["command"] == ours[name]["command"], name
        assert service_environment(resolved[name]) == service_environment(ours[name]), name

    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = run_compose_config(empty)
    assert refused.returncode != 0
    assert "PASSWORD" in refused.stderr or "_URL" in refused.stderr, refused.stderr


def test_compose_file_declares_the_deployment() -> None:
    services = load_compose()["services"]
    assert set(APP_SERVICES) | {"redis", "postgres", "flower"} <= set(services)

    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    variables = read_env_file(ENV_EXAMPLE)
    assert redis_command[redis_command.index("--requirepass") + 1] == variables["REDIS_PASSWORD"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])

    assert services["migrate"]["command"] == ["fracture", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "worker-cpu", "watcher", "dashboard", "dicom"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name

    (gpu,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert gpu["device_ids"] == [read_env_file(ENV_EXAMPLE)["WORKER_GPU"]]
    assert "container_name" not in services["worker"], "a fixed name breaks --scale worker=N"
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["worker-cpu"]["command"] == services["worker"]["command"]
    assert service_environment(services["worker-cpu"])["FRACTURE_DEVICE"] == "cpu"
    assert "deploy" not in services["worker-cpu"]
    assert services["flower"]["profiles"] == ["flower"]
    assert any(p.endswith(":8501") for p in services["dashboard"]["ports"])
    assert services["dicom"]["command"] == ["fracture", "dicom-listen"]
    assert any(p.endswith(":11112") for p in services["dicom"]["ports"])

    # Every application setting goes through a FRACTURE_* variable that Settings knows
    # (Settings ignores unknown names, so a typo would silently do nothing).
    known = {f"FRACTURE_{field.upper()}" for field in Settings.model_fields}
    for name in APP_SERVICES:
        environment = service_environment(services[name])
        assert set(environment) <= known, (name, set(environment) - known)
        # Validates every value, exactly as the service would read it.
        settings = Settings.model_validate(
            {k.removeprefix("FRACTURE_").lower(): v for k, v in environment.items()}
        )
        assert settings.inbox.is_relative_to(STORAGE) and settings.data_dir.is_relative_to(STORAGE)
        mounts = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert STORAGE in mounts, f"{name} must see the shared storage at {STORAGE}"

    # Timings chosen together (docs/DEPLOY.md, "Time limits").
    worker_env = service_environment(services["worker"])
    watcher_env = service_environment(services["watcher"])
    limit = float(worker_env["FRACTURE_TASK_TIME_LIMIT_S"])
    assert float(worker_env["FRACTURE_VISIBILITY_TIMEOUT_S"]) > 2 * limit
    assert float(watcher_env["FRACTURE_STUCK_AFTER_S"]) > limit
    assert (
        watcher_env["FRACTURE_VISIBILITY_TIMEOUT_S"] == worker_env["FRACTURE_VISIBILITY_TIMEOUT_S"]
    )
    assert float(services["worker"]["stop_grace_period"].removesuffix("s")) > limit
    assert worker_env["FRACTURE_MODEL_PATH"] == SHIPPED_MODEL_IN_IMAGE


def test_env_example_is_consistent_and_holds_no_secrets() -> None:
    variables = read_env_file(ENV_EXAMPLE)
    broker = urlsplit(variables["FRACTURE_BROKER_URL"])
    assert broker.password == variables["REDIS_PASSWORD"]
    database = make_url(variables["FRACTURE_DATABASE_URL"])
    assert database.drivername == "postgresql+psycopg"
    assert database.username == variables["POSTGRES_USER"]
    assert database.password == variables["POSTGRES_PASSWORD"]
    assert database.database == variables["POSTGRES_DB"]
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "FRACTURE_DASHBOARD_PASSWORD"):
        assert variables[key].startswith("change-me"), key
    assert variables["FLOWER_BASIC_AUTH"].endswith(":change-me-flower")


def test_dockerfile_builds_a_non_root_multi_stage_image_with_the_model() -> None:
    dockerfile = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ARG TORCH_VARIANT=cuda$", dockerfile, flags=re.MULTILINE)
    assert f"FRACTURE_MODEL_PATH={SHIPPED_MODEL_IN_IMAGE}" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv" in ignored and "!model/weights/fracture.pt" in ignored


# -- (b) and (c): the services' own commands, as local processes --------------------------------
def live_workers(broker_url: str) -> list[str]:
    from worker.app import make_celery
    from worker.client import live_workers as ping

    app = make_celery(Settings.model_validate({}), broker_url)
    try:
        return ping(app, timeout=1.0)
    finally:
        app.close()


def test_compose_services_take_a_drop_to_done_in_postgres(
    tmp_path: Path, postgres_url: str, tiny_model: Path
) -> None:
    with local_stack(tmp_path, postgres_url, tiny_model) as stack:
        worker = stack.start("worker")
        watcher = stack.start("watcher")
        dashboard = stack.start("dashboard") if DASHBOARD_APP.is_file() else None

        images = sample_images()
        stack.inbox.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copy(image, stack.inbox / image.name)
        settled = wait_for(lambda: stack.status_counts() == {"done": len(images)}, 120, 0.5)
        assert settled, f"{stack.status_counts()}\n{stack.diagnose('worker', 'watcher')}"
        (predictions,) = stack._query("SELECT count(*), count(DISTINCT image_id) FROM predictions")
        assert predictions == (len(images), len(images))
        stored = {Path(p) for (p,) in stack._query("SELECT path FROM images")}
        assert stored == {stack.inbox / image.name for image in images}

        if shutil.which("storescu") or IN_CI:  # the dicom service takes a study over DICOM
            stack.start("dicom")
            port = stack.env("dicom")["FRACTURE_DICOM_PORT"]
            instances = [tmp_path / f"instance_{i}.dcm" for i in range(2)]
            for index, path in enumerate(instances):
                grey = grey_radiograph(images[index])
                path.write_bytes(dicom_bytes(grey, bits=12))
            command = ["storescu", "-aec", "FRACTURE", "127.0.0.1", port, *map(str, instances)]

            def sent() -> bool:  # refused until the listener has started
                result = subprocess.run(command, capture_output=True, timeout=60, check=False)
                return result.returncode == 0

            assert wait_for(sent, 90, 1.0), stack.diagnose("dicom")
            total = len(images) + len(instances)
            settled = wait_for(lambda: stack.status_counts() == {"done": total}, 120, 0.5)
            assert settled, f"{stack.status_counts()}\n{stack.diagnose('worker', 'dicom')}"

        if dashboard is not None:
            port = stack.env("dashboard")["FRACTURE_DASHBOARD_PORT"]
            health = f"http://127.0.0.1:{port}/_stcore/health"
            assert wait_for(lambda: _answers(health), 60, 0.5), stack.diagnose("dashboard")

    # Leaving the stack sent SIGTERM: Celery's warm shutdown and the watcher exit cleanly.
    assert worker.returncode == 0, stack.diagnose("worker")
    assert watcher.returncode == 0, stack.diagnose("watcher")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def make_drop(directory: Path, count: int) -> list[Path]:
    """`count` distinct small PNG radiographs: the fixtures, shrunk, each with its own marker."""
    from PIL import Image, ImageOps

    directory.mkdir(parents=True, exist_ok=True)
    bases = []
    for source in sample_images():
        with Image.open(source) as original:
            image = ImageOps.grayscale(original)
        image.thumbnail((160, 160))
        bases.append(image)
    made = []
    for index in range(count):
        image = bases[index % len(bases)].copy()
        image.putpixel((0, 0), index % 256)
        image.putpixel((1, 0), index // 256)
        path = directory / f"drop_{index:04d}.png"
        image.save(path, "PNG")
        made.append(path)
    return made


@pytest.mark.timeout(240)
def test_two_workers_share_a_200_image_drop_without_doing_any_twice(
    tmp_path: Path, postgres_url: str, tiny_model: Path
) -> None:
    count = 200
    drop = make_drop(tmp_path / "staging", count)
    with local_stack(tmp_path, postgres_url, tiny_model) as stack:
        # docker compose up --scale worker=2: the same service twice.
        workers = [stack.start("worker", "worker-1"), stack.start("worker", "worker-2")]
        stack.start("watcher")
        both_ready = wait_for(lambda: len(live_workers(stack.broker_url)) == 2, 120, 1.0)
        assert both_ready, stack.diagnose("worker-1", "worker-2")

        stack.inbox.mkdir(parents=True, exist_ok=True)
        for path in drop:
            path.rename(stack.inbox / path.name)  # arrives complete, as a finished copy would
        settled = wait_for(lambda: stack.status_counts() == {"done": count}, 150, 0.5)
        assert settled, f"{stack.status_counts()}\n{stack.diagnose('worker-1', 'worker-2')}"

        (totals,) = stack._query(
            "SELECT count(*), count(DISTINCT image_id) FROM predictions",
        )
        assert totals == (count, count), "exactly one prediction per image"
        (attempts,) = stack._query("SELECT max(attempts), min(attempts) FROM images")
        assert attempts == (1, 1), "every image was claimed exactly once"
        done = stack.done_per_worker("worker-1", "worker-2")
        assert sum(done.values()) == count, f"an image was predicted twice: {done}"
        assert all(done.values()), f"both workers should have taken batches: {done}"

    assert [w.returncode for w in workers] == [0, 0], stack.diagnose("worker-1", "worker-2")
