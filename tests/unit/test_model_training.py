"""Training on a tiny generated image set: a loadable checkpoint, consistent with evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from fracture.model_commands import register
from model import checkpoint as ckpt
from model.data import DataError, class_of_folder, load_exact, scan
from model.evaluate import evaluate
from model.inference import Classifier
from model.train import (
    TrainConfig,
    _build_network,
    _start_from,
    augment,
    head_linear_name,
    train,
)

SIZE = 64


def _radiograph(rng: np.random.Generator, fractured: bool) -> Image.Image:
    """A grey blob ("bone") on black; fractured ones have a dark gap across the bone."""
    height, width = int(rng.integers(70, 100)), int(rng.integers(60, 90))
    pixels = rng.normal(20, 6, (height, width))
    left, right = width // 3, 2 * width // 3
    pixels[5:-5, left:right] = rng.normal(170, 15, (height - 10, right - left))
    if fractured:
        row = int(rng.integers(15, height - 15))
        pixels[row : row + 4, left - 2 : right + 2] = 25
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_image_folder(root: Path, names: tuple[str, str] = ("fractured", "not_fractured")) -> Path:
    rng = np.random.default_rng(0)
    for split, counts in (("train", (14, 26)), ("val", (8, 12))):
        for name, count, fractured in ((names[0], counts[0], True), (names[1], counts[1], False)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                _radiograph(rng, fractured).save(folder / f"{name}_{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ckpt.Checkpoint]:
    root = make_image_folder(tmp_path_factory.mktemp("images"))
    out = root / "model.pt"
    config = TrainConfig(
        data=root,
        out=out,
        arch="seed_cnn",
        epochs=1,
        size=SIZE,
        batch_size=8,
        work_dir=root / "work",
        progress=False,
        threads=1,
    )
    return root, out, train(config)


def test_one_epoch_writes_a_loadable_checkpoint(
    trained: tuple[Path, Path, ckpt.Checkpoint],
) -> None:
    _, out, returned = trained
    torch.load(out, map_location="cpu", weights_only=True)  # plain types only, no pickled classes
    loaded = ckpt.load(out)
    assert loaded.arch == "seed_cnn"
    assert loaded.preset.size == SIZE
    assert loaded.version == returned.version
    assert 0.0 <= loaded.threshold <= 1.0
    assert loaded.temperature > 0
    assert loaded.extra["recipe"]["arch"] == "seed_cnn"
    assert loaded.extra["val_metrics"]["sensitivity"] >= 0.9  # chosen on val for the target
    assert len(loaded.extra["history"]) == 1
    assert (out.parent / "work" / "state.pt").is_file()


def test_checkpoint_round_trip_gives_identical_outputs(
    trained: tuple[Path, Path, ckpt.Checkpoint], tmp_path: Path
) -> None:
    _, out, _ = trained
    first = ckpt.load(out)
    again = ckpt.load(ckpt.save(first, tmp_path / "copy.pt"))
    assert again.version == first.version
    batch = torch.rand(4, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.equal(first.build_network()(batch), again.build_network()(batch))


def test_evaluation_reproduces_training_val_figures(
    trained: tuple[Path, Path, ckpt.Checkpoint], tmp_path: Path
) -> None:
    """Training scored val exactly as inference does: same AUROC and operating point."""
    root, out, model = trained
    report = evaluate(root / "val", out, out_dir=tmp_path, bootstrap=100, threads=1)
    stored = model.extra["val_metrics"]
    assert report["auroc"] == pytest.approx(stored["auroc"], abs=1e-6)
    assert report["confusion_matrix"] == stored["confusion_matrix"]
    assert report["ece"] == pytest.approx(stored["ece"], abs=1e-6)
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_classifier_matches_evaluation_probabilities(
    trained: tuple[Path, Path, ckpt.Checkpoint],
) -> None:
    root, out, model = trained
    files = sorted((root / "val" / "fractured").glob("*.png"))[:3]
    classifier = Classifier.load(out, device="cpu")
    try:
        direct = [r.probability for r in classifier.predict_sources(files)]  # type: ignore[union-attr]
    finally:
        classifier.close()
    images = load_exact([s for s in scan(root / "val") if s.path in files], model.preset)
    from model.evaluate import predict_probabilities

    assert predict_probabilities(model, images) == pytest.approx(direct, abs=1e-6)


def test_resume_continues_from_saved_state(trained: tuple[Path, Path, ckpt.Checkpoint]) -> None:
    root, _, _ = trained
    config = TrainConfig(
        data=root, out=root / "resumed.pt", arch="seed_cnn", epochs=2, size=SIZE, batch_size=8,
        work_dir=root / "work", progress=False, threads=1, resume=True,
    )  # fmt: skip
    assert [h["epoch"] for h in train(config).extra["history"]] == [1, 2]


def test_init_fine_tunes_from_a_checkpoint(trained: tuple[Path, Path, ckpt.Checkpoint]) -> None:
    """--init loads the trained weights, with the calibration's offset taken back out of the
    fracture bias, and a run started from them trains and records where it started."""
    root, out, model = trained
    config = TrainConfig(
        data=root, out=root / "tuned.pt", arch="seed_cnn", epochs=1, size=SIZE, batch_size=8,
        work_dir=root / "tuned", progress=False, threads=1, init=out,
    )  # fmt: skip
    net = _build_network(config, regions=0)
    _start_from(net, config, (), heat=False)
    loaded = net.state_dict()
    offset = model.extra["logit_offset"]
    assert offset != 0.0
    head_bias = head_linear_name(net) + ".bias"
    for name, value in model.state_dict.items():
        assert torch.equal(loaded[name], value - offset if name == head_bias else value), name
    tuned = train(config)
    assert tuned.extra["recipe"]["init"] == str(out)
    assert len(tuned.extra["history"]) == 1


def test_init_refuses_a_checkpoint_that_does_not_fit(
    trained: tuple[Path, Path, ckpt.Checkpoint],
) -> None:
    root, out, _ = trained
    other_size = TrainConfig(
        data=root, out=root / "x.pt", arch="seed_cnn", size=SIZE * 2, init=out, progress=False
    )
    with pytest.raises(ValueError, match="does not fit this network"):
        _start_from(_build_network(other_size, regions=0), other_size, (), heat=False)
    other_arch = TrainConfig(data=root, out=root / "x.pt", init=out, progress=False)
    with pytest.raises(ValueError, match="is a seed_cnn network, not efficientnet_lite0"):
        _start_from(
            _build_network(dataclasses.replace(other_arch, pretrained=False), regions=0),
            other_arch,
            (),
            heat=False,
        )
    with pytest.raises(ValueError, match="has no heat map, this run a stride-16 heat map"):
        config = TrainConfig(data=root, out=root / "x.pt", arch="seed_cnn", size=SIZE, init=out)
        _start_from(_build_network(config, regions=0), config, (), heat=True)


def test_class_folder_aliases(tmp_path: Path) -> None:
    for name in ("Fractured", "fracture", "FRACTURED"):
        assert class_of_folder(name) == "fractured"
    for name in ("not_fractured", "Non_fractured", "not fractured", "Normal", "not-fractured"):
        assert class_of_folder(name) == "not_fractured"
    assert class_of_folder("misc") is None
    root = make_image_folder(tmp_path / "aliases", names=("Fractured", "Non_fractured"))
    labels = {s.label for s in scan(root / "val")}
    assert labels == {0, 1}


def test_missing_class_folder_lists_allowed_names(tmp_path: Path) -> None:
    (tmp_path / "fractured").mkdir()
    (tmp_path / "misc").mkdir()
    with pytest.raises(DataError, match=r"missing not_fractured.*non_fractured"):
        scan(tmp_path)


def test_augment_shapes_and_range() -> None:
    config = TrainConfig(data=Path("."), out=Path("x.pt"), arch="seed_cnn", size=SIZE)
    images = torch.rand(5, 1, 74, 74)
    out, _ = augment(images, SIZE, config, torch.Generator().manual_seed(0))
    again, _ = augment(images, SIZE, config, torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, SIZE, SIZE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, again)  # seeded → deterministic


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig(data=Path("."), out=Path("x.pt"), arch="nope")
    with pytest.raises(ValueError, match="target sensitivity"):
        TrainConfig(data=Path("."), out=Path("x.pt"), target_sensitivity=1.5)


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Group."""

    register(app)
    return app


def test_cli_evaluate_json(trained: tuple[Path, Path, ckpt.Checkpoint], tmp_path: Path) -> None:
    root, out, model = trained
    result = CliRunner().invoke(
        _cli(),
        [
            "evaluate",
            "--data",
            str(root / "val"),
            "--json",
            "--model",
            str(out),
            "--out-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("n", "auroc", "sensitivity", "specificity", "threshold", "model_version"):
        assert key in report
    assert report["n"] == 20
    assert report["model_version"] == model.version


def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(_cli(), ["evaluate", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "data folder not found" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        _cli(),
        ["train", "--data", str(tmp_path), "--arch", "nope", "--out", str(tmp_path / "m.pt")],
    )
    assert result.exit_code == 2
    assert "unknown architecture" in result.output
