"""Minimal box recall at the operating point, used only during training to validate periodically
and keep the `best` checkpoint.

It is not the release scorer: that one (`evaluation/`, pycocotools, mask IoU, coverage,
intervals) cannot be imported here, because dependencies point `training` <- `evaluation`.
This one counts, per class and size bucket, the ground-truth objects that a confident
detection of the same class finds at box IoU >= a threshold, with COCO's greedy matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.ops import box_iou

from data.size_buckets import BUCKETS, size_bucket

__all__ = ["RecallCounter", "flat_metrics"]

ALL = "all"


@dataclass
class RecallCounter:
    """Accumulates, per class name and size bucket, how many ground-truth objects were found.

    An object (not crowd) is found when a detection of its label with score >= `score_threshold`
    has box IoU >= `iou_threshold` with it. Matching is COCO's: per image and class, detections
    in descending score each take the unmatched object they overlap most, so one detection finds
    at most one object. Buckets come from the target's `area`, as in COCO. Unlike pycocotools,
    matching is done once over all sizes (not again per size range), so bucket counts add up to
    `all`; and there is no 100-detections cap (torchvision's models already return at most 100).
    """

    classes: Sequence[str]  # label i+1 is classes[i]
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    _n: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False)
    _found: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        if not self.classes:
            raise ValueError("RecallCounter: classes is empty; pass the model's class names")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(
                f"RecallCounter: iou_threshold={self.iou_threshold}, must be in (0, 1]"
            )
        for key in [(name, bucket) for name in self.classes for bucket in [*BUCKETS, ALL]]:
            self._n[key] = 0
            self._found[key] = 0

    def update(
        self,
        predictions: Sequence[Mapping[str, torch.Tensor]],
        targets: Sequence[Mapping[str, torch.Tensor]],
    ) -> None:
        """Count one batch: torchvision detection outputs and the dataset's targets, per image."""
        if len(predictions) != len(targets):
            raise ValueError(
                f"RecallCounter.update: {len(predictions)} predictions for {len(targets)} "
                "targets; pass one prediction per image"
            )
        for prediction, target in zip(predictions, targets, strict=True):
            self._update_image(prediction, target)

    def _update_image(
        self, prediction: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
    ) -> None:
        gt_boxes = _cpu(target["boxes"]).reshape(-1, 4).float()
        gt_labels = _cpu(target["labels"]).reshape(-1).long()
        areas = _cpu(target["area"]).reshape(-1).tolist()
        crowd = target.get("iscrowd")
        counted = (
            _cpu(crowd).reshape(-1) == 0
            if crowd is not None
            else torch.ones(len(gt_labels), dtype=torch.bool)
        )
        wrong = gt_labels[counted & ((gt_labels < 1) | (gt_labels > len(self.classes)))]
        if len(wrong):
            raise ValueError(
                f"RecallCounter: target label {int(wrong[0])} is outside 1..{len(self.classes)} "
                f"(classes {self.classes}); the counter and the dataset must share the classes"
            )

        scores = _cpu(prediction["scores"]).reshape(-1)
        confident = scores >= self.score_threshold
        det_boxes = _cpu(prediction["boxes"]).reshape(-1, 4).float()[confident]
        det_labels = _cpu(prediction["labels"]).reshape(-1).long()[confident]
        det_scores = scores[confident]

        for label in gt_labels[counted].unique().tolist():
            objects = torch.nonzero(counted & (gt_labels == label)).flatten()
            dets = torch.nonzero(det_labels == label).flatten()
            dets = dets[torch.argsort(det_scores[dets], descending=True, stable=True)]
            found = _greedy_match(box_iou(det_boxes[dets], gt_boxes[objects]), self.iou_threshold)
            name = self.classes[label - 1]
            for index, hit in zip(objects.tolist(), found, strict=True):
                for bucket in (size_bucket(areas[index]), ALL):
                    self._n[name, bucket] += 1
                    self._found[name, bucket] += int(hit)

    def result(self) -> dict[str, Any]:
        """Plain dict: per class and bucket `n`, `found`, `recall` (None when n is 0), and
        `mean_recall` over the classes that have objects."""
        recall: dict[str, dict[str, dict[str, Any]]] = {}
        for name in self.classes:
            recall[name] = {}
            for bucket in [*BUCKETS, ALL]:
                n, found = self._n[name, bucket], self._found[name, bucket]
                recall[name][bucket] = {"n": n, "found": found, "recall": found / n if n else None}
        per_class = [r[ALL]["recall"] for r in recall.values() if r[ALL]["n"]]
        return {
            "recall": recall,
            "mean_recall": sum(per_class) / len(per_class) if per_class else None,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "scorer": "minimal",
        }


def flat_metrics(result: Mapping[str, Any], prefix: str = "val") -> dict[str, float]:
    """MLflow metric names and values of a `RecallCounter.result()`; recalls that are None
    (no objects) are left out."""
    metrics: dict[str, float] = {}
    for name, buckets in result["recall"].items():
        for bucket, counts in buckets.items():
            if counts["recall"] is not None:
                metrics[f"{prefix}/recall/{name}/{bucket}"] = float(counts["recall"])
    if result["mean_recall"] is not None:
        metrics[f"{prefix}/mean_recall"] = float(result["mean_recall"])
    return metrics


def _greedy_match(iou: torch.Tensor, threshold: float) -> list[bool]:
    """Which objects (columns) are found, given IoU of detections (rows, by descending score):
    each detection takes the unmatched object it overlaps most, if that IoU is >= threshold."""
    taken = torch.zeros(iou.shape[1], dtype=torch.bool)
    for row in iou:
        free = row.masked_fill(taken, -1.0)
        if not len(free):
            break
        best = int(torch.argmax(free))
        if free[best] >= threshold:
            taken[best] = True
    return taken.tolist()


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(tensor).detach().cpu()
