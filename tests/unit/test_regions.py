"""The body-region head: checkpoints with and without it, per-region thresholds, training with
a labels.csv, region evaluation and the DICOM body-part comparison."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint as ckpt
from model.calibration import (
    calibrate,
    choose_region_thresholds,
    recalibrate,
    region_operating_points,
)
from model.data import scan
from model.evaluate import evaluate, format_report, threshold_for_sensitivity
from model.inference import Classifier
from model.regions import REGIONS, disagrees, region_of_body_part
from model.train import TrainConfig, train
from tests.helpers import make_tiny_checkpoint
from tests.unit.test_model_training import SIZE, make_image_folder


def _outputs(path: Path, batch: torch.Tensor) -> torch.Tensor:
    classifier = Classifier(ckpt.load(path), device="cpu")
    try:
        return classifier.all_logits(batch)
    finally:
        classifier.close()


def test_two_head_checkpoint_round_trips(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(
        tmp_path / "two.pt", regions=REGIONS, region_thresholds={"hand": 0.42}
    )
    loaded = ckpt.load(path)
    assert loaded.regions == REGIONS
    assert loaded.region_thresholds == {"hand": 0.42}
    assert loaded.version == loaded.compute_version()

    batch = torch.rand(5, 3, 64, 64)
    first = _outputs(path, batch)
    assert first.shape == (5, 1 + len(REGIONS))
    again = ckpt.save(loaded, tmp_path / "again.pt")
    assert torch.equal(first, _outputs(again, batch))

    # The region names and thresholds are part of the model's identity.
    single = make_tiny_checkpoint(tmp_path / "one.pt")
    assert ckpt.load(single).version != loaded.version
    loaded.region_thresholds = {"hand": 0.43}
    assert loaded.compute_version() != ckpt.load(path).version


def test_old_single_head_checkpoint_loads_and_predicts_without_region(tmp_path: Path) -> None:
    """A file written before region heads existed: no `regions` keys at all."""
    new = ckpt.load(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    data = new.to_dict()
    del data["regions"], data["region_thresholds"]
    old = tmp_path / "old.pt"
    torch.save(data, old)

    loaded = ckpt.load(old)
    assert loaded.regions == ()
    assert loaded.version == new.version == loaded.compute_version()  # version unchanged
    classifier = Classifier(loaded, device="cpu")
    results = classifier.predict(torch.rand(3, 3, 64, 64))
    explained, maps = classifier.predict_explained(torch.rand(2, 3, 64, 64), "all")
    classifier.close()
    assert len(maps) == 2
    for result in [*results, *explained]:
        assert result.region is None and result.region_probability is None
        assert (result.threshold, result.threshold_source) == (0.5, "global")


def test_region_threshold_applies_to_its_region_and_others_fall_back(tmp_path: Path) -> None:
    thresholds = {"hand": 0.999}
    for region, expected in (("hand", (0.999, "region:hand")), ("hip", (0.5, "global"))):
        path = make_tiny_checkpoint(
            tmp_path / f"{region}.pt",
            regions=REGIONS,
            always_region=region,
            region_thresholds=thresholds,
        )
        classifier = Classifier(ckpt.load(path), device="cpu")
        results = classifier.predict(torch.rand(4, 3, 64, 64))
        classifier.close()
        for result in results:
            assert result.region == region
            assert result.region_probability is not None and result.region_probability > 0.99
            assert (result.threshold, result.threshold_source) == expected
            assert (result.label == "fractured") == (result.probability >= expected[0])


def test_region_operating_points_skip_regions_with_too_few_fractures() -> None:
    rng = np.random.default_rng(0)
    regions = np.array(["hand"] * 100 + ["hip"] * 40)
    labels = np.r_[np.r_[np.ones(30), np.zeros(70)], np.r_[np.ones(3), np.zeros(37)]].astype(int)
    probabilities = np.clip(labels * 0.4 + rng.uniform(0, 0.6, labels.size), 0, 1)
    chosen = region_operating_points(
        labels, probabilities, regions, target_sensitivity=0.9, min_fractures=25
    )
    assert set(chosen) == {"hand"}  # hip has 3 fractures < 25: global threshold there
    hand = regions == "hand"
    caught = (probabilities[hand & (labels == 1)] >= chosen["hand"]).mean()
    assert caught >= 0.9

    outputs = np.c_[np.log(probabilities / (1 - probabilities + 1e-9) + 1e-9), np.zeros((140, 5))]
    outputs[:, 1 + REGIONS.index("hand")] = np.where(hand, 3.0, 0.0)
    outputs[:, 1 + REGIONS.index("hip")] = np.where(hand, 0.0, 3.0)
    calibration = calibrate(
        outputs,
        labels,
        pos_weight=1.0,
        target_sensitivity=0.9,
        regions=REGIONS,
        region_targets=np.array([REGIONS.index(r) for r in regions]),
        region_thresholds=True,
        min_region_fractures=25,
    )
    report = calibration.val_metrics["region_thresholds"]
    assert calibration.val_metrics["region_accuracy"] == 1.0
    if report["kept"]:
        assert set(calibration.region_thresholds) == {"hand"}
        assert report["with_region_thresholds"]["sensitivity"] >= 0.9
        assert report["with_region_thresholds"]["specificity"] > report["global"]["specificity"]
    else:
        assert calibration.region_thresholds == {} and report["why"]


def test_region_thresholds_keep_overall_sensitivity_or_are_dropped() -> None:
    """Hand is easy, mixed hard: hand alone at 0.90 would pull overall sensitivity under 0.90,
    so the per-region target rises until the whole set is back at 0.90."""
    rng = np.random.default_rng(1)
    regions = np.array(["hand"] * 300 + ["mixed"] * 100)
    labels = np.r_[np.r_[np.ones(60), np.zeros(240)], np.r_[np.ones(20), np.zeros(80)]]
    labels = labels.astype(int)
    hand = regions == "hand"
    scores = np.where(hand, labels * 0.5, labels * 0.15) + rng.uniform(0, 0.5, labels.size)
    global_threshold = threshold_for_sensitivity(labels, scores, 0.9)
    chosen, report = choose_region_thresholds(
        labels,
        scores,
        regions,
        global_threshold=global_threshold,
        target_sensitivity=0.9,
        min_fractures=25,
    )
    assert report["min_fractures"] == 25 and report["kept"] is True
    assert set(chosen) == {"hand"}  # mixed has 20 fractures < 25: global threshold
    assert report["region_target_sensitivity"] > 0.9  # raised to carry mixed
    effective = np.where(hand, chosen["hand"], global_threshold)
    assert (scores[labels == 1] >= effective[labels == 1]).mean() >= 0.9
    assert report["with_region_thresholds"]["specificity"] > report["global"]["specificity"]

    # Nothing gains: a single region covering everything is the global threshold again.
    same, report = choose_region_thresholds(
        labels,
        scores,
        np.array(["leg"] * labels.size),
        global_threshold=global_threshold,
        target_sensitivity=0.9,
        min_fractures=25,
    )
    assert same == {} and report["kept"] is False


@pytest.mark.parametrize(
    ("body_part", "region", "expected"),
    [
        ("HAND", "hand", False),
        ("Wrist", "hand", False),
        ("SHOULDER", "hand", True),
        ("KNEE", "leg", False),
        ("ANKLE", "hip", True),
        ("ELBOW", "hand", None),  # not a region the model knows: not compared
        ("HAND", "mixed", None),  # mixed agrees with anything
        (None, "hand", None),
        ("HAND", None, None),  # single-head model
    ],
)
def test_dicom_body_part_against_predicted_region(
    body_part: str | None, region: str | None, expected: bool | None
) -> None:
    assert disagrees(body_part, region) is expected


def test_body_part_terms_map_to_regions() -> None:
    assert region_of_body_part("lower  extremity") == "leg"
    assert region_of_body_part("PELVIS") == "hip"
    assert region_of_body_part("CHEST") is None
    assert region_of_body_part("") is None


def _labels_csv(root: Path) -> None:
    """FracAtlas-style labels: fractured images are 'hand', others 'leg' or 'hip'."""
    rows = []
    for split in ("train", "val"):
        for sample in scan(root / split):
            region = "hand" if sample.label else ("leg" if len(rows) % 3 else "hip")
            rows.append({"file": sample.path.name, "region": region, "hardware": 0})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file", "region", "hardware"])
    writer.writeheader()
    writer.writerows(rows)
    (root / "labels.csv").write_text(buffer.getvalue())


def test_training_with_labels_csv_gives_a_two_head_model(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    _labels_csv(root)
    common = {
        "data": root,
        "arch": "seed_cnn",
        "epochs": 1,
        "size": SIZE,
        "batch_size": 8,
        "progress": False,
        "min_region_fractures": 5,
    }
    two = train(TrainConfig(out=tmp_path / "two.pt", work_dir=tmp_path / "w2", **common))
    assert two.regions == ("hand", "hip", "leg")
    assert "region_accuracy" in two.extra["val_metrics"]
    assert "val_region_accuracy" in two.extra["history"][0]
    # Chosen per predicted region (what inference will see), so after one epoch any region.
    assert set(two.region_thresholds) <= set(two.regions)

    # Recalibrating on the validation split it was trained with repeats training's last step.
    again = recalibrate(tmp_path / "two.pt", root / "val", out=tmp_path / "again.pt")
    assert again.temperature == pytest.approx(two.temperature, rel=1e-4)
    assert again.threshold == pytest.approx(two.threshold, rel=1e-4)
    assert again.regions == two.regions

    report = evaluate(root / "val", tmp_path / "two.pt", bootstrap=50)
    region = report["region"]
    assert region["labels"] == ["hand", "hip", "leg"]
    assert region["n"] == report["n"]
    matrix = np.array(region["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == report["n"]
    assert region["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert sum(report["predicted_regions"].values()) == report["n"]
    assert report["by_region"]["hip"]["note"].startswith("too few fractures to judge")
    assert "region accuracy" in format_report(report)

    one = train(
        TrainConfig(out=tmp_path / "one.pt", work_dir=tmp_path / "w1", region_weight=0, **common)
    )
    assert one.regions == () and one.region_thresholds == {}
    assert "region" not in evaluate(root / "val", tmp_path / "one.pt", bootstrap=0)


def test_cli_default_minimum_matches_training() -> None:
    from fracture.model_commands import MIN_REGION_FRACTURES
    from model.calibration import MIN_FRACTURES_FOR_REGION_THRESHOLD

    assert MIN_REGION_FRACTURES == MIN_FRACTURES_FOR_REGION_THRESHOLD
