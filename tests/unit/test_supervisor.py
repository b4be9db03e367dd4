"""`fracture up` says it is ready once the worker consumes, in one line a newcomer can act on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import Settings
from fracture.supervisor import (
    Child,
    all_ready,
    metrics_env,
    ready_message,
    threads_env,
    worker_names,
)


def test_not_ready_until_the_worker_has_created_its_ready_file(tmp_path: Path) -> None:
    settings = Settings(inbox=tmp_path / "inbox", data_dir=tmp_path / "data")
    children = {"worker": Child("worker", []), "watcher": Child("watcher", [])}
    assert not all_ready(settings, tmp_path / "worker", children)
    (tmp_path / "worker").touch()
    assert all_ready(settings, tmp_path / "worker", children)


def test_a_dashboard_given_up_on_does_not_hold_back_ready(tmp_path: Path) -> None:
    settings = Settings(inbox=tmp_path / "inbox", data_dir=tmp_path / "data")
    (tmp_path / "worker").touch()
    dashboard = Child("dashboard", [], given_up=True)
    assert all_ready(settings, tmp_path / "worker", {"dashboard": dashboard})


def test_ready_line_gives_the_absolute_inbox_the_dashboard_and_how_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(inbox=Path("inbox"), dashboard_port=8600)
    line = ready_message(settings, ["worker", "watcher", "dashboard"])
    assert f"drop files into {os.path.join(tmp_path.resolve(), 'inbox')};" in line
    assert "dashboard at http://localhost:8600;" in line
    assert "press Ctrl-C to stop" in line
    assert "\n" not in line


def test_ready_line_leaves_out_what_is_not_running(tmp_path: Path) -> None:
    settings = Settings(inbox=tmp_path / "inbox", dicom_port=11112)
    line = ready_message(settings, ["worker", "watcher", "dicom"])
    assert "dashboard" not in line
    assert "DICOM: AE title FRACTURE on 127.0.0.1:11112" in line


def test_up_starts_the_workers_asked_for_each_with_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4})
    one = Settings()
    assert worker_names(one) == ["worker"]
    assert threads_env(one) == {}  # one worker: every core, as before
    three = Settings(workers=3, metrics_port=9464)
    assert worker_names(three) == ["worker", "worker-2", "worker-3"]
    assert threads_env(three) == {"FRACTURE_WORKER_THREADS": "1"}  # 5 cores // 3
    assert threads_env(Settings(workers=2)) == {"FRACTURE_WORKER_THREADS": "2"}
    assert threads_env(Settings(workers=2, worker_threads=4)) == {}  # set: left as it is
    ports = {
        name: metrics_env(three, name)["FRACTURE_METRICS_PORT"] for name in worker_names(three)
    }
    assert ports == {"worker": "9465", "worker-2": "9469", "worker-3": "9470"}
    assert threads_env(Settings(workers=8)) == {"FRACTURE_WORKER_THREADS": "1"}  # at least one
