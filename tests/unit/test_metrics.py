"""Evaluation metrics on hand-made cases whose answers were worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.calibration import calibrate, fit_temperature
from model.evaluate import (
    bootstrap_auroc_ci,
    expected_calibration_error,
    operating_point,
    summarise,
    threshold_for_sensitivity,
)

# 3 fractured, 5 not fractured; every probability in its own tenth.
LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])


def test_auroc_counts_correctly_ordered_pairs() -> None:
    # 0.9 and 0.8 beat all 5 negatives, 0.3 beats 0.2, 0.1, 0.05: 13 of 15 pairs.
    assert summarise(LABELS, PROBS, 0.5, bootstrap=0)["auroc"] == pytest.approx(13 / 15)


def test_operating_point_at_half() -> None:
    # predicted fractured: 0.9, 0.8 (true) and 0.7 (false); 0.3 is missed.
    point = operating_point(LABELS, PROBS, 0.5)
    assert point["confusion_matrix"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 2}
    assert point["sensitivity"] == pytest.approx(2 / 3)
    assert point["specificity"] == pytest.approx(4 / 5)
    assert point["ppv"] == pytest.approx(2 / 3)
    assert point["npv"] == pytest.approx(4 / 5)
    assert point["f1"] == pytest.approx(2 / 3)
    assert point["accuracy"] == pytest.approx(6 / 8)


def test_threshold_is_inclusive() -> None:
    point = operating_point(LABELS, PROBS, 0.8)
    assert point["confusion_matrix"]["tp"] == 2


def test_undefined_ratios_are_none() -> None:
    point = operating_point(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)
    assert point["sensitivity"] is None
    assert point["specificity"] == 1.0
    assert point["ppv"] is None


def test_expected_calibration_error_by_hand() -> None:
    # One image per bin: |label − p| = .1 .2 .7 .7 .2 .1 .4 .05 → sum 2.45 over 8 images.
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(2.45 / 8)


def test_expected_calibration_error_averages_within_a_bin() -> None:
    # Bin [0.1, 0.2): mean label 0.5, mean p 0.15 → 0.35; p = 1.0 falls in the last bin, error 0.
    labels = np.array([1, 0, 1])
    probs = np.array([0.12, 0.18, 1.0])
    assert expected_calibration_error(labels, probs) == pytest.approx(2 / 3 * 0.35)


def test_threshold_for_sensitivity_sits_between_scores() -> None:
    # 90% of 3 positives → all 3: the lowest positive is 0.3, the next lower score 0.2.
    assert threshold_for_sensitivity(LABELS, PROBS, 0.90) == pytest.approx(0.25)
    # 60% of 3 → 2 positives: 0.8, next lower score 0.7.
    assert threshold_for_sensitivity(LABELS, PROBS, 0.60) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="target sensitivity"):
        threshold_for_sensitivity(LABELS, PROBS, 0.0)


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(60), np.zeros(240)].astype(int)
    scores = np.r_[rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 240)]
    low, high = bootstrap_auroc_ci(labels, scores, n_resamples=300)  # type: ignore[misc]
    point = summarise(labels, scores, 0.5, bootstrap=0)["auroc"]
    assert low < point < high
    assert 0.02 < high - low < 0.25
    assert bootstrap_auroc_ci(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == (1.0, 1.0)


def test_temperature_recovers_the_generating_scale() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, 20_000)
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-logits / 2.0))).astype(int)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.08)


def test_calibrate_undoes_the_class_weight_prior_shift() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(-1.5, 2.0, 20_000)
    labels = (rng.random(true_logits.size) < 1 / (1 + np.exp(-true_logits))).astype(int)
    # A network trained with pos_weight w outputs logits shifted by log w.
    weighted = true_logits + math.log(4.0)
    calibration = calibrate(weighted, labels, pos_weight=4.0, target_sensitivity=0.9)
    assert calibration.logit_offset == pytest.approx(-math.log(4.0))
    assert calibration.temperature == pytest.approx(1.0, abs=0.05)
    assert calibration.val_metrics["sensitivity"] >= 0.9
    assert calibration.val_metrics["ece"] < 0.02
