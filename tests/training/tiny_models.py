"""A tiny Mask R-CNN (ResNet-18 FPN at 64-96 px) that builds and runs in a second on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from training.config import ModelConfig
from training.models import build_model, model_files_config, save_weights

TINY = ModelConfig(
    kind="maskrcnn",
    backbone="resnet18",
    weights="none",
    trainable_layers=5,
    classes=["face", "person", "license_plate", "vehicle"],
    min_size=64,
    max_size=96,
    proposals_per_image=50,
    rois_per_image=16,
    detections_per_image=10,
)


def save_tiny_model(folder: Path) -> tuple[torch.nn.Module, Path, Path]:
    """A random tiny Mask R-CNN (seed 0) in eval mode, saved in `folder` as
    weights.safetensors + config.yaml."""
    torch.manual_seed(0)
    model = build_model(TINY, keypoint_names=[]).eval()
    weights, config = folder / "weights.safetensors", folder / "config.yaml"
    save_weights(model, weights)
    config.write_text(yaml.safe_dump(model_files_config(TINY, keypoint_names=[])))
    return model, weights, config
