"""The synthetic ground truth as a Label Studio export, as if annotators had labelled the
image.

Label Studio regions (all on `image`): faces are ellipses (`ellipse`); persons and vehicles are
polygons (`polygon`) traced from the visible mask, one per connected piece of at least 4
pixels, vertices at the centres of its boundary pixels; plates are rotated rectangles
(`rectangle`); head keypoints with v > 0 are `keypoint` regions. An object drawn as several
regions (pieces split by the seam or by an occluder; a face or plate drawn once on each side of
the seam; a person's keypoints) stays one object: its first region is linked to each other one
by a relation `{"type": "relation", "labels": ["same_object"], "direction": "bi"}`, and a
converter rebuilds objects as the groups these relations connect.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import cv2
import numpy as np

from data.shapes import centred_rectangle_corners, ellipse_reach
from data.synthetic.compose import MIN_PIECE, pieces
from data.synthetic.images import SyntheticImage, SyntheticObject

SAME_OBJECT = "same_object"


def labelstudio_task(img: SyntheticImage, image_url: str, task_id: int) -> dict[str, Any]:
    """The image's ground truth as one task of a Label Studio JSON export: one completed
    annotation whose result lists every region (see the module docstring for the mapping)."""
    width, height = img.width, img.height
    result: list[dict[str, Any]] = []
    for obj in img.objects:
        regions = _regions(obj, width, height, img.panorama)
        for region in regions:
            region.update(
                original_width=width,
                original_height=height,
                image_rotation=0,
                to_name="image",
                origin="manual",
            )
        result.extend(regions)
        result.extend(
            {
                "type": "relation",
                "from_id": regions[0]["id"],
                "to_id": other["id"],
                "direction": "bi",
                "labels": [SAME_OBJECT],
            }
            for other in regions[1:]
        )
    annotator = 1 + task_id % 3
    created = img.captured_at + timedelta(days=3, minutes=7 * task_id)
    finished = created + timedelta(seconds=20 + 6 * len(result))
    annotation = {
        "id": task_id,
        "completed_by": annotator,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": _iso(finished),
        "updated_at": _iso(finished),
        "draft_created_at": _iso(created),
        "lead_time": float(20 + 6 * len(result)),
        "prediction": {},
        "result_count": len(result),
        "unique_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{image_url}#{task_id}")),
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": 1,
        "updated_by": annotator,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }
    return {
        "id": task_id,
        "data": {"image": image_url},
        "annotations": [annotation],
        "drafts": [],
        "predictions": [],
        "meta": {},
        "created_at": _iso(img.captured_at + timedelta(days=2)),
        "updated_at": _iso(finished),
        "inner_id": task_id,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": annotator,
        "comment_authors": [],
        "file_upload": None,
    }


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _regions(obj: SyntheticObject, width: int, height: int, panorama: bool) -> list[dict[str, Any]]:
    values: list[tuple[str, str, dict[str, Any]]] = []  # (from_name, type, value)
    if obj.label in ("person", "vehicle"):
        for points in _polygons(obj.mask):
            value = {
                "points": [[float(x) / width * 100, float(y) / height * 100] for x, y in points],
                "closed": True,
                "polygonlabels": [obj.label],
            }
            values.append(("polygon", "polygonlabels", value))
    elif obj.label == "face" and obj.ellipse is not None:
        cx, cy, a, b, deg = obj.ellipse
        reach, _ = ellipse_reach(a, b, deg)
        for shift in _copies(cx - reach, cx + reach, width, panorama):
            value = {
                "x": (cx + shift) / width * 100,
                "y": cy / height * 100,
                "radiusX": a / width * 100,
                "radiusY": b / height * 100,
                "rotation": deg,
                "ellipselabels": ["face"],
            }
            values.append(("ellipse", "ellipselabels", value))
    elif obj.label == "license_plate" and obj.rect is not None:
        corners = centred_rectangle_corners(obj.rect)
        _, _, w, h, deg = obj.rect
        for shift in _copies(corners[:, 0].min(), corners[:, 0].max(), width, panorama):
            value = {
                "x": float(corners[0, 0] + shift) / width * 100,
                "y": float(corners[0, 1]) / height * 100,
                "width": w / width * 100,
                "height": h / height * 100,
                "rotation": deg,
                "rectanglelabels": ["license_plate"],
            }
            values.append(("rectangle", "rectanglelabels", value))
    for name, (x, y, v) in obj.keypoints.items():
        if v > 0:
            value = {
                "x": x / width * 100,
                "y": y / height * 100,
                "width": 0.3,
                "keypointlabels": [name],
            }
            values.append(("keypoint", "keypointlabels", value))
    return [
        {"id": f"o{obj.instance_id}-{k}", "from_name": name, "type": kind, "value": value}
        for k, (name, kind, value) in enumerate(values)
    ]


def _copies(lo: float, hi: float, width: int, panorama: bool) -> list[int]:
    """Horizontal shifts at which a shape spanning lo..hi shows in the frame: in panoramas a
    shape across the seam shows at both ends."""
    if not panorama:
        return [0]
    return [k * width for k in (0, -1, 1) if lo + k * width < width and hi + k * width > 0]


def _polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One outline per connected piece of at least MIN_PIECE pixels, largest first, as
    (N, 2) pixel-centre coordinates in continuous pixels."""
    labels, areas, offset = pieces(mask)
    outlines = []
    for k in np.argsort(-areas, kind="stable"):
        if areas[k] < MIN_PIECE:
            break
        piece = (labels == k + 1).astype(np.uint8)
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=len).reshape(-1, 2)
        if len(contour) < 3:  # a straight run of pixels: keep every point
            contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            contour = max(contours, key=len).reshape(-1, 2)
        outlines.append(contour.astype(np.float64) + offset + 0.5)
    return outlines
