"""Pixel coverage: the share of each ground-truth object inside the union of the predicted
regions above threshold (a face inside a blurred person is anonymized), or inside a given
per-image mask of hidden pixels (what an anonymizer hides, as evaluate computes it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.coco.rle import as_rle
from data.errors import AnonlabError
from evaluation.scoring.coco_summary import gt_copy
from evaluation.scoring.instances import DetectionArrays, TruthArrays, truth_arrays
from evaluation.scoring.recall import is_identifiable

# A per-image mask of hidden pixels: (height, width) bool array, or a COCO RLE of that size.
HiddenMask = np.ndarray | Mapping[str, Any]


def object_shape(ann: dict, height: int, width: int) -> dict:
    """The pixels whose coverage is measured for a ground-truth annotation (as pycocotools gets
    it, `gt_copy`), as an RLE: its segmentation, else its box (rasterized as pycocotools
    rasterizes boxes)."""
    if "segmentation" in ann:
        return as_rle(ann["segmentation"], height, width)
    box = np.asarray([ann["bbox"]], dtype=np.float64)
    return mask_utils.frPyObjects(box, height, width)[0]


def judged_shapes(
    gt: dict, name: str, min_identifiable: Mapping[str, float] | None
) -> dict[int, list[tuple[int, dict]]]:
    """Per image id, the objects of class `name` that the scorer's `all` bucket counts (neither
    crowd nor ignored, identifiable by `min_identifiable`), each as (annotation id, its
    `object_shape`), in file order."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    copies = [gt_copy(a, *sizes[a["image_id"]]) for a in gt["annotations"]]
    image_ids = np.array(sorted(sizes), dtype=np.int64)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    classes = [c["name"] for c in categories]
    out: dict[int, list[tuple[int, dict]]] = {}
    if name not in classes or not copies:
        return out
    truth = truth_arrays(gt, copies, image_ids, category_ids)
    judged = ~truth.ignored & is_identifiable(truth, classes, min_identifiable)
    judged &= truth.category == classes.index(name)
    for k in np.flatnonzero(judged).tolist():
        image_id = gt["annotations"][k]["image_id"]
        shape = object_shape(copies[k], *sizes[image_id])
        out.setdefault(image_id, []).append((int(gt["annotations"][k]["id"]), shape))
    return out


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
    shown = np.flatnonzero(above)
    shown = shown[np.argsort(dets.image[shown], kind="stable")]
    shown_bounds = np.searchsorted(dets.image[shown], np.arange(len(image_ids) + 1))
    for i, image_id, of_image in _objects_by_image(truth, image_ids):
        predicted = shown[shown_bounds[i] : shown_bounds[i + 1]]
        if not len(predicted):
            share[of_image] = 0.0
            continue
        h, w = heights[image_id], widths[image_id]
        regions = _union_regions(predicted, dets.has_mask, dt_anns, dets.box, h, w)
        union = mask_utils.merge(regions) if len(regions) > 1 else regions[0]
        share[of_image] = _shares(of_image, gt_anns, union, h, w)
    return share


def hidden_shares(
    gt_anns: list[dict],
    truth: TruthArrays,
    image_ids: np.ndarray,
    heights: dict,
    widths: dict,
    hidden: Mapping[int, HiddenMask],
) -> np.ndarray:
    """Per object, the share of its pixels inside its image's hidden mask (`hidden[image id]`;
    an image without one hides nothing); nan for objects that are not counted."""
    share = np.full(len(truth.image), np.nan)
    for _, image_id, of_image in _objects_by_image(truth, image_ids):
        mask = hidden.get(image_id)
        if mask is None:
            share[of_image] = 0.0
            continue
        h, w = heights[image_id], widths[image_id]
        share[of_image] = _shares(of_image, gt_anns, hidden_rle(mask, h, w, image_id), h, w)
    return share


def hidden_rle(mask: HiddenMask, height: int, width: int, image_id: int) -> dict:
    """A hidden mask as a compressed RLE of the image's size; AnonlabError naming the image
    when its size is another."""
    if isinstance(mask, np.ndarray):
        if mask.shape != (height, width):
            raise AnonlabError(
                f"hidden mask of image {image_id} is {mask.shape} (h, w), the image is "
                f"{(height, width)}: compute it on the image's upright pixels"
            )
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    size = [int(s) for s in mask.get("size", ())]
    if size != [height, width]:
        raise AnonlabError(
            f"hidden mask (RLE) of image {image_id} has size {size}, the image is "
            f"{[height, width]} (h, w): compute it on the image's upright pixels"
        )
    return as_rle(dict(mask), height, width)


def _objects_by_image(truth: TruthArrays, image_ids: np.ndarray) -> list:
    """(image index, image id, its counted objects) for each image holding counted objects."""
    objects = np.flatnonzero(~truth.ignored)
    objects = objects[np.argsort(truth.image[objects], kind="stable")]
    bounds = np.searchsorted(truth.image[objects], np.arange(len(image_ids) + 1))
    return [
        (i, image_id, objects[bounds[i] : bounds[i + 1]])
        for i, image_id in enumerate(image_ids.tolist())
        if bounds[i + 1] > bounds[i]
    ]


def _shares(of_image: np.ndarray, gt_anns: list[dict], union: dict, h: int, w: int) -> np.ndarray:
    shapes = [object_shape(gt_anns[k], h, w) for k in of_image.tolist()]
    # With the union as a "crowd" region, pycocotools' IoU is intersection / object area.
    return mask_utils.iou(shapes, [union], [1])[:, 0]


def _union_regions(
    indices: np.ndarray,
    has_mask: np.ndarray,
    anns: list[dict],
    boxes: np.ndarray,
    height: int,
    width: int,
) -> list[dict]:
    """RLEs of predictions (masks, else boxes), in any order (for a union)."""
    with_mask = has_mask[indices]
    rles: list[Any] = []
    for k in np.flatnonzero(with_mask).tolist():
        seg = anns[indices[k]]["segmentation"]
        if isinstance(seg, list):
            rles.extend(mask_utils.frPyObjects(seg, height, width))  # polygons of one union
        else:
            rles.append(as_rle(seg, height, width))
    if not with_mask.all():
        boxed = np.flatnonzero(~with_mask)
        rles.extend(mask_utils.frPyObjects(boxes[indices[boxed]], height, width))
    return rles
