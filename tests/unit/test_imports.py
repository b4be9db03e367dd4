"""Each process imports only what it uses: the CLI, the supervisor, the watcher and the DICOM
listener never load torch, ONNX Runtime or Streamlit, the dashboard never torch or ONNX Runtime,
the worker never torchvision (checked in a fresh interpreter each)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fracture.cli import MODEL_ERRORS
from tests.helpers import REPO, fracture_env

HEAVY = ("torch", "torchvision", "onnxruntime", "streamlit", "cv2")

# What each entry point runs on start-up, up to where it would wait for work; the CLI through
# `main`, the console script's own entry point, as `fracture ARGS` runs it.
CLI = """
import sys
from fracture.cli import main
sys.argv = ["fracture", *{args!r}]
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
"""
UP = """
import fracture.cli
from config import Settings
from fracture.supervisor import child_environment
child_environment(Settings(), "redis://127.0.0.1:9/0")
"""
WATCHER = """
import fracture.cli
from config import Settings
from watcher.main import build_watcher
build_watcher(Settings(), "redis://127.0.0.1:9/0")
"""
# Every dashboard module: the dashboard shows what the workers stored and asks them for heat
# maps; it never loads a model.
DASHBOARD = """
import fracture.cli
import dashboard.admin, dashboard.downloads, dashboard.record, dashboard.services
import dashboard.signin, dashboard.ui, dashboard.verdict, dashboard.viewer
import dashboard.views.browse, dashboard.views.overview, dashboard.views.upload
"""
# The worker with the shipped model loaded: torchvision alone would add about 160 MB to its peak.
WORKER = """
import fracture.cli
import worker.tasks
from config import SHIPPED_MODEL
from model.inference import Classifier
Classifier.load(SHIPPED_MODEL, device="cpu").close()
"""
DICOM_LISTENER = """
import fracture.cli
import pacs.main
"""


def heavy_modules_after(code: str, tmp_path: Path) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    report = f"import json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    (tmp_path / "data").mkdir(exist_ok=True)  # `results` refuses a data dir that is not there
    completed = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=fracture_env(data_dir=tmp_path / "data", inbox=tmp_path / "inbox"),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return list(json.loads(completed.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        pytest.param(CLI.format(args=["--help"]), [], id="fracture --help"),
        pytest.param(WORKER, ["torch", "onnxruntime", "cv2"], id="fracture worker"),
        pytest.param(CLI.format(args=["results"]), [], id="fracture results"),
        pytest.param(UP, [], id="fracture up (supervisor)"),
        pytest.param(WATCHER, [], id="fracture watch"),
        pytest.param(DASHBOARD, ["streamlit"], id="fracture dashboard"),
        # its result sender decodes the original image to draw the answer on a copy
        pytest.param(DICOM_LISTENER, ["cv2"], id="fracture dicom-listen"),
    ],
)
def test_entry_point_leaves_heavy_libraries_to_the_processes_that_use_them(
    code: str, allowed: list[str], tmp_path: Path
) -> None:
    imported = heavy_modules_after(code, tmp_path)
    assert [m for m in imported if m not in allowed] == []


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    assert heavy_modules_after("import cv2", tmp_path) == ["cv2"]


def test_model_errors_the_cli_shows_as_one_line_are_exception_classes() -> None:
    for module_name, class_name in MODEL_ERRORS:
        assert issubclass(getattr(importlib.import_module(module_name), class_name), Exception)
