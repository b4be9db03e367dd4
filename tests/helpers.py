"""Shared test helpers: real servers (broker, PostgreSQL, Orthanc), a tiny fixed-weight model,
prediction rows, processes, and the compose services run as local processes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import torch
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.queries import NewPrediction
from model import architectures, checkpoint
from model.preprocess import Preset
from worker.broker import free_port, server_binary

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
FRACATLAS = SHARED / "data" / "fracatlas"
BAD_INPUTS = SHARED / "data" / "bad-inputs"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
IN_CI = os.environ.get("CI", "").lower() == "true"


def make_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    size: int = 64,
    regions: tuple[str, ...] = (),
    always_region: str | None = None,
    region_thresholds: dict[str, float] | None = None,
) -> Path:
    """A seed CNN with fixed random weights: exact, fast, and independent of the shipped model.

    With `regions` it has a region head; `always_region` makes that head name one region for
    every input (zero weights, one large bias).
    """
    torch.manual_seed(seed)
    net = architectures.build("seed_cnn", size=size, regions=len(regions))
    if always_region is not None:
        head = net.get_submodule("region")
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[regions.index(always_region)] = 5.0
    ckpt = checkpoint.Checkpoint.from_network(
        "seed_cnn",
        net,
        preset=Preset(size=size),
        arch_kwargs={"size": size},
        threshold=0.5,
        regions=regions,
        region_thresholds=region_thresholds or {},
    )
    return checkpoint.save(ckpt, path)


def make_tiny_heat_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    size: int = 64,
    threshold: float = 0.5,
    doubt_threshold: float | None = None,
) -> Path:
    """An EfficientNet-Lite0 with a fracture heat head, fixed random weights, at `size` px: boxes
    for every answer but "no_fracture". Threshold 1 and doubt 0 make every answer "doubt"."""
    torch.manual_seed(seed)
    net = architectures.build("efficientnet_lite0", heat=True)
    ckpt = checkpoint.Checkpoint.from_network(
        "efficientnet_lite0",
        net,
        preset=Preset(size=size),
        threshold=threshold,
        doubt_threshold=doubt_threshold,
        heat=True,
    )
    return checkpoint.save(ckpt, path)


def unsplittable_checkpoint() -> checkpoint.Checkpoint:
    """A resnet18 at 64 px with fixed random weights: a network whose layers after the last
    convolution `architectures.tail` does not know, so ONNX Runtime cannot run it."""
    torch.manual_seed(0)
    return checkpoint.Checkpoint.from_network(
        "resnet18", architectures.build("resnet18"), preset=Preset(size=64)
    )


def sample_images() -> list[Path]:
    """Small real radiographs shipped with the tests (see tests/fixtures/README.md)."""
    return sorted(p for p in FIXTURES.glob("*.jpg"))


def new_prediction(
    image_id: int, *, probability: float = 0.9, threshold: float = 0.5, **fields: Any
) -> NewPrediction:
    """A prediction to store for `image_id`, labelled by `probability` against `threshold`,
    from model "v1" in a batch of one; `fields` sets or overrides any other column."""
    values: dict[str, Any] = {
        "model_version": "v1",
        "label": "fractured" if probability >= threshold else "not_fractured",
        "batch_size": 1,
        "inference_ms": 1.0,
        **fields,
    }
    return NewPrediction(image_id=image_id, probability=probability, threshold=threshold, **values)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class PostgresServer:
    """A private PostgreSQL server in a temp dir, run as the `postgres` user."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.bindir = Path(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        )

    @staticmethod
    def available() -> bool:
        return shutil.which("pg_config") is not None and shutil.which("runuser") is not None

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def start(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        self._as_postgres(
            str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-t", "60",
            "-l", str(self.directory / "server.log"), "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(
                str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast",
                "-w", "stop",
            )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def fracture_env(**values: str | Path | int | float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_")}
    env.update({f"FRACTURE_{k.upper()}": str(v) for k, v in values.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextmanager
def running(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the duration of the block; its output goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or REPO,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def fracture_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fracture", *args]


def make_distinct_images(directory: Path, count: int, *, fmt: str = "JPEG") -> list[Path]:
    """`count` different real-radiograph files: the shipped fixtures, flipped, rotated, cropped."""
    from PIL import Image, ImageOps

    directory.mkdir(parents=True, exist_ok=True)
    sources = sample_images()
    made: list[Path] = []
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for index in range(count):
        with Image.open(sources[index % len(sources)]) as original:
            image = ImageOps.grayscale(original)
        variant = index // len(sources)
        if variant % 2:
            image = ImageOps.mirror(image)
        image = image.rotate(3 * (variant // 2), expand=False)
        width, height = image.size
        crop = variant % 5
        image = image.crop((crop, crop, width - crop, height - crop))
        path = directory / f"xray_{index:05d}{suffix}"
        image.save(path, fmt, quality=90) if fmt == "JPEG" else image.save(path, fmt)
        made.append(path)
    return made


class ProcessPipeline:
    """Watcher and worker processes (`fracture watch` / `fracture worker`) over one inbox, one
    database and a broker, with the queries tests ask of the result."""

    def __init__(
        self,
        root: Path,
        broker_url: str,
        model: Path,
        *,
        database_url: str | None = None,
        **settings: object,
    ) -> None:
        from db.migrate import upgrade
        from db.session import make_engine, make_session_factory

        self.root = root
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or f"sqlite:///{root / 'data' / 'fracture.db'}"
        values: dict[str, object] = {
            "inbox": self.inbox,
            "data_dir": root / "data",
            "database_url": self.database_url,
            "broker_url": broker_url,
            "model_path": model,
            "device": "cpu",
            "settle_s": 0.5,
            "sweep_interval_s": 1,
            "batch_interval_ms": 100,
            **settings,
        }
        self.env = fracture_env(**values)  # type: ignore[arg-type]
        upgrade(self.database_url)
        self.engine = make_engine(self.database_url)
        self.factory = make_session_factory(self.engine)
        self.stack = ExitStack()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """`worker`, `worker-2`, … start workers; `dicom` the DICOM listener; `watch` or
        `watcher` the watcher."""
        command = "worker" if name.startswith("worker") else "watch"
        if name.startswith("dicom"):
            command = "dicom-listen"
        process = self.stack.enter_context(
            running(fracture_cli(command), self.env, self.root / f"{name}.log")
        )
        self.processes[name] = process
        return process

    def rows(self) -> list[Any]:
        from sqlalchemy import select

        from db.models import Image

        with self.factory() as session:
            return list(session.scalars(select(Image)))

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func, select

        from db.models import Image

        with self.factory() as session:
            rows = session.execute(select(Image.status, func.count()).group_by(Image.status))
            return {status: count for status, count in rows}

    def settled(self, total: int) -> bool:
        counts = self.counts()
        return sum(counts.values()) == total and not (
            counts.get("queued") or counts.get("processing")
        )

    def predictions_per_image(self) -> dict[int, int]:
        from sqlalchemy import func, select

        from db.models import Prediction

        with self.factory() as session:
            query = select(Prediction.image_id, func.count()).group_by(Prediction.image_id)
            return {image_id: count for image_id, count in session.execute(query)}

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes.values())

    def logs(self, tail: int = 4000) -> str:
        text = "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))
        return text[-tail:]

    def close(self) -> None:
        self.stack.close()
        self.engine.dispose()


@contextmanager
def process_pipeline(
    root: Path, broker_url: str, model: Path, **settings: object
) -> Iterator[ProcessPipeline]:
    p = ProcessPipeline(root, broker_url, model, **settings)  # type: ignore[arg-type]
    try:
        yield p
    finally:
        p.close()


class OrthancServer:
    """Debian's Orthanc (a real PACS) from a temporary configuration: REST and DICOM on free
    loopback ports, storage in `root`, no plugins."""

    AE_TITLE = "ORTHANC"

    def __init__(self, root: Path, http_port: int, dicom_port: int) -> None:
        self.root = root
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("Orthanc") is not None

    def start(self, timeout: float = 30.0) -> OrthancServer:
        import json

        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "fracture-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "Plugins": [],
            "StableAge": 1,
            "HttpTimeout": 60,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        with (self.root / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if not wait_for(self._answers, timeout, 0.2):
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {(self.root / 'orthanc.log').read_text()}")
        return self

    def _answers(self) -> bool:
        try:
            self.get("/system")
        except OSError:
            return False
        return True

    def request(self, method: str, path: str, body: object = None) -> Any:
        import json
        import urllib.request

        data = None
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(payload)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.request(
            "PUT", f"/modalities/{name}", {"AET": ae_title, "Host": "127.0.0.1", "Port": port}
        )

    def upload(self, data: bytes) -> str:
        """Store a DICOM file; its Orthanc instance id."""
        return str(self.request("POST", "/instances", data)["ID"])

    def study_id(self, study_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_uid.encode())
        return next((r["ID"] for r in found if r["Type"] == "Study"), None)

    def study_files(self, study_uid: str) -> list[bytes]:
        """Every instance of the study, as DICOM files."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        instances = self.get(f"/studies/{study}/instances")
        return [self.get(f"/instances/{i['ID']}/file") for i in instances]

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def dicom_tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (storescu, echoscu); its result, output included."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def slow_copy(source: Path, target: Path, chunks: int = 5, pause: float = 0.3) -> None:
    """Write a file in pieces, reopening it to append each time, like a slow network copy or
    a scanner that appends page by page."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    for start in range(0, len(data), step):
        with target.open("ab") as handle:
            handle.write(data[start : start + step])
        time.sleep(pause)


# -- the compose services as local processes ---------------------------------------------------
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
BATCH_LINE = re.compile(r"batch of (\d+): (\d+) done, (\d+) failed, (\d+) skipped")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in variables
        empty = not variables.get(name)
        if op in (":-", "-") and (not present or (op == ":-" and empty)):
            return arg
        if op in (":?", "?") and (not present or (op == ":?" and empty)):
            raise KeyError(f"{name}: {arg}")
        return variables.get(name, "")

    return _VARIABLE.sub(substitute, value)


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolated(raw, read_env_file(ENV_EXAMPLE) if variables is None else variables)


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "write environment as a mapping"
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def local_command(command: list[str]) -> list[str]:
    assert command[0] == "fracture", f"application services run the fracture CLI, not {command}"
    script = Path(sys.executable).with_name("fracture")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "fracture"]
    return [*entry, *command[1:]]


class LocalStack:
    """The compose services as local processes sharing one storage dir, broker and database."""

    def __init__(self, root: Path, postgres_url: str, model: Path) -> None:
        self.root = root
        self.services = load_compose()["services"]
        self.logs = root / "logs"
        self.stack = ExitStack()
        self.postgres_url = postgres_url
        self.broker_url = ""
        self.overrides = {
            "FRACTURE_MODEL_PATH": str(model),
            "FRACTURE_DEVICE": "cpu",
            "FRACTURE_SETTLE_S": "0.2",
            "FRACTURE_DASHBOARD_PORT": str(free_port()),
            "FRACTURE_DICOM_PORT": str(free_port()),
            "FRACTURE_DICOM_HOST": "127.0.0.1",
            # each container has a metrics port of its own; local processes would share one
            "FRACTURE_METRICS_PORT": "0",
        }

    def __enter__(self) -> LocalStack:
        try:
            self.broker_url = self._start_redis()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _start_redis(self) -> str:
        """The redis service's own command line, on a free local port."""
        command = self.services["redis"]["command"]
        assert command[0] == "valkey-server"
        port = free_port()
        directory = self.root / "redis-data"
        directory.mkdir(parents=True)
        args = [str(server_binary()), *command[1:], "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--dir", str(directory), "--save", ""]
        self.stack.enter_context(running(args, dict(os.environ), self.logs / "redis.log"))
        password = command[command.index("--requirepass") + 1]
        client = redis.Redis(port=port, password=password, socket_connect_timeout=1)
        assert wait_for(lambda: _pings(client), 15), "the redis service command did not start"

        compose_url = urlsplit(self.env("worker")["FRACTURE_BROKER_URL"])
        assert compose_url.hostname == "redis", "the broker URL must name the redis service"
        credentials = compose_url.netloc.rpartition("@")[0]
        return urlunsplit(compose_url._replace(netloc=f"{credentials}@127.0.0.1:{port}"))

    def _database_url(self, compose_value: str) -> str:
        compose_url, local = make_url(compose_value), make_url(self.postgres_url)
        assert compose_url.host == "postgres", "the database URL must name the postgres service"
        assert compose_url.drivername == local.drivername
        # The fixture server trusts local connections: only the address, user and db change.
        return compose_url.set(
            host=local.host, port=local.port, username=local.username, database=local.database
        ).render_as_string(hide_password=False)

    def env(self, name: str) -> dict[str, str]:
        service = self.services[name]
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = self.root / source.strip("./").replace("/", "_")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_")}
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in service_environment(service).items():
            for target, local in mounts.items():
                if value == target or value.startswith(target + "/"):
                    value = str(local) + value[len(target) :]
            env[key] = value
        for key, value in self.overrides.items():
            if key in env:
                env[key] = value
        if self.broker_url:
            env["FRACTURE_BROKER_URL"] = self.broker_url
        env["FRACTURE_DATABASE_URL"] = self._database_url(env["FRACTURE_DATABASE_URL"])
        return env

    @property
    def inbox(self) -> Path:
        return Path(self.env("watcher")["FRACTURE_INBOX"])

    def run_once(self, name: str) -> subprocess.CompletedProcess[str]:
        command = local_command(self.services[name]["command"])
        return subprocess.run(
            command, env=self.env(name), capture_output=True, text=True, cwd=REPO, timeout=120
        )

    def start(self, name: str, instance: str | None = None) -> subprocess.Popen[bytes]:
        command = local_command(self.services[name]["command"])
        log = self.logs / f"{instance or name}.log"
        return self.stack.enter_context(running(command, self.env(name), log))

    def log(self, instance: str) -> str:
        path = self.logs / f"{instance}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def status_counts(self) -> dict[str, int]:
        return dict(self._query("SELECT status, count(*) FROM images GROUP BY status"))

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        engine = create_engine(self.postgres_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(sql))]
        finally:
            engine.dispose()

    def done_per_worker(self, *instances: str) -> dict[str, int]:
        return {
            name: sum(int(m[2]) for m in BATCH_LINE.finditer(self.log(name))) for name in instances
        }

    def diagnose(self, *instances: str) -> str:
        return "\n".join(f"--- {name}.log ---\n{self.log(name)[-3000:]}" for name in instances)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@contextmanager
def local_stack(root: Path, postgres_url: str, model: Path) -> Iterator[LocalStack]:
    with LocalStack(root, postgres_url, model) as stack:
        migrated = stack.run_once("migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert "up to date" in migrated.stdout
        yield stack
