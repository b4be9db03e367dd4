"""Grad-CAM heatmaps for the fracture logit (pytorch-grad-cam), and overlays on the radiograph."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

OVERLAY_MAX_SIDE = 1024


def last_conv_layer(net: nn.Module) -> nn.Module:
    """The deepest Conv2d: where spatial detail and class evidence last meet."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]


def gradcam(net: nn.Module, batch: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) normalised inputs → (N, H, W) class-activation maps in [0, 1]."""
    device = next(net.parameters()).device
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    targets = [ClassifierOutputTarget(0) for _ in range(batch.shape[0])]
    with GradCAM(model=net, target_layers=[last_conv_layer(net)]) as cam:
        masks = cam(input_tensor=batch, targets=targets)
    return np.asarray(masks, dtype=np.float32)


def overlay(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Greyscale (H, W) in [0, 1] plus a mask of any size → RGB uint8 heatmap overlay."""
    height, width = pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    cam = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    return show_cam_on_image(np.clip(rgb, 0, 1), np.clip(cam, 0, 1), use_rgb=True, image_weight=0.6)
