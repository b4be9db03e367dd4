"""How well the model's boxes find the radiologists' fracture outlines.

Two measures, both on boxes in the original image's pixels:
- pointing accuracy: over fractured images with outlines, the share whose top-scoring box has
  its centre inside any outline box;
- FROC points: the share of outline boxes found (a box of IoU ≥ 0.25 with it) while the model
  draws at most 0.5, 1 or 2 false boxes per image on average, over all images. A box that
  matches no outline at IoU ≥ 0.25 is false; a second box on an outline already found is
  neither a hit nor false. Fractured images without outlines cannot be judged and are left out.
CIs are percentile bootstraps resampling images, fractured and not fractured apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.annotations import Outlines

IOU_THRESHOLD = 0.25
FALSE_BOXES_PER_IMAGE = (0.5, 1.0, 2.0)
MIN_FRACTURED_PER_REGION = 10

Box = Sequence[float]  # x, y, width, height[, score]


@dataclass(frozen=True)
class ImageBoxes:
    """One image: the model's boxes (x, y, w, h, score; best first) and the outline boxes
    (x, y, w, h), both in the same pixels."""

    predicted: Sequence[Box]
    truth: Sequence[Box]
    fractured: bool
    region: str = "unknown"


def truth_boxes(outlines: Outlines | None, size: tuple[int, int]) -> list[tuple[float, ...]]:
    """Outline boxes in the pixels of the image as decoded, (width, height) = `size`."""
    if outlines is None:
        return []
    sx, sy = size[0] / outlines.width, size[1] / outlines.height
    return [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in outlines.boxes]


def iou(predicted: Sequence[Box], truth: Sequence[Box]) -> np.ndarray:
    """(P, T) intersection over union of x, y, width, height boxes (a score column is ignored)."""
    import torch
    from torchvision.ops import box_convert, box_iou

    if not len(predicted) or not len(truth):
        return np.zeros((len(predicted), len(truth)))

    def xyxy(boxes: Sequence[Box]) -> torch.Tensor:
        xywh = torch.tensor([list(b[:4]) for b in boxes], dtype=torch.float64)
        return box_convert(xywh, "xywh", "xyxy")

    return box_iou(xyxy(predicted), xyxy(truth)).numpy()


def point_inside(point: tuple[float, float], boxes: Sequence[Box]) -> bool:
    """Whether the point lies in any box (edges included)."""
    px, py = point
    return any(x <= px <= x + w and y <= py <= y + h for x, y, w, h, *_ in boxes)


@dataclass(frozen=True)
class _Matched:
    """Per-image facts the metrics (and every bootstrap resample) are computed from."""

    hits: np.ndarray  # (M,) 1.0/0.0 top box inside an outline, one per judged fractured image
    hit_image: np.ndarray  # (M,) image index of each
    false_scores: np.ndarray  # (F,) scores of the false boxes
    false_image: np.ndarray  # (F,)
    truth_scores: np.ndarray  # (T,) best score of a box finding each outline; -inf if none
    truth_image: np.ndarray  # (T,)
    fractured: np.ndarray  # (N,) bool, images kept


def _match(items: Sequence[ImageBoxes], iou_threshold: float) -> _Matched:
    hits: list[float] = []
    false_scores: list[float] = []
    truth_scores: list[float] = []
    hit_image: list[int] = []
    false_image: list[int] = []
    truth_image: list[int] = []
    for index, item in enumerate(items):
        scores = np.array([float(b[4]) for b in item.predicted])
        overlap = iou(item.predicted, item.truth) >= iou_threshold
        if item.truth:
            top = item.predicted[0] if item.predicted else None
            centre = (top[0] + top[2] / 2.0, top[1] + top[3] / 2.0) if top else None
            hits.append(float(centre is not None and point_inside(centre, item.truth)))
            hit_image.append(index)
            found = np.where(overlap, scores[:, None], -np.inf) if len(scores) else None
            best = found.max(axis=0) if found is not None else np.full(len(item.truth), -np.inf)
            truth_scores.extend(best.tolist())
            truth_image.extend([index] * len(item.truth))
        false = ~overlap.any(axis=1) if item.truth else np.ones(len(scores), dtype=bool)
        false_scores.extend(scores[false].tolist())
        false_image.extend([index] * int(false.sum()))
    return _Matched(
        hits=np.array(hits, dtype=np.float64),
        hit_image=np.array(hit_image, dtype=int),
        false_scores=np.array(false_scores, dtype=np.float64),
        false_image=np.array(false_image, dtype=int),
        truth_scores=np.array(truth_scores, dtype=np.float64),
        truth_image=np.array(truth_image, dtype=int),
        fractured=np.array([item.fractured for item in items], dtype=bool),
    )


class _Froc:
    """Recall at given false boxes per image, for any weighting of the images (a resample)."""

    def __init__(self, matched: _Matched, rates: Sequence[float]) -> None:
        self.matched, self.rates = matched, tuple(rates)
        self.order = np.argsort(-matched.false_scores, kind="stable")
        ordered = matched.false_scores[self.order]
        # FP(t) steps at each distinct false score; tied boxes enter together (last of a tie).
        self.cuts, starts = np.unique(-ordered, return_index=True)
        self.cuts = -self.cuts
        self.last = (np.r_[starts[1:], len(ordered)] - 1) if len(ordered) else starts

    def __call__(self, weights: np.ndarray) -> list[float | None]:
        m = self.matched
        truth_weights = weights[m.truth_image]
        total = truth_weights.sum()
        if total == 0:
            return [None] * len(self.rates)
        false_count = np.cumsum(weights[m.false_image][self.order])[self.last]
        n_images = weights.sum()
        recalls: list[float | None] = []
        for rate in self.rates:
            # The lowest threshold allowed keeps FP ≤ rate × images; boxes at the first false
            # score past that are not drawn, so outlines found only at that score are missed.
            over = np.flatnonzero(false_count > rate * n_images)
            cut = self.cuts[over[0]] if over.size else -np.inf
            recalls.append(float(truth_weights[m.truth_scores > cut].sum() / total))
        return recalls


def _interval(stats: np.ndarray, level: float) -> tuple[float | None, float | None]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None, None
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def summarise(
    items: Sequence[ImageBoxes],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    rates: Sequence[float] = FALSE_BOXES_PER_IMAGE,
    bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Pointing accuracy and FROC points, each with a bootstrap CI, for one group of images."""
    judged = [item for item in items if item.truth or not item.fractured]
    matched = _match(judged, iou_threshold)
    froc = _Froc(matched, rates)
    ones = np.ones(len(judged))
    n_pointing = len(matched.hits)
    pointing = float(matched.hits.mean()) if n_pointing else None
    recalls = froc(ones)
    boot_pointing = np.full(bootstrap, np.nan)
    boot_recalls = np.full((bootstrap, len(rates)), np.nan)
    positives = np.flatnonzero(matched.fractured)
    negatives = np.flatnonzero(~matched.fractured)
    rng = np.random.default_rng(seed)
    for row in range(bootstrap if judged else 0):
        drawn = np.r_[
            rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)
        ].astype(int)
        weights = np.bincount(drawn, minlength=len(judged)).astype(np.float64)
        hit_weights = weights[matched.hit_image]
        if hit_weights.sum():
            boot_pointing[row] = (hit_weights * matched.hits).sum() / hit_weights.sum()
        boot_recalls[row] = [np.nan if r is None else r for r in froc(weights)]
    low, high = _interval(boot_pointing, level)
    points = []
    for column, (rate, recall) in enumerate(zip(rates, recalls, strict=True)):
        r_low, r_high = _interval(boot_recalls[:, column], level)
        points.append(
            {
                "false_boxes_per_image": rate,
                "recall": recall,
                "ci_low": r_low,
                "ci_high": r_high,
                "n_outlines": len(matched.truth_scores),
            }
        )
    return {
        "n_images": len(judged),
        "n_fractured_with_outlines": n_pointing,
        "n_fractured_without_outlines": len(items) - len(judged),
        "n_outlines": len(matched.truth_scores),
        "pointing_accuracy": {"value": pointing, "ci_low": low, "ci_high": high, "n": n_pointing},
        "froc": points,
    }


def report(
    items: Sequence[ImageBoxes],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """`summarise` over all images and per region (regions with few fractures carry a note)."""
    out = summarise(items, iou_threshold=iou_threshold, bootstrap=bootstrap, seed=seed)
    out["iou_threshold"] = iou_threshold
    out["per_region"] = {}
    for region in sorted({item.region for item in items}):
        entry = summarise(
            [item for item in items if item.region == region],
            iou_threshold=iou_threshold,
            bootstrap=bootstrap,
            seed=seed,
        )
        if entry["n_fractured_with_outlines"] < MIN_FRACTURED_PER_REGION:
            entry["note"] = (
                f"too few outlined fractures to judge ({entry['n_fractured_with_outlines']} < "
                f"{MIN_FRACTURED_PER_REGION}); these figures are noise"
            )
        out["per_region"][region] = entry
    return out


def format_table(localisation: dict[str, Any]) -> list[str]:
    """Human-readable lines: pointing accuracy and FROC points, overall and per region."""
    if "skipped" in localisation:
        return [f"localisation: skipped ({localisation['skipped']})"]

    def figure(value: float | None, low: float | None, high: float | None) -> str:
        if value is None:
            return f"{'n/a':<21}"
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
        return f"{value:.3f}{interval:<16}"

    rates = [p["false_boxes_per_image"] for p in localisation["froc"]]
    header = f"{'localisation':<24} {'pointing (95% CI)':<21}" + "".join(
        f" {f'recall @{r:g} FP/img':<21}" for r in rates
    )
    lines = [
        f"localisation against {localisation.get('annotations', 'outlines')}, "
        f"IoU ≥ {localisation['iou_threshold']:g}",
        header,
    ]

    def row(name: str, entry: dict[str, Any]) -> str:
        pointing = entry["pointing_accuracy"]
        text = f"{name:<24} " + figure(pointing["value"], pointing["ci_low"], pointing["ci_high"])
        for point in entry["froc"]:
            text += " " + figure(point["recall"], point["ci_low"], point["ci_high"])
        text += f"  n={entry['n_images']} fx={pointing['n']} boxes={entry['n_outlines']}"
        return text + (f"  ({entry['note']})" if entry.get("note") else "")

    lines.append(row("all images", localisation))
    for region, entry in localisation["per_region"].items():
        lines.append(row(f"region {region}", entry))
    if localisation.get("n_fractured_without_outlines"):
        lines.append(
            f"{localisation['n_fractured_without_outlines']} fractured images without outlines "
            "left out"
        )
    return lines
