"""Fixtures: real broker and PostgreSQL servers, a tiny model, per-test data folders."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.helpers import IN_CI, PostgresServer, make_tiny_checkpoint
from worker.broker import PrivateBroker, free_port

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="session")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


@pytest.fixture
def broker_url(broker_server: PrivateBroker) -> str:
    """A clean broker database for each test."""
    import redis

    redis.Redis.from_url(broker_server.url).flushall()
    return broker_server.url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    if not PostgresServer.available():
        if IN_CI:
            pytest.fail("PostgreSQL server binaries are required in CI (pg_config, runuser)")
        pytest.skip("PostgreSQL server binaries not installed")
    base = Path("/tmp") / f"fracture-pg-{uuid.uuid4().hex[:8]}"
    server = PostgresServer(base, free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)  # 0.1–1.2 GB a session otherwise left in /tmp


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on a real SQLite file and a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fracture.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database of each kind (see database_url)."""
    from db.migrate import upgrade
    from db.session import make_engine, make_session_factory

    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def orthanc_binary() -> None:
    """Orthanc and DCMTK are installed by .ci/run in CI; elsewhere their tests skip."""
    from tests.helpers import OrthancServer

    missing = [
        name
        for name, ok in (("orthanc", OrthancServer.available()), ("dcmtk", _has("storescu")))
        if not ok
    ]
    if missing:
        if IN_CI:
            pytest.fail(f"{' and '.join(missing)} required in CI (apt-get install them)")
        pytest.skip(f"{' and '.join(missing)} not installed")


def _has(command: str) -> bool:
    import shutil

    return shutil.which(command) is not None


@pytest.fixture
def orthanc(orthanc_binary: None, tmp_path: Path) -> Iterator[object]:
    """A fresh Orthanc PACS for one test."""
    from tests.helpers import OrthancServer

    server = OrthancServer(tmp_path / "orthanc", free_port(), free_port()).start()
    yield server
    server.stop()
