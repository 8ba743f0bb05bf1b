"""Reading the COCO files prepare wrote (train, val, refs/): the well-formed part of each, and
the `schema` check that reports the rest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.coco.schema import is_finite_number, is_int
from data.stage_paths import Prepared
from evaluation.data_checks.checks import ERROR, Check, Offenders, check_result

__all__ = ["Coco", "load_cocos"]

_REQUIRED_IMAGE = ("id", "file_name", "width", "height")
_REQUIRED_ANNOTATION = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


@dataclass
class Coco:
    """A parsed COCO file, keeping only what schema found well-formed."""

    file: str  # relative to prepared/: train.json, refs/holdout.json
    split: str  # its name in stats.json: train, val, ref-holdout
    images: dict[int, dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]  # sorted by id


def _dataset_files(prepared: Path) -> list[tuple[str, str]]:
    """(file relative to prepared/, split name) of every COCO file prepare writes."""
    folder = Prepared(prepared)
    return [
        (folder.dataset(split).relative_to(prepared).as_posix(), split) for split in folder.splits()
    ]


def load_cocos(prepared: Path) -> tuple[list[Coco], Check]:
    """Parse and check every COCO file; the well-formed part of each, and the schema check."""
    found = Offenders()
    cocos: list[Coco] = []
    reference: Coco | None = None
    exists: dict[Path, bool] = {}  # refs share store images: stat each file once
    for file, split in _dataset_files(prepared):
        try:
            data = json.loads((prepared / file).read_bytes())
        except FileNotFoundError:
            found.add(file, "file not found")
            continue
        except (OSError, ValueError) as e:
            found.add(file, f"not readable JSON ({e})")
            continue
        coco = _parse(file, split, data, found)
        if coco is None:
            continue
        if reference is None:
            reference = coco
        elif coco.categories != reference.categories:
            found.add(
                file,
                f"categories {_category_names(coco)} differ from {reference.file}'s "
                f"{_category_names(reference)}",
            )
        for image_id, image in coco.images.items():
            path = prepared / image["file_name"]
            if path not in exists:
                exists[path] = path.is_file()
            if not exists[path]:
                found.add(file, f"file {image['file_name']} not found", image_id=image_id)
        cocos.append(coco)
    files = {coco.file: _sizes(coco) for coco in cocos}
    check = check_result(
        "schema",
        ERROR,
        found,
        ok=f"{len(cocos)} COCO files well-formed, categories identical, every image file there",
        bad="schema problem(s)",
        todo=f"Run `anonlab prepare` again, or fix the inputs it read ({prepared})",
        files=files,
    )
    return cocos, check


def _sizes(coco: Coco) -> dict[str, int]:
    return {"images": len(coco.images), "annotations": len(coco.annotations)}


def _category_names(coco: Coco) -> list[str]:
    return [str(c.get("name")) for c in coco.categories]


def _parse(file: str, split: str, data: Any, found: Offenders) -> Coco | None:
    """The well-formed images, annotations and categories of one COCO file; the rest reported."""
    if not isinstance(data, dict):
        found.add(file, "not a COCO object (expected images, annotations, categories)")
        return None
    lists = {key: data.get(key) for key in ("images", "annotations", "categories")}
    missing = [key for key, value in lists.items() if not isinstance(value, list)]
    if missing:
        found.add(file, f"no list of {', '.join(missing)}")
        return None

    categories: dict[int, dict[str, Any]] = {}
    for n, category in enumerate(lists["categories"]):
        cid = category.get("id") if isinstance(category, dict) else None
        if not is_int(cid) or not isinstance(category.get("name"), str):
            found.add(file, f"category #{n} needs an integer id and a name")
        elif cid in categories:
            found.add(file, f"duplicate category id {cid}")
        else:
            categories[cid] = category

    images: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()  # image ids, well-formed or not: their annotations are not orphans
    for n, image in enumerate(lists["images"]):
        iid = image.get("id") if isinstance(image, dict) else None
        if not is_int(iid):
            found.add(file, f"image #{n} has no integer id")
            continue
        if iid in seen:
            found.add(file, "duplicate image id", image_id=iid)
            continue
        seen.add(iid)
        absent = [key for key in _REQUIRED_IMAGE if key not in image]
        if absent:
            found.add(file, f"missing {', '.join(absent)}", image_id=iid)
        elif not (
            isinstance(image["file_name"], str)
            and image["file_name"]
            and is_int(image["width"])
            and is_int(image["height"])
            and image["width"] > 0
            and image["height"] > 0
        ):
            found.add(file, "needs a file_name and positive integer width, height", image_id=iid)
        else:
            images[iid] = image

    annotations: list[dict[str, Any]] = []
    ann_ids: set[int] = set()
    for n, ann in enumerate(lists["annotations"]):
        aid = ann.get("id") if isinstance(ann, dict) else None
        if not is_int(aid):
            found.add(file, f"annotation #{n} has no integer id")
            continue
        problem = _annotation_problem(ann, seen, categories)
        duplicate = aid in ann_ids
        ann_ids.add(aid)
        if duplicate:
            found.add(
                file, "duplicate annotation id", annotation_id=aid, image_id=ann.get("image_id")
            )
        if problem:
            found.add(file, problem, annotation_id=aid, image_id=ann.get("image_id"))
        elif not duplicate and ann["image_id"] in images:
            annotations.append(ann)
    return Coco(
        file=file,
        split=split,
        images=images,
        annotations=annotations,
        categories=[categories[cid] for cid in sorted(categories)],
    )


def _annotation_problem(
    ann: dict[str, Any], image_ids: set[int], categories: Mapping[int, Any]
) -> str | None:
    absent = [key for key in _REQUIRED_ANNOTATION if key not in ann]
    if absent:
        return f"missing {', '.join(absent)}"
    if not is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
        return f"image_id {ann['image_id']!r} is not an image of the file"
    if not is_int(ann["category_id"]) or ann["category_id"] not in categories:
        return f"category_id {ann['category_id']!r} is not a category of the file"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(map(is_finite_number, box))):
        return f"bbox must be 4 finite numbers [x, y, width, height], found {box!r}"
    if not is_finite_number(ann["area"]):
        return f"area must be a finite number, found {ann['area']!r}"
    if ann["iscrowd"] not in (0, 1):
        return f"iscrowd must be 0 or 1, found {ann['iscrowd']!r}"
    kps = ann.get("keypoints")
    if kps is not None and not (isinstance(kps, list) and all(map(is_finite_number, kps))):
        return "keypoints must be a list of finite numbers [x, y, v, ...]"
    return None
