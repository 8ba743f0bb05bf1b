"""An annotation's results -> usable regions (each a mask patch or a keypoint) and the
`same_object` links between them; every region problem is reported, none stops the task."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.convert.records import ImageRef, RegionError, Reporter
from annotation.convert.region_masks import (
    brush_region,
    ellipse_region,
    polygon_points,
    polygon_region,
    polygon_self_intersects,
    read_numbers,
    rectangle_region,
)
from annotation.labeling_config import SAME_OBJECT

_SHAPE_TYPES = ("polygonlabels", "brushlabels", "ellipselabels", "rectanglelabels")
_KEYPOINT_TYPE = "keypointlabels"
_RELATION_TYPE = "relation"


@dataclass(frozen=True)
class Patch:
    """A mask kept as its bounding box only: a task's regions on a large panorama would not
    fit in memory as full masks."""

    top: int
    left: int
    crop: np.ndarray  # bool

    @staticmethod
    def of(mask: np.ndarray) -> Patch:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        return Patch(int(rows[0]), int(cols[0]), crop)

    @staticmethod
    def union(patches: list[Patch]) -> Patch:
        top, left = min(p.top for p in patches), min(p.left for p in patches)
        bottom, right = max(p.bottom for p in patches), max(p.right for p in patches)
        crop = np.zeros((bottom - top, right - left), bool)
        for p in patches:
            crop[p.top - top : p.bottom - top, p.left - left : p.right - left] |= p.crop
        return Patch(top, left, crop)

    @property
    def bottom(self) -> int:
        return self.top + self.crop.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.crop.shape[1]

    def holds(self, row: int, col: int) -> bool:
        inside = self.top <= row < self.bottom and self.left <= col < self.right
        return inside and bool(self.crop[row - self.top, col - self.left])

    def full(self, width: int, height: int) -> np.ndarray:
        mask = np.zeros((height, width), bool)
        mask[self.top : self.bottom, self.left : self.right] = self.crop
        return mask


@dataclass
class Region:
    id: str
    type: str
    label: str
    patch: Patch | None = None  # shapes
    point: tuple[float, float] | None = None  # keypoints: continuous pixels


def read_regions(
    result: list[dict[str, Any]],
    ref: ImageRef,
    classes: Sequence[str],
    keypoints: Sequence[str],
    report: Reporter,
    counts: Counter[str],
) -> tuple[dict[str, Region], list[tuple[str, str]]]:
    """The annotation's usable regions by id (in order) and its same_object links."""
    regions: dict[str, Region] = {}
    seen: set[str] = set()  # every region id, kept or not: relations to left-out ones are fine
    relations: list[dict[str, Any]] = []
    mismatched: set[tuple[Any, Any]] = set()
    for item in result:
        kind = str(item.get("type", "")).lower()
        if kind == _RELATION_TYPE:
            relations.append(item)
            continue
        rid = str(item.get("id"))
        if kind not in (*_SHAPE_TYPES, _KEYPOINT_TYPE):
            report(
                "unsupported",
                f"result {rid} of type {kind!r} (from {item.get('from_name')!r}) is not part of "
                "the labeling config; ignored",
            )
            continue
        counts["regions"] += 1
        if rid in seen:
            report("malformed_region", f"region id {rid} appears twice; the second is left out")
            continue
        seen.add(rid)
        size = (item.get("original_width"), item.get("original_height"))
        if None not in size and size != (ref.width, ref.height):
            mismatched.add(size)
        try:
            region = _region(item, rid, kind, ref, classes, keypoints)
            if kind == "polygonlabels" and polygon_self_intersects(polygon_points(item, ref)):
                report(
                    "self_intersecting",
                    f"region {rid} ({kind} '{region.label}'): edges cross; kept as filled",
                )
        except RegionError as e:
            report(e.kind, f"region {rid} ({kind}): {e}")
            continue
        regions[rid] = region
        counts["regions.kept"] += 1
    if mismatched:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(mismatched, key=str))
        report(
            "size_mismatch",
            f"regions drawn on an image of {sizes}, the image is {ref.width}x{ref.height}; "
            "scaled to the image",
        )
    links: list[tuple[str, str]] = []
    for rel in relations:
        a, b = str(rel.get("from_id")), str(rel.get("to_id"))
        labels = rel.get("labels") or []
        if any(label != SAME_OBJECT for label in labels):
            report("unsupported", f"relation {a} -> {b} labelled {labels}; ignored")
        elif a not in seen or b not in seen:
            report("dangling_relation", f"relation {a} -> {b} names a missing region; ignored")
        elif a in regions and b in regions:
            links.append((a, b))
    return regions, links


def _region(
    item: dict[str, Any],
    rid: str,
    kind: str,
    ref: ImageRef,
    classes: Sequence[str],
    keypoints: Sequence[str],
) -> Region:
    value = item.get("value")
    if not isinstance(value, dict):
        raise RegionError("malformed_region", "no 'value' object; left out")
    label = _label(value, kind, keypoints if kind == _KEYPOINT_TYPE else classes)
    if item.get("image_rotation") not in (None, 0, 0.0):
        raise RegionError(
            "unsupported", f"drawn on a view rotated by {item['image_rotation']}°; left out"
        )
    width, height = ref.width, ref.height
    if kind == _KEYPOINT_TYPE:
        x, y = read_numbers(value, "x", "y")
        x, y = x * width / 100, y * height / 100
        if not (math.isfinite(x) and math.isfinite(y)):
            raise RegionError("degenerate", f"keypoint '{label}' at ({x}, {y}); left out")
        if not (0 <= x <= width and 0 <= y <= height):
            raise RegionError(
                "outside_image",
                f"keypoint '{label}' at ({x:.1f}, {y:.1f}) px is outside the "
                f"{width}x{height} image; left out",
            )
        return Region(rid, kind, label, point=(x, y))
    if kind == "brushlabels":
        mask = brush_region(item, value, width, height)
        if not mask.any():
            raise RegionError("degenerate", f"'{label}' brush mask is empty; left out")
        return Region(rid, kind, label, patch=Patch.of(mask))
    if kind == "polygonlabels":
        mask = polygon_region(polygon_points(item, ref), label, width, height)
    elif kind == "ellipselabels":
        mask = ellipse_region(value, label, width, height)
    else:
        mask = rectangle_region(value, label, width, height)
    return Region(rid, kind, label, patch=Patch.of(mask))


def _label(value: dict[str, Any], kind: str, allowed: Sequence[str]) -> str:
    labels = value.get(kind)
    if not isinstance(labels, list) or not labels:
        raise RegionError("unknown_label", "no label; left out")
    distinct = list(dict.fromkeys(labels))
    if len(distinct) > 1:
        raise RegionError("ambiguous_label", f"several labels {distinct}; left out")
    label = distinct[0]
    if label not in allowed:
        raise RegionError(
            "unknown_label", f"label {label!r} is not one of {', '.join(allowed)}; left out"
        )
    return str(label)
