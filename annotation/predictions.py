"""A detection model's detections as Label Studio regions, in the shapes the labeling interface
offers for each class (`annotation.labeling_config`) and that pull converts back
(`annotation.convert`).

A detection's extent is its mask's (its box's when it has no mask), in the upright image's
pixels. Per class, the first that applies:
- offered an ellipse (faces): the ellipse inscribed in the extent;
- with a mask and offered a brush (persons, vehicles, classes the mapping does not know): the
  mask as brush RLE at the image's size, so pull gets back exactly the pixels the model found;
- offered a rectangle (plates, box-only detections of classes the mapping does not know): the
  extent;
- offered a polygon (a box-only model's persons): the box as a 4-point polygon through the
  centres of its corner pixels, which pull fills back to the box's pixels.
Keypoints (when the taxonomy has them and the model finds them) become one `keypointlabels`
region each, inside the image and scored above `KEYPOINT_MIN_SCORE`, linked to their object by
a `same_object` relation. In a panorama, an ellipse, rectangle or polygon whose box runs past
the right edge (across the seam) is drawn at both ends of the image and the two are linked as
one object, as annotators draw it; a brush mask wraps by itself. Detections of a class the
taxonomy does not have, and keypoints it does not name, are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.convert.brush_rle import encode_brush_rle
from annotation.labeling_config import IMAGE, KEYPOINT_CONTROL, SAME_OBJECT
from serving.runtime.detections import Detections, mask_window
from serving.runtime.tiles import Detector, TilingSpec

# A keypoint's score is the peak of its heatmap's logits; those at or below this are left for
# the annotator to place.
KEYPOINT_MIN_SCORE = 0.0
KEYPOINT_WIDTH = 0.3  # percent of the image width: the size Label Studio draws a keypoint at

__all__ = ["KEYPOINT_MIN_SCORE", "ModelDetector", "detection_regions", "percent"]


@dataclass(frozen=True)
class ModelDetector:
    """A detection model as push runs it: the runtime's detector over windows of `spec`, what
    its labels and keypoints are, and the `model_version` its predictions carry."""

    detector: Detector
    spec: TilingSpec
    classes: Sequence[str]  # label i + 1 is classes[i]
    keypoint_names: Sequence[str]
    model_version: str  # "<registered name>:<version>"


def detection_regions(
    dets: Detections,
    *,
    classes: Sequence[str],
    keypoint_names: Sequence[str],
    offered: Mapping[str, Sequence[str]],
    width: int,
    height: int,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """The Label Studio results (regions and relations) of `dets`, found on the upright
    `width` x `height` image; `offered` is `labeling_config.labels_by_control` of the taxonomy.
    Region ids start with `prefix`."""
    out: list[dict[str, Any]] = []
    common = {
        "to_name": IMAGE,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
    }
    for i in range(len(dets)):
        label = classes[int(dets.labels[i]) - 1]
        shapes = _shapes(dets, i, label, offered, width, height)
        if not shapes:
            continue
        rid = f"{prefix}{i}"
        score = round(float(dets.scores[i]), 4)
        ids = [rid if k == 0 else f"{rid}-{k}" for k in range(len(shapes))]
        for region_id, (control, value) in zip(ids, shapes, strict=True):
            out.append(
                {
                    **common,
                    "id": region_id,
                    "from_name": control,
                    "type": f"{control}labels",
                    "value": value,
                    "score": score,
                }
            )
        for j, (x, y) in _keypoints(dets, i, keypoint_names, offered, width, height):
            out.append(
                {
                    **common,
                    "id": f"{rid}-kp{j}",
                    "from_name": KEYPOINT_CONTROL,
                    "type": "keypointlabels",
                    "value": {
                        "x": percent(x, width),
                        "y": percent(y, height),
                        "width": KEYPOINT_WIDTH,
                        "keypointlabels": [keypoint_names[j]],
                    },
                    "score": score,
                }
            )
            ids.append(f"{rid}-kp{j}")
        out.extend(_relation(rid, other) for other in ids[1:])
    return out


def _shapes(
    dets: Detections,
    i: int,
    label: str,
    offered: Mapping[str, Sequence[str]],
    width: int,
    height: int,
) -> list[tuple[str, dict[str, Any]]]:
    """(control, value) of each region that draws detection i; empty when none may."""

    def offers(control: str) -> bool:
        return label in offered.get(control, ())

    extent = _extent(dets, i)
    if extent is None:
        return []
    x0, y0, x1, y1 = extent
    # Across the seam, the part past the right edge shows at the left end.
    shifts = [0.0, -float(width)] if x1 > width else [0.0]
    if offers("ellipse"):
        return [
            (
                "ellipse",
                {
                    "x": percent((x0 + x1) / 2 + shift, width),
                    "y": percent((y0 + y1) / 2, height),
                    "radiusX": percent((x1 - x0) / 2, width),
                    "radiusY": percent((y1 - y0) / 2, height),
                    "rotation": 0,
                    "ellipselabels": [label],
                },
            )
            for shift in shifts
        ]
    if dets.masks is not None and offers("brush"):
        mask = dets.full_mask(i, width, height)
        value = {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}
        return [("brush", value)]
    if offers("rectangle"):
        return [
            (
                "rectangle",
                {
                    "x": percent(x0 + shift, width),
                    "y": percent(y0, height),
                    "width": percent(x1 - x0, width),
                    "height": percent(y1 - y0, height),
                    "rotation": 0,
                    "rectanglelabels": [label],
                },
            )
            for shift in shifts
        ]
    if offers("polygon"):
        # Through the centres of the box's corner pixels: pull fills a polygon with its
        # outline, so it gets back exactly the pixels of the box.
        ix0, iy0, ix1, iy1 = mask_window(dets.boxes[i])
        left, top, right, bottom = ix0 + 0.5, iy0 + 0.5, ix1 - 0.5, iy1 - 0.5
        corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
        return [
            (
                "polygon",
                {
                    "points": [[percent(x + shift, width), percent(y, height)] for x, y in corners],
                    "closed": True,
                    "polygonlabels": [label],
                },
            )
            for shift in shifts
        ]
    return []


def _extent(dets: Detections, i: int) -> tuple[float, float, float, float] | None:
    """x0, y0, x1, y1 of detection i's mask pixels (its box without a mask); None when its mask
    is empty. In a panorama x1 may pass the width, as the box's does."""
    if dets.masks is None:
        x0, y0, x1, y1 = (float(v) for v in dets.boxes[i])
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
    mask = dets.masks[i]
    if not mask.any():
        return None
    ix0, iy0, _, _ = mask_window(dets.boxes[i])
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        float(ix0 + cols[0]),
        float(iy0 + rows[0]),
        float(ix0 + cols[-1] + 1),
        float(iy0 + rows[-1] + 1),
    )


def _keypoints(
    dets: Detections,
    i: int,
    names: Sequence[str],
    offered: Mapping[str, Sequence[str]],
    width: int,
    height: int,
) -> list[tuple[int, tuple[float, float]]]:
    """(index, (x, y)) of detection i's keypoints that become regions."""
    if dets.keypoints is None:
        return []
    allowed = set(offered.get(KEYPOINT_CONTROL, ()))
    out = []
    for j, (x, y, score) in enumerate(dets.keypoints[i].tolist()):
        named = j < len(names) and names[j] in allowed
        if named and score > KEYPOINT_MIN_SCORE and 0 <= x < width and 0 <= y < height:
            out.append((j, (x, y)))
    return out


def _relation(from_id: str, to_id: str) -> dict[str, Any]:
    return {
        "type": "relation",
        "from_id": from_id,
        "to_id": to_id,
        "direction": "right",
        "labels": [SAME_OBJECT],
    }


def percent(pixels: float, size: int) -> float:
    """`pixels` of an image side of `size` pixels, in percent (Label Studio's coordinates)."""
    return round(100.0 * pixels / size, 4)
