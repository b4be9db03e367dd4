"""`fracture predict`: files scored directly, one JSON line each, bad files failed in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from fracture.cli import app
from model.regions import REGIONS
from tests.helpers import make_tiny_checkpoint, sample_images


def test_predict_json_lines(tmp_path: Path) -> None:
    good = sample_images()[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:200])
    missing = tmp_path / "missing.png"
    model = make_tiny_checkpoint(tmp_path / "two.pt", regions=REGIONS, always_region="leg")
    result = CliRunner().invoke(
        app, ["predict", str(good), str(broken), str(missing), "--json", "--model", str(model)]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["path"] for r in records] == [str(good), str(broken), str(missing)]
    done, cut, absent = records
    assert done["status"] == "done" and done["label"] in ("fractured", "not_fractured")
    assert done["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert (done["region"], done["threshold_source"]) == ("leg", "global")
    assert 0.99 < done["region_probability"] <= 1.0
    assert cut["status"] == "failed" and cut["error"] and cut["sha256"]
    assert absent["status"] == "failed" and absent["sha256"] is None and absent["error"]

    text = CliRunner().invoke(app, ["predict", str(good), "--model", str(model)])
    assert text.exit_code == 0
    assert ", leg 100%" in text.output or ", leg 99%" in text.output
    assert "not for clinical use" in text.output
