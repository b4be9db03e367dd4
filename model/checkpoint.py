"""Checkpoint I/O: one dict that carries everything inference needs."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion

from model import architectures
from model.preprocess import Preset

FORMAT = 1
CLASS_NAMES = ("not_fractured", "fractured")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or lacks a required field."""


@dataclass
class Checkpoint:
    arch: str
    state_dict: dict[str, torch.Tensor]
    preset: Preset = field(default_factory=Preset)
    class_names: tuple[str, str] = CLASS_NAMES
    threshold: float = 0.5
    temperature: float = 1.0
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    # A two-head checkpoint names its region classes (output columns 1..R, in this order) and may
    # carry per-region decision thresholds; regions without one use `threshold`.
    regions: tuple[str, ...] = ()
    region_thresholds: dict[str, float] = field(default_factory=dict)
    # Score each image as the mean of the network's outputs on it and on its mirror image; the
    # temperature and thresholds above were fitted in the same mode.
    flip_tta: bool = False
    # Also average over the image turned by 90, 180 and 270° (×4 passes): answers that do not
    # depend on how a site stores its radiographs.
    turn_tta: bool = False
    # A network with a fracture heat map (architectures.HeatNet): its outputs carry the map after
    # the region logits, and boxes are read off it (`box_threshold`: lowest peak probability
    # reported as a box).
    heat: bool = False
    box_threshold: float = 0.5
    # The lower "doubt" operating point (chosen for a higher sensitivity): probabilities in
    # [doubt_threshold, threshold) are answered "doubt". None: two answers only.
    doubt_threshold: float | None = None

    @property
    def passes(self) -> int:
        """Forward passes per image in this inference mode."""
        return (2 if self.flip_tta else 1) * (4 if self.turn_tta else 1)

    @property
    def heat_grid(self) -> int:
        """Side of the square heat map in the outputs (0 without one)."""
        return self.preset.size // int(self.arch_kwargs.get("heat_stride", 16)) if self.heat else 0

    def verdict(self, probability: float, threshold: float) -> str:
        """The three answers readers know: fracture, doubt (between the two operating points)
        or no fracture."""
        if probability >= threshold:
            return "fracture"
        if self.doubt_threshold is not None and probability >= self.doubt_threshold:
            return "doubt"
        return "no_fracture"

    def build_network(self) -> nn.Module:
        net = architectures.build(
            self.arch,
            pretrained=False,
            regions=len(self.regions),
            heat=self.heat,
            **self.arch_kwargs,
        )
        net.load_state_dict(self.state_dict)
        return net.eval()

    def threshold_for(self, region: str | None) -> tuple[float, str]:
        """The decision threshold for an image of `region`, and where it came from."""
        if region is not None and region in self.region_thresholds:
            return self.region_thresholds[region], f"region:{region}"
        return self.threshold, "global"

    def compute_version(self) -> str:
        """A content hash over weights and every inference parameter."""
        digest = hashlib.sha256()
        # A squashing preset hashes as it did before letterboxing existed (same versions).
        preset = (
            self.preset
            if self.preset.letterbox
            else str(self.preset).replace(", letterbox=False", "")
        )
        meta = f"{self.arch}|{self.arch_kwargs}|{preset}|{self.class_names}|"
        meta += f"{self.threshold:.6f}|{self.temperature:.6f}"
        if self.regions:  # single-head versions stay what they were before region heads
            meta += f"|{self.regions}|{sorted(self.region_thresholds.items())}"
        if self.flip_tta:
            meta += "|flip_tta"
        if self.turn_tta:
            meta += "|turn_tta"
        if self.heat:
            meta += f"|heat|{self.box_threshold:.6f}"
        if self.doubt_threshold is not None:
            meta += f"|doubt|{self.doubt_threshold:.6f}"
        digest.update(meta.encode())
        for name in sorted(self.state_dict):
            digest.update(name.encode())
            digest.update(self.state_dict[name].detach().cpu().contiguous().numpy().tobytes())
        return f"{self.arch}-{digest.hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "state_dict": self.state_dict,
            "preprocess": self.preset.to_dict(),
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "temperature": self.temperature,
            "version": self.version or self.compute_version(),
            "extra": _plain(self.extra),
            "regions": list(self.regions),
            "region_thresholds": {k: float(v) for k, v in self.region_thresholds.items()},
            "flip_tta": self.flip_tta,
            "turn_tta": self.turn_tta,
            "heat": self.heat,
            "box_threshold": self.box_threshold,
            "doubt_threshold": self.doubt_threshold,
        }

    @classmethod
    def from_network(cls, arch: str, net: nn.Module, **kwargs: Any) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        checkpoint = cls(arch=arch, state_dict=state, **kwargs)
        checkpoint.version = checkpoint.compute_version()
        return checkpoint


def _plain(value: Any) -> Any:
    """Metadata as plain JSON types, so `weights_only` loading accepts it."""
    return json.loads(json.dumps(value, default=str))


def save(checkpoint: Checkpoint, path: Path) -> Path:
    checkpoint.version = checkpoint.compute_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint.to_dict(), buffer)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def load(path: Path) -> Checkpoint:
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        # TorchVersion is a plain str subclass that training metadata may carry.
        with torch.serialization.safe_globals([TorchVersion]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read model file {path}: {exc}") from exc
    missing = {"arch", "state_dict", "preprocess", "threshold"} - set(data)
    if missing:
        raise CheckpointError(f"{path} is not a fracture checkpoint (missing {sorted(missing)})")
    checkpoint = Checkpoint(
        arch=data["arch"],
        state_dict=data["state_dict"],
        preset=Preset.from_dict(data["preprocess"]),
        class_names=tuple(data.get("class_names", CLASS_NAMES)),  # type: ignore[arg-type]
        threshold=float(data["threshold"]),
        temperature=float(data.get("temperature", 1.0)),
        arch_kwargs=dict(data.get("arch_kwargs", {})),
        extra=dict(data.get("extra", {})),
        version=str(data.get("version", "")),
        regions=tuple(str(r) for r in data.get("regions", ())),
        region_thresholds={
            str(k): float(v) for k, v in dict(data.get("region_thresholds", {})).items()
        },
        flip_tta=bool(data.get("flip_tta", False)),
        turn_tta=bool(data.get("turn_tta", False)),
        heat=bool(data.get("heat", False)),
        box_threshold=float(data.get("box_threshold", 0.5)),
        doubt_threshold=(
            None if data.get("doubt_threshold") is None else float(data["doubt_threshold"])
        ),
    )
    unknown = set(checkpoint.region_thresholds) - set(checkpoint.regions)
    if unknown:
        raise CheckpointError(f"{path}: thresholds for regions it does not predict: {unknown}")
    if not checkpoint.version:
        checkpoint.version = checkpoint.compute_version()
    return checkpoint


def combine(members: list[Checkpoint]) -> Checkpoint:
    """One ensemble checkpoint from trained members of one layout (same preprocessing, regions
    and heads; backbones may differ, e.g. EfficientNet-Lite0 and Lite1, whose maps have the same
    cells); its calibration is to be refitted (`recalibrate`)."""
    if len(members) < 2:
        raise CheckpointError("an ensemble needs at least two checkpoints")
    first = members[0]
    for other in members[1:]:
        same = (other.preset, other.regions, other.heat, other.arch_kwargs)
        if same != (first.preset, first.regions, first.heat, first.arch_kwargs):
            raise CheckpointError("ensemble members must share preprocessing, regions and heads")
    archs = [member.arch for member in members]
    mixed = {"member_archs": archs} if len(set(archs)) > 1 else {}
    state = {
        f"members.{index}.{name}": value
        for index, member in enumerate(members)
        for name, value in member.state_dict.items()
    }
    combined = Checkpoint(
        arch=first.arch,
        state_dict=state,
        preset=first.preset,
        class_names=first.class_names,
        threshold=first.threshold,
        temperature=first.temperature,
        arch_kwargs={**first.arch_kwargs, "members": len(members), **mixed},
        extra={
            "members": [m.version for m in members],
            "member_recipes": [m.extra.get("recipe") for m in members],
            "history": [m.extra.get("history") for m in members],
        },
        regions=first.regions,
        heat=first.heat,
        box_threshold=first.box_threshold,
        doubt_threshold=first.doubt_threshold,
        flip_tta=first.flip_tta,
        turn_tta=first.turn_tta,
    )
    combined.version = combined.compute_version()
    return combined


# arch_kwargs that `recalibrate` sets rather than the network's layout.
CALIBRATION_KWARGS = frozenset({"score_heat_weight"})


def average_weights(members: list[Checkpoint], *, size: int | None = None) -> Checkpoint:
    """A "weight soup": one network whose weights are the mean of its members', for fine-tunes
    of one trained network (same architecture, regions and heads; Wortsman et al., Model soups,
    ICML 2022). Unlike `combine` it costs one network's work per image. `size` sets the input
    side (default: the first member's). Its calibration is to be refitted (`recalibrate`)."""
    if len(members) < 2:
        raise CheckpointError("a weight average needs at least two checkpoints")
    first = members[0]
    if not all(member.heat for member in members):
        raise CheckpointError("weights are averaged only for heat-head networks")

    def layout(member: Checkpoint) -> tuple[Any, ...]:
        network = {k: v for k, v in member.arch_kwargs.items() if k not in CALIBRATION_KWARGS}
        return member.arch, member.regions, network, member.preset.letterbox

    def shapes(member: Checkpoint) -> dict[str, tuple[int, ...]]:
        return {name: tuple(value.shape) for name, value in member.state_dict.items()}

    expected_layout, expected_shapes = layout(first), shapes(first)
    for other in members[1:]:
        if layout(other) != expected_layout:
            raise CheckpointError(
                "averaged networks must share architecture, regions, heads and letterboxing"
            )
        if shapes(other) != expected_shapes:
            raise CheckpointError("averaged networks must have the same weights and shapes")

    # Each stored fracture bias holds its calibration's prior offset (`extra["logit_offset"]`);
    # the mean bias then holds the mean offset, which is what the soup records.
    offsets = [float(member.extra.get("logit_offset", 0.0)) for member in members]
    averaged = {
        # Counters (batch norm's num_batches_tracked) are not weights: the first member's.
        name: torch.stack([member.state_dict[name] for member in members]).mean(dim=0)
        if value.is_floating_point()
        else value
        for name, value in first.state_dict.items()
    }
    soup = replace(
        first,
        state_dict=averaged,
        preset=replace(first.preset, size=size or first.preset.size),
        arch_kwargs=expected_layout[2],
        extra={
            "averaged": [m.version for m in members],
            "member_recipes": [m.extra.get("recipe") for m in members],
            "logit_offset": sum(offsets) / len(offsets),
        },
        version="",
    )
    soup.version = soup.compute_version()
    return soup
