"""`fracture train`, `evaluate`, `calibrate` and `ensemble`: thin wrappers over model.train,
model.evaluate, model.calibration and model.checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from config import SHIPPED_MODEL
from fracture.console import fail, setup_logging

# model.calibration.MIN_FRACTURES_FOR_REGION_THRESHOLD, without importing torch to build the CLI.
MIN_REGION_FRACTURES = 25
RegionThresholdsOpt = Annotated[
    bool, typer.Option(help="per-region thresholds where the data has enough fractures")
]
MinRegionFracturesOpt = Annotated[
    int,
    typer.Option("--min-region-fractures", min=1, help="fractured images a region threshold needs"),
]


DoubtSensitivityOpt = Annotated[
    float,
    typer.Option(
        "--doubt-sensitivity", help="sensitivity target of the lower 'doubt' operating point"
    ),
]
ThresholdConfidenceOpt = Annotated[
    float,
    typer.Option(
        "--threshold-confidence",
        help="operating points reach their sensitivity in this share of group-bootstrap resamples",
    ),
]


def train_command(
    data: Annotated[
        Path, typer.Option("--data", help="folder with train/ and val/ in ImageFolder layout")
    ],
    arch: Annotated[
        str, typer.Option(help="seed_cnn | efficientnet_lite0 | a torchvision model name")
    ] = "efficientnet_lite0",
    epochs: Annotated[int, typer.Option(min=1)] = 14,
    out: Annotated[Path, typer.Option("--out", help="checkpoint to write")] = SHIPPED_MODEL,
    size: Annotated[int, typer.Option(min=32, help="input side in pixels")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 32,
    lr: Annotated[float, typer.Option(help="peak learning rate of the head")] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    target_sensitivity: Annotated[
        float, typer.Option("--target-sensitivity", help="threshold chosen on val for this")
    ] = 0.90,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the saved state")] = False,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="local pretrained weights (torchvision arch)")
    ] = None,
    pretrained: Annotated[
        bool, typer.Option(help="start from ImageNet weights where available offline")
    ] = True,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="fine-tune: start from this checkpoint's weights (same network and heads; "
            "--size may differ)",
        ),
    ] = None,
    freeze_blocks: Annotated[
        int, typer.Option("--freeze-blocks", min=0, help="efficientnet_lite0: frozen early blocks")
    ] = 3,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="0 disables weight EMA")] = 0.995,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing")] = 0.0,
    patience: Annotated[int, typer.Option(min=1, help="early-stopping patience (epochs)")] = 5,
    region_weight: Annotated[
        float,
        typer.Option(
            "--region-weight",
            min=0.0,
            help="weight of the body-region loss (needs labels.csv); 0 = single-head model",
        ),
    ] = 0.5,
    region_thresholds: RegionThresholdsOpt = True,
    min_region_fractures: MinRegionFracturesOpt = MIN_REGION_FRACTURES,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="resume state + best so far [runs/<out name>]")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads")] = 2,
    heat_weight: Annotated[
        float,
        typer.Option(
            "--heat-weight",
            min=0.0,
            help="weight of the fracture heat-map loss (needs annotations.json); 0 = no boxes",
        ),
    ] = 1.0,
    letterbox: Annotated[
        bool, typer.Option(help="keep the aspect ratio (pad) instead of squashing")
    ] = True,
    heat_stride: Annotated[
        int, typer.Option("--heat-stride", help="input pixels per heat-map cell: 16 or 8")
    ] = 16,
    rot90: Annotated[
        float, typer.Option("--rot90", help="probability of a random 90/180/270° turn")
    ] = 0.5,
    jpeg: Annotated[float, typer.Option(help="probability of a JPEG re-encoding, q 25-90")] = 0.25,
    downscale: Annotated[
        float, typer.Option(help="probability of a down-and-up resampling (40-80 %)")
    ] = 0.25,
    doubt_sensitivity: DoubtSensitivityOpt = 0.95,
    threshold_confidence: ThresholdConfidenceOpt = 0.8,
) -> None:
    """Train a fracture classifier on DATA/train, select and calibrate it on DATA/val."""
    from model.checkpoint import CheckpointError
    from model.data import DataError
    from model.decode import DecodeError
    from model.train import TrainConfig, train

    setup_logging()
    if weights is not None and not weights.is_file():
        fail(f"weights file not found: {weights}")
    if init is not None and not init.is_file():
        fail(f"--init: checkpoint not found: {init}")
    try:
        config = TrainConfig(
            data=data,
            out=out,
            arch=arch,
            epochs=epochs,
            size=size,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            target_sensitivity=target_sensitivity,
            pretrained=pretrained,
            weights=weights,
            init=init,
            freeze_blocks=freeze_blocks,
            ema_decay=ema_decay,
            label_smoothing=label_smoothing,
            patience=patience,
            region_weight=region_weight,
            region_thresholds=region_thresholds,
            min_region_fractures=min_region_fractures,
            work_dir=work_dir,
            resume=resume,
            threads=threads,
            heat_weight=heat_weight,
            heat_stride=heat_stride,
            letterbox=letterbox,
            rot90=rot90,
            jpeg=jpeg,
            downscale=downscale,
            doubt_sensitivity=doubt_sensitivity,
            threshold_confidence=threshold_confidence,
        )
        checkpoint = train(config)
    except (DataError, CheckpointError, DecodeError, ValueError) as exc:
        fail(str(exc))
    metrics = checkpoint.extra.get("val_metrics", {})
    typer.echo(
        f"wrote {out} ({checkpoint.version}): val AUROC {metrics.get('auroc', float('nan')):.4f}, "
        f"threshold {checkpoint.threshold:.3f} → sensitivity {metrics.get('sensitivity', 0):.3f}, "
        f"specificity {metrics.get('specificity', 0):.3f}, temperature {checkpoint.temperature:.3f}"
    )
    typer.echo("Decision support only, not for clinical use.")


def evaluate_command(
    data: Annotated[
        Path, typer.Option("--data", help="folder in ImageFolder layout (class subfolders)")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    model: Annotated[
        Path | None, typer.Option("--model", help="checkpoint [FRACTURE_MODEL_PATH]")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="where ROC and reliability PNGs go")
    ] = None,
    labels_csv: Annotated[
        Path | None, typer.Option("--labels-csv", help="region/hardware table [DATA/labels.csv]")
    ] = None,
    flip_tta: Annotated[
        bool, typer.Option("--flip-tta", help="average with a horizontally flipped copy")
    ] = False,
    annotations: Annotated[
        Path | None,
        typer.Option(
            "--annotations", help="COCO fracture outlines for localisation [DATA/annotations.json]"
        ),
    ] = None,
    perturb: Annotated[
        bool,
        typer.Option(
            "--perturb",
            help="also score copies turned 90/180/270°, mirrored, as JPEG q40 and at half size",
        ),
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads")] = 2,
) -> None:
    """Score a labelled folder: AUROC (95% CI), operating points, calibration, breakdowns,
    localisation against outlines beside the data, and (--perturb) robustness."""
    import os

    from model.annotations import AnnotationError
    from model.checkpoint import CheckpointError
    from model.data import DataError
    from model.evaluate import evaluate, format_report

    setup_logging("WARNING")
    env_model = os.environ.get("FRACTURE_MODEL_PATH")
    model_path = model or (Path(env_model) if env_model else SHIPPED_MODEL)
    if labels_csv is not None and not labels_csv.is_file():
        fail(f"labels file not found: {labels_csv}")
    if annotations is not None and not annotations.is_file():
        fail(f"annotations file not found: {annotations}")
    try:
        report = evaluate(
            data,
            model_path,
            out_dir=out_dir if out_dir is not None else Path("artifacts") / "evaluation",
            labels_csv=labels_csv,
            annotations_path=annotations,
            flip_tta=flip_tta,
            perturbed=perturb,
            threads=threads,
        )
    except (DataError, CheckpointError, AnnotationError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(format_report(report))


def calibrate_command(
    data: Annotated[
        Path, typer.Option("--data", help="labelled folder (class subfolders), e.g. DATA/val")
    ],
    model: Annotated[Path, typer.Option("--model", help="checkpoint to recalibrate")],
    out: Annotated[Path, typer.Option("--out", help="where the recalibrated checkpoint goes")],
    target_sensitivity: Annotated[
        float, typer.Option("--target-sensitivity", help="threshold chosen for this")
    ] = 0.90,
    region_thresholds: RegionThresholdsOpt = True,
    min_region_fractures: MinRegionFracturesOpt = MIN_REGION_FRACTURES,
    flip_tta: Annotated[
        bool | None,
        typer.Option(
            "--flip-tta/--no-flip-tta",
            help="score image + mirror image (twice the compute) [keep the file's mode]",
        ),
    ] = None,
    turn_tta: Annotated[
        bool | None,
        typer.Option(
            "--turn-tta/--no-turn-tta",
            help="also score the image turned by 90/180/270° (×4 compute) [keep the file's mode]",
        ),
    ] = None,
    heat_in_score: Annotated[
        float | None,
        typer.Option(
            "--heat-in-score",
            min=0.0,
            help="add this × the heat map's hottest cell logit to the fracture logit [keep]",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads")] = 2,
    doubt_sensitivity: DoubtSensitivityOpt = 0.95,
    threshold_confidence: ThresholdConfidenceOpt = 0.8,
) -> None:
    """Refit temperature and decision threshold(s) of a checkpoint on labelled images."""
    from model.calibration import recalibrate
    from model.checkpoint import CheckpointError
    from model.data import DataError

    setup_logging()
    if not 0.0 < target_sensitivity <= 1.0:
        fail("--target-sensitivity must be in (0, 1]")
    try:
        checkpoint = recalibrate(
            model,
            data,
            out=out,
            target_sensitivity=target_sensitivity,
            region_thresholds=region_thresholds,
            min_region_fractures=min_region_fractures,
            flip_tta=flip_tta,
            turn_tta=turn_tta,
            heat_in_score=heat_in_score,
            threads=threads,
            doubt_sensitivity=doubt_sensitivity,
            confidence=threshold_confidence,
        )
    except (DataError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    per_region = ", ".join(f"{k} {v:.3f}" for k, v in checkpoint.region_thresholds.items())
    typer.echo(
        f"wrote {out} ({checkpoint.version}): temperature {checkpoint.temperature:.3f}, "
        f"threshold {checkpoint.threshold:.3f}"
        + (
            f", doubt {checkpoint.doubt_threshold:.3f}"
            if checkpoint.doubt_threshold is not None
            else ""
        )
        + (f", per region: {per_region}" if per_region else ", no per-region thresholds")
        + (", flip TTA" if checkpoint.flip_tta else "")
        + (", quarter-turn TTA" if checkpoint.turn_tta else "")
    )
    typer.echo("Decision support only, not for clinical use.")


def ensemble_command(
    models: Annotated[
        list[Path], typer.Option("--model", help="a trained checkpoint (give two or more)")
    ],
    out: Annotated[Path, typer.Option("--out", help="the ensemble checkpoint to write")],
) -> None:
    """Combine trained checkpoints of one layout into an ensemble (mean of their outputs).

    Refit its calibration afterwards with `fracture calibrate`.
    """
    from model import checkpoint as ckpt

    setup_logging()
    try:
        combined = ckpt.combine([ckpt.load(path) for path in models])
    except ckpt.CheckpointError as exc:
        fail(str(exc))
    ckpt.save(combined, out)
    typer.echo(
        f"wrote {out} ({combined.version}): {len(models)} members; "
        "refit its calibration with `fracture calibrate` before use"
    )


def soup_command(
    models: Annotated[
        list[Path],
        typer.Option("--model", help="a checkpoint of the same network (give two or more)"),
    ],
    out: Annotated[Path, typer.Option("--out", help="the averaged checkpoint to write")],
    size: Annotated[
        int | None,
        typer.Option("--size", min=32, help="input side in pixels [the first model's]"),
    ] = None,
) -> None:
    """Average the weights of fine-tunes of one network (a weight soup): one network's cost.

    Refit its calibration afterwards with `fracture calibrate`.
    """
    from model import checkpoint as ckpt

    setup_logging()
    try:
        soup = ckpt.average_weights([ckpt.load(path) for path in models], size=size)
    except ckpt.CheckpointError as exc:
        fail(str(exc))
    ckpt.save(soup, out)
    typer.echo(
        f"wrote {out} ({soup.version}): the mean of {len(models)} networks' weights at "
        f"{soup.preset.size} px; refit its calibration with `fracture calibrate` before use"
    )


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate`, `calibrate`, `ensemble` and `soup` to the command line."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("calibrate")(calibrate_command)
    app.command("ensemble")(ensemble_command)
    app.command("soup")(soup_command)
