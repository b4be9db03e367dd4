"""Fracture boxes read off the heat map, and mapped back to the original image's pixels.

The heat head gives a (G, G) map of fracture probability over the network input. Boxes are
found greedily: the hottest point, the connected area around it that stays above `LEVEL` of
its value, its bounding box; the cells under it are then cleared and the next peak taken, down
to `floor`. On FracAtlas val, LEVEL 0.8 doubled box recall at one false box per image against
0.5 (0.43 against 0.22) and raised pointing accuracy from 0.41 to 0.47 (docs/MODEL_CARD.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from model.preprocess import Preset

UPSAMPLE = 4  # boxes are found on the map upsampled to a quarter of the input resolution
MAX_BOXES = 5
LEVEL = 0.8  # a box covers the connected area above this share of its peak (chosen on val)
Box = tuple[float, float, float, float, float]  # x, y, width, height, score


def _resized(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map resampled bilinearly to (width, height) = `size`."""
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def from_heat(
    heat: np.ndarray,
    size: int,
    *,
    floor: float = 0.05,
    max_boxes: int = MAX_BOXES,
    level: float = LEVEL,
    stop_below: float | None = None,
) -> list[Box]:
    """(G, G) probabilities over a size×size input → boxes in input pixels, best first.

    `stop_below`: after the first box, stop once no cell left reaches this score. Exact for a
    caller that drops boxes scored below it: a later box's score is the highest of some of the
    cells left, so it could not reach it either (the search costs an upsampling and a labelling
    per box: about 1.9 ms an image for five boxes on v2.3's 40×40 map, 0.8 ms with the worker's
    cut).
    """
    from scipy import ndimage

    side = max(heat.shape[0], size // UPSAMPLE)
    cell = size / side
    remaining = heat.astype(np.float32).copy()
    boxes: list[Box] = []
    while len(boxes) < max_boxes:
        fine = _resized(remaining, (side, side))
        peak = float(fine.max())
        if peak <= 0.0:
            break
        y, x = np.unravel_index(int(fine.argmax()), fine.shape)
        labelled, _ = ndimage.label(fine >= peak * level)
        area = labelled == labelled[y, x]
        # The score is the map's own value (a probability), not the interpolated one; the
        # cells under the box are then cleared so that their shoulders make no second box.
        ys, xs = np.nonzero(area)
        cells = (ys * heat.shape[0] // side, xs * heat.shape[1] // side)
        score = float(remaining[cells].max())
        if score < floor:
            break
        rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        boxes.append((left * cell, top * cell, (right - left) * cell, (bottom - top) * cell, score))
        remaining[cells] = 0.0
        if stop_below is not None and float(remaining.max()) < stop_below:
            break
    return boxes


def to_original(
    boxes: Sequence[Box],
    preset: Preset,
    *,
    pixels_shape: tuple[int, int],
    original_size: tuple[int, int],
) -> list[list[float]]:
    """Boxes in input pixels → [x, y, width, height, score] in the original image's pixels.

    `pixels_shape` is the (height, width) the preset saw (a JPEG may decode at reduced
    scale); `original_size` the upright (width, height) of the file after EXIF rotation.
    Padding of a letterboxed input is removed and boxes are clipped to the image.
    """
    height, width = pixels_shape
    scale_x, scale_y, left, top = preset.geometry(height, width)
    to_x, to_y = original_size[0] / width, original_size[1] / height
    out: list[list[float]] = []
    for x, y, w, h, score in boxes:
        x0 = min(max((x - left) / scale_x, 0.0), width) * to_x
        y0 = min(max((y - top) / scale_y, 0.0), height) * to_y
        x1 = min(max((x + w - left) / scale_x, 0.0), width) * to_x
        y1 = min(max((y + h - top) / scale_y, 0.0), height) * to_y
        if x1 - x0 < 1e-6 or y1 - y0 < 1e-6:
            continue  # entirely in the padding
        out.append(
            [*(round(float(v), 1) for v in (x0, y0, x1 - x0, y1 - y0)), round(float(score), 4)]
        )
    return out


def trim_map(heat: np.ndarray, preset: Preset, pixels_shape: tuple[int, int]) -> np.ndarray:
    """The part of a (G, G) map over the network input that covers the image itself (the
    padding of a letterboxed input cut away), with the image's aspect ratio, so that it can be
    stretched over the image as it is shown. A squashed input's map is returned as it is.

    The image's part of the map is resampled straight to the stored size (Pillow's `box`):
    0.2–0.3 ms a map against 2.4–3.2 ms for upsampling the whole map to the input's size,
    cropping and downsampling, with values within 0.02 of that (mean 0.001) on 0–1 maps."""
    if not preset.letterbox:
        return heat
    height, width = pixels_shape
    scale_x, scale_y, left, top = preset.geometry(height, width)
    inner_w, inner_h = max(1, round(width * scale_x)), max(1, round(height * scale_y))
    to_map = heat.shape[1] / preset.size, heat.shape[0] / preset.size
    x0, y0 = int(left), int(top)
    box = (x0 * to_map[0], y0 * to_map[1], (x0 + inner_w) * to_map[0], (y0 + inner_h) * to_map[1])
    long_side = UPSAMPLE * heat.shape[0]
    ratio = long_side / max(inner_w, inner_h)
    small = (max(1, round(inner_w * ratio)), max(1, round(inner_h * ratio)))
    image = Image.fromarray(heat.astype(np.float32), mode="F")
    resized = image.resize(small, Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32).clip(0.0, 1.0)
