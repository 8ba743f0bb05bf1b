"""Config sections read by training: augmentation, model definitions, and the training run.

`models` (root key) maps a model name to its `ModelConfig`, one file per model in `conf/model/`;
`train.models` lists the ones `dvc repro` trains (a `foreach` stage). Backbone names are checked
here, without importing torchvision, so a typo fails before any work starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data.config import Section

__all__ = [
    "BACKBONES",
    "AugmentConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
]


class AugmentConfig(Section):
    """The training-time augmentation, applied on the fly by the dataset (training/augment.py).

    Each transform is `{name: <albumentations class or NightDarkening>, <argument>: value}`.
    Names and arguments are checked when the pipeline is built, before any training step.
    """

    transforms: list[dict[str, Any]]
    # An instance cropped to less than this share of its box is dropped, mask and keypoints too.
    min_visibility: float = Field(ge=0, le=1)

    @field_validator("transforms")
    @classmethod
    def _named(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not isinstance(entry.get("name"), str):
                raise ValueError(f"transforms[{i}] needs a `name` (an albumentations transform)")
        return value


# torchvision backbones the model builder puts under an FPN. ResNets give five stages
# (trainable_layers 0..5); MobileNetV3 is the light CPU/edge backbone (0..6).
BACKBONES: dict[str, int] = {
    "resnet18": 5,
    "resnet34": 5,
    "resnet50": 5,
    "resnet101": 5,
    "resnext50_32x4d": 5,
    "resnext101_32x8d": 5,
    "wide_resnet50_2": 5,
    "mobilenet_v3_large": 6,
    "mobilenet_v3_small": 6,
}


class ModelConfig(Section):
    """One detection model: architecture, backbone, initial weights, input size, classes."""

    # maskrcnn: instances with boxes and masks; keypointrcnn: persons with head keypoints.
    kind: Literal["maskrcnn", "keypointrcnn"]
    # A torchvision backbone under an FPN (see BACKBONES).
    backbone: str
    # Initial weights: none (random), coco (torchvision's COCO detector for this kind and
    # backbone; class heads re-shaped to `classes`), imagenet (backbone only), or a local
    # .safetensors file written by anonlab. Anything but none/file downloads when first used.
    weights: str = "none"
    # Backbone stages that train, counted from the top; the rest stay frozen.
    trainable_layers: int = Field(ge=0)
    # The backbone's normalization. frozen_bn: batch norm with fixed statistics, for pretrained
    # weights (imagenet, coco). group_norm: learned group norm, for training from random weights,
    # where fixed statistics would leave the backbone unnormalized. Both ignore the batch, which
    # is 1-4 images per GPU and not synchronized across DDP processes.
    norm: Literal["frozen_bn", "group_norm"] = "frozen_bn"
    # Width of the FPN and of the heads' convolutions (mask head: this; keypoint head: twice
    # this). 256 is torchvision's (and its COCO weights'); narrower is faster:
    # 128 makes a CPU training step 2.0-2.7x faster (BENCHMARKS.md, train_step.py
    # --fpn-channels; the FPN, RPN and mask head convolutions dominate it). COCO weights need 256.
    fpn_channels: int = Field(default=256, ge=16)
    # The classes this model detects, a subset of taxonomy.classes; label i+1 is classes[i].
    classes: list[str] = Field(min_length=1)
    # Images are resized so the short side is min_size (long side at most max_size).
    min_size: int = Field(ge=32)
    max_size: int = Field(ge=32)
    # Region proposals kept per image after NMS (2x that before NMS), in training and inference.
    proposals_per_image: int = Field(ge=1)
    # Proposals sampled per image to train the box and mask heads (a quarter positives at most).
    # The mask head costs about 0.5 GFLOP per positive: the main lever of CPU training time.
    rois_per_image: int = Field(ge=1)
    # Detections per image at inference (masks are computed for each).
    detections_per_image: int = Field(ge=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(
                f"unknown backbone; known backbones: {', '.join(BACKBONES)} (torchvision names)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        most = BACKBONES[self.backbone]
        if self.trainable_layers > most:
            raise ValueError(
                f"trainable_layers = {self.trainable_layers}: {self.backbone} has {most} stages"
            )
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        if self.norm == "group_norm" and self.weights in ("imagenet", "coco"):
            raise ValueError(
                f"norm = group_norm with weights = {self.weights}: pretrained weights carry "
                "batch-norm statistics; use norm: frozen_bn, or weights: none"
            )
        if self.fpn_channels != 256 and self.weights == "coco":
            raise ValueError(
                f"fpn_channels = {self.fpn_channels} with weights = coco: torchvision's COCO "
                "detectors have 256-wide FPNs and heads; use fpn_channels: 256, or imagenet/none"
            )
        if self.kind == "keypointrcnn" and self.classes != ["person"]:
            raise ValueError(f"a keypointrcnn model detects [person] only, not {self.classes}")
        return self


class OptimizerConfig(Section):
    name: Literal["sgd", "adamw"]
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)  # SGD only
    weight_decay: float = Field(ge=0)


class ScheduleConfig(Section):
    # cosine: from lr down to lr * min_factor at max_steps; step: times gamma at each milestone.
    name: Literal["cosine", "step"]
    # Linear warm-up from lr * warmup_factor over the first warmup_steps steps.
    warmup_steps: int = Field(ge=0)
    warmup_factor: float = Field(gt=0, le=1)
    min_factor: float = Field(ge=0, le=1)
    # step schedule: fractions of max_steps where the rate is multiplied by gamma.
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in value) or value != sorted(value):
            raise ValueError("milestones are ascending fractions of max_steps, each in (0, 1)")
        return value


class TrainConfig(Section):
    """One training run per model in `models`; every key is logged to MLflow as a parameter."""

    # Names in the root `models` mapping that `dvc repro` trains, one stage each.
    models: list[str] = Field(min_length=1)
    # auto: the first CUDA GPU when there is one (the local one under torchrun), else the CPU.
    device: str = "auto"
    # auto: bf16 autocast on GPUs that support it, fp32 elsewhere; fp16 uses a gradient scaler.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_steps: int = Field(ge=1)
    # Images per step per process (under torchrun the global batch is this times the processes).
    batch_size: int = Field(ge=1)
    # DataLoader worker processes per training process; 0 loads in the training process.
    workers: int = Field(ge=0)
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    # Gradients are clipped to this global L2 norm; null turns clipping off.
    clip_grad_norm: float | None = Field(gt=0)
    # Steps between validations (they pick `best`; `anonlab train` validates with the release
    # scorer, see README) and between checkpoints (0: only at the end).
    val_every: int = Field(ge=0)
    checkpoint_every: int = Field(ge=0)
    log_every: int = Field(ge=1)
    # Continue from the model's last checkpoint (exactly: data order, RNG, optimizer, schedule).
    resume: bool = False
    # torch.use_deterministic_algorithms; on the CPU a seeded run then repeats bit for bit.
    deterministic: bool = True

    @field_validator("models")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a model twice")
        return value
