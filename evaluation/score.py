"""Scores a detector's COCO results against COCO ground truth for anonymization: pycocotools' own
COCO AP, and recall and pixel coverage per class and size bucket with bootstrap intervals.

Decisions the numbers rest on:
- `coco.segm` is computed when every ground-truth annotation has a segmentation and at least one
  prediction has one; predictions without a mask then count as their box (as pycocotools'
  `loadRes` does). Otherwise `coco.segm` is null and recall matches by box IoU.
- Objects with `iscrowd` or `ignore` set are not counted; a detection matched to one is neither a
  hit nor a false positive. (pycocotools itself overwrites `ignore` with `iscrowd`, so `coco.*`
  treats an `ignore`-only object as a normal one.)
- Recall, false positives and curves use each (image, class)'s `max_dets` best predictions, as
  COCO does; coverage uses every prediction above threshold, as the blurring runtime would.
- Identifiability (`ScoreOptions.min_identifiable`): an object whose box is shorter than its
  class's minimum height cannot identify anyone. It is scored in its own row
  (`below_identifiable`), is in no size bucket and not in `all`, and a detection matched to it
  is neither a hit nor a false positive (hiding it is never wrong). `all`, the size buckets, the
  precision/recall curves and the operating thresholds are those of identifiable objects; with
  no minimum every object is identifiable. `coco.*` is pycocotools' own, over every object.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.errors import AnonlabError
from data.size_buckets import BUCKETS, size_buckets

ALL = "all"
BELOW = "below_identifiable"
BUCKET_NAMES: tuple[str, ...] = (*BUCKETS, ALL, BELOW)
COCO_STATS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
DEFAULT_THRESHOLD = 0.5
PR_LEVELS = 100  # a precision/recall curve keeps its first point and one per 1% of recall
_RLE_CHARS = re.compile(r"[0-o]+")  # pycocotools' compressed RLE alphabet, chr(48)..chr(111)
_NON_IGNORED = np.int64(1) << np.int64(62)  # above the bits of any float64 in [0, 1]


@dataclass(frozen=True)
class ScoreOptions:
    """How predictions are thresholded, matched and summarized."""

    thresholds: Mapping[str, float] | float = DEFAULT_THRESHOLD  # per class name, or one for all
    coverage: float = 0.9  # share of an object's pixels that must be covered
    # For choosing operating thresholds: one target for all classes, or one per class name.
    target_recall: Mapping[str, float] | float = 0.95
    # Operating thresholds are not chosen below this score (where the target is out of reach,
    # the operating point is this floor and says so).
    min_threshold: float = 0.0
    iou: float = 0.5
    max_dets: int = 100  # per image and class, as COCO
    n_boot: int = 1000  # bootstrap resamples of images; 0: no intervals
    seed: int = 0
    # Also return `objects`: per counted ground-truth object, found (IoU), covered and
    # identifiable (the evaluate stage's gallery of misses).
    per_object: bool = False
    # Per class name, the box height in pixels from which an object can identify someone
    # (taxonomy.identifiable); a class not named, or None: every object.
    min_identifiable: Mapping[str, float] | None = None


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_ground_truth(path: Path) -> dict:
    """A COCO ground-truth file, parsed and checked (AnonlabError naming the bad entry)."""
    data = _read_json(Path(path), "a COCO ground-truth file")
    check_ground_truth(data, str(path))
    return data


def load_predictions(path: Path, gt: dict, *, gt_name: str | None = None) -> list[dict]:
    """A COCO results file (a list of detections), parsed and checked against `gt`."""
    data = _read_json(Path(path), "a COCO results file")
    check_predictions(data, gt, str(path), gt_name=gt_name)
    return data


def check_ground_truth(data: Any, source: str = "ground truth") -> None:
    """Raise AnonlabError naming the first entry of `data` that is not valid COCO ground truth."""
    if not isinstance(data, dict):
        raise AnonlabError(
            f"{source}: expected a COCO object with images, annotations and categories, "
            f"found {_kind(data)}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnonlabError(
                f"{source}: missing '{key}' (COCO ground truth has images, annotations and "
                "categories)"
            )
        if not isinstance(data[key], list):
            raise AnonlabError(f"{source}: '{key}' must be a list, found {_kind(data[key])}")
    for key in ("images", "categories"):
        if not data[key]:
            raise AnonlabError(f"{source}: '{key}' is empty; there is nothing to score against")

    sizes: dict[int, tuple[int, int]] = {}
    for n, image in enumerate(data["images"]):
        where = f"{source}: image #{n}"
        if not isinstance(image, dict):
            raise AnonlabError(f"{where}: expected an object, found {_kind(image)}")
        image_id = image.get("id")
        if not _is_int(image_id):
            raise AnonlabError(f"{where}: 'id' must be an integer, found {_show(image_id)}")
        if image_id in sizes:
            raise AnonlabError(f"{where}: duplicate image id {image_id}")
        width, height = image.get("width"), image.get("height")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise AnonlabError(
                f"{where} (id {image_id}): 'width' and 'height' must be positive integers, "
                f"found {_show(width)} x {_show(height)}"
            )
        sizes[image_id] = (height, width)

    names: set[str] = set()
    category_ids: set[int] = set()
    for n, category in enumerate(data["categories"]):
        where = f"{source}: category #{n}"
        if not isinstance(category, dict):
            raise AnonlabError(f"{where}: expected an object, found {_kind(category)}")
        category_id, name = category.get("id"), category.get("name")
        if not _is_int(category_id):
            raise AnonlabError(f"{where}: 'id' must be an integer, found {_show(category_id)}")
        if category_id in category_ids:
            raise AnonlabError(f"{where}: duplicate category id {category_id}")
        if not isinstance(name, str) or not name:
            raise AnonlabError(f"{where}: 'name' must be a non-empty string, found {_show(name)}")
        if name in names:
            raise AnonlabError(f"{where}: duplicate category name {name!r}")
        category_ids.add(category_id)
        names.add(name)

    annotation_ids: set[int] = set()
    for n, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann, sizes, category_ids, annotation_ids)
        if problem:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            named = f" (id {ann_id})" if _is_int(ann_id) else ""
            raise AnonlabError(f"{source}: annotation #{n}{named}: {problem}")
        annotation_ids.add(ann["id"])


def _annotation_problem(
    ann: Any, sizes: dict[int, tuple[int, int]], category_ids: set[int], seen: set[int]
) -> str | None:
    if not isinstance(ann, dict):
        return f"expected an object, found {_kind(ann)}"
    for key in ("id", "image_id", "category_id", "bbox"):
        if key not in ann:
            return f"missing '{key}'"
    ann_id = ann["id"]
    if not _is_int(ann_id) or ann_id < 1:
        # pycocotools stores matches by id and reads 0 as "unmatched".
        return f"'id' must be a positive integer, found {_show(ann_id)}"
    if ann_id in seen:
        return f"duplicate annotation id {ann_id}"
    if not _is_int(ann["image_id"]) or ann["image_id"] not in sizes:
        return f"image_id {_show(ann['image_id'])} is not among the images"
    if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        return f"category_id {_show(ann['category_id'])} is not among the categories"
    problem = _box_problem(ann["bbox"])
    if problem:
        return problem
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        return f"'area' must be a finite number >= 0, found {_show(ann['area'])}"
    for flag in ("iscrowd", "ignore"):
        if flag in ann and ann[flag] not in (0, 1):
            return f"'{flag}' must be 0 or 1, found {_show(ann[flag])}"
    return _segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])


def check_predictions(
    data: Any, gt: dict, source: str = "predictions", *, gt_name: str | None = None
) -> None:
    """Raise AnonlabError naming the first result of `data` (a COCO results list; `#n` counts
    from 0) that is malformed or does not refer to an image and category of `gt`."""
    if not isinstance(data, list):
        raise AnonlabError(
            f"{source}: expected a JSON list of COCO results "
            f"({{image_id, category_id, bbox, score}}), found {_kind(data)}"
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
        return f"expected an object, found {_kind(p)}"
    for key in ("image_id", "category_id", "score", "bbox"):
        if key not in p:
            return f"missing '{key}'"
    if not _is_int(p["image_id"]) or p["image_id"] not in sizes:
        return f"image_id {_show(p['image_id'])} is not in the ground truth{in_gt}"
    if not _is_int(p["category_id"]) or p["category_id"] not in category_ids:
        return f"category_id {_show(p['category_id'])} is not a category of the ground truth{in_gt}"
    if not _is_number(p["score"]):
        return f"'score' must be a finite number, found {_show(p['score'])}"
    return _box_problem(p["bbox"]) or _segmentation_problem(
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
            and _RLE_CHARS.fullmatch(seg["counts"])
            and set(map(type, seg["size"])) == {int}
        ):
            continue
        if _segmentation_problem(seg, *sizes[image_id]):
            return False
    return True


def _box_problem(box: Any) -> str | None:
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"'bbox' must be 4 finite numbers [x, y, width, height], found {_show(box)}"
    if box[2] < 0 or box[3] < 0:
        return f"'bbox' has a negative width or height: {_show(box)}"
    return None


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a segmentation (absent, `[]` and null mean "no mask")."""
    if not seg:
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(map(_is_int, size))):
            return f"segmentation 'size' must be [height, width], found {_show(size)}"
        if size != [height, width]:
            return (
                f"segmentation size {size} differs from the image's [height, width] "
                f"[{height}, {width}]"
            )
        if isinstance(counts, str):
            if not _RLE_CHARS.fullmatch(counts):
                return "segmentation 'counts' is not a compressed RLE string"
            return None
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return (
                    "segmentation 'counts' must be run lengths (integers >= 0) adding up to "
                    f"height x width = {height * width}"
                )
            return None
        return f"segmentation 'counts' must be an RLE string or a list, found {_show(counts)}"
    if isinstance(seg, list):
        for k, polygon in enumerate(seg):
            if not (
                isinstance(polygon, list)
                and len(polygon) >= 6
                and len(polygon) % 2 == 0
                and all(_is_number(v) for v in polygon)
            ):
                return (
                    f"segmentation polygon #{k} must be a list of at least 3 x, y pairs of "
                    f"finite numbers, found {_show(polygon)}"
                )
        return None
    return f"segmentation must be polygons (a list) or RLE (an object), found {_kind(seg)}"


def _read_json(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnonlabError(f"{path}: no such file (expected {what})") from None
    except OSError as e:
        raise AnonlabError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnonlabError(f"{path}: not valid JSON ({e}); expected {what}") from None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        type(None): "null",
        bool: "a boolean",
    }
    names |= {int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# Thresholds


def parse_thresholds(text: str, classes: Sequence[str]) -> dict[str, float] | float:
    """Thresholds from the command line: "0.5" (all classes), "face=0.6,license_plate=0.4"
    (others at 0.5), or "0.3,face=0.6" (others at 0.3)."""
    default: float | None = None
    per_class: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, equals, value = part.rpartition("=")
        name = name.strip()
        if not part or (equals and not name):
            raise AnonlabError(f"thresholds {text!r}: an empty entry; write face=0.6,plate=0.4")
        if not equals:
            if default is not None:
                raise AnonlabError(f"thresholds {text!r}: two thresholds for all classes")
            default = _threshold_value(text, value)
            continue
        if name not in classes:
            raise AnonlabError(
                f"thresholds {text!r}: unknown class {name!r}; the classes are {', '.join(classes)}"
            )
        if name in per_class:
            raise AnonlabError(f"thresholds {text!r}: class {name!r} is given twice")
        per_class[name] = _threshold_value(text, value)
    if not per_class:
        return DEFAULT_THRESHOLD if default is None else default
    rest = DEFAULT_THRESHOLD if default is None else default
    return {name: per_class.get(name, rest) for name in classes}


def parse_heights(text: str, classes: Sequence[str]) -> dict[str, float]:
    """Minimum identifiable heights from the command line: "face=6,license_plate=5" (box
    heights in pixels; classes not named: every object); "" names none."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or name not in classes:
            raise AnonlabError(
                f"identifiable {text!r}: {part!r} is not <class>=<pixels> with one of the "
                f"classes {', '.join(classes)}"
            )
        try:
            height = float(value)
        except ValueError:
            height = math.nan
        if not 0 <= height < math.inf:
            raise AnonlabError(f"identifiable {text!r}: {value!r} is not a height in pixels >= 0")
        out[name] = height
    return out


def _threshold_value(text: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise AnonlabError(f"thresholds {text!r}: {value.strip()!r} is not a number") from None
    if not math.isfinite(number):
        raise AnonlabError(f"thresholds {text!r}: {value.strip()!r} is not a finite number")
    return number


def _resolve_thresholds(thresholds: Mapping[str, float] | float, classes: list[str]) -> dict:
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(classes))
        if unknown:
            raise AnonlabError(
                f"thresholds name unknown classes {', '.join(map(repr, unknown))}; the classes "
                f"are {', '.join(classes)}"
            )
        resolved = {name: thresholds.get(name, DEFAULT_THRESHOLD) for name in classes}
    else:
        resolved = dict.fromkeys(classes, thresholds)
    for name, value in resolved.items():
        if not _is_number(value):
            raise AnonlabError(f"threshold of {name!r} must be a finite number, found {value!r}")
    return {name: float(value) for name, value in resolved.items()}


def _resolve_targets(targets: Mapping[str, float] | float, classes: list[str]) -> dict:
    if isinstance(targets, Mapping):
        missing = [name for name in classes if name not in targets]
        if missing:
            raise AnonlabError(f"target_recall has no value for {', '.join(map(repr, missing))}")
        resolved = {name: targets[name] for name in classes}
    else:
        resolved = dict.fromkeys(classes, targets)
    for name, value in resolved.items():
        if not (_is_number(value) and 0 < value <= 1):
            raise AnonlabError(f"target_recall of {name!r} must be in (0, 1], found {value!r}")
    return {name: float(value) for name, value in resolved.items()}


def _check_options(options: ScoreOptions) -> None:
    for name in ("coverage", "iou"):
        value = getattr(options, name)
        if not (_is_number(value) and 0 < value <= 1):
            raise AnonlabError(f"{name} must be in (0, 1], found {value!r}")
    if not (_is_number(options.min_threshold) and 0 <= options.min_threshold <= 1):
        raise AnonlabError(f"min_threshold must be in [0, 1], found {options.min_threshold!r}")
    if not (_is_int(options.max_dets) and options.max_dets >= 1):
        raise AnonlabError(f"max_dets must be an integer >= 1, found {options.max_dets!r}")
    if not (_is_int(options.n_boot) and options.n_boot >= 0):
        raise AnonlabError(f"n_boot must be an integer >= 0, found {options.n_boot!r}")
    for name, height in (options.min_identifiable or {}).items():
        if not (_is_number(height) and 0 <= height < math.inf):
            raise AnonlabError(
                f"min_identifiable of {name!r} must be a height in pixels >= 0, found {height!r}"
            )


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class _Truth:
    """Ground-truth annotations as arrays, in file order; images and categories as indices into
    their ids sorted (the order pycocotools evaluates them in)."""

    image: np.ndarray
    category: np.ndarray
    crowd: np.ndarray
    ignored: np.ndarray  # crowd or `ignore`: not counted, and a match to it is no false positive
    bucket: np.ndarray  # size bucket name
    box: np.ndarray
    has_mask: np.ndarray


@dataclass(frozen=True)
class _Detections:
    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    box: np.ndarray
    has_mask: np.ndarray


def score_files(
    gt_path: Path,
    pred_path: Path,
    options: ScoreOptions = ScoreOptions(),
    timings: dict[str, float] | None = None,
) -> dict:
    """Load and check both files, then `score` them. `timings` (when given) receives the wall
    seconds of each phase, and its CPU seconds under the phase's name + "_cpu": load (read and
    check), coco (pycocotools, on inputs prepared as its loadRes does), metrics (the rest)."""
    clock = _Stopwatch(timings)
    gt = load_ground_truth(gt_path)
    predictions = load_predictions(pred_path, gt, gt_name=str(gt_path))
    clock.lap("load")
    return score(gt, predictions, options, timings)


def score(
    gt: dict,
    predictions: list[dict],
    options: ScoreOptions = ScoreOptions(),
    timings: dict[str, float] | None = None,
) -> dict:
    """All metrics of checked ground truth and predictions (see `check_ground_truth` and
    `check_predictions`) as a JSON-ready dict; `timings` as in `score_files`."""
    clock = _Stopwatch(timings)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    classes = [c["name"] for c in categories]
    thresholds = _resolve_thresholds(options.thresholds, classes)
    _check_options(options)
    targets = _resolve_targets(options.target_recall, classes)
    image_ids = np.array(sorted(image["id"] for image in gt["images"]), dtype=np.int64)
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    heights = {image["id"]: image["height"] for image in gt["images"]}
    widths = {image["id"]: image["width"] for image in gt["images"]}

    gt_anns = [
        _gt_copy(a, heights[a["image_id"]], widths[a["image_id"]]) for a in gt["annotations"]
    ]
    clock.lap("coco")
    truth = _truth_arrays(gt, gt_anns, image_ids, category_ids)
    dets = _detection_arrays(predictions, image_ids, category_ids)
    notes: list[str] = []
    masks = _mask_mode(truth, dets, notes)
    clock.lap("metrics")
    dt_anns = [_prediction_copy(p, i, masks) for i, p in enumerate(predictions)]

    coco, evaluation = _coco_summaries(gt, gt_anns, dt_anns, masks)
    clock.lap("coco")

    pairs = _matching_pairs(evaluation, truth, dets, image_ids, category_ids, options.max_dets)
    rank = pairs.rank
    kept = rank < options.max_dets
    det_threshold = np.array([thresholds[c] for c in classes])[dets.category]
    above = dets.score >= det_threshold
    gt_threshold = np.array([thresholds[c] for c in classes])[truth.category]
    counted = ~truth.ignored
    identifiable = _identifiable(truth, classes, options.min_identifiable)
    members = _bucket_members(truth, identifiable)

    found: dict[str, np.ndarray] = {}
    status_all: tuple[np.ndarray, np.ndarray] | None = None
    for bucket in BUCKET_NAMES:
        in_bucket = members[bucket]
        ignored = truth.ignored | ~in_bucket
        det_gt = _greedy_match(
            pairs, truth.crowd, ignored, len(dets.score), min(options.iou, 1 - 1e-10)
        )
        hit = det_gt >= 0
        hit[hit] = ~ignored[det_gt[hit]]
        best = np.full(len(counted), -np.inf)
        best[det_gt[hit]] = dets.score[hit]
        found[bucket] = (best >= gt_threshold) & counted & in_bucket
        if bucket == ALL:
            false = (det_gt < 0) & kept
            status_all = (hit, false)
    assert status_all is not None
    hit_all, false_all = status_all

    share = _covered(gt_anns, dt_anns, truth, dets, above, image_ids, heights, widths)
    covered = (share >= options.coverage) & counted  # nan (not counted) compares False

    recall = _recall_tables(truth, members, found, covered, classes, len(image_ids), options)
    n_images = len(image_ids)
    false_positives = {
        name: float(np.count_nonzero(false_all & above & (dets.category == c)) / n_images)
        for c, name in enumerate(classes)
    }
    pr_curves: dict[str, list[dict[str, float]]] = {}
    operating: dict[str, dict[str, Any] | None] = {}
    for c, name in enumerate(classes):
        of_class = kept & (dets.category == c)
        n = int(np.count_nonzero(counted & identifiable & (truth.category == c)))
        curve, operating[name], note = _curve(
            dets.score[of_class],
            hit_all[of_class],
            false_all[of_class],
            n,
            targets[name],
            options.min_threshold,
        )
        pr_curves[name] = curve
        if note:
            notes.append(f"{name}: {note}")

    result = {
        "images": n_images,
        "coco": coco,
        "iou_type": "segm" if masks else "bbox",
        "recall": recall,
        "false_positives_per_image": false_positives,
        "pr_curve": pr_curves,
        "operating_thresholds": {
            name: point["threshold"] if point and point["reached"] else None
            for name, point in operating.items()
        },
        "operating_points": operating,
        "options": {
            "thresholds": thresholds,
            "coverage": float(options.coverage),
            "target_recall": targets,
            "min_threshold": float(options.min_threshold),
            "iou": float(options.iou),
            "max_dets": options.max_dets,
            "n_boot": options.n_boot,
            "seed": options.seed,
            "min_identifiable": {
                name: float((options.min_identifiable or {}).get(name, 0.0)) for name in classes
            },
        },
        "notes": notes,
    }
    if options.per_object:
        result["objects"] = [
            {
                "id": int(gt["annotations"][i]["id"]),
                "found": bool(found[ALL][i]),
                "covered": bool(covered[i]),
                "coverage": float(share[i]),
                "identifiable": bool(identifiable[i]),
            }
            for i in np.flatnonzero(counted)
        ]
    clock.lap("metrics")
    return result


class _Stopwatch:
    """Adds the wall and CPU seconds since its last lap to a phase of `timings` (CPU time stays
    honest on a busy machine)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + wall - self.wall
            cpu_phase = f"{phase}_cpu"
            self.timings[cpu_phase] = self.timings.get(cpu_phase, 0.0) + cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def _gt_copy(ann: dict, height: int, width: int) -> dict:
    """The annotation as pycocotools gets it (it writes into what it gets): defaults filled."""
    copy = {**ann, "iscrowd": int(ann.get("iscrowd", 0))}
    if not ann.get("segmentation"):
        copy.pop("segmentation", None)
    if "area" not in ann:
        if "segmentation" in copy:
            copy["area"] = float(mask_utils.area(_as_rle(copy["segmentation"], height, width)))
        else:
            copy["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return copy


def _prediction_copy(p: dict, index: int, masks: bool) -> dict:
    """The result as pycocotools' `loadRes` makes it from a result with a box."""
    x, y, w, h = p["bbox"]
    copy = {**p, "area": w * h, "id": index + 1, "iscrowd": 0}
    if not p.get("segmentation"):
        copy.pop("segmentation", None)
        if masks:
            copy["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    return copy


def _truth_arrays(
    gt: dict, copies: list[dict], image_ids: np.ndarray, category_ids: np.ndarray
) -> _Truth:
    anns = gt["annotations"]
    crowd = np.array([bool(a["iscrowd"]) for a in copies], dtype=bool)
    ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    area = np.array([a["area"] for a in copies], dtype=np.float64)
    return _Truth(
        image=np.searchsorted(image_ids, np.array([a["image_id"] for a in anns], np.int64)),
        category=np.searchsorted(
            category_ids, np.array([a["category_id"] for a in anns], np.int64)
        ),
        crowd=crowd,
        ignored=crowd | ignore,
        bucket=size_buckets(area) if len(area) else np.array([], dtype=str),
        box=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
        has_mask=np.array(["segmentation" in a for a in copies], dtype=bool),
    )


def _detection_arrays(
    predictions: list[dict], image_ids: np.ndarray, category_ids: np.ndarray
) -> _Detections:
    return _Detections(
        image=np.searchsorted(image_ids, np.array([p["image_id"] for p in predictions], np.int64)),
        category=np.searchsorted(
            category_ids, np.array([p["category_id"] for p in predictions], np.int64)
        ),
        score=np.array([p["score"] for p in predictions], dtype=np.float64),
        box=np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4),
        has_mask=np.array([bool(p.get("segmentation")) for p in predictions], dtype=bool),
    )


def _mask_mode(truth: _Truth, dets: _Detections, notes: list[str]) -> bool:
    """Whether masks are compared (mask IoU, `coco.segm`); why not, in `notes`."""
    gt_masks = bool(truth.has_mask.all()) and len(truth.has_mask) > 0
    some_dets = int(np.count_nonzero(dets.has_mask))
    if not gt_masks:
        if truth.has_mask.any():
            missing = int(np.count_nonzero(~truth.has_mask))
            notes.append(
                f"{missing} ground-truth annotations have no segmentation: no coco.segm, and "
                "recall matches by box IoU"
            )
        return False
    if not some_dets:
        notes.append("the predictions have no masks: no coco.segm, and recall matches by box IoU")
        return False
    if some_dets < len(dets.has_mask):
        notes.append(
            f"{len(dets.has_mask) - some_dets} predictions have no mask: their box counts as "
            "their mask (as in pycocotools)"
        )
    return True


def _quiet_coco(images: list, categories: list, annotations: list) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_summaries(
    gt: dict, gt_anns: list[dict], dt_anns: list[dict], masks: bool
) -> tuple[dict, COCOeval]:
    """pycocotools' 12 summary numbers for boxes (and masks), and the evaluation whose IoUs
    matching reuses (of masks when compared, else of boxes)."""
    coco_gt = _quiet_coco(gt["images"], gt["categories"], gt_anns)
    coco_dt = _quiet_coco(gt["images"], gt["categories"], dt_anns)
    summaries: dict[str, dict[str, float] | None] = {"bbox": None, "segm": None}
    evaluation = None
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        summaries[iou_type] = dict(zip(COCO_STATS, map(float, evaluation.stats), strict=True))
    assert evaluation is not None
    return summaries, evaluation


@dataclass(frozen=True)
class _Pairs:
    """Every (detection, object) IoU of the same image and class, for the detections COCO keeps,
    ordered for greedy matching: by detection rank, then (image, class), then object."""

    rank: np.ndarray  # per detection: its place in its (image, class) by score, as COCO sorts
    iou: np.ndarray
    det: np.ndarray
    gt: np.ndarray
    steps: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]


def _matching_pairs(
    evaluation: COCOeval,
    truth: _Truth,
    dets: _Detections,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    max_dets: int,
) -> _Pairs:
    n_classes = len(category_ids)
    n_groups = len(image_ids) * n_classes
    gt_group = truth.image * n_classes + truth.category
    gt_order = np.argsort(gt_group, kind="stable")  # file order within a group, as pycocotools
    gt_count = np.bincount(gt_group, minlength=n_groups)
    gt_start = np.cumsum(gt_count) - gt_count
    det_group = dets.image * n_classes + dets.category
    det_order = np.lexsort((-dets.score, det_group))  # stable: ties keep file order, as COCO
    det_count = np.bincount(det_group, minlength=n_groups)
    det_start = np.cumsum(det_count) - det_count
    rank = np.empty(len(det_group), np.int64)
    rank[det_order] = np.arange(len(det_group)) - det_start[det_group[det_order]]

    groups = np.flatnonzero((det_count > 0) & (gt_count > 0))
    rows = np.minimum(det_count[groups], max_dets)
    cols = gt_count[groups]
    computed = evaluation.params.maxDets[-1]
    if max_dets > computed:
        # pycocotools kept only its own maxDets best detections' IoUs: compute the rest.
        saved = evaluation.params.maxDets
        evaluation.params.maxDets = [max_dets]
        matrices = {}
        for g in groups.tolist():
            key = (image_ids[g // n_classes], category_ids[g % n_classes])
            matrices[key] = evaluation.computeIoU(*key)
        evaluation.params.maxDets = saved
    else:
        matrices = evaluation.ious
    flat = []
    for g, r, c in zip(groups.tolist(), rows.tolist(), cols.tolist(), strict=True):
        matrix = np.asarray(
            matrices[int(image_ids[g // n_classes]), int(category_ids[g % n_classes])]
        )
        if matrix.shape[0] < r or matrix.shape[1] != c:
            raise RuntimeError(f"pycocotools' IoU matrix {matrix.shape} is not {r} x {c}")
        flat.append(matrix[:r].ravel())
    sizes = rows * cols
    iou = np.concatenate(flat) if flat else np.zeros(0)
    pair = np.repeat(np.arange(len(groups)), sizes)
    local = np.arange(len(iou)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = cols[pair]
    row = local // width
    det = det_order[det_start[groups][pair] + row]
    gt = gt_order[gt_start[groups][pair] + (local - row * width)]

    order = np.argsort(row, kind="stable")
    row, iou, det, gt = row[order], np.ascontiguousarray(iou[order]), det[order], gt[order]
    new_segment = np.ones(len(det), bool)
    new_segment[1:] = det[1:] != det[:-1]
    segment_start = np.flatnonzero(new_segment)
    segment_of = np.cumsum(new_segment) - 1
    bounds = np.searchsorted(row, np.arange(int(rows.max(initial=0)) + 1))
    bounds = np.append(bounds, len(row))
    steps = []
    for s, e in itertools.pairwise(bounds.tolist()):
        if s == e:
            continue
        a, b = np.searchsorted(segment_start, [s, e])
        steps.append((s, e, segment_start[a:b] - s, segment_of[s:e] - a, det[segment_start[a:b]]))
    return _Pairs(rank=rank, iou=iou, det=det, gt=gt, steps=steps)


def _greedy_match(
    pairs: _Pairs, crowd: np.ndarray, ignored: np.ndarray, n_dets: int, threshold: float
) -> np.ndarray:
    """COCO's greedy matching at one IoU threshold, for all images and classes at once.

    Detections go best first; each takes, among the objects still free (crowds stay free) with
    IoU >= threshold, the counted one of highest IoU, else the ignored one of highest IoU; ties
    go to the later object in file order. Returns each detection's object, or -1.
    """
    # A float64 >= 0 keeps its order as int64 bits; the bit above them puts counted first.
    bits = pairs.iou.view(np.int64)
    candidate = pairs.iou >= threshold
    taken = np.zeros(len(crowd), bool)
    det_gt = np.full(n_dets, -1, np.int64)
    for s, e, starts, segment_of, segment_det in pairs.steps:
        gt = pairs.gt[s:e]
        free = candidate[s:e] & ~(taken[gt] & ~crowd[gt])
        key = np.where(free, bits[s:e] | np.where(ignored[gt], 0, _NON_IGNORED), -1)
        best = np.maximum.reduceat(key, starts)
        won = best >= 0
        if not won.any():
            continue
        position = np.where((key == best[segment_of]) & (key >= 0), np.arange(e - s), -1)
        last = np.maximum.reduceat(position, starts)[won]
        taken[gt[last]] = True
        det_gt[segment_det[won]] = gt[last]
    return det_gt


def _as_rle(seg: Any, height: int, width: int) -> dict:
    """One RLE from any COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _covered(
    gt_anns: list[dict],
    dt_anns: list[dict],
    truth: _Truth,
    dets: _Detections,
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
            rles[k] = _as_rle(seg, height, width)
        elif isinstance(seg, list):
            rles.extend(mask_utils.frPyObjects(seg, height, width))  # polygons of one union
        else:
            rles.append(_as_rle(seg, height, width))
    if not with_mask.all():
        boxed = np.flatnonzero(~with_mask)
        filled = mask_utils.frPyObjects(boxes[indices[boxed]], height, width)
        if merge:
            for k, region in zip(boxed.tolist(), filled, strict=True):
                rles[k] = region
        else:
            rles.extend(filled)
    return rles


def _identifiable(
    truth: _Truth, classes: list[str], minimum: Mapping[str, float] | None
) -> np.ndarray:
    """Per ground-truth object, whether its box is at least its class's minimum height."""
    heights = np.array([float((minimum or {}).get(name, 0.0)) for name in classes])
    if not len(truth.category):
        return np.zeros(0, dtype=bool)
    return truth.box[:, 3] >= heights[truth.category]


def _bucket_members(truth: _Truth, identifiable: np.ndarray) -> dict[str, np.ndarray]:
    """Per bucket name, which objects it holds: the size buckets and `all` the identifiable
    ones, `below_identifiable` the others (ignored objects included: callers mask them)."""
    out = {b: identifiable & (truth.bucket == b) for b in BUCKETS}
    out[ALL] = identifiable.copy()
    out[BELOW] = ~identifiable
    return out


def _recall_tables(
    truth: _Truth,
    members: dict[str, np.ndarray],
    found: dict[str, np.ndarray],
    covered: np.ndarray,
    classes: list[str],
    n_images: int,
    options: ScoreOptions,
) -> dict:
    """recall.<class>.<bucket>: n, iou and coverage recall with their bootstrap intervals."""
    counted = ~truth.ignored
    columns = [(c, b) for c in range(len(classes)) for b in BUCKET_NAMES]
    key = truth.image * len(classes) + truth.category

    def per_image(flags: dict[str, np.ndarray]) -> np.ndarray:
        table = np.stack(
            [np.bincount(key[flags[b]], minlength=n_images * len(classes)) for b in BUCKET_NAMES],
            axis=-1,
        ).astype(np.float64)
        return table.reshape(n_images, len(classes) * len(BUCKET_NAMES))

    in_bucket = {b: counted & members[b] for b in BUCKET_NAMES}
    n = per_image(in_bucket)
    hits = per_image(found)
    cover = per_image({b: covered & in_bucket[b] for b in BUCKET_NAMES})
    intervals = _bootstrap(n, np.hstack([hits, cover]), options.n_boot, options.seed)
    totals = n.sum(axis=0)
    hit_totals, cover_totals = hits.sum(axis=0), cover.sum(axis=0)

    width = len(columns)
    table: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in classes}
    for m, (c, b) in enumerate(columns):
        count = int(totals[m])
        entry: dict[str, Any] = {"n": count, "iou": None, "iou_ci": None}
        entry.update(coverage=None, coverage_ci=None)
        if count:
            entry["iou"] = float(hit_totals[m] / totals[m])
            entry["coverage"] = float(cover_totals[m] / totals[m])
            if intervals is not None:
                entry["iou_ci"] = intervals[m]
                entry["coverage_ci"] = intervals[width + m]
        table[classes[c]][b] = entry
    return table


def _bootstrap(
    denominators: np.ndarray, numerators: np.ndarray, n_boot: int, seed: int
) -> list[list[float] | None] | None:
    """95% percentile intervals of sum(numerator) / sum(denominator) over images resampled with
    replacement; per numerator column, whose denominator is column mod denominator columns."""
    if n_boot == 0:
        return None
    n_images, width = denominators.shape
    values = np.hstack([denominators, numerators])
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // max(n_images, 1))  # bounds the resampling matrix's memory
    ratios = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        picks = rng.integers(0, n_images, size=(size, n_images))
        picks += np.arange(size)[:, None] * n_images
        weights = np.bincount(picks.ravel(), minlength=size * n_images).reshape(size, n_images)
        sums = weights.astype(np.float64) @ values
        den = np.tile(sums[:, :width], numerators.shape[1] // width)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(sums[:, width:] / np.where(den > 0, den, np.nan))
    ratio = np.vstack(ratios)
    usable = ~np.isnan(ratio).all(axis=0)
    out: list[list[float] | None] = [None] * ratio.shape[1]
    if usable.any():
        bounds = np.nanpercentile(ratio[:, usable], [2.5, 97.5], axis=0)
        for k, m in enumerate(np.flatnonzero(usable).tolist()):
            out[m] = [float(bounds[0, k]), float(bounds[1, k])]
    return out


def _curve(
    scores: np.ndarray, hit: np.ndarray, false: np.ndarray, n: int, target: float, floor: float
) -> tuple[list[dict[str, float]], dict[str, Any] | None, str | None]:
    """The precision/recall curve of one class (its points where the score threshold changes,
    thinned to one per 1% of recall), and its operating point: the highest threshold, not below
    `floor`, whose recall meets `target` (`reached`), else `floor` with the recall there."""
    if n == 0:
        return [], None, "no ground-truth objects: no curve or operating threshold"
    if not len(scores):
        missed = {"threshold": floor, "recall": 0.0, "reached": False}
        return [], missed, "no predictions: no curve or operating threshold"
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    hits = np.cumsum(hit[order])
    falses = np.cumsum(false[order])
    last_of_tie = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    thresholds = ordered[last_of_tie]
    recall = hits[last_of_tie] / n
    judged = hits[last_of_tie] + falses[last_of_tie]

    allowed = np.flatnonzero(thresholds >= floor)
    reached = allowed[recall[allowed] >= target]
    note = None
    if len(reached):
        k = reached[0]
        point = {"threshold": float(thresholds[k]), "recall": float(recall[k]), "reached": True}
    else:
        best = float(recall[allowed[-1]]) if len(allowed) else 0.0
        lowest = float(thresholds[allowed[-1]]) if len(allowed) else floor
        point = {"threshold": floor if floor > 0 else lowest, "recall": best, "reached": False}
        note = (
            f"recall never reaches {target:g} (at most {best:.4f}, at score >= "
            f"{point['threshold']:g}): no operating threshold"
        )

    # Points before any prediction is judged (all matched ignored objects) have no precision.
    usable = np.flatnonzero(judged > 0)
    if not len(usable):
        return [], point, note
    levels = np.arange(1, PR_LEVELS + 1) / PR_LEVELS
    picks = np.searchsorted(recall[usable], levels, side="left")
    picks = np.unique(np.append(picks[picks < len(usable)], 0))
    points = [
        {
            "score": float(thresholds[k]),
            "precision": float(hits[last_of_tie[k]] / judged[k]),
            "recall": float(recall[k]),
        }
        for k in usable[picks].tolist()
    ]
    return points, point, note


# ---------------------------------------------------------------------------------------------
# Report


def format_table(metrics: dict) -> str:
    """The metrics of `score` as a table for a terminal."""
    options = metrics["options"]
    lines = [
        f"{metrics['images']} images; matching by {metrics['iou_type']} IoU >= "
        f"{options['iou']:g}; covered at >= {options['coverage']:.0%} of pixels; "
        f"95% intervals from {options['n_boot']} image resamples",
        "",
        "COCO  " + "".join(f"{name:>7}" for name in COCO_STATS),
    ]
    for iou_type in ("bbox", "segm"):
        stats = metrics["coco"].get(iou_type)
        if stats:
            lines.append(f"{iou_type:<6}" + "".join(f"{stats[k]:7.3f}" for k in COCO_STATS))
    lines += [
        "",
        f"{'class':<16}{'bucket':<8}{'n':>7}  {'recall':<22}{'coverage':<22}",
    ]
    for name, buckets in metrics["recall"].items():
        rows = [(b, e) for b, e in buckets.items() if b != BELOW or e["n"]]
        for k, (bucket, entry) in enumerate(rows):
            label = name if k == 0 else ""
            shown = "below" if bucket == BELOW else bucket
            lines.append(
                f"{label:<16}{shown:<8}{entry['n']:>7}  "
                f"{_with_interval(entry['iou'], entry['iou_ci']):<22}"
                f"{_with_interval(entry['coverage'], entry['coverage_ci']):<22}"
            )
        threshold = metrics["operating_thresholds"].get(name)
        operating = "none" if threshold is None else f"{threshold:.4g}"
        lines.append(
            f"{'':<16}threshold {options['thresholds'][name]:g}; false positives per image "
            f"{metrics['false_positives_per_image'][name]:.3f}; threshold for recall "
            f"{options['target_recall'][name]:g}: {operating}"
        )
    minimum = {k: v for k, v in (options.get("min_identifiable") or {}).items() if v}
    if minimum:
        heights = ", ".join(f"{k} {v:g} px" for k, v in minimum.items())
        lines += [
            "",
            f"identifiable from a box height of {heights}: smaller objects are in `below` "
            "only, and hiding them is never a false positive",
        ]
    if metrics.get("notes"):
        lines += ["", "notes:"] + [f"  - {note}" for note in metrics["notes"]]
    return "\n".join(line.rstrip() for line in lines)


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
