"""Inference and Grad-CAM on tiny networks whose outputs can be worked out by hand."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model import explain
from model.checkpoint import Checkpoint, load, save
from model.decode import DecodeError
from model.inference import Classifier
from model.preprocess import Preset
from tests.helpers import sample_images


class PooledLinear(nn.Module):
    """1×1 conv (identity on 2 of 3 channels) → global average → linear: Grad-CAM is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0
            self.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_gradcam_matches_the_definition_on_a_pooled_linear_network() -> None:
    net = PooledLinear().eval()
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 0, 0] = 1.0  # evidence for the logit (weight +2) in the top-left corner
    x[0, 1, 3, 3] = 1.0  # evidence against it (weight -1) in the bottom-right corner
    maps = explain.gradcam(net, x)
    # weights = d logit / dA averaged = (2/16, -1/16); map = ReLU(2/16·A0 − 1/16·A1), then 0..1
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 0] = 1.0
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)
    assert all(p.requires_grad for p in net.parameters()), "parameters restored"


def test_explained_prediction_equals_plain_prediction(tiny_model: Path) -> None:
    classifier = Classifier.load(tiny_model, device="cpu")
    prepared = classifier.prepare_many(sample_images())
    batch = torch.stack([p.tensor for p in prepared])  # type: ignore[union-attr]
    plain = classifier.predict(batch)
    explained, maps = classifier.predict_explained(batch, "all")
    assert [r.probability for r in plain] == pytest.approx([r.probability for r in explained])
    assert sorted(maps) == list(range(len(prepared)))
    assert all(m.min() >= 0.0 and m.max() <= 1.0 for m in maps.values())
    positives = classifier.predict_explained(batch, "positive")[1]
    assert set(positives) == {i for i, r in enumerate(plain) if r.label == "fractured"}
    assert classifier.predict_explained(batch, "none")[1] == {}


def test_warm_up_decodes_its_generated_jpeg_and_changes_no_answer(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    classifier = Classifier.load(tiny_model, device="cpu", decode_threads=2)
    batch = torch.stack([p.tensor for p in classifier.prepare_many(sample_images())])  # type: ignore[union-attr]
    before = classifier.predict(batch)
    with caplog.at_level("WARNING", logger="model.inference"):
        assert classifier.warm_up(batch_size=4) > 0
    assert not caplog.records, "the warm-up image decoded through the normal path"
    assert classifier.predict(batch) == before


def test_bad_files_fail_alone_in_a_batch(tiny_model: Path, tmp_path: Path) -> None:
    classifier = Classifier.load(tiny_model, device="cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    good = sample_images()[:2]
    outcomes = classifier.predict_sources([good[0], broken, good[1]])
    assert isinstance(outcomes[1], DecodeError)
    alone = classifier.predict_sources(good)
    assert [outcomes[0], outcomes[2]] == alone


def test_threshold_and_temperature_from_the_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    checkpoint = Checkpoint(arch="seed_cnn", state_dict={}, preset=Preset(size=32), threshold=0.7)
    classifier = Classifier.__new__(Classifier)
    classifier.checkpoint = checkpoint
    classifier.device = torch.device("cpu")
    classifier.net = net.eval()
    classifier.temperature = 2.0
    classifier.version = "test"
    classifier.micro_batch = 2  # 3 inputs: one chunk of 2, one of 1
    classifier.onnx = None  # the PyTorch path
    classifier._lane_pool = None  # micro-batches one after another
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x).reshape(-1)
    expected = torch.sigmoid(logits / 2.0).numpy()
    results = classifier.predict(x)
    assert [r.probability for r in results] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [r.label for r in results] == [
        "fractured" if p >= 0.7 else "not_fractured" for p in expected
    ]


def test_checkpoint_round_trip_gives_identical_outputs(tiny_model: Path, tmp_path: Path) -> None:
    original = load(tiny_model)
    copy = save(original, tmp_path / "copy.pt")
    a, b = Classifier.load(tiny_model, device="cpu"), Classifier.load(copy, device="cpu")
    batch = torch.stack([a.prepare(p).tensor for p in sample_images()])
    assert a.version == b.version
    assert torch.equal(a.logits(batch), b.logits(batch))


@pytest.mark.parametrize("regions", [0, 5])
def test_inference_rewrites_keep_outputs_and_gradcam(regions: int) -> None:
    from model import architectures, optimise

    torch.manual_seed(0)
    net = architectures.build("efficientnet_lite0", regions=regions)
    for module in net.modules():  # trained-looking statistics, not the 0/1 of a fresh layer
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    fast = optimise.for_inference(copy.deepcopy(net))
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    pads = sum(isinstance(m, nn.ZeroPad2d) for m in fast.modules())
    assert norms == 1  # only the head's, which Grad-CAM reads
    assert pads < sum(isinstance(m, nn.ZeroPad2d) for m in net.modules())
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(net(x), fast(x), atol=1e-4)
    assert np.allclose(explain.gradcam(net, x), explain.gradcam(fast, x), atol=1e-3)

    plain = architectures.build("resnet18")
    assert optimise.for_inference(plain) is plain


def test_flip_tta_checkpoint_scores_an_image_and_its_mirror_alike(tmp_path: Path) -> None:
    from tests.helpers import make_tiny_checkpoint

    plain = load(make_tiny_checkpoint(tmp_path / "plain.pt"))
    tta = load(make_tiny_checkpoint(tmp_path / "tta.pt"))
    tta.flip_tta = True
    tta = load(save(tta, tmp_path / "tta-saved.pt"))
    assert tta.flip_tta and tta.version != plain.version

    x = torch.rand(4, 3, 64, 64)
    one, two = Classifier(plain, device="cpu"), Classifier(tta, device="cpu")
    expected = (one.all_logits(x) + one.all_logits(x.flip(-1))) / 2
    assert torch.allclose(two.all_logits(x), expected, atol=1e-5)
    assert torch.allclose(two.all_logits(x), two.all_logits(x.flip(-1)), atol=1e-5)
    # Grad-CAM reads the unflipped pass: the same maps as without TTA (up to the 1e-7 that
    # keeps the [0, 1] scaling finite, which weighs more on the halved gradients).
    _, plain_maps = one.predict_explained(x, "all")
    _, tta_maps = two.predict_explained(x, "all")
    for row in range(4):
        assert np.allclose(plain_maps[row], tta_maps[row], rtol=1e-2, atol=1e-4)
    one.close()
    two.close()
