"""What evaluate decides on val for any detector it scores (a model, a champion, a peer): the
ground truth of the classes it finds, and its operating threshold per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from evaluation.score import score
from evaluation.scoring.options import ScoreOptions

__all__ = ["only_classes", "operating_thresholds"]


def operating_thresholds(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    classes: Sequence[str],
    options: ScoreOptions,
) -> dict[str, dict[str, Any]]:
    """Per class of `classes`, the highest score threshold whose recall (IoU) on these results
    reaches the class's target (score's operating point, not below `options.min_threshold`):
    `threshold`, `val_recall` (the recall there) and `reached`."""
    floor = options.min_threshold
    points = score(gt, results, replace(options, thresholds=floor, n_boot=0)).operating_points
    chosen: dict[str, dict[str, Any]] = {}
    for name in classes:
        point = points.get(name)
        chosen[name] = {
            "threshold": point.threshold if point else floor,
            "val_recall": point.recall if point else None,
            "reached": point.reached if point else False,
        }
    return chosen


def only_classes(gt: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """The ground truth of the classes a model detects (a keypoint model detects persons)."""
    keep = {c["id"] for c in gt["categories"] if c["name"] in classes}
    return {
        **gt,
        "categories": [c for c in gt["categories"] if c["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["category_id"] in keep],
    }
