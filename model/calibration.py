"""Calibration: the prior-shift correction, a temperature fitted by NLL, and the operating points
(fracture, doubt, per region) chosen on labelled images; `recalibrate` redoes it for a trained
checkpoint on a site's own data, without touching the weights."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import checkpoint as ckpt
from model.data import find_labels_csv, image_groups, load_exact, read_labels, region_indices, scan
from model.evaluate import (
    auroc,
    expected_calibration_error,
    operating_point,
    raw_outputs,
    threshold_for_sensitivity,
)

log = logging.getLogger(__name__)

# A region gets its own threshold only with at least this many fractured validation images
# (predicted in that region); fewer make a 90 %-sensitivity cut-off a coin toss.
MIN_FRACTURES_FOR_REGION_THRESHOLD = 25


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Scalar T > 0 minimising the NLL of sigmoid(logit / T) (LBFGS on log T)."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


@dataclass
class Calibration:
    logit_offset: float  # added to the head bias (prior-shift correction)
    temperature: float
    threshold: float
    val_metrics: dict[str, Any] = field(default_factory=dict)
    region_thresholds: dict[str, float] = field(default_factory=dict)
    doubt_threshold: float | None = None


def region_operating_points(
    labels: np.ndarray,
    probabilities: np.ndarray,
    predicted_regions: np.ndarray,
    *,
    target_sensitivity: float,
    min_fractures: int,
) -> dict[str, float]:
    """A threshold per predicted region with at least `min_fractures` fractured images in it,
    chosen for the same target sensitivity; other regions are left to the global threshold."""
    thresholds: dict[str, float] = {}
    for region in sorted(set(predicted_regions.tolist())):
        mask = predicted_regions == region
        if int(labels[mask].sum()) >= min_fractures:
            thresholds[region] = threshold_for_sensitivity(
                labels[mask], probabilities[mask], target_sensitivity
            )
    return thresholds


def calibrate(
    outputs: np.ndarray,
    labels: np.ndarray,
    *,
    pos_weight: float,
    target_sensitivity: float,
    regions: tuple[str, ...] = (),
    region_targets: np.ndarray | None = None,
    region_thresholds: bool = False,
    min_region_fractures: int = MIN_FRACTURES_FOR_REGION_THRESHOLD,
    doubt_sensitivity: float | None = None,
    confidence: float | None = None,
    groups: np.ndarray | None = None,
) -> Calibration:
    """Undo the class weighting's prior shift, fit a temperature, choose the threshold(s).

    `outputs` is (N,) fracture logits or (N, 1 + R + G²) network outputs. With `confidence`,
    each operating point is chosen so that it reaches its sensitivity in that share of
    group-aware bootstrap resamples (`operating.robust_threshold`), not just on this sample;
    `doubt_sensitivity` adds the lower "doubt" operating point.
    """
    from model import operating

    outputs = outputs.reshape(len(labels), -1)
    logits = outputs[:, 0]
    offset = -math.log(pos_weight)
    corrected = logits + offset
    temperature = fit_temperature(corrected, labels)
    probabilities = 1.0 / (1.0 + np.exp(-corrected / temperature))

    def choose(target: float) -> float:
        if confidence is None:
            return threshold_for_sensitivity(labels, probabilities, target)
        return operating.robust_threshold(
            labels, probabilities, target, confidence=confidence, groups=groups
        )

    threshold = choose(target_sensitivity)
    doubt = choose(doubt_sensitivity) if doubt_sensitivity is not None else None
    if doubt is not None:
        doubt = min(doubt, threshold)
    metrics: dict[str, Any] = {
        "n": int(labels.size),
        "auroc": auroc(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
        "ece_uncalibrated": expected_calibration_error(labels, 1.0 / (1.0 + np.exp(-logits))),
    }
    metrics.update(operating_point(labels, probabilities, threshold))
    if doubt is not None:
        metrics["doubt"] = {"threshold": doubt, **operating_point(labels, probabilities, doubt)}
    if confidence is not None:
        metrics["threshold_method"] = operating.describe(confidence)
        metrics["out_of_sample"] = operating.split_half_check(
            labels,
            probabilities,
            {"fracture": target_sensitivity, "doubt": doubt_sensitivity or target_sensitivity},
            confidence=confidence,
            groups=groups,
        )
    per_region: dict[str, float] = {}
    if regions and outputs.shape[1] > 1:
        predicted = np.asarray(regions)[outputs[:, 1 : 1 + len(regions)].argmax(axis=1)]
        if region_targets is not None:
            known = region_targets >= 0
            truth = np.asarray(regions)[region_targets[known]]
            metrics["region_accuracy"] = float((predicted[known] == truth).mean())
        if region_thresholds:
            per_region, report = choose_region_thresholds(
                labels,
                probabilities,
                predicted,
                global_threshold=threshold,
                target_sensitivity=target_sensitivity,
                min_fractures=min_region_fractures,
            )
            metrics["region_thresholds"] = report
    return Calibration(offset, temperature, threshold, metrics, per_region, doubt)


def choose_region_thresholds(
    labels: np.ndarray,
    probabilities: np.ndarray,
    predicted_regions: np.ndarray,
    *,
    global_threshold: float,
    target_sensitivity: float,
    min_fractures: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-region thresholds that keep the product's promise on validation, or none.

    Each region with enough fractures gets the threshold for a per-region sensitivity target;
    the others keep the global threshold. Equalising the large regions at exactly the target
    removes the slack that covered the small ones, so overall sensitivity can fall below it:
    the per-region target is raised in steps of 0.01 until overall sensitivity is back at the
    target. The thresholds are kept only if, at that point, overall specificity beats the
    global threshold's; otherwise every region uses the global threshold.
    """
    baseline = operating_point(labels, probabilities, global_threshold)
    report: dict[str, Any] = {
        "min_fractures": min_fractures,
        "global": {k: baseline[k] for k in ("sensitivity", "specificity")},
    }
    for step in range(round((1.0 - target_sensitivity) * 100) + 1):
        region_target = min(1.0, target_sensitivity + step / 100)
        chosen = region_operating_points(
            labels,
            probabilities,
            predicted_regions,
            target_sensitivity=region_target,
            min_fractures=min_fractures,
        )
        if not chosen:
            report["kept"] = False
            report["why"] = f"no predicted region has {min_fractures} fractured images"
            return {}, report
        effective = np.array([chosen.get(r, global_threshold) for r in predicted_regions])
        point = operating_point(labels, probabilities, effective)
        if (point["sensitivity"] or 0.0) >= target_sensitivity - 1e-9:
            kept = (point["specificity"] or 0.0) > (baseline["specificity"] or 0.0)
            report.update(
                kept=kept,
                region_target_sensitivity=round(region_target, 2),
                thresholds=chosen,
                with_region_thresholds={k: point[k] for k in ("sensitivity", "specificity")},
            )
            if not kept:
                report["why"] = "no better specificity than the global threshold"
            return (chosen if kept else {}), report
    report.update(kept=False, why="overall sensitivity target unreachable with region thresholds")
    return {}, report


def recalibrate(
    model: Path,
    data: Path,
    *,
    out: Path,
    target_sensitivity: float = 0.90,
    region_thresholds: bool = True,
    min_region_fractures: int = MIN_FRACTURES_FOR_REGION_THRESHOLD,
    flip_tta: bool | None = None,
    threads: int = 2,
    doubt_sensitivity: float | None = 0.95,
    confidence: float | None = 0.8,
    turn_tta: bool | None = None,
    heat_in_score: float | None = None,
) -> ckpt.Checkpoint:
    """Fit temperature and threshold(s) of a trained checkpoint again, on a labelled folder.

    On the validation split a model was trained with, this repeats training's last step (same
    temperature and global threshold); on a site's own labelled images it moves the operating
    point to that site's data. `flip_tta` switches the inference mode (None keeps the file's),
    and the fit is made in that mode. Weights are not touched.
    """
    torch.set_num_threads(max(1, threads))
    checkpoint = ckpt.load(model)
    if flip_tta is not None:
        checkpoint.flip_tta = flip_tta
    if turn_tta is not None:
        checkpoint.turn_tta = turn_tta
    if heat_in_score is not None:
        if not checkpoint.heat:
            raise ValueError("--heat-in-score needs a checkpoint with a heat head")
        checkpoint.arch_kwargs = {**checkpoint.arch_kwargs, "score_heat_weight": heat_in_score}
    images = load_exact(scan(data), checkpoint.preset, threads=threads)
    labels = images.labels.numpy().astype(int)
    # In the checkpoint's inference mode; the prior offset is already in the head bias.
    outputs = raw_outputs(checkpoint, images).numpy()
    region_targets = None
    labels_csv = find_labels_csv(data)
    if checkpoint.regions and labels_csv is not None:
        region_targets = np.array(
            region_indices(images.paths, read_labels(labels_csv), checkpoint.regions)
        )
    calibration = calibrate(
        outputs,
        labels,
        pos_weight=1.0,
        target_sensitivity=target_sensitivity,
        regions=checkpoint.regions,
        region_targets=region_targets,
        region_thresholds=region_thresholds,
        min_region_fractures=min_region_fractures,
        doubt_sensitivity=doubt_sensitivity,
        confidence=confidence,
        groups=image_groups(images.paths, read_labels(labels_csv)) if labels_csv else None,
    )
    checkpoint.temperature = calibration.temperature
    checkpoint.threshold = calibration.threshold
    checkpoint.doubt_threshold = calibration.doubt_threshold
    checkpoint.region_thresholds = calibration.region_thresholds
    checkpoint.extra["val_metrics"] = calibration.val_metrics
    checkpoint.extra["recalibrated_on"] = {
        "data": str(data),
        "images": len(images),
        "fractured": images.n_positive,
        "target_sensitivity": target_sensitivity,
        "flip_tta": checkpoint.flip_tta,
        "turn_tta": checkpoint.turn_tta,
        "heat_in_score": checkpoint.arch_kwargs.get("score_heat_weight", 0.0),
    }
    ckpt.save(checkpoint, out)
    log.info(
        "recalibrated %s → %s: temperature %.3f, threshold %.3f, region thresholds %s",
        model, out, checkpoint.temperature, checkpoint.threshold,
        checkpoint.region_thresholds or "none",
    )  # fmt: skip
    return checkpoint
