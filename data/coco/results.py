"""COCO results (a detector's list of detections): the checks against the ground truth they
refer to, fast on valid input and naming the first bad result otherwise."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from data.coco.rle import RLE_CHARS
from data.coco.schema import (
    box_problem,
    is_finite_number,
    is_int,
    kind_of,
    segmentation_problem,
    shown,
)
from data.errors import AnonlabError


def check_predictions(
    data: Any, gt: dict, source: str = "predictions", *, gt_name: str | None = None
) -> None:
    """Raise AnonlabError naming the first result of `data` (a COCO results list; `#n` counts
    from 0) that is malformed or does not refer to an image and category of `gt`."""
    if not isinstance(data, list):
        raise AnonlabError(
            f"{source}: expected a JSON list of COCO results "
            f"({{image_id, category_id, bbox, score}}), found {kind_of(data)}"
        )
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    if _predictions_look_valid(data, sizes, category_ids):
        return
    in_gt = f" ({gt_name})" if gt_name else ""
    for n, prediction in enumerate(data):
        problem = _prediction_problem(prediction, sizes, category_ids, in_gt)
        if problem:
            raise AnonlabError(f"{source}: prediction #{n}: {problem}")
    raise AnonlabError(f"{source}: malformed predictions")  # the two checks disagree: a bug


def _prediction_problem(
    p: Any, sizes: dict[int, tuple[int, int]], category_ids: set[int], in_gt: str
) -> str | None:
    if not isinstance(p, dict):
        return f"expected an object, found {kind_of(p)}"
    for key in ("image_id", "category_id", "score", "bbox"):
        if key not in p:
            return f"missing '{key}'"
    if not is_int(p["image_id"]) or p["image_id"] not in sizes:
        return f"image_id {shown(p['image_id'])} is not in the ground truth{in_gt}"
    if not is_int(p["category_id"]) or p["category_id"] not in category_ids:
        return f"category_id {shown(p['category_id'])} is not a category of the ground truth{in_gt}"
    if not is_finite_number(p["score"]):
        return f"'score' must be a finite number, found {shown(p['score'])}"
    return box_problem(p["bbox"]) or segmentation_problem(
        p.get("segmentation"), *sizes[p["image_id"]]
    )


def _predictions_look_valid(
    data: list, sizes: dict[int, tuple[int, int]], category_ids: set[int]
) -> bool:
    """The checks of `_prediction_problem` on all results at once: fast, and silent on which
    result fails (the slow path finds it)."""
    if not all(type(p) is dict for p in data):
        return False
    try:
        image_ids = [p["image_id"] for p in data]
        categories = [p["category_id"] for p in data]
        scores = [p["score"] for p in data]
        boxes = [p["bbox"] for p in data]
    except KeyError:
        return False
    if not (set(map(type, image_ids)) <= {int} and set(image_ids) <= sizes.keys()):
        return False
    if not (set(map(type, categories)) <= {int} and set(categories) <= category_ids):
        return False
    if not set(map(type, scores)) <= {int, float}:
        return False
    if not all(type(b) is list and len(b) == 4 for b in boxes):
        return False
    if not set(map(type, itertools.chain.from_iterable(boxes))) <= {int, float}:
        return False
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = np.array(scores, dtype=np.float64)
            box_array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        except OverflowError:
            return False
    if not (np.isfinite(values).all() and np.isfinite(box_array).all()):
        return False
    if (box_array[:, 2:] < 0).any():
        return False
    size_lists = {image_id: [h, w] for image_id, (h, w) in sizes.items()}
    for p, image_id in zip(data, image_ids, strict=True):
        seg = p.get("segmentation")
        if not seg:
            continue
        if (
            type(seg) is dict
            and type(seg.get("counts")) is str
            and seg.get("size") == size_lists[image_id]
            and RLE_CHARS.fullmatch(seg["counts"])
            and set(map(type, seg["size"])) == {int}
        ):
            continue
        if segmentation_problem(seg, *sizes[image_id]):
            return False
    return True
