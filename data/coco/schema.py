"""COCO ground truth's schema: the checks of images, categories, annotations, boxes and
segmentations, each naming the entry and what is wrong. A NaN or infinite number is a problem."""

from __future__ import annotations

import json
import math
from typing import Any

from data.coco.rle import RLE_CHARS
from data.errors import AnonlabError


def check_ground_truth(data: Any, source: str = "ground truth") -> None:
    """Raise AnonlabError naming the first entry of `data` that is not valid COCO ground truth."""
    if not isinstance(data, dict):
        raise AnonlabError(
            f"{source}: expected a COCO object with images, annotations and categories, "
            f"found {kind_of(data)}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnonlabError(
                f"{source}: missing '{key}' (COCO ground truth has images, annotations and "
                "categories)"
            )
        if not isinstance(data[key], list):
            raise AnonlabError(f"{source}: '{key}' must be a list, found {kind_of(data[key])}")
    for key in ("images", "categories"):
        if not data[key]:
            raise AnonlabError(f"{source}: '{key}' is empty; there is nothing to score against")

    sizes: dict[int, tuple[int, int]] = {}
    for n, image in enumerate(data["images"]):
        where = f"{source}: image #{n}"
        if not isinstance(image, dict):
            raise AnonlabError(f"{where}: expected an object, found {kind_of(image)}")
        image_id = image.get("id")
        if not is_int(image_id):
            raise AnonlabError(f"{where}: 'id' must be an integer, found {shown(image_id)}")
        if image_id in sizes:
            raise AnonlabError(f"{where}: duplicate image id {image_id}")
        width, height = image.get("width"), image.get("height")
        if not (is_int(width) and is_int(height) and width > 0 and height > 0):
            raise AnonlabError(
                f"{where} (id {image_id}): 'width' and 'height' must be positive integers, "
                f"found {shown(width)} x {shown(height)}"
            )
        sizes[image_id] = (height, width)

    names: set[str] = set()
    category_ids: set[int] = set()
    for n, category in enumerate(data["categories"]):
        where = f"{source}: category #{n}"
        if not isinstance(category, dict):
            raise AnonlabError(f"{where}: expected an object, found {kind_of(category)}")
        category_id, name = category.get("id"), category.get("name")
        if not is_int(category_id):
            raise AnonlabError(f"{where}: 'id' must be an integer, found {shown(category_id)}")
        if category_id in category_ids:
            raise AnonlabError(f"{where}: duplicate category id {category_id}")
        if not isinstance(name, str) or not name:
            raise AnonlabError(f"{where}: 'name' must be a non-empty string, found {shown(name)}")
        if name in names:
            raise AnonlabError(f"{where}: duplicate category name {name!r}")
        category_ids.add(category_id)
        names.add(name)

    annotation_ids: set[int] = set()
    for n, ann in enumerate(data["annotations"]):
        problem = annotation_problem(ann, sizes, category_ids, annotation_ids)
        if problem:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            named = f" (id {ann_id})" if is_int(ann_id) else ""
            raise AnonlabError(f"{source}: annotation #{n}{named}: {problem}")
        annotation_ids.add(ann["id"])


def annotation_problem(
    ann: Any, sizes: dict[int, tuple[int, int]], category_ids: set[int], seen: set[int]
) -> str | None:
    """What is wrong with one ground-truth annotation, or None; `sizes` maps image ids to
    (height, width), `seen` holds the annotation ids before it."""
    if not isinstance(ann, dict):
        return f"expected an object, found {kind_of(ann)}"
    for key in ("id", "image_id", "category_id", "bbox"):
        if key not in ann:
            return f"missing '{key}'"
    ann_id = ann["id"]
    if not is_int(ann_id) or ann_id < 1:
        # pycocotools stores matches by id and reads 0 as "unmatched".
        return f"'id' must be a positive integer, found {shown(ann_id)}"
    if ann_id in seen:
        return f"duplicate annotation id {ann_id}"
    if not is_int(ann["image_id"]) or ann["image_id"] not in sizes:
        return f"image_id {shown(ann['image_id'])} is not among the images"
    if not is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        return f"category_id {shown(ann['category_id'])} is not among the categories"
    problem = box_problem(ann["bbox"])
    if problem:
        return problem
    if "area" in ann and not (is_finite_number(ann["area"]) and ann["area"] >= 0):
        return f"'area' must be a finite number >= 0, found {shown(ann['area'])}"
    for flag in ("iscrowd", "ignore"):
        if flag in ann and ann[flag] not in (0, 1):
            return f"'{flag}' must be 0 or 1, found {shown(ann[flag])}"
    return segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])


def box_problem(box: Any) -> str | None:
    """What is wrong with a COCO box [x, y, width, height] (NaN and infinities included)."""
    if not (isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box)):
        return f"'bbox' must be 4 finite numbers [x, y, width, height], found {shown(box)}"
    if box[2] < 0 or box[3] < 0:
        return f"'bbox' has a negative width or height: {shown(box)}"
    return None


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a segmentation (absent, `[]` and null mean "no mask")."""
    if not seg:
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(map(is_int, size))):
            return f"segmentation 'size' must be [height, width], found {shown(size)}"
        if size != [height, width]:
            return (
                f"segmentation size {size} differs from the image's [height, width] "
                f"[{height}, {width}]"
            )
        if isinstance(counts, str):
            if not RLE_CHARS.fullmatch(counts):
                return "segmentation 'counts' is not a compressed RLE string"
            return None
        if isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return (
                    "segmentation 'counts' must be run lengths (integers >= 0) adding up to "
                    f"height x width = {height * width}"
                )
            return None
        return f"segmentation 'counts' must be an RLE string or a list, found {shown(counts)}"
    if isinstance(seg, list):
        for k, polygon in enumerate(seg):
            if not (
                isinstance(polygon, list)
                and len(polygon) >= 6
                and len(polygon) % 2 == 0
                and all(is_finite_number(v) for v in polygon)
            ):
                return (
                    f"segmentation polygon #{k} must be a list of at least 3 x, y pairs of "
                    f"finite numbers, found {shown(polygon)}"
                )
        return None
    return f"segmentation must be polygons (a list) or RLE (an object), found {kind_of(seg)}"


def is_int(value: Any) -> bool:
    """An integer in JSON (not a boolean, not a float)."""
    return type(value) is int


def is_finite_number(value: Any) -> bool:
    """A number in JSON that is neither NaN nor infinite (not a boolean)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def kind_of(value: Any) -> str:
    """What a JSON value is, for a message: an object, a list, null..."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        type(None): "null",
        bool: "a boolean",
    }
    names |= {int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def shown(value: Any) -> str:
    """A value as a message shows it, cut to 60 characters."""
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
