"""`fracture up` says it is ready once the worker consumes, in one line a newcomer can act on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import Settings
from fracture.supervisor import Child, all_ready, ready_message


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
