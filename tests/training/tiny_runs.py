"""Overrides for a training run of seconds on the CPU: a tiny Mask R-CNN on a few synthetic
images, validated and checkpointed every few steps."""

from __future__ import annotations

MODEL = "maskrcnn_mobilenet_v3_fpn"
# Three capture sessions of 6 frames: train, val (panorama tiles, with identifiable faces, on
# which evaluate chooses the head threshold) and the holdout; every validation predicts on val.
DATA = [
    "collect.synthetic.count=18",
    "collect.synthetic.frames_per_session=6",
    "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]",
]
TINY = [
    f"train.models=[{MODEL}]",
    f"models.{MODEL}.backbone=resnet18",
    f"models.{MODEL}.trainable_layers=5",
    f"models.{MODEL}.min_size=64",
    f"models.{MODEL}.max_size=96",
    f"models.{MODEL}.proposals_per_image=50",
    f"models.{MODEL}.rois_per_image=16",
    f"models.{MODEL}.detections_per_image=10",
    "train.max_steps=6",
    "train.batch_size=2",
    "train.val_every=3",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.schedule.warmup_steps=2",
]
