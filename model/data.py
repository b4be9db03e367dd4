"""Reading an ImageFolder-style data set once into memory, plus the optional labels.csv.

Every image goes through `model.decode.decode` (the one decoding function) exactly once; epochs
then read greyscale uint8 tensors from memory, because decoding a JPEG costs about as much as
a forward pass of the network on these machines.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.annotations import Outlines
from model.checkpoint import CLASS_NAMES
from model.decode import DecodeError, decode
from model.preprocess import Preset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Folder names accepted for each class, compared after lower-casing and turning "-", " " into "_".
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "fractured": ("fractured", "fracture", "fractures", "positive", "abnormal", "1"),
    "not_fractured": (
        "not_fractured",
        "non_fractured",
        "nonfractured",
        "not_fracture",
        "no_fracture",
        "unfractured",
        "negative",
        "normal",
        "0",
    ),
}


class DataError(ValueError):
    """A data folder that does not have the expected layout; the message says what is allowed."""


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def class_of_folder(name: str) -> str | None:
    """The canonical class for a folder name, or None when it is not a class folder."""
    key = _normalise_name(name)
    for canonical, aliases in CLASS_ALIASES.items():
        if key in aliases:
            return canonical
    return None


def allowed_names() -> str:
    return "; ".join(f"{c}: {', '.join(a)}" for c, a in CLASS_ALIASES.items())


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = fractured, 0 = not fractured


def scan(root: Path) -> list[Sample]:
    """Every image under the two class folders of `root`, sorted by path for determinism."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    folders: dict[str, list[Path]] = {name: [] for name in CLASS_NAMES}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            canonical = class_of_folder(child.name)
            if canonical is not None:
                folders[canonical].append(child)
    missing = [name for name, found in folders.items() if not found]
    if missing:
        present = sorted(c.name for c in root.iterdir() if c.is_dir())
        raise DataError(
            f"{root} needs one folder per class; missing {', '.join(missing)} "
            f"(found folders: {', '.join(present) or 'none'}). "
            f"Accepted names, case-insensitive: {allowed_names()}"
        )
    samples: list[Sample] = []
    for index, name in enumerate(CLASS_NAMES):
        for folder in folders[name]:
            samples.extend(
                Sample(path, index)
                for path in sorted(folder.rglob("*"))
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
    for index, name in enumerate(CLASS_NAMES):
        if not any(s.label == index for s in samples):
            raise DataError(f"no images in the {name} folder(s) of {root}")
    return sorted(samples, key=lambda s: str(s.path))


@dataclass
class ImageSet:
    """Decoded images in memory: (N, size, size) greyscale, with labels and file names."""

    images: torch.Tensor  # uint8 (cache) or float32 in [0, 1] (exact evaluation input)
    labels: torch.Tensor  # float32 (N,)
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # Fracture outline masks in the same geometry as `images` (uint8 0/255), when given.
    masks: torch.Tensor | None = None
    # Per image: (height, width) of the decoded pixels the preset resized, and the upright
    # (width, height) of the file; what `model.boxes.to_original` needs.
    pixel_shapes: list[tuple[int, int]] = field(default_factory=list)
    upright_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum().item())

    def as_float(self, index: torch.Tensor | slice) -> torch.Tensor:
        """(B, 1, H, W) float in [0, 1]."""
        batch = self.images[index]
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        return batch.unsqueeze(1)


def load_images(
    samples: Sequence[Sample],
    *,
    size: int,
    exact: bool = False,
    threads: int = 2,
    letterbox: bool = False,
    outlines: dict[str, Outlines] | None = None,
    transform: Callable[[bytes], bytes] | None = None,
) -> ImageSet:
    """Decode every sample once and squash it to size×size.

    With `exact`, the stored floats are bit-for-bit what `Classifier.prepare` feeds the network
    for a preset of this size (decode at `target_size=size`, then `Preset.resize`); otherwise
    they are a uint8 cache for augmentation, decoded at `target_size=size`.
    Undecodable files are skipped and reported, like the worker marks them failed.
    With `outlines`, each image also gets its fracture-box mask in the same geometry (empty
    for images without outlines).
    `transform` turns each file's bytes into other bytes before decoding (a perturbed copy, as
    another site would send it).
    """
    preset = Preset(size=size, letterbox=letterbox)
    # image, outline mask, (pixel shape, upright size); the decoded pixels are not kept.
    Loaded = tuple[torch.Tensor, torch.Tensor | None, tuple[tuple[int, int], tuple[int, int]]]

    def one(sample: Sample) -> Loaded | str:
        try:
            source = sample.path if transform is None else transform(sample.path.read_bytes())
            file = decode(source, target_size=size)
        except (DecodeError, OSError) as exc:
            return str(exc)
        pixels = file.pixels
        shapes = ((pixels.shape[0], pixels.shape[1]), file.upright_size)
        resized = preset.resize(pixels)[0]
        image = resized if exact else resized.mul(255.0).round_().to(torch.uint8)
        if outlines is None:
            return image, None, shapes
        found = outlines.get(sample.path.name)
        if found is None:
            return image, torch.zeros((size, size), dtype=torch.uint8), shapes
        mask = preset.resize(found.mask(*pixels.shape))[0]
        return image, mask.gt(0.5).to(torch.uint8).mul_(255), shapes

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        decoded = list(pool.map(one, samples))
    kept = [(s, t) for s, t in zip(samples, decoded, strict=True) if not isinstance(t, str)]
    skipped = [(s.path, t) for s, t in zip(samples, decoded, strict=True) if isinstance(t, str)]
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    if not kept:
        raise DataError("no decodable images")
    images = torch.stack([t[0] for _, t in kept])
    masks = torch.stack([t[1] for _, t in kept]) if outlines is not None else None  # type: ignore[misc]
    labels = torch.tensor([s.label for s, _ in kept], dtype=torch.float32)
    return ImageSet(
        images=images,
        labels=labels,
        paths=[s.path for s, _ in kept],
        skipped=skipped,
        masks=masks,
        pixel_shapes=[t[2][0] for _, t in kept],
        upright_sizes=[t[2][1] for _, t in kept],
    )


def load_exact(
    samples: Sequence[Sample],
    preset: Preset,
    *,
    threads: int = 2,
    transform: Callable[[bytes], bytes] | None = None,
) -> ImageSet:
    """The images exactly as a checkpoint with this preset is fed them (size and letterbox)."""
    return load_images(
        samples,
        size=preset.size,
        exact=True,
        threads=threads,
        letterbox=preset.letterbox,
        transform=transform,
    )


@dataclass(frozen=True)
class ImageInfo:
    """Per-image facts from FracAtlas-style labels.csv."""

    region: str
    hardware: bool
    group: str | None = None  # same-study group: near-identical views share one


def find_labels_csv(root: Path) -> Path | None:
    """labels.csv in the data folder or its parent (FracAtlas keeps one for all splits)."""
    for candidate in (root / "labels.csv", root.parent / "labels.csv"):
        if candidate.is_file():
            return candidate
    return None


def read_labels(path: Path) -> dict[str, ImageInfo]:
    """file name → region and hardware flag; columns `file`, `region`, `hardware` are required."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"file", "region", "hardware"}
        if not needed <= set(reader.fieldnames or ()):
            raise DataError(
                f"{path} must have columns {', '.join(sorted(needed))}; "
                f"found {', '.join(reader.fieldnames or ()) or 'none'}"
            )
        return {
            row["file"]: ImageInfo(
                region=(row["region"] or "unknown").strip().lower(),
                hardware=str(row["hardware"]).strip().lower() in ("1", "true", "yes"),
                group=(row.get("group") or "").strip() or None,
            )
            for row in reader
        }


def image_groups(paths: Sequence[Path], info: dict[str, ImageInfo]) -> np.ndarray:
    """Each image's study group from labels.csv (its own file name where unlisted)."""
    return np.array(
        [
            (known.group if (known := info.get(p.name)) and known.group else f"file:{p.name}")
            for p in paths
        ]
    )


def region_indices(
    paths: Sequence[Path], info: dict[str, ImageInfo], names: Sequence[str]
) -> list[int]:
    """Each image's index in `names` by its labels.csv region; -1 where unlisted or unknown."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get(known.region, -1) if (known := info.get(p.name)) else -1 for p in paths]


def label_balance(labels: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(positives, negatives)."""
    array = np.asarray(labels)
    positives = int((array > 0.5).sum())
    return positives, int(array.size - positives)
