"""`fracture predict`: files scored directly, one JSON line each, bad files failed in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from fracture.cli import app
from model.regions import REGIONS
from tests.helpers import make_tiny_checkpoint, make_tiny_heat_checkpoint, sample_images


def test_predict_json_lines(tmp_path: Path) -> None:
    good = sample_images()[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:200])
    missing = tmp_path / "missing.png"
    model = make_tiny_checkpoint(tmp_path / "two.pt", regions=REGIONS, always_region="leg")
    result = CliRunner().invoke(
        app, ["predict", str(good), str(broken), str(missing), "--json", "--model", str(model)]
    )
    assert result.exit_code == 1, result.output  # some files could not be scored
    assert result.stderr.strip() == "2 of 3 file(s) could not be scored"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(good), str(broken), str(missing)]
    done, cut, absent = records
    assert done["status"] == "done" and done["label"] in ("fractured", "not_fractured")
    assert done["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert (done["region"], done["threshold_source"]) == ("leg", "global")
    assert 0.99 < done["region_probability"] <= 1.0
    # one operating point, no heat head: two answers and no boxes
    expected = "fracture" if done["label"] == "fractured" else "no_fracture"
    assert (done["verdict"], done["doubt_threshold"], done["boxes"]) == (expected, None, [])
    assert cut["status"] == "failed" and cut["error"] and cut["sha256"]
    assert (cut["verdict"], cut["boxes"]) == (None, None)
    assert absent["status"] == "failed" and absent["sha256"] is None
    assert absent["error"].startswith("file not found")

    text = CliRunner().invoke(app, ["predict", str(good), "--model", str(model)])
    assert text.exit_code == 0
    assert ", leg 100%" in text.output or ", leg 99%" in text.output
    assert text.output.startswith(
        f"{good}: {'Fracture' if expected == 'fracture' else 'No fracture'} ("
    )
    assert "box" not in text.output
    assert "not for clinical use" in text.output


def test_predict_gives_the_verdict_and_boxes_of_a_heat_head_model(tmp_path: Path) -> None:
    from PIL import Image

    good = sample_images()[0]
    with Image.open(good) as image:
        width, height = image.size  # the fixtures carry no EXIF rotation
    # Threshold 1 and doubt threshold 0: every image is answered "doubt", with boxes.
    model = make_tiny_heat_checkpoint(tmp_path / "heat.pt", threshold=1.0, doubt_threshold=0.0)
    result = CliRunner().invoke(app, ["predict", str(good), "--json", "--model", str(model)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.output.splitlines()]
    assert (record["label"], record["verdict"], record["doubt_threshold"]) == (
        "not_fractured",
        "doubt",
        0.0,
    )
    assert record["boxes"], "a doubt answer of a heat-head model has at least one box"
    for x, y, w, h, score in record["boxes"]:
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height  # original pixels
        assert 0.0 <= score <= 1.0

    text = CliRunner().invoke(app, ["predict", str(good), "--model", str(model)])
    assert text.exit_code == 0, text.output
    count = len(record["boxes"])
    first = text.output.splitlines()[0]
    assert first.startswith(f"{good}: Doubt (p=") and ", doubt from 0.000" in first
    assert first.endswith(f", {count} box" if count == 1 else f", {count} boxes")
    assert "not for clinical use" in text.output


def test_a_model_that_cannot_be_set_up_as_asked_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    import subprocess

    import torch

    from model import checkpoint
    from tests.helpers import fracture_cli, fracture_env, unsplittable_checkpoint

    resnet = checkpoint.save(unsplittable_checkpoint(), tmp_path / "resnet.pt")
    cases = [({"runtime": "onnx"}, "FRACTURE_RUNTIME=onnx cannot run this model")]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "FRACTURE_DEVICE=cuda but no CUDA device"))
    for settings, message in cases:
        completed = subprocess.run(
            [*fracture_cli("predict", str(sample_images()[0])), "--model", str(resnet)],
            env=fracture_env(**settings),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.startswith(f"error: {message}"), completed.stderr
        assert "Traceback" not in completed.stderr


def test_predict_works_through_many_files_a_batch_at_a_time(tmp_path: Path) -> None:
    files = [str(p) for p in sample_images()] * 3  # 24 files, batches of 5
    model = make_tiny_checkpoint(tmp_path / "tiny.pt")
    result = CliRunner().invoke(
        app, ["predict", *files, "--json", "--model", str(model)], env={"FRACTURE_BATCH_SIZE": "5"}
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == files
    assert {r["status"] for r in records} == {"done"}
