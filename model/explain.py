"""Grad-CAM (Selvaraju et al., 2017) with torch hooks, fused into the prediction forward pass.

The map for image i is ReLU(Σ_c w_c · A_c) with w_c the spatial mean of ∂logit_i/∂A_c, A the
output of the network's last convolution, scaled to [0, 1] per image — the same definition and
scaling as the `grad-cam` package. Doing it with hooks lets one forward pass serve both the
prediction and the map, and gradients flow back only to that last layer (the maps are
identical to a full backward pass). The package cost a second forward pass, a full backward
pass and about 430 MB of worker memory (it imports scikit-learn and torchvision's detection ops).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

OVERLAY_MAX_SIDE = 1024
# The worker stores the Grad-CAM grid itself (e.g. 8×8 for a 256 px input) as an 8-bit PNG under
# this suffix; the overlay is drawn when someone looks at it. Rendering and PNG-encoding a
# full-size overlay for every positive cost the worker more than a third of its batch time.
MAP_SUFFIX = ".cam.png"


def last_conv_layer(net: nn.Module) -> nn.Module:
    """The deepest Conv2d: where spatial detail and class evidence last meet."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]


@contextmanager
def capture_activations(net: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, forward passes record the last conv layer's output, with gradients
    tracked from that layer onwards only."""
    layer = last_conv_layer(net)
    captured: dict[str, torch.Tensor] = {}
    saved = [(p, p.requires_grad) for p in net.parameters()]
    for parameter, _ in saved:
        parameter.requires_grad_(False)
    for parameter in layer.parameters():
        parameter.requires_grad_(True)

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        # The first pass's: with flip TTA a second, mirrored pass follows; the gradient of the
        # averaged logit with respect to the first pass is half the plain one, the same map.
        captured.setdefault("activations", output)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            yield captured
    finally:
        handle.remove()
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


def cams(logits: torch.Tensor, activations: torch.Tensor, rows: list[int]) -> np.ndarray:
    """Grad-CAM maps (len(rows), h, w) in [0, 1] for the fracture logit of the given rows.

    Rows are independent in eval mode, so one backward pass of their summed logits gives each
    row its own gradient.
    """
    if not rows:
        return np.zeros((0, *activations.shape[-2:]), dtype=np.float32)
    (gradients,) = torch.autograd.grad(logits[rows].sum(), activations)
    acts = activations[rows].detach().float()
    weights = gradients[rows].float().mean(dim=(2, 3), keepdim=True)
    maps = torch.relu((weights * acts).sum(dim=1))
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    maps = maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)
    return maps.cpu().numpy().astype(np.float32)


def gradcam(net: nn.Module, batch: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) normalised inputs → (N, h, w) class-activation maps in [0, 1]."""
    device = next(net.parameters()).device
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    with capture_activations(net) as captured:
        logits = net(batch)[:, 0]
        return cams(logits, captured["activations"], list(range(batch.shape[0])))


def overlay(pixels: np.ndarray, mask: np.ndarray, image_weight: float = 0.6) -> np.ndarray:
    """Greyscale (H, W) in [0, 1] plus a map of any size → RGB uint8 jet-coloured overlay."""
    height, width = pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    cam = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((255 * np.clip(cam, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    blend = (1 - image_weight) * heat + image_weight * np.clip(grey, 0, 1)[:, :, None]
    return (255 * blend / blend.max()).astype(np.uint8)


def save_map(mask: np.ndarray, path: Path) -> Path:
    """Store a map in [0, 1] as an 8-bit greyscale PNG (a few hundred bytes)."""
    from PIL import Image

    grid = (np.clip(mask, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    Image.fromarray(grid, mode="L").save(path, compress_level=1)
    return path


def load_map(path: Path) -> np.ndarray:
    """A map stored by `save_map`, back in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
