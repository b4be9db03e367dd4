"""`python -m bench.pages` runs end to end on a small database and prints a figure for every
step it drives in Chromium (the figures themselves are not judged: speed is not a test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_browser import chromium
from tests.helpers import REPO, fracture_env

STEPS = (
    "Browse: first render",
    "Overview: first render",
    "Browse: filter change",
    "Browse: page change",
    "Browse: open a record",
)


def test_page_bench_drives_every_step_on_a_small_database(tmp_path: Path) -> None:
    chromium()  # skipped where Debian's Chromium is missing (never a downloaded browser)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.pages",
            "--rows",
            "300",
            "--repeats",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        env=fracture_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("seeded 300 images")
    for step in STEPS:
        figures = [line for line in lines if line.startswith(step)]
        assert figures, f"no figure for {step!r}:\n{completed.stdout}"
        for line in figures:
            first, median = re.findall(r"(\d+|nan)ms", line)
            assert first != "nan" and median != "nan", line
