"""Pixel coverage: the share of each ground-truth object inside the union of the predicted
regions above threshold (a face inside a blurred person is anonymized)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.coco.rle import as_rle
from evaluation.scoring.instances import DetectionArrays, TruthArrays


def covered_shares(
    gt_anns: list[dict],
    dt_anns: list[dict],
    truth: TruthArrays,
    dets: DetectionArrays,
    above: np.ndarray,
    image_ids: np.ndarray,
    heights: dict,
    widths: dict,
) -> np.ndarray:
    """Per object, the share of its pixels inside the union of all predictions above threshold
    (masks, else boxes); nan for objects that are not counted."""
    share = np.full(len(truth.image), np.nan)
    objects = np.flatnonzero(~truth.ignored)
    objects = objects[np.argsort(truth.image[objects], kind="stable")]
    object_bounds = np.searchsorted(truth.image[objects], np.arange(len(image_ids) + 1))
    shown = np.flatnonzero(above)
    shown = shown[np.argsort(dets.image[shown], kind="stable")]
    shown_bounds = np.searchsorted(dets.image[shown], np.arange(len(image_ids) + 1))
    for i, image_id in enumerate(image_ids.tolist()):
        of_image = objects[object_bounds[i] : object_bounds[i + 1]]
        if not len(of_image):
            continue
        predicted = shown[shown_bounds[i] : shown_bounds[i + 1]]
        if not len(predicted):
            share[of_image] = 0.0
            continue
        h, w = heights[image_id], widths[image_id]
        regions = _regions(predicted, dets.has_mask, dt_anns, dets.box, h, w, merge=False)
        union = mask_utils.merge(regions) if len(regions) > 1 else regions[0]
        shapes = _regions(of_image, truth.has_mask, gt_anns, truth.box, h, w, merge=True)
        # With the union as a "crowd" region, pycocotools' IoU is intersection / object area.
        share[of_image] = mask_utils.iou(shapes, [union], [1])[:, 0]
    return share


def _regions(
    indices: np.ndarray,
    has_mask: np.ndarray,
    anns: list[dict],
    boxes: np.ndarray,
    height: int,
    width: int,
    merge: bool,
) -> list[dict]:
    """RLEs of annotations (masks, else boxes): one per annotation in order when `merge`, else
    any number in any order (for a union)."""
    with_mask = has_mask[indices]
    rles: list[Any] = [None] * len(indices) if merge else []
    for k in np.flatnonzero(with_mask).tolist():
        seg = anns[indices[k]]["segmentation"]
        if merge:
            rles[k] = as_rle(seg, height, width)
        elif isinstance(seg, list):
            rles.extend(mask_utils.frPyObjects(seg, height, width))  # polygons of one union
        else:
            rles.append(as_rle(seg, height, width))
    if not with_mask.all():
        boxed = np.flatnonzero(~with_mask)
        filled = mask_utils.frPyObjects(boxes[indices[boxed]], height, width)
        if merge:
            for k, region in zip(boxed.tolist(), filled, strict=True):
                rles[k] = region
        else:
            rles.extend(filled)
    return rles
