"""ONNX Runtime must give what PyTorch gives: labels, probabilities, regions and Grad-CAM maps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model import architectures
from model.checkpoint import Checkpoint, load
from model.inference import Classifier, ClassifierError
from model.preprocess import Preset
from tests.helpers import make_tiny_checkpoint, unsplittable_checkpoint

pytestmark = pytest.mark.unit

REGIONS = ("hand", "leg", "hip", "shoulder", "mixed")


def efficientnet_checkpoint(*, regions: tuple[str, ...] = (), flip_tta: bool = False) -> Checkpoint:
    """An untrained EfficientNet-Lite0 (random weights, fixed seed) at a small input size."""
    torch.manual_seed(3)
    net = architectures.build("efficientnet_lite0", regions=len(regions)).eval()
    with torch.no_grad():  # batch-norm statistics away from the identity, so folding matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return Checkpoint.from_network(
        "efficientnet_lite0",
        net,
        preset=Preset(size=96),
        regions=regions,
        threshold=0.5,
        flip_tta=flip_tta,
    )


def both_runtimes(checkpoint: Checkpoint) -> tuple[Classifier, Classifier]:
    onnx = Classifier(checkpoint, device="cpu", runtime="onnx", micro_batch=3)
    plain = Classifier(checkpoint, device="cpu", runtime="torch", micro_batch=3)
    assert (onnx.runtime, plain.runtime) == ("onnx", "torch")
    return onnx, plain


def assert_same_answers(onnx: Classifier, plain: Classifier, batch: torch.Tensor) -> None:
    got, got_maps = onnx.predict_explained(batch, "all")
    want, want_maps = plain.predict_explained(batch, "all")
    assert [r.probability for r in got] == pytest.approx([r.probability for r in want], abs=1e-5)
    assert [(r.label, r.region, r.threshold_source) for r in got] == [
        (r.label, r.region, r.threshold_source) for r in want
    ]
    assert sorted(got_maps) == sorted(want_maps) == list(range(batch.shape[0]))
    for row, grid in want_maps.items():
        assert got_maps[row].shape == grid.shape
        np.testing.assert_allclose(got_maps[row], grid, atol=2e-3)
    positives, _ = onnx.predict_explained(batch, "positive")
    assert [r.label for r in positives] == [r.label for r in got]


@pytest.mark.parametrize(("regions", "flip_tta"), [((), False), (REGIONS, False), (REGIONS, True)])
def test_efficientnet_in_onnx_runtime_matches_pytorch(
    regions: tuple[str, ...], flip_tta: bool
) -> None:
    onnx, plain = both_runtimes(efficientnet_checkpoint(regions=regions, flip_tta=flip_tta))
    batch = torch.randn(7, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    assert_same_answers(onnx, plain, batch)


@pytest.mark.parametrize("regions", [(), REGIONS])
def test_seed_cnn_in_onnx_runtime_matches_pytorch(tmp_path: Path, regions: tuple[str, ...]) -> None:
    checkpoint = load(make_tiny_checkpoint(tmp_path / "tiny.pt", regions=regions))
    onnx, plain = both_runtimes(checkpoint)
    batch = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_same_answers(onnx, plain, batch)
    # Flip TTA through the same checkpoint: the mirrored half of the ONNX batch must count.
    mirrored = replace(checkpoint, flip_tta=True)
    onnx, plain = both_runtimes(mirrored)
    assert_same_answers(onnx, plain, batch)
    assert onnx.all_logits(batch) == pytest.approx(
        ((plain.net(batch) + plain.net(batch.flip(-1))) / 2).detach(), abs=1e-5
    )


def test_auto_picks_onnx_on_cpu_and_falls_back_for_unknown_networks() -> None:
    assert Classifier(efficientnet_checkpoint(), device="cpu").runtime == "onnx"
    resnet = unsplittable_checkpoint()
    assert architectures.tail(resnet.build_network()) is None
    assert Classifier(resnet, device="cpu").runtime == "torch"
    with pytest.raises(ClassifierError, match="cannot run this model: no known split"):
        Classifier(resnet, device="cpu", runtime="onnx")


def test_a_runtime_that_does_not_exist_is_named_in_the_error() -> None:
    with pytest.raises(ClassifierError, match="auto, torch, onnx"):
        Classifier(efficientnet_checkpoint(), device="cpu", runtime="tensorrt")


def test_an_export_that_disagrees_with_pytorch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tail that is off by one logit stands for any split that does not reproduce the network.
    real_tail = architectures.tail

    def wrong_tail(net: torch.nn.Module):  # type: ignore[no-untyped-def]
        tail = real_tail(net)
        assert tail is not None
        return lambda a: tail(a) + 1.0

    monkeypatch.setattr(architectures, "tail", wrong_tail)
    with pytest.raises(ClassifierError, match="tail outputs differ"):
        Classifier(efficientnet_checkpoint(), device="cpu", runtime="onnx")
    assert Classifier(efficientnet_checkpoint(), device="cpu").runtime == "torch"
