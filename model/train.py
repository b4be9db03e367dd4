"""Training: cached images → tensor augmentations → AdamW, warm-up + cosine → EMA → best val AUROC.

The best network is calibrated on validation by `model.calibration` (prior-shift correction
folded into the head bias, a scalar temperature, the threshold for a target sensitivity), and
everything inference needs goes into the checkpoint.

When the data has a labels.csv with body regions and `region_weight` > 0, the network gets a
second head that predicts the region, trained together with the fracture head (loss = fracture
BCE + region_weight × region cross-entropy); regions with enough fractured validation images then
also get their own threshold for the same target sensitivity.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model import annotations as outline_files
from model import architectures
from model import checkpoint as ckpt
from model.annotations import Outlines
from model.calibration import MIN_FRACTURES_FOR_REGION_THRESHOLD, Calibration, calibrate
from model.data import (
    ImageSet,
    find_labels_csv,
    image_groups,
    load_images,
    read_labels,
    region_indices,
    scan,
)
from model.evaluate import auroc, raw_outputs
from model.preprocess import Preset

log = logging.getLogger(__name__)

STATE_FORMAT = 1
# Settings a resumed run may change; everything else must match the saved state.
RESUME_MAY_CHANGE = frozenset(
    {"resume", "progress", "epochs", "patience", "out", "work_dir", "threads"}
)


@dataclass
class TrainConfig:
    """The whole recipe; stored in the checkpoint's `extra["recipe"]`."""

    data: Path
    out: Path
    arch: str = "efficientnet_lite0"
    epochs: int = 14
    size: int = 256
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.5  # pretrained layers learn at lr × this
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    seed: int = 0
    target_sensitivity: float = 0.90
    pretrained: bool = True
    weights: Path | None = None  # local ImageNet weights for a torchvision architecture
    init: Path | None = None  # start from this checkpoint's weights (fine-tuning), same heads
    freeze_blocks: int = 3  # EfficientNet-Lite: stem + this many blocks stay at ImageNet values
    ema_decay: float = 0.995  # 0 disables the exponential moving average of weights
    label_smoothing: float = 0.0
    patience: int = 5  # epochs without a better val AUROC before stopping
    cache_scale: float = 1.15  # train images are cached at size × this, then cropped
    min_crop_scale: float = 0.75  # random resized crop keeps at least this share of the area
    rotation_degrees: float = 10.0
    hflip: float = 0.5
    vflip: float = 0.0
    region_weight: float = 0.5  # weight of the body-region loss; 0 trains a single-head model
    heat_weight: float = 1.0  # weight of the outline heat-map loss; 0: no heat head
    heat_pos_weight: float = 5.0  # cells inside a fracture box count this much more
    heat_stride: int = 16  # input pixels per heat-map cell: 16 or 8
    letterbox: bool = True  # keep the aspect ratio (pad) instead of squashing
    rot90: float = 0.5  # probability of a random quarter turn (90/180/270°): orientation
    jpeg: float = 0.25  # probability of re-encoding a training image as JPEG, quality 25-90
    downscale: float = 0.25  # probability of a down-and-up resampling (resolution 40-80 %)
    doubt_sensitivity: float = 0.95  # the lower "doubt" operating point's target
    threshold_confidence: float = 0.8  # operating points hold in this share of resamples
    region_thresholds: bool = True  # per-region operating points where validation allows
    min_region_fractures: int = MIN_FRACTURES_FOR_REGION_THRESHOLD
    work_dir: Path | None = None  # resume state and best-so-far checkpoint; default runs/<out stem>
    resume: bool = False
    threads: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        rules = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.size >= 32, "size must be at least 32 pixels"),
            (self.batch_size >= 2, "batch size must be at least 2 (batch norm)"),
            (self.lr > 0, "learning rate must be positive"),
            (0.0 < self.target_sensitivity <= 1.0, "target sensitivity must be in (0, 1]"),
            (0.0 < self.min_crop_scale <= 1.0, "min crop scale must be in (0, 1]"),
            (self.cache_scale >= 1.0, "cache scale must be at least 1"),
            (0.0 <= self.ema_decay < 1.0, "EMA decay must be in [0, 1)"),
            (0.0 <= self.label_smoothing < 0.5, "label smoothing must be in [0, 0.5)"),
            (self.region_weight >= 0.0, "region loss weight must not be negative"),
            (self.min_region_fractures >= 1, "min region fractures must be at least 1"),
            (self.heat_weight >= 0.0, "heat loss weight must not be negative"),
            (self.heat_stride in (8, 16), "heat stride must be 8 or 16"),
            (0.0 <= self.rot90 <= 1.0, "rot90 probability must be in [0, 1]"),
            (0.0 <= self.jpeg <= 1.0, "jpeg probability must be in [0, 1]"),
            (0.0 <= self.downscale <= 1.0, "downscale probability must be in [0, 1]"),
            (
                self.target_sensitivity <= self.doubt_sensitivity <= 1.0,
                "doubt sensitivity must lie between the target sensitivity and 1",
            ),
            (0.5 <= self.threshold_confidence < 1.0, "threshold confidence must be in [0.5, 1)"),
        ]
        for ok, rule in rules:
            if not ok:
                raise ValueError(rule)
        if self.arch not in architectures.available():
            raise ValueError(architectures.unknown(self.arch))

    @property
    def starts_pretrained(self) -> bool:
        lite = self.arch in architectures.LITE_WEIGHTS
        return (self.pretrained and lite) or self.weights is not None

    @property
    def state_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else Path("runs") / self.out.stem

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------- augmentation


def jpeg_roundtrip(
    images: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 1, H, W) uint8: each image re-encoded as a JPEG of quality 25–90 with `probability`
    (other sites send stronger compression than FracAtlas's quality-92 copies)."""
    import io

    from PIL import Image

    chosen = torch.rand(images.shape[0], generator=generator) < probability
    qualities = torch.randint(25, 91, (images.shape[0],), generator=generator)
    if not bool(chosen.any()):
        return images
    out = images.clone()
    for row in torch.nonzero(chosen).flatten().tolist():
        buffer = io.BytesIO()
        Image.fromarray(images[row, 0].numpy(), mode="L").save(
            buffer, "JPEG", quality=int(qualities[row])
        )
        with Image.open(buffer) as reopened:
            out[row, 0] = torch.from_numpy(np.asarray(reopened.convert("L")).copy())
    return out


def augment(
    images: torch.Tensor,
    size: int,
    config: TrainConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 1, H, W) in [0, 1] → (B, 1, size, size): rotation (small angles and quarter turns),
    flips, random resized crop, resolution loss, intensity. Outline masks (B, 1, H, W), when
    given, go through the same geometry.

    One affine resampling per batch does rotation, flip and crop together; crops keep most of the
    image (default ≥ 75 % of its area) so the fracture is rarely cut out.
    """
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(count, generator=generator) * (high - low) + low

    angle = torch.deg2rad(uniform(-config.rotation_degrees, config.rotation_degrees))
    quarter = torch.randint(1, 4, (count,), generator=generator).float()
    turned = torch.rand(count, generator=generator) < config.rot90
    angle = angle + torch.where(turned, quarter * (math.pi / 2), torch.zeros(count))
    area = uniform(config.min_crop_scale, 1.0)
    log_ratio = uniform(math.log(0.85), math.log(1 / 0.85))
    scale_x = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    scale_y = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    shift_x = (torch.rand(count, generator=generator) * 2 - 1) * (1 - scale_x)
    shift_y = (torch.rand(count, generator=generator) * 2 - 1) * (1 - scale_y)
    flip_x = torch.where(torch.rand(count, generator=generator) < config.hflip, -1.0, 1.0)
    flip_y = torch.where(torch.rand(count, generator=generator) < config.vflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input coordinates: rotate ∘ scale ∘ flip, then shift.
    theta = torch.stack(
        [
            torch.stack([cos * scale_x * flip_x, -sin * scale_y * flip_y, shift_x], dim=1),
            torch.stack([sin * scale_x * flip_x, cos * scale_y * flip_y, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [count, 1, size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(
            masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    lowered = torch.nonzero(torch.rand(count, generator=generator) < config.downscale).flatten()
    for row in lowered.tolist():
        side = max(16, round(size * float(uniform(0.4, 0.8)[row])))
        small = F.interpolate(out[row : row + 1], size=(side, side), mode="area")
        out[row : row + 1] = F.interpolate(
            small, size=(size, size), mode="bilinear", align_corners=False
        )

    gamma = torch.exp(uniform(math.log(0.75), math.log(1 / 0.75))).view(-1, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(-1, 1, 1, 1)
    brightness = uniform(-0.08, 0.08).view(-1, 1, 1, 1)
    out = out.clamp(1e-6, 1.0).pow(gamma)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp_(0.0, 1.0), masks


def heat_targets(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 1, size, size) masks in [0, 1] → (B, grid·grid) share of each cell inside a box."""
    return F.adaptive_avg_pool2d(masks, grid).flatten(1).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- network helpers


def head_linear_name(net: nn.Module) -> str:
    """Name of the last single-output Linear layer (the fracture logit)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not names:
        raise ValueError(f"{type(net).__name__} has no single-logit Linear head")
    return names[-1]


def head_names(net: nn.Module) -> tuple[str, ...]:
    """The freshly initialised output layers: the fracture head, and the region head if any."""
    if isinstance(net, architectures.HeatNet):
        return ("fracture", "region", "heat_context", "heat_head")
    if isinstance(net, architectures.TwoHeads):
        return ("fracture", "region")
    return (head_linear_name(net),)


def frozen_modules(net: nn.Module, arch: str, blocks: int) -> list[nn.Module]:
    """Early pretrained layers kept fixed: cheaper backward passes, generic edge features."""
    if arch not in architectures.LITE_WEIGHTS or blocks <= 0:
        return []
    body = architectures.backbone(net)
    stem = [body.get_submodule("_conv_stem"), body.get_submodule("_bn0")]
    return [*stem, *(body.get_submodule(f"_blocks.{i}") for i in range(blocks))]


def param_groups(net: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Heads at lr, pretrained body at lr × backbone_lr_scale; no weight decay on norms, biases."""
    heads = tuple(name + "." for name in head_names(net))
    backbone_scale = config.backbone_lr_scale if config.starts_pretrained else 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith(heads), param.ndim <= 1)
        groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": config.lr * (1.0 if is_head else backbone_scale),
            "weight_decay": 0.0 if no_decay else config.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]


class EMA:
    """Exponential moving average of weights and buffers, with the usual warm-up of the decay."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(net).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_value, value in zip(
            self.module.state_dict().values(), net.state_dict().values(), strict=True
        ):
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.detach(), 1.0 - decay)
            else:
                ema_value.copy_(value)


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.inference_mode()
def predict_logits(
    net: nn.Module, images: ImageSet, preset: Preset, batch_size: int = 64
) -> np.ndarray:
    """(N, 1 + R) raw outputs of a network being trained, for exact-preprocessed images;
    column 0 is the fracture logit."""
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = preset.normalise(images.as_float(slice(start, start + batch_size)))
        batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(net(batch).float())
    return torch.cat(out).numpy()


def make_checkpoint(
    net: nn.Module,
    config: TrainConfig,
    calibration: Calibration,
    extra: dict[str, Any],
    regions: tuple[str, ...] = (),
    *,
    heat: bool = False,
) -> ckpt.Checkpoint:
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    head = "fracture" if isinstance(net, architectures.HeatNet) else head_linear_name(net)
    state[head + ".bias"] += calibration.logit_offset
    arch_kwargs: dict[str, Any] = {"size": config.size} if config.arch == "seed_cnn" else {}
    if heat and config.heat_stride != 16:
        arch_kwargs["heat_stride"] = config.heat_stride
    checkpoint = ckpt.Checkpoint(
        arch=config.arch,
        state_dict=state,
        preset=Preset(size=config.size, letterbox=config.letterbox),
        heat=heat,
        doubt_threshold=calibration.doubt_threshold,
        threshold=calibration.threshold,
        temperature=calibration.temperature,
        arch_kwargs=arch_kwargs,
        extra=extra,
        regions=regions,
        region_thresholds=calibration.region_thresholds,
    )
    checkpoint.version = checkpoint.compute_version()
    return checkpoint


# ----------------------------------------------------------------------------- the loop


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _build_network(config: TrainConfig, regions: int, heat: bool = False) -> nn.Module:
    kwargs: dict[str, Any] = {"regions": regions, "heat": heat}
    if heat and config.heat_stride != 16:
        kwargs["heat_stride"] = config.heat_stride
    if config.arch == "seed_cnn":
        kwargs["size"] = config.size
    if config.weights is not None:
        kwargs["weights_file"] = str(config.weights)
    return architectures.build(config.arch, pretrained=config.starts_pretrained, **kwargs)


def _start_from(net: nn.Module, config: TrainConfig, regions: tuple[str, ...], heat: bool) -> None:
    """Load `config.init`'s weights into `net` (fine-tuning; the input size may differ, the
    network and its heads may not), with the calibration's prior-shift offset taken back out of
    the fracture bias so that training starts from the logits it ended with."""
    assert config.init is not None
    start = ckpt.load(config.init)
    source = f"--init {config.init}"
    if start.arch != config.arch:
        raise ValueError(f"{source} is a {start.arch} network, not {config.arch}")
    if "members" in start.arch_kwargs:
        raise ValueError(f"{source} is an ensemble: start from one of its members")
    if start.regions != regions:
        raise ValueError(f"{source} has regions {list(start.regions)}, the data {list(regions)}")
    theirs = (
        f"a stride-{start.arch_kwargs.get('heat_stride', 16)} heat map"
        if start.heat
        else "no heat map"
    )
    mine = f"a stride-{config.heat_stride} heat map" if heat else "no heat map"
    if theirs != mine:
        raise ValueError(f"{source} has {theirs}, this run {mine}")
    state = dict(start.state_dict)
    head = "fracture" if isinstance(net, architectures.HeatNet) else head_linear_name(net)
    state[head + ".bias"] = state[head + ".bias"] - float(start.extra.get("logit_offset", 0.0))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:  # e.g. seed_cnn, whose layers depend on the input size
        raise ValueError(f"{source} does not fit this network: {exc}") from None
    log.info("starting from %s (%s)", config.init, start.version)


def train(config: TrainConfig) -> ckpt.Checkpoint:
    """Train, keep the best-on-val network, calibrate it and save it to `config.out`."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, config.threads))
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    train_dir, val_dir = config.data / "train", config.data / "val"
    train_samples, val_samples = scan(train_dir), scan(val_dir)
    cache_size = max(config.size, round(config.size * config.cache_scale))
    log.info("decoding %d train + %d val images", len(train_samples), len(val_samples))
    outlines = _outlines(config)
    train_set = load_images(
        train_samples,
        size=cache_size,
        threads=config.threads,
        letterbox=config.letterbox,
        outlines=outlines,
    )
    val_set = load_images(
        val_samples,
        size=config.size,
        exact=True,
        threads=config.threads,
        letterbox=config.letterbox,
        outlines=outlines,
    )
    n_pos, n_neg = train_set.n_positive, len(train_set) - train_set.n_positive
    if n_pos == 0 or n_neg == 0:
        raise ValueError("training data needs both fractured and not-fractured images")
    pos_weight = n_neg / n_pos
    log.info(
        "train %d (%d fractured), val %d (%d fractured), decoded in %.0f s; pos_weight %.2f",
        len(train_set), n_pos, len(val_set), val_set.n_positive,
        time.perf_counter() - started, pos_weight,
    )  # fmt: skip
    val_labels = val_set.labels.numpy().astype(int)
    regions, train_regions, val_regions = _region_targets(config, train_set, val_set)
    val_groups = _groups(config, val_set)
    heat = outlines is not None
    grid = config.size // config.heat_stride

    net = _build_network(config, len(regions), heat)
    if config.init is not None:
        _start_from(net, config, regions, heat)
    net = net.to(memory_format=torch.channels_last)
    frozen = frozen_modules(
        net, config.arch, config.freeze_blocks if config.starts_pretrained else 0
    )
    for module in frozen:
        module.requires_grad_(False)
    ema = EMA(net, config.ema_decay) if config.ema_decay > 0 else None
    optimiser = torch.optim.AdamW(param_groups(net, config))
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        _lr_lambda(
            config.epochs * steps_per_epoch, max(1, round(config.warmup_epochs * steps_per_epoch))
        ),
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    region_loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    heat_loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(config.heat_pos_weight))
    preset = Preset(size=config.size, letterbox=config.letterbox)

    state_path = config.state_dir / "state.pt"
    best_path = config.state_dir / "best.pt"
    first_epoch, best_auroc, best_epoch = 0, -1.0, -1
    history: list[dict[str, Any]] = []
    if config.resume:
        if not state_path.is_file():
            raise ValueError(f"--resume: no training state at {state_path}")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        recipe = {k: v for k, v in state["config"].items() if k not in RESUME_MAY_CHANGE}
        now = {k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE}
        if recipe != now:
            changed = sorted(k for k in now if recipe.get(k) != now[k])
            raise ValueError(
                f"--resume: the saved run used different settings ({', '.join(changed)})"
            )
        net.load_state_dict(state["net"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
            ema.updates = int(state["ema_updates"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch, best_auroc, best_epoch = (
            int(state["epoch"]),
            float(state["best_auroc"]),
            int(state["best_epoch"]),
        )
        history = list(state["history"])
        if "torch_rng" in state:  # dropout masks continue as in an uninterrupted run
            torch.set_rng_state(state["torch_rng"])
        log.info(
            "resumed after epoch %d (best val AUROC %.4f at epoch %d)",
            first_epoch,
            best_auroc,
            best_epoch + 1,
        )

    for epoch in range(first_epoch, config.epochs):
        if best_epoch >= 0 and epoch - best_epoch > config.patience:
            log.info("early stop: no better val AUROC for %d epochs", config.patience)
            break
        epoch_started = time.perf_counter()
        net.train()
        for module in frozen:
            module.eval()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(train_set), generator=generator)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=True,
            dynamic_ncols=True,
        )
        running, seen = 0.0, 0
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(index) < 2:
                continue
            raw = jpeg_roundtrip(train_set.images[index].unsqueeze(1), config.jpeg, generator)
            masks = None
            if heat and train_set.masks is not None:
                masks = train_set.masks[index].unsqueeze(1).float().div_(255.0)
            batch, masks = augment(raw.float().div_(255.0), config.size, config, generator, masks)
            batch = preset.normalise(batch).contiguous(memory_format=torch.channels_last)
            target = train_set.labels[index]
            if config.label_smoothing:
                target = target * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
            outputs = net(batch)
            loss = loss_fn(outputs[:, 0], target)
            if regions:
                region_target = train_regions[index]
                if bool((region_target >= 0).any()):
                    region_loss = region_loss_fn(outputs[:, 1 : 1 + len(regions)], region_target)
                    loss = loss + config.region_weight * region_loss
            if masks is not None:
                heat_logits = outputs[:, 1 + len(regions) :]
                loss = loss + config.heat_weight * heat_loss_fn(
                    heat_logits, heat_targets(masks, grid)
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if ema is not None:
                ema.update(net)
            running += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
        scored = ema.module if ema is not None else net
        outputs = predict_logits(scored, val_set, preset)
        val_auroc = auroc(val_labels, outputs[:, 0]) or 0.0
        bar.set_postfix(loss=f"{running / max(seen, 1):.4f}", val_auroc=f"{val_auroc:.4f}")
        bar.close()
        record = {
            "epoch": epoch + 1,
            "train_loss": running / max(seen, 1),
            "val_auroc": val_auroc,
            "seconds": round(time.perf_counter() - epoch_started, 1),
        }
        if regions:
            known = val_regions >= 0
            record["val_region_accuracy"] = float(
                (outputs[known, 1 : 1 + len(regions)].argmax(axis=1) == val_regions[known]).mean()
            )
        if heat and val_set.masks is not None:
            record["val_pointing"] = _pointing(outputs[:, 1 + len(regions) :], val_set, grid)
        history.append(record)
        log.info(
            "epoch %d: loss %.4f, val AUROC %.4f%s%s (%.0f s)",
            epoch + 1,
            record["train_loss"],
            val_auroc,
            f", region accuracy {record['val_region_accuracy']:.3f}" if regions else "",
            f", pointing {record['val_pointing']:.3f}" if "val_pointing" in record else "",
            record["seconds"],
        )
        if val_auroc > best_auroc:
            best_auroc, best_epoch = val_auroc, epoch
            calibration = calibrate(
                outputs,
                val_labels,
                pos_weight=pos_weight,
                target_sensitivity=config.target_sensitivity,
                regions=regions,
                region_targets=val_regions,
                region_thresholds=config.region_thresholds,
                min_region_fractures=config.min_region_fractures,
                doubt_sensitivity=config.doubt_sensitivity,
                confidence=config.threshold_confidence,
                groups=val_groups,
            )
            extra = _extra(
                config, calibration, history, train_set, val_set, pos_weight, best_epoch, started
            )
            ckpt.save(
                make_checkpoint(scored, config, calibration, extra, regions, heat=heat), best_path
            )
            log.info(
                "new best: val AUROC %.4f, threshold %.3f → sensitivity %.3f, specificity %.3f",
                val_auroc, calibration.threshold, calibration.val_metrics["sensitivity"],
                calibration.val_metrics["specificity"],
            )  # fmt: skip
        _save_state(
            state_path,
            {
                "format": STATE_FORMAT,
                "config": config.to_dict(),
                "epoch": epoch + 1,
                "net": net.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else {},
                "ema_updates": ema.updates if ema is not None else 0,
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best_auroc": best_auroc,
                "best_epoch": best_epoch,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            },
        )

    best = ckpt.load(best_path)
    best.extra["history"] = history
    # Summed over epochs so that a resumed run counts every epoch, not only this process's.
    best.extra["train_seconds"] = round(sum(h["seconds"] for h in history), 1)
    best.extra["flip_tta_val_auroc"] = _flip_tta_auroc(best, val_set, val_labels)
    ckpt.save(best, config.out)
    log.info(
        "saved %s (%s): val AUROC %.4f at epoch %d",
        config.out,
        best.version,
        best_auroc,
        best_epoch + 1,
    )
    return best


def _flip_tta_auroc(
    checkpoint: ckpt.Checkpoint, images: ImageSet, labels: np.ndarray
) -> float | None:
    """What averaging with a horizontally flipped copy would give (informational only)."""
    outputs = raw_outputs(dataclasses.replace(checkpoint, flip_tta=True), images)
    return auroc(labels, outputs[:, 0].numpy())


def _outlines(config: TrainConfig) -> dict[str, Outlines] | None:
    """The radiologists' outlines beside the data, when the heat head is wanted and they exist."""
    if config.heat_weight <= 0:
        return None
    if config.arch not in architectures.LITE_WEIGHTS:
        log.info("the heat head is built on EfficientNet-Lite only: %s trains without", config.arch)
        return None
    path = outline_files.find(config.data)
    if path is None:
        log.info("no annotations.json beside the data: training without a heat head")
        return None
    outlines = outline_files.load(path)
    log.info("heat head trained on %d outlined images (%s)", len(outlines), path)
    return outlines


def _groups(config: TrainConfig, images: ImageSet) -> np.ndarray | None:
    """Each image's study group from labels.csv (its own file name where unlisted)."""
    labels_csv = find_labels_csv(config.data)
    if labels_csv is None:
        return None
    return image_groups(images.paths, read_labels(labels_csv))


def _pointing(heat_logits: np.ndarray, images: ImageSet, grid: int) -> float:
    """Share of outlined images whose hottest heat-map cell touches a radiologist's box."""
    assert images.masks is not None
    cells = F.adaptive_max_pool2d(images.masks.float().unsqueeze(1), grid).flatten(1) > 0
    outlined = cells.any(dim=1)
    if not bool(outlined.any()):
        return 0.0
    top = torch.as_tensor(heat_logits).argmax(dim=1)
    hits = cells[torch.arange(len(top)), top]
    return float(hits[outlined].float().mean())


def _region_targets(
    config: TrainConfig, train_set: ImageSet, val_set: ImageSet
) -> tuple[tuple[str, ...], torch.Tensor, np.ndarray]:
    """Region names and per-image targets (-1 where unknown) from the data's labels.csv.

    No region head (empty names) when the weight is 0, there is no labels.csv, or the train
    images name fewer than two regions.
    """
    empty = torch.full((len(train_set),), -1), np.full(len(val_set), -1)
    labels_csv = find_labels_csv(config.data) if config.region_weight > 0 else None
    if labels_csv is None:
        if config.region_weight > 0:
            log.info("no labels.csv beside the data: training a single-head model")
        return (), *empty
    info = read_labels(labels_csv)
    found = {known.region for p in train_set.paths if (known := info.get(p.name)) is not None}
    names = tuple(sorted(found - {"unknown"}))
    if len(names) < 2:
        log.info("labels.csv names fewer than two regions: training a single-head model")
        return (), *empty
    log.info("region head over %s (%s)", ", ".join(names), labels_csv)
    return (
        names,
        torch.tensor(region_indices(train_set.paths, info, names), dtype=torch.long),
        np.array(region_indices(val_set.paths, info, names), dtype=np.int64),
    )


def _extra(
    config: TrainConfig,
    calibration: Calibration,
    history: list[dict[str, Any]],
    train_set: ImageSet,
    val_set: ImageSet,
    pos_weight: float,
    best_epoch: int,
    started: float,
) -> dict[str, Any]:
    return {
        "recipe": config.to_dict(),
        "best_epoch": best_epoch + 1,
        "val_metrics": calibration.val_metrics,
        "logit_offset": calibration.logit_offset,
        "pos_weight": pos_weight,
        "history": list(history),
        "train_images": len(train_set),
        "train_fractured": train_set.n_positive,
        "val_images": len(val_set),
        "val_fractured": val_set.n_positive,
        "skipped_files": len(train_set.skipped) + len(val_set.skipped),
        "train_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": str(torch.__version__),
        "note": "Decision support only, not for clinical use.",
    }
