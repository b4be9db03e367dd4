"""`fracture evaluate`: localisation against outlines beside the data, the doubt operating point
and perturbed copies, in `--json` and in the table, on a tiny folder and a tiny heat model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fracture.cli import app
from model import architectures
from model.checkpoint import Checkpoint, save
from model.preprocess import Preset
from tests.helpers import make_tiny_checkpoint, sample_images

VARIANTS = ["rot90", "rot180", "rot270", "hflip", "jpeg40", "half"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The eight fixture radiographs as an ImageFolder, with labels.csv and one outline box in
    the middle of each fractured image (COCO, in the files' own pixels)."""
    root = tmp_path_factory.mktemp("data") / "val"
    images, annotations, rows = [], [], ["file,region,hardware"]
    for index, path in enumerate(sample_images(), start=1):
        fractured = path.name.startswith("fractured")
        name = path.name.split("_")[-1]
        folder = root / ("fractured" if fractured else "not_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
        width, height = Image.open(path).size
        images.append(
            {
                "id": index,
                "file_name": f"val/{folder.name}/{name}",
                "width": width,
                "height": height,
            }
        )
        if fractured:
            box = [width / 4, height / 4, width / 2, height / 2]
            annotations.append({"id": index, "image_id": index, "category_id": 1, "bbox": box})
        rows.append(f"{name},{'hand' if index % 2 else 'leg'},0")
    (root.parent / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": []})
    )
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def heat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = architectures.build("efficientnet_lite0", regions=0, heat=True)
    checkpoint = Checkpoint(
        arch="efficientnet_lite0",
        state_dict=net.state_dict(),
        preset=Preset(size=64, letterbox=True),
        heat=True,
        doubt_threshold=0.2,
        threshold=0.5,
    )
    return save(checkpoint, tmp_path_factory.mktemp("model") / "heat.pt")


def evaluate(*args: str) -> str:
    result = CliRunner().invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_json_reports_localisation_doubt_and_every_perturbed_copy(
    data: Path, heat_model: Path, tmp_path: Path
) -> None:
    report = json.loads(
        evaluate(
            "--data",
            str(data),
            "--model",
            str(heat_model),
            "--json",
            "--perturb",
            "--out-dir",
            str(tmp_path),
        )
    )
    localisation = report["localisation"]
    pointing = localisation["pointing_accuracy"]
    assert set(pointing) == {"value", "ci_low", "ci_high", "n"}
    assert pointing["n"] == 4 and 0.0 <= pointing["value"] <= 1.0
    assert [p["false_boxes_per_image"] for p in localisation["froc"]] == [0.5, 1.0, 2.0]
    for point in localisation["froc"]:
        assert {"recall", "ci_low", "ci_high"} <= set(point)
        assert 0.0 <= point["recall"] <= 1.0
    assert set(localisation["per_region"]) == {"hand", "leg"}
    assert localisation["n_images"] == 8 and localisation["n_outlines"] == 4

    doubt = report["doubt"]
    assert doubt["threshold"] == pytest.approx(0.2)
    assert {"sensitivity", "specificity", "sensitivity_ci95", "specificity_ci95"} <= set(doubt)
    # "fracture or doubt" starts lower, so it finds at least as many fractures.
    assert doubt["sensitivity"] >= report["sensitivity"]

    assert list(report["perturbed"]) == VARIANTS
    for entry in report["perturbed"].values():
        assert {"auroc", "sensitivity", "specificity", "auroc_ratio"} <= set(entry)
        assert entry["n"] == 8 and entry["n_skipped"] == 0


def test_table_shows_localisation_and_a_model_without_boxes_is_skipped_with_a_note(
    data: Path, heat_model: Path, tmp_path: Path
) -> None:
    text = evaluate("--data", str(data), "--model", str(heat_model), "--out-dir", str(tmp_path))
    assert "pointing" in text and "recall @0.5 FP/img" in text
    assert "region hand" in text and "fracture or doubt" in text

    plain = make_tiny_checkpoint(tmp_path / "plain.pt")
    report = json.loads(
        evaluate("--data", str(data), "--model", str(plain), "--json", "--out-dir", str(tmp_path))
    )
    assert "no heat head" in report["localisation"]["skipped"]
    assert "doubt" not in report and "perturbed" not in report
    text = evaluate("--data", str(data), "--model", str(plain), "--out-dir", str(tmp_path))
    assert "localisation: skipped (this checkpoint has no heat head" in text


def test_a_missing_annotations_file_is_a_one_line_error(data: Path, heat_model: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--model",
            str(heat_model),
            "--annotations",
            str(data / "absent.json"),
        ],
    )
    assert result.exit_code == 2
    assert "annotations file not found" in result.output
