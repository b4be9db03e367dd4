"""`fracture up` on one machine: everything starts, files get done, and nothing outlives it."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.helpers import fracture_cli, fracture_env, make_distinct_images, wait_for


def _start(
    tmp_path: Path, model: Path, *, dashboard: bool = False, **settings: str | int
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "up.log"
    env = fracture_env(
        inbox=tmp_path / "inbox",
        data_dir=tmp_path / "data",
        model_path=model,
        settle_s=0.3,
        **settings,
    )
    process = subprocess.Popen(
        fracture_cli("up", "--dashboard" if dashboard else "--no-dashboard"),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    assert wait_for(lambda: b"press Ctrl-C" in log.read_bytes(), timeout=120), log.read_text()
    return process, log


FRACTURE_WORKER = ["-m", "fracture", "worker"]


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _results(tmp_path: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        fracture_cli("results", "--json", "--data-dir", str(tmp_path / "data")),
        capture_output=True,
        text=True,
        env=fracture_env(),
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_up_with_a_dicom_port_also_receives_over_dicom(
    tmp_path: Path, tiny_model: Path, orthanc_binary: None
) -> None:
    from tests.helpers import dicom_tool, sample_images
    from tests.make_inputs import dicom_bytes, grey_radiograph
    from worker.broker import free_port

    port = free_port()
    process, log = _start(tmp_path, tiny_model, dicom_port=port)
    files = []
    for index, source in enumerate(sample_images()[:2]):
        files.append(tmp_path / f"{index}.dcm")
        files[-1].write_bytes(dicom_bytes(grey_radiograph(source), bits=12))

    def sent() -> bool:
        result = dicom_tool(
            "storescu", "-aec", "FRACTURE", "127.0.0.1", str(port), *map(str, files)
        )
        return result.returncode == 0

    assert wait_for(sent, timeout=60, interval=1), log.read_text()[-3000:]
    finished = lambda: [r["status"] for r in _results(tmp_path)] == ["done", "done"]  # noqa: E731
    assert wait_for(finished, timeout=90, interval=1), log.read_text()[-3000:]
    assert {r["source"] for r in _results(tmp_path)} == {"dicom"}
    assert "DICOM: AE title FRACTURE" in log.read_text()
    children = _descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]


def test_up_processes_a_drop_and_stops_cleanly_on_sigterm(tmp_path: Path, tiny_model: Path):
    process, log = _start(tmp_path, tiny_model)
    children = _descendants(process.pid)
    assert len(children) >= 3  # broker, worker, watcher
    started = log.read_text()
    ready = f"ready: drop files into {(tmp_path / 'inbox').resolve()}; press Ctrl-C to stop."
    assert ready in started
    for noise in ("alembic", "[queues]", "superuser privileges"):  # migrations, banner, root
        assert noise not in started
    make_distinct_images(tmp_path / "inbox", 5)

    def done() -> bool:
        rows = _results(tmp_path)
        return len(rows) == 5 and all(r["status"] == "done" for r in rows)

    assert wait_for(done, timeout=90, interval=1), log.read_text()[-3000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]


def test_up_with_two_workers_runs_both_on_a_share_of_the_cores(tmp_path: Path, tiny_model: Path):
    import os

    from sqlalchemy import create_engine, select

    from db.models import Worker

    process, log = _start(tmp_path, tiny_model, workers=2)
    workers = [p for p in _descendants(process.pid) if p.cmdline()[1:4] == FRACTURE_WORKER]
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert len(workers) == 2, [p.cmdline() for p in workers]
    assert [p.environ().get("FRACTURE_WORKER_THREADS") for p in workers] == [share, share]
    make_distinct_images(tmp_path / "inbox", 6)
    assert wait_for(lambda: _all_done(tmp_path, 6), timeout=90, interval=1), log.read_text()[-3000:]
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'fracture.db'}")
    with engine.connect() as connection:
        names = connection.scalars(select(Worker.name)).all()
    engine.dispose()
    assert len(names) == 2, names  # both consume: each says it is alive
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_children_do_not_outlive_a_killed_up(tmp_path: Path, tiny_model: Path, sig: int):
    process, _log = _start(tmp_path, tiny_model)
    children = _descendants(process.pid)
    process.send_signal(sig)
    process.wait(timeout=10)
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]


def _child(up: subprocess.Popen[bytes], word: str) -> psutil.Process | None:
    found = [p for p in _descendants(up.pid) if word in " ".join(p.cmdline())]
    return found[0] if found else None


def _all_done(tmp_path: Path, count: int) -> bool:
    rows = _results(tmp_path)
    return len(rows) == count and all(r["status"] == "done" for r in rows)


def test_a_killed_worker_broker_and_watcher_are_restarted_and_every_drop_gets_done(
    tmp_path: Path, tiny_model: Path
) -> None:
    process, log = _start(tmp_path, tiny_model)
    try:
        worker = _child(process, "fracture worker")
        assert worker is not None
        worker.kill()
        restarted = lambda: "worker exited with status -9; restarting it" in log.read_text()  # noqa: E731
        assert wait_for(restarted, timeout=30), log.read_text()[-3000:]
        new = lambda: getattr(_child(process, "fracture worker"), "pid", worker.pid) != worker.pid  # noqa: E731
        assert wait_for(new, 30)
        make_distinct_images(tmp_path / "inbox", 4)
        assert wait_for(lambda: _all_done(tmp_path, 4), 120, 1), log.read_text()[-3000:]

        broker = _child(process, "valkey-server")
        assert broker is not None
        broker.kill()
        broker_back = lambda: "broker exited with status -9; restarting it" in log.read_text()  # noqa: E731
        assert wait_for(broker_back, timeout=30), log.read_text()[-3000:]
        assert process.poll() is None  # nothing else was stopped
        make_distinct_images(tmp_path / "more", 7)
        for path in sorted((tmp_path / "more").iterdir())[4:]:
            path.rename(tmp_path / "inbox" / path.name)
        assert wait_for(lambda: _all_done(tmp_path, 7), 150, 1), log.read_text()[-3000:]

        # The watcher killed in the middle of a drop: its successor's start-up scan finds
        # what it had not registered yet, and nothing is registered twice.
        watcher = _child(process, "fracture watch")
        assert watcher is not None
        make_distinct_images(tmp_path / "late", 12)
        for path in sorted((tmp_path / "late").iterdir())[7:]:
            path.rename(tmp_path / "inbox" / path.name)
        watcher.kill()
        watcher_back = lambda: "watcher exited with status -9; restarting it" in log.read_text()  # noqa: E731
        assert wait_for(watcher_back, timeout=30), log.read_text()[-3000:]
        assert wait_for(lambda: _all_done(tmp_path, 12), 150, 1), log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)


def test_a_dashboard_that_cannot_start_is_left_stopped_and_intake_goes_on(
    tmp_path: Path, tiny_model: Path
) -> None:
    import socket

    from worker.broker import free_port

    port = free_port()
    with socket.socket() as taken:  # the dashboard's port is already in use
        taken.bind(("0.0.0.0", port))
        taken.listen()
        process, log = _start(
            tmp_path, tiny_model, dashboard=True, dashboard_port=port, restart_limit=1
        )
        try:
            given_up = lambda: "dashboard keeps failing" in log.read_text()  # noqa: E731
            assert wait_for(given_up, timeout=120, interval=1), log.read_text()[-3000:]
            assert "left stopped, intake goes on" in log.read_text()
            make_distinct_images(tmp_path / "inbox", 3)
            assert wait_for(lambda: _all_done(tmp_path, 3), 120, 1), log.read_text()[-3000:]
            assert process.poll() is None
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)
