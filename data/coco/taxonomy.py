"""COCO categories from the taxonomy, as this project writes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The class whose instances carry the taxonomy's keypoints (Keypoint R-CNN's heads).
KEYPOINT_CLASS = "person"


def categories(classes: Sequence[str], keypoints: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories: ids 1..n in taxonomy order; the person category names its keypoints."""
    out: list[dict[str, Any]] = []
    for cid, name in enumerate(classes, start=1):
        category: dict[str, Any] = {"id": cid, "name": name, "supercategory": name}
        if name == KEYPOINT_CLASS:
            category.update(keypoints=list(keypoints), skeleton=[])
        out.append(category)
    return out
