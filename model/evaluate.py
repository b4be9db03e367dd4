"""Evaluation as radiology AI is measured: AUROC with a bootstrap CI, operating points,
calibration, localisation against the radiologists' outlines, and robustness to what other
sites send.

Metrics come from scikit-learn; this module only arranges them and adds the bootstrap, the
expected calibration error and the per-region / without-hardware breakdowns. The plots live in
`model.plots`, the localisation metrics in `model.localisation`, the perturbed copies in
`model.perturb`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from model import checkpoint as ckpt
from model import localisation, perturb
from model.annotations import FILE_NAME as ANNOTATIONS_FILE
from model.annotations import find as find_annotations
from model.annotations import load as load_annotations
from model.data import ImageSet, Sample, find_labels_csv, load_exact, read_labels, scan
from model.preprocess import Preset

if TYPE_CHECKING:
    from model.inference import Classifier

log = logging.getLogger(__name__)

MIN_POSITIVES_PER_REGION = 10
NOT_FOR_CLINICAL_USE = "Decision support only, not for clinical use."


def _safe_div(num: float, den: float) -> float | None:
    return num / den if den else None


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """sklearn's AUROC, or None when only one class is present."""
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return None
    return float(roc_auc_score(labels, scores))


def bootstrap_auroc_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI, resampling positives and negatives separately (stratified).

    Each resample's AUROC is the Mann-Whitney U statistic over n₁·n₀ (ties count one half, as
    in `roc_auc_score`), computed for all resamples at once from scipy's ranks: calling
    scikit-learn once per resample cost about 6 ms each in input validation alone.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) < 2 or len(negatives) < 2:
        return None
    rng = np.random.default_rng(seed)
    drawn = np.empty((n_resamples, len(positives) + len(negatives)))
    for index in range(n_resamples):
        drawn[index, : len(positives)] = rng.choice(positives, len(positives))
        drawn[index, len(positives) :] = rng.choice(negatives, len(negatives))
    n_pos, n_neg = len(positives), len(negatives)
    rank_sums = rankdata(drawn, axis=1)[:, :n_pos].sum(axis=1)
    stats = (rank_sums - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, *, n_bins: int = 10
) -> float:
    """Equal-width bins over [0, 1]: Σ (bin share) × |mean label − mean probability|."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        return 0.0
    # Bin b holds p in [b/n, (b+1)/n); p == 1.0 goes to the last bin.
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            error += mask.mean() * abs(labels[mask].mean() - probabilities[mask].mean())
    return float(error)


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, *, n_bins: int = 10
) -> list[dict[str, float]]:
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append(
                {
                    "low": b / n_bins,
                    "high": (b + 1) / n_bins,
                    "count": int(mask.sum()),
                    "mean_probability": float(probabilities[mask].mean()),
                    "fraction_fractured": float(labels[mask].mean()),
                }
            )
    return rows


def operating_point(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float | np.ndarray
) -> dict[str, Any]:
    """Figures at `threshold` (fractured when probability >= threshold); an array gives each
    image its own threshold (per-region operating points), reported as `threshold: None`."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    sensitivity = _safe_div(tp, tp + fn)
    ppv = _safe_div(tp, tp + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,
        "sensitivity": sensitivity,
        "specificity": _safe_div(tn, tn + fp),
        "ppv": ppv,
        "npv": _safe_div(tn, tn + fn),
        "f1": f1,
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def summarise(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
    *,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """All headline figures for one group of images."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_pos = int(labels.sum())
    result: dict[str, Any] = {
        "n": int(labels.size),
        "n_fractured": n_pos,
        "n_not_fractured": int(labels.size - n_pos),
        "auroc": auroc(labels, probabilities),
        "auroc_ci95": bootstrap_auroc_ci(labels, probabilities, n_resamples=bootstrap, seed=seed)
        if bootstrap
        else None,
    }
    point = operating_point(labels, probabilities, threshold)
    result.update(point)
    cm = point["confusion_matrix"]
    result["sensitivity_ci95"] = proportion_ci(cm["tp"], cm["tp"] + cm["fn"])
    result["specificity_ci95"] = proportion_ci(cm["tn"], cm["tn"] + cm["fp"])
    result["ece"] = expected_calibration_error(labels, probabilities)
    return result


def proportion_ci(successes: int, total: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (sensitivity, specificity); None when total is 0."""
    if total == 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(successes, total).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def threshold_for_sensitivity(
    labels: np.ndarray, probabilities: np.ndarray, target: float
) -> float:
    """The highest threshold whose sensitivity is at least `target`.

    It sits halfway between the k-th highest fractured score (k = ceil(target × positives)) and
    the next lower score of any image, so the choice does not hinge on a tie.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positives = np.sort(probabilities[labels == 1])[::-1]
    if positives.size == 0:
        raise ValueError("cannot choose a threshold without fractured images")
    k = math.ceil(target * positives.size - 1e-9)
    kth = positives[k - 1]
    lower = probabilities[probabilities < kth]
    return float((kth + lower.max()) / 2.0) if lower.size else float(kth)


# ----------------------------------------------------------------------------- scoring a folder


def cpu_classifier(checkpoint: ckpt.Checkpoint) -> Classifier:
    """The checkpoint as the product runs it on a CPU; `close()` it when done."""
    from model.inference import Classifier

    return Classifier(checkpoint, device="cpu", decode_threads=1)


def raw_outputs(
    checkpoint: ckpt.Checkpoint,
    images: ImageSet,
    *,
    batch_size: int = 64,
    classifier: Classifier | None = None,
) -> torch.Tensor:
    """(N, 1 + R [+ G²]) raw outputs, exactly as `Classifier.all_logits` computes them in the
    checkpoint's inference mode (flip TTA included). Pass `classifier` (from `cpu_classifier`)
    to score several image sets without setting the model up again each time."""
    own = classifier is None
    classifier = classifier or cpu_classifier(checkpoint)
    preset = checkpoint.preset
    try:
        out = [
            classifier.all_logits(
                preset.normalise(images.as_float(slice(start, start + batch_size)))
            )
            for start in range(0, len(images), batch_size)
        ]
    finally:
        if own:
            classifier.close()
    columns = 1 + len(checkpoint.regions) + checkpoint.heat_grid**2
    return torch.cat(out) if out else torch.zeros(0, columns)


def predict_outputs(
    checkpoint: ckpt.Checkpoint,
    images: ImageSet,
    *,
    batch_size: int = 64,
    classifier: Classifier | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated fracture probabilities, exactly as `Classifier` computes them, and the
    predicted region of each image (None for a single-head checkpoint)."""
    outputs = raw_outputs(checkpoint, images, batch_size=batch_size, classifier=classifier)
    return predictions_from_outputs(checkpoint, outputs)


def predictions_from_outputs(
    checkpoint: ckpt.Checkpoint, outputs: torch.Tensor
) -> tuple[np.ndarray, np.ndarray | None]:
    """`predict_outputs` from raw outputs already computed."""
    probabilities = torch.sigmoid(outputs[:, 0] / checkpoint.temperature).numpy()
    if not checkpoint.regions:
        return probabilities, None
    columns = outputs[:, 1 : 1 + len(checkpoint.regions)]
    regions = np.asarray(checkpoint.regions)[columns.argmax(dim=1).numpy()]
    return probabilities, regions


def predict_probabilities(
    checkpoint: ckpt.Checkpoint, images: ImageSet, *, batch_size: int = 64
) -> np.ndarray:
    """Calibrated probabilities, exactly as `Classifier.probabilities` computes them."""
    return predict_outputs(checkpoint, images, batch_size=batch_size)[0]


def thresholds_for(
    checkpoint: ckpt.Checkpoint, predicted_regions: np.ndarray | None
) -> float | np.ndarray:
    """The threshold the product applies to each image: its predicted region's own where the
    checkpoint has one, the global threshold elsewhere (one float when no region has one)."""
    if predicted_regions is None or not checkpoint.region_thresholds:
        return checkpoint.threshold
    return np.array([checkpoint.threshold_for(r)[0] for r in predicted_regions])


def doubt_report(
    checkpoint: ckpt.Checkpoint,
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
) -> dict[str, Any] | None:
    """Figures for "fracture or doubt" against "no fracture", as the product answers; None for
    a checkpoint with two answers only."""
    if checkpoint.doubt_threshold is None:
        return None
    # An image is answered "doubt" or "fracture" from the lower of the two thresholds on.
    lower = np.minimum(threshold, checkpoint.doubt_threshold)
    point = operating_point(labels, probabilities, lower)
    cm = point["confusion_matrix"]
    return {
        "threshold": checkpoint.doubt_threshold,
        "sensitivity": point["sensitivity"],
        "sensitivity_ci95": proportion_ci(cm["tp"], cm["tp"] + cm["fn"]),
        "specificity": point["specificity"],
        "specificity_ci95": proportion_ci(cm["tn"], cm["tn"] + cm["fp"]),
        "ppv": point["ppv"],
        "npv": point["npv"],
        "confusion_matrix": cm,
    }


def candidate_boxes(
    checkpoint: ckpt.Checkpoint, outputs: torch.Tensor, images: ImageSet
) -> list[list[list[float]]]:
    """Every box the heat map gives for each image (no score floor, up to `boxes.MAX_BOXES`),
    [x, y, width, height, score] in the original image's pixels, best first."""
    from model import boxes as box_ops
    from model.inference import heat_maps

    maps = heat_maps(outputs, checkpoint.heat_grid)
    return [
        box_ops.to_original(
            box_ops.from_heat(heat, checkpoint.preset.size, floor=0.0),
            checkpoint.preset,
            pixels_shape=shape,
            original_size=size,
        )
        for heat, shape, size in zip(maps, images.pixel_shapes, images.upright_sizes, strict=True)
    ]


def localisation_report(
    checkpoint: ckpt.Checkpoint,
    outputs: torch.Tensor,
    images: ImageSet,
    annotations_path: Path | None,
    regions: Sequence[str],
    *,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pointing accuracy and FROC points against the outlines, overall and per region, or the
    reason they cannot be measured (`skipped`)."""
    if not checkpoint.heat:
        return {"skipped": "this checkpoint has no heat head, so it draws no boxes to judge"}
    if annotations_path is None:
        return {"skipped": f"no {ANNOTATIONS_FILE} in the data folder or its parent"}
    outlines = load_annotations(annotations_path)
    items = [
        localisation.ImageBoxes(
            predicted=found,
            truth=localisation.truth_boxes(outlines.get(path.name), size),
            fractured=bool(label),
            region=region,
        )
        for found, path, size, label, region in zip(
            candidate_boxes(checkpoint, outputs, images),
            images.paths,
            images.upright_sizes,
            images.labels.tolist(),
            regions,
            strict=True,
        )
    ]
    found = localisation.report(items, bootstrap=bootstrap, seed=seed)
    return {"annotations": str(annotations_path), **found}


PERTURBED_KEYS = (
    "n",
    "n_fractured",
    "auroc",
    "auroc_ci95",
    "sensitivity",
    "sensitivity_ci95",
    "specificity",
    "specificity_ci95",
)


def perturbed_report(
    checkpoint: ckpt.Checkpoint,
    samples: Sequence[Sample],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    threads: int = 2,
    classifier: Classifier | None = None,
) -> dict[str, dict[str, Any]]:
    """AUROC, sensitivity and specificity at the checkpoint's threshold(s) for each perturbed
    copy of the files (`model.perturb.VARIANTS`)."""
    out: dict[str, dict[str, Any]] = {}
    for variant in perturb.VARIANTS:
        images = load_exact(
            samples, checkpoint.preset, threads=threads, transform=perturb.transform(variant)
        )
        probabilities, predicted_regions = predict_outputs(
            checkpoint, images, classifier=classifier
        )
        labels = images.labels.numpy().astype(int)
        figures = summarise(
            labels,
            probabilities,
            thresholds_for(checkpoint, predicted_regions),
            bootstrap=bootstrap,
            seed=seed,
        )
        entry = {key: figures[key] for key in PERTURBED_KEYS}
        entry["n_skipped"] = len(images.skipped)
        out[variant] = entry
    return out


def compare_to_unaltered(
    perturbed: dict[str, dict[str, Any]], unaltered: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each variant's figures plus `auroc_ratio` (perturbed / unaltered AUROC) and the change
    in sensitivity and specificity (perturbed − unaltered); None where either is undefined."""

    def known(*values: float | None) -> bool:
        return all(v is not None for v in values)

    out = {}
    for variant, entry in perturbed.items():
        auroc_now, auroc_before = entry["auroc"], unaltered.get("auroc")
        sens_now, sens_before = entry["sensitivity"], unaltered.get("sensitivity")
        spec_now, spec_before = entry["specificity"], unaltered.get("specificity")
        out[variant] = {
            **entry,
            "auroc_ratio": auroc_now / auroc_before
            if known(auroc_now, auroc_before) and auroc_before
            else None,
            "sensitivity_change": sens_now - sens_before if known(sens_now, sens_before) else None,
            "specificity_change": spec_now - spec_before if known(spec_now, spec_before) else None,
        }
    return out


def _subset(
    labels: np.ndarray,
    probabilities: np.ndarray,
    mask: np.ndarray,
    threshold: float | np.ndarray,
    seed: int,
) -> dict[str, Any]:
    if np.ndim(threshold):
        threshold = np.asarray(threshold)[mask]
    return summarise(labels[mask], probabilities[mask], threshold, bootstrap=1000, seed=seed)


def region_report(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Region accuracy and confusion matrix (rows: labels.csv region, columns: predicted) over
    the images whose true region is one the model knows."""
    known = np.isin(truth, list(names))
    matrix = confusion_matrix(truth[known], predicted[known], labels=list(names))
    return {
        "n": int(known.sum()),
        "accuracy": float((truth[known] == predicted[known]).mean()) if known.any() else None,
        "labels": list(names),
        "confusion_matrix": matrix.tolist(),
    }


def _breakdowns(
    paths: Sequence[Path],
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
    labels_csv: Path,
    seed: int,
    predicted_regions: np.ndarray | None = None,
    region_names: Sequence[str] = (),
) -> dict[str, Any]:
    info = read_labels(labels_csv)
    known = [info.get(p.name) for p in paths]
    missing = sum(1 for k in known if k is None)
    if missing:
        log.warning("%d images are not listed in %s", missing, labels_csv)
    hardware = np.array([bool(k and k.hardware) for k in known])
    region = np.array([k.region if k else "unknown" for k in known])
    out: dict[str, Any] = {
        "labels_csv": str(labels_csv),
        "n_hardware": int(hardware.sum()),
        "without_hardware": _subset(labels, probabilities, ~hardware, threshold, seed),
        "by_region": {},
        "by_region_without_hardware": {},
    }
    for key, base in (
        ("by_region", np.ones_like(hardware)),
        ("by_region_without_hardware", ~hardware),
    ):
        for name in sorted(set(region.tolist())):
            mask = (region == name) & base
            positives = int(labels[mask].sum())
            entry = _subset(labels, probabilities, mask, threshold, seed)
            if positives < MIN_POSITIVES_PER_REGION:
                entry["note"] = (
                    f"too few fractures to judge ({positives} < {MIN_POSITIVES_PER_REGION}); "
                    "these figures are noise"
                )
            out[key][name] = entry
    if predicted_regions is not None:
        out["region"] = region_report(region, predicted_regions, region_names)
    return out


def evaluate(
    data: Path,
    model_path: Path,
    *,
    out_dir: Path | None = None,
    labels_csv: Path | None = None,
    annotations_path: Path | None = None,
    flip_tta: bool = False,
    perturbed: bool = False,
    bootstrap: int = 2000,
    seed: int = 0,
    threads: int = 2,
) -> dict[str, Any]:
    """Score every image of an ImageFolder-style folder and report the figures (and plots).

    Localisation is measured against `annotations_path` (default: annotations.json in the data
    folder or its parent) for checkpoints with a heat head; with `perturbed`, the figures are
    repeated on each perturbed copy of the files (`model.perturb`).
    """
    torch.set_num_threads(max(1, threads))
    samples = scan(data)
    checkpoint = ckpt.load(model_path)
    if flip_tta:  # the checkpoint's own inference mode, without refitting its calibration
        checkpoint = dataclasses.replace(checkpoint, flip_tta=True)
    images = load_exact(samples, checkpoint.preset, threads=threads)
    classifier = cpu_classifier(checkpoint)
    perturbed_figures: dict[str, dict[str, Any]] = {}
    try:
        outputs = raw_outputs(checkpoint, images, classifier=classifier)
        if perturbed:  # before the report: the same model set-up scores every copy
            perturbed_figures = perturbed_report(
                checkpoint,
                samples,
                bootstrap=min(bootstrap, 1000),
                seed=seed,
                threads=threads,
                classifier=classifier,
            )
    finally:
        classifier.close()
    probabilities, predicted_regions = predictions_from_outputs(checkpoint, outputs)
    labels = images.labels.numpy().astype(int)
    # Each image is judged at the threshold the product would use for it.
    threshold = thresholds_for(checkpoint, predicted_regions)
    report: dict[str, Any] = {
        "data": str(data),
        "model": str(model_path),
        "model_version": checkpoint.version,
        "arch": checkpoint.arch,
        "size": checkpoint.preset.size,
        "temperature": checkpoint.temperature,
        "flip_tta": checkpoint.flip_tta,
        "letterbox": checkpoint.preset.letterbox,
        "heat": checkpoint.heat,
        "regions": list(checkpoint.regions),
        "region_thresholds": dict(checkpoint.region_thresholds),
        "n_skipped": len(images.skipped),
        "skipped": [{"path": str(p), "error": e} for p, e in images.skipped],
    }
    report.update(summarise(labels, probabilities, threshold, bootstrap=bootstrap, seed=seed))
    report["threshold"] = checkpoint.threshold  # the global one; per-region ones listed above
    if np.ndim(threshold):
        report["global_threshold_only"] = operating_point(
            labels, probabilities, checkpoint.threshold
        )
    doubt = doubt_report(checkpoint, labels, probabilities, threshold)
    if doubt is not None:
        report["doubt"] = doubt
    if predicted_regions is not None:
        report["predicted_regions"] = {
            str(name): int(count)
            for name, count in zip(*np.unique(predicted_regions, return_counts=True), strict=True)
        }
    labels_csv = labels_csv or find_labels_csv(data)
    info = read_labels(labels_csv) if labels_csv is not None else {}
    report["localisation"] = localisation_report(
        checkpoint,
        outputs,
        images,
        annotations_path or find_annotations(data),
        [info[p.name].region if p.name in info else "unknown" for p in images.paths],
        bootstrap=bootstrap,
        seed=seed,
    )
    if perturbed:
        report["perturbed"] = compare_to_unaltered(perturbed_figures, report)
    if labels_csv is not None:
        report.update(
            _breakdowns(
                images.paths,
                labels,
                probabilities,
                threshold,
                labels_csv,
                seed,
                predicted_regions,
                checkpoint.regions,
            )
        )
    if out_dir is not None:
        from model.plots import plot_reliability, plot_roc  # matplotlib only when drawing

        title = f"{data.name or data} · {checkpoint.version}"
        report["roc_png"] = str(
            plot_roc(labels, probabilities, checkpoint.threshold, out_dir / "roc.png", title)
        )
        report["reliability_png"] = str(
            plot_reliability(labels, probabilities, out_dir / "reliability.png", title)
        )
    report["disclaimer"] = NOT_FOR_CLINICAL_USE
    return report


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary of `evaluate`'s dict."""

    def pct(value: float | None) -> str:
        return "  n/a" if value is None else f"{value:5.3f}"

    def line(name: str, r: dict[str, Any]) -> str:
        ci = r.get("auroc_ci95")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        cm = r["confusion_matrix"]
        note = f"  ({r['note']})" if r.get("note") else ""
        return (
            f"{name:<24} n={r['n']:>4} fx={r['n_fractured']:>3}  "
            f"AUROC {pct(r['auroc'])}{ci_text:<16}"
            f" sens {pct(r['sensitivity'])} spec {pct(r['specificity'])} PPV {pct(r['ppv'])}"
            f" NPV {pct(r['npv'])}  TP {cm['tp']} FN {cm['fn']} FP {cm['fp']} TN {cm['tn']}{note}"
        )

    def interval(name: str, ci: list[float] | tuple[float, float] | None) -> str:
        return f"{name} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{name} n/a"

    per_region = ", ".join(f"{k} {v:.3f}" for k, v in report.get("region_thresholds", {}).items())
    lines = [
        f"model {report['model_version']} ({report['arch']}, {report['size']} px), "
        f"threshold {report['threshold']:.3f}"
        + (f" (per region: {per_region}; others global)" if per_region else "")
        + f", temperature {report['temperature']:.3f}",
        line("all images", report),
        f"{'':<24} F1 {pct(report['f1'])}  accuracy {pct(report['accuracy'])}  "
        f"ECE {report['ece']:.3f}  "
        + interval("sensitivity 95% CI", report.get("sensitivity_ci95"))
        + "  "
        + interval("specificity 95% CI", report.get("specificity_ci95")),
    ]
    if report.get("doubt"):
        d = report["doubt"]
        lines.append(
            f"{'fracture or doubt':<24} threshold {d['threshold']:.3f}  "
            f"sens {pct(d['sensitivity'])} {interval('95% CI', d['sensitivity_ci95'])}  "
            f"spec {pct(d['specificity'])} {interval('95% CI', d['specificity_ci95'])}"
        )
    if "global_threshold_only" in report:
        g = report["global_threshold_only"]
        lines.append(
            f"{'global threshold only':<24} sens {pct(g['sensitivity'])} "
            f"spec {pct(g['specificity'])}"
        )
    if report.get("region"):
        r = report["region"]
        lines.append(f"region accuracy {pct(r['accuracy'])} over {r['n']} images")
        lines.append("  true \\ predicted " + " ".join(f"{n:>8}" for n in r["labels"]))
        for name, row in zip(r["labels"], r["confusion_matrix"], strict=True):
            lines.append(f"  {name:<18}" + " ".join(f"{v:>8}" for v in row))
    if "without_hardware" in report:
        lines.append(line("without hardware", report["without_hardware"]))
        for name, entry in report["by_region"].items():
            lines.append(line(f"region {name}", entry))
        for name, entry in report["by_region_without_hardware"].items():
            lines.append(line(f"region {name} (no hw)", entry))
    if "localisation" in report:
        lines.extend(localisation.format_table(report["localisation"]))
    if report.get("perturbed"):
        lines.extend(_perturbed_lines(report))
    if report.get("n_skipped"):
        lines.append(f"{report['n_skipped']} undecodable files skipped")
    for key in ("roc_png", "reliability_png"):
        if key in report:
            lines.append(f"wrote {report[key]}")
    lines.append(NOT_FOR_CLINICAL_USE)
    return "\n".join(lines)


def _perturbed_lines(report: dict[str, Any]) -> list[str]:
    """The unaltered figures, then each perturbed copy's and its change from them."""

    def number(value: float | None, width: int, sign: bool = False) -> str:
        if value is None:
            return " " * width
        return f"{value:+{width}.3f}" if sign else f"{value:{width}.3f}"

    lines = [
        f"{'perturbed copy':<24} {'AUROC (95% CI)':<22} {'×unaltered':>10} "
        f"{'sens':>6} {'Δsens':>7} {'spec':>6} {'Δspec':>7}"
    ]
    for name, entry in [("unaltered", report), *report["perturbed"].items()]:
        ci = entry.get("auroc_ci95")
        auroc_text = number(entry["auroc"], 5) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        lines.append(
            f"{name:<24} {auroc_text:<22} {number(entry.get('auroc_ratio'), 10)} "
            f"{number(entry['sensitivity'], 6)} {number(entry.get('sensitivity_change'), 7, True)} "
            f"{number(entry['specificity'], 6)} {number(entry.get('specificity_change'), 7, True)}"
            + (f"  ({entry['n_skipped']} skipped)" if entry.get("n_skipped") else "")
        )
    return lines


__all__ = [
    "Preset",
    "auroc",
    "bootstrap_auroc_ci",
    "evaluate",
    "expected_calibration_error",
    "format_report",
    "operating_point",
    "summarise",
    "threshold_for_sensitivity",
]
