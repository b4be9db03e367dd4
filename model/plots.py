"""Evaluation plots: the ROC curve with the operating point, and the reliability diagram; each
PNG stamped "not for clinical use"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from model.evaluate import (
    NOT_FOR_CLINICAL_USE,
    auroc,
    expected_calibration_error,
    operating_point,
    reliability_bins,
)


def plot_roc(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path, title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, probabilities)
    point = operating_point(labels, probabilities, threshold)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(labels, probabilities) or float('nan'):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    if point["sensitivity"] is not None and point["specificity"] is not None:
        ax.scatter(
            [1 - point["specificity"]],
            [point["sensitivity"]],
            color="crimson",
            zorder=3,
            label=f"threshold {threshold:.3f}",
        )
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    """Stamp the not-for-clinical-use line, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, NOT_FOR_CLINICAL_USE, fontsize=7, color="grey")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reliability_bins(labels, probabilities)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.bar(
        [(r["low"] + r["high"]) / 2 for r in rows],
        [r["fraction_fractured"] for r in rows],
        width=0.09,
        alpha=0.7,
        label="observed fraction fractured",
    )
    ax.plot(
        [r["mean_probability"] for r in rows],
        [r["fraction_fractured"] for r in rows],
        marker="o",
        color="crimson",
        label="bin: mean probability vs observed",
    )
    ece = expected_calibration_error(labels, probabilities)
    ax.set(xlabel="predicted probability", ylabel="fraction fractured", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    return _save_figure(fig, path)
