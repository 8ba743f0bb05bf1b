"""A tiny Mask R-CNN (ResNet-18 FPN at 64-96 px) that builds and runs in a second on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from training.config import ModelConfig
from training.models import build_model, model_files_config, save_weights
from training.tracking import Tracker

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


def register_model(root: Path, name: str, weights: Path, config: Path) -> str | None:
    """Register `weights` + `config` as model `name` in `root`'s MLflow registry, as training
    registers a model (a run in anonlab/train, the version tagged with the weights' sha256);
    the new version."""
    with Tracker(
        root,
        experiment="anonlab/train",
        run_name=name,
        params={},
        tags={},
        system_metrics=False,
    ) as tracker:
        return tracker.log_model(weights=weights, config=config, registered_name=name)
