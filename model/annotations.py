"""Radiologists' fracture outlines in COCO format (FracAtlas's `annotations.json`).

Boxes are [x, y, width, height] in the pixels of the annotated image; they are looked up by
file name, because the data folders may be moved but keep their file names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE_NAME = "annotations.json"


class AnnotationError(ValueError):
    """An annotations file that is not COCO-shaped; the message says what is missing."""


@dataclass(frozen=True)
class Outlines:
    """One image's fracture boxes, in the pixels of an image of `width`×`height`."""

    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]

    def mask(self, height: int, width: int) -> np.ndarray:
        """The boxes filled in on an (height, width) float32 mask of the same image at another
        size (1 inside a box, 0 elsewhere)."""
        out = np.zeros((height, width), dtype=np.float32)
        sx, sy = width / self.width, height / self.height
        for x, y, w, h in self.boxes:
            left, top = int(np.floor(x * sx)), int(np.floor(y * sy))
            right, bottom = int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))
            out[max(0, top) : max(top + 1, bottom), max(0, left) : max(left + 1, right)] = 1.0
        return out


def find(root: Path) -> Path | None:
    """annotations.json in the data folder or its parent (FracAtlas keeps one for all splits)."""
    for candidate in (root / FILE_NAME, root.parent / FILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def load(path: Path) -> dict[str, Outlines]:
    """file name (without folders) → its outlines; images with no annotation are absent."""
    try:
        data = json.loads(path.read_text())
        images = {int(i["id"]): i for i in data["images"]}
        annotations = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(
            f"{path} is not a COCO annotations file (needs images with id, file_name, width, "
            f"height and annotations with image_id, bbox): {exc}"
        ) from exc
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for annotation in annotations:
        x, y, w, h = (float(v) for v in annotation["bbox"])
        boxes.setdefault(int(annotation["image_id"]), []).append((x, y, w, h))
    return {
        Path(str(images[image_id]["file_name"])).name: Outlines(
            width=int(images[image_id]["width"]),
            height=int(images[image_id]["height"]),
            boxes=tuple(found),
        )
        for image_id, found in boxes.items()
        if image_id in images
    }
