"""The data half of `anonlab validate`: schema, geometry, leakage and shift checks of `prepared/`,
each reported as a `Check` with its numbers, failing or not (see `check_dataset`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.errors import AnonlabError
from data.image_scores import score_image
from data.leakage import find_leaks
from data.manifest import read_manifest
from data.size_buckets import BUCKETS, size_buckets
from data.stage_paths import MANIFEST
from evaluation.score import _as_rle, _segmentation_problem

__all__ = ["ERROR", "WARNING", "Check", "check_dataset"]

ERROR = "error"
WARNING = "warning"

FIRST = 20  # offenders kept in a check's details
SHOWN = 3  # offenders named in its message
BOX_TOLERANCE = 1.0  # px: a box may overhang its image or miss its mask's extent by this much
AREA_TOLERANCE = 0.01  # relative: `area` against the mask's pixel count
KEYPOINT_MARGIN = 0.1  # of the person box's width (x) and height (y)
# Below a tiny object's side (16 px, data.size_buckets) a person's head is a few pixels that
# annotators and the synthetic renderer place by guess, and polygon tracing drops head pieces
# under 4 px: the head's keypoints then sit a few pixels off the box of what is left.
KEYPOINT_MIN_MARGIN = 16.0
# Label Studio keypoints carry no visibility, so an occluded person's hidden head is "labelled"
# (v=2) away from the visible fragment its box holds: about 1% of synthetic persons. A few such
# instances are a warning; more than this share of them is a coordinate bug (an error).
KEYPOINT_ERROR_SHARE = 0.05
EPS = 1e-9
ALL = "all"
SPLITS = ("train", "val")
_AREA_CHUNK = 255
_RLE_CHUNK = 1 << 20  # chars
_REQUIRED_IMAGE = ("id", "file_name", "width", "height")
_REQUIRED_ANNOTATION = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


@dataclass(frozen=True)
class Check:
    """One check's outcome: a failing `error` fails the gate, a failing `warning` is reported."""

    name: str  # "schema", "geometry.boxes_inside", "leakage", "shift.val", ...
    passed: bool
    severity: str  # ERROR or WARNING
    message: str  # one line: what, where (file + first offending ids), what to do
    details: dict[str, Any]  # JSON-serialisable: counts, first offenders (<= 20), tables


def check_dataset(
    prepared: Path,
    reviewed: Path,
    *,
    leak_hamming: int,
    baseline_stats: dict[str, Any] | None,
    max_shift: float = 0.5,
    min_objects: int = 20,
) -> list[Check]:
    """Every data check of a prepared folder, in a fixed order, passing or not.

    Checks: `schema`; `geometry.boxes_inside`, `geometry.masks_non_empty`, `geometry.mask_area`,
    `geometry.mask_bbox`, `geometry.keypoints_in_image`, `geometry.keypoints_in_person`,
    `geometry.keypoints_count`; `leakage.hashes`, `leakage`; `shift.<split>` for each split of
    this version, then each split only the baseline has (`train`, `val`, `ref-<name>`).

    Decisions:
    - `file_name` is resolved against `prepared/` for every file, refs/ included: prepare writes
      them so (tiles `tiles/...`, store images `../raw/...`).
    - Geometry runs on the annotations schema found well-formed; a file that does not parse is
      reported by schema and skipped by the rest. A missing, null or empty `segmentation` is a
      box-only instance (as training and scoring read it), not an empty mask. A mask that does
      not decode (a compressed RLE that does not cover its image exactly, polygon vertices far
      outside the image) fails `geometry.masks_non_empty`.
    - Labelled keypoints (v > 0) must lie in their image (an error), and in their instance's box
      widened by 10% of its size and by at least 16 px. Label Studio keypoints carry no
      visibility, so an occluded person's hidden head lies away from the visible fragment its
      box holds (about 1% of synthetic persons): outside the box is a warning, and an error only
      for more than 5% of the instances (a coordinate bug moves them all).
    - Leakage compares train and val (tiles by their source's sha256) with every reference set.
      pHashes come from `reviewed/manifest.jsonl`; a reference image without `sha256` (an
      external reference set) is hashed from its file as prepare does. Any other image without
      a pHash fails `leakage.hashes`; without a readable manifest, `leakage` fails too.
    - Shift (warnings only) counts objects in the COCO files (not the stats.json beside them,
      which may be stale) and compares each class/bucket's share of its split, and each class's
      over all buckets (`all`), with `baseline_stats["<split>"]["objects"]`. A class that
      appears or disappears always warns; a split only the baseline has warns; a new split and
      a missing baseline pass with a note.
    """
    prepared, reviewed = Path(prepared), Path(reviewed)
    cocos, schema = _load(prepared)
    current = {coco.split: _objects(coco) for coco in cocos}
    return [
        schema,
        *_geometry(cocos),
        *_leakage(cocos, prepared, reviewed, leak_hamming),
        *_shift(current, baseline_stats, max_shift=max_shift, min_objects=min_objects),
    ]


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass
class _Offenders:
    """How many items a check found wrong, and the first FIRST of them (where + what)."""

    count: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: str, problem: str, **ids: Any) -> None:
        self.count += 1
        if len(self.first) < FIRST:
            self.first.append({"file": file, **ids, "problem": problem})

    def add_annotations(
        self, coco: _Coco, rows: Sequence[int], problem: Callable[[int], str]
    ) -> None:
        """Count annotations `rows` of `coco`; describe (`problem(k)` for `rows[k]`) only those
        that still fit in `first`, so a million offenders cost no more than twenty."""
        room = max(FIRST - len(self.first), 0)
        for k in range(min(room, len(rows))):
            ann = coco.annotations[int(rows[k])]
            where = {"annotation_id": ann["id"], "image_id": ann["image_id"]}
            self.first.append({"file": coco.file, **where, "problem": problem(k)})
        self.count += len(rows)


def _where(offender: Mapping[str, Any]) -> str:
    parts = [str(offender["file"])]
    if "annotation_id" in offender:
        parts.append(f"annotation {offender['annotation_id']}")
        if "image_id" in offender:
            parts.append(f"(image {offender['image_id']})")
    elif "image_id" in offender:
        parts.append(f"image {offender['image_id']}")
    return " ".join(parts)


def _result(
    name: str,
    severity: str,
    found: _Offenders,
    *,
    ok: str,
    bad: str,
    todo: str,
    **details: Any,
) -> Check:
    details = {**details, "count": found.count, "first": found.first}
    if not found.count:
        return Check(name, True, severity, f"{name}: {ok}", details)
    shown = "; ".join(f"{_where(o)}: {o['problem']}" for o in found.first[:SHOWN])
    more = f" (and {found.count - SHOWN} more)" if found.count > SHOWN else ""
    return Check(
        name, False, severity, f"{name}: {found.count} {bad}: {shown}{more}. {todo}", details
    )


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass
class _Coco:
    """A parsed COCO file, keeping only what schema found well-formed."""

    file: str  # relative to prepared/: train.json, refs/holdout.json
    split: str  # its name in stats.json: train, val, ref-holdout
    images: dict[int, dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]  # sorted by id


def _dataset_files(prepared: Path) -> list[tuple[str, str]]:
    """(file relative to prepared/, split name) of every COCO file prepare writes."""
    refs = sorted((prepared / "refs").glob("*.json")) if (prepared / "refs").is_dir() else []
    return [
        ("train.json", "train"),
        ("val.json", "val"),
        *((f"refs/{p.name}", f"ref-{p.stem}") for p in refs),
    ]


def _load(prepared: Path) -> tuple[list[_Coco], Check]:
    """Parse and check every COCO file; the well-formed part of each, and the schema check."""
    found = _Offenders()
    cocos: list[_Coco] = []
    reference: _Coco | None = None
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
    check = _result(
        "schema",
        ERROR,
        found,
        ok=f"{len(cocos)} COCO files well-formed, categories identical, every image file there",
        bad="schema problem(s)",
        todo=f"Run `anonlab prepare` again, or fix the inputs it read ({prepared})",
        files=files,
    )
    return cocos, check


def _sizes(coco: _Coco) -> dict[str, int]:
    return {"images": len(coco.images), "annotations": len(coco.annotations)}


def _category_names(coco: _Coco) -> list[str]:
    return [str(c.get("name")) for c in coco.categories]


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    # NaN and infinities pass here on purpose: geometry reports them with the box or area.
    return type(value) in (int, float)


def _parse(file: str, split: str, data: Any, found: _Offenders) -> _Coco | None:
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
        if not _is_int(cid) or not isinstance(category.get("name"), str):
            found.add(file, f"category #{n} needs an integer id and a name")
        elif cid in categories:
            found.add(file, f"duplicate category id {cid}")
        else:
            categories[cid] = category

    images: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()  # image ids, well-formed or not: their annotations are not orphans
    for n, image in enumerate(lists["images"]):
        iid = image.get("id") if isinstance(image, dict) else None
        if not _is_int(iid):
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
            and _is_int(image["width"])
            and _is_int(image["height"])
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
        if not _is_int(aid):
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
    return _Coco(
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
    if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
        return f"image_id {ann['image_id']!r} is not an image of the file"
    if not _is_int(ann["category_id"]) or ann["category_id"] not in categories:
        return f"category_id {ann['category_id']!r} is not a category of the file"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return f"bbox must be 4 numbers [x, y, width, height], found {box!r}"
    if not _is_number(ann["area"]):
        return f"area must be a number, found {ann['area']!r}"
    if ann["iscrowd"] not in (0, 1):
        return f"iscrowd must be 0 or 1, found {ann['iscrowd']!r}"
    kps = ann.get("keypoints")
    if kps is not None and not (isinstance(kps, list) and all(map(_is_number, kps))):
        return "keypoints must be a list of numbers [x, y, v, ...]"
    return None


# ---------------------------------------------------------------------------------------------
# Geometry


def _geometry(cocos: Sequence[_Coco]) -> list[Check]:
    boxes, empty, area, extent, in_image, in_person, count = (_Offenders() for _ in range(7))
    n: Counter[str] = Counter()
    for coco in cocos:
        _check_boxes(coco, boxes, n)
        _check_masks(coco, empty, area, extent, n)
        _check_keypoints(coco, _KeypointFindings(in_image, in_person, count), n)
    off_share = in_person.count / max(n["keypoint_instances"], 1)
    return [
        _result(
            "geometry.boxes_inside",
            ERROR,
            boxes,
            ok=f"{n['boxes']} boxes finite, positive and inside their images "
            f"(±{BOX_TOLERANCE:g} px)",
            bad="bad box(es)",
            todo="Fix the annotations and run `anonlab prepare` again",
            boxes=n["boxes"],
            tolerance_px=BOX_TOLERANCE,
        ),
        _result(
            "geometry.masks_non_empty",
            ERROR,
            empty,
            ok=f"{n['masks']} masks decode with pixels ({n['box_only']} box-only instances)",
            bad="mask(s) empty or not decodable",
            todo="Redraw or remove these objects and run `anonlab prepare` again",
            masks=n["masks"],
            box_only=n["box_only"],
        ),
        _result(
            "geometry.mask_area",
            ERROR,
            area,
            ok=f"{n['masks_decoded']} areas equal their masks' pixel counts "
            f"(±{AREA_TOLERANCE:.0%})",
            bad="area(s) differ from the mask's pixel count",
            todo="Recompute `area` from the masks (run `anonlab annotate pull` and prepare again)",
            masks=n["masks_decoded"],
            tolerance=AREA_TOLERANCE,
        ),
        _result(
            "geometry.mask_bbox",
            ERROR,
            extent,
            ok=f"{n['masks_decoded']} boxes match their masks' extents (±{BOX_TOLERANCE:g} px)",
            bad="box(es) differ from the mask's extent",
            todo="Recompute `bbox` from the masks (run `anonlab annotate pull` and prepare again)",
            masks=n["masks_decoded"],
            tolerance_px=BOX_TOLERANCE,
        ),
        _result(
            "geometry.keypoints_in_image",
            ERROR,
            in_image,
            ok=f"{n['keypoints_visible']} labelled keypoints lie in their images "
            f"(±{BOX_TOLERANCE:g} px)",
            bad="instance(s) with labelled keypoints outside their image",
            todo="Fix the keypoints (a keypoint outside the image is stored as 0, 0, 0) and run "
            "`anonlab prepare` again",
            keypoints=n["keypoints_visible"],
        ),
        _result(
            "geometry.keypoints_in_person",
            ERROR if off_share > KEYPOINT_ERROR_SHARE else WARNING,
            in_person,
            ok=f"{n['keypoints_visible']} labelled keypoints of {n['keypoint_instances']} "
            "instances lie in their boxes (with margin)",
            bad=f"of {n['keypoint_instances']} instances ({off_share:.1%}) with keypoints "
            "outside their box",
            todo="Fix the keypoints (or the person's box) and run `anonlab prepare` again; "
            f"above {KEYPOINT_ERROR_SHARE:.0%} of instances this is an error, below it a "
            "warning (occluded persons' hidden heads)",
            instances=n["keypoint_instances"],
            keypoints=n["keypoints_visible"],
            share=round(off_share, 4),
            error_share=KEYPOINT_ERROR_SHARE,
            margin=KEYPOINT_MARGIN,
            min_margin_px=KEYPOINT_MIN_MARGIN,
        ),
        _result(
            "geometry.keypoints_count",
            ERROR,
            count,
            ok=f"{n['keypoint_instances']} instances carry one (x, y, v) per keypoint name",
            bad="instance(s) with the wrong number of keypoints",
            todo="Re-export the keypoints with the taxonomy's keypoint names",
            instances=n["keypoint_instances"],
        ),
    ]


def _check_boxes(coco: _Coco, found: _Offenders, n: Counter[str]) -> None:
    anns = coco.annotations
    n["boxes"] += len(anns)
    if not anns:
        return
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    size = np.array(
        [(coco.images[a["image_id"]]["width"], coco.images[a["image_id"]]["height"]) for a in anns],
        dtype=np.float64,
    )
    finite = np.isfinite(box).all(axis=1)
    with np.errstate(invalid="ignore"):
        positive = (box[:, 2:] > 0).all(axis=1)
        inside = (box[:, :2] >= -BOX_TOLERANCE).all(axis=1) & (
            box[:, :2] + box[:, 2:] <= size + BOX_TOLERANCE
        ).all(axis=1)
    bad = np.flatnonzero(~(finite & positive & inside))

    def problem(k: int) -> str:
        i = bad[k]
        shown = [round(float(v), 2) for v in box[i]]
        if not finite[i]:
            return f"bbox {shown} is not finite"
        if not positive[i]:
            return f"bbox {shown} has no positive width and height"
        return f"bbox {shown} leaves the {int(size[i, 0])}x{int(size[i, 1])} image"

    found.add_annotations(coco, bad, problem)


def _check_masks(
    coco: _Coco, empty: _Offenders, area: _Offenders, extent: _Offenders, n: Counter[str]
) -> None:
    rles: list[dict[str, Any]] = []
    rows: list[int] = []
    strings: list[tuple[int, str, int]] = []  # (index in rles, compressed counts, image pixels)
    for i, ann in enumerate(coco.annotations):
        seg = ann.get("segmentation")
        if not seg:
            n["box_only"] += 1
            continue
        n["masks"] += 1
        image = coco.images[ann["image_id"]]
        height, width = image["height"], image["width"]
        problem = _segmentation_problem(seg, height, width) or _polygon_range_problem(
            seg, height, width
        )
        if problem is None:
            try:
                rle = _as_rle(seg, height, width)
            except (TypeError, ValueError, KeyError) as e:
                problem = str(e)
            else:
                if isinstance(seg, dict) and isinstance(seg["counts"], str):
                    strings.append((len(rles), seg["counts"], height * width))
                rles.append(rle)
                rows.append(i)
                continue
        empty.add(
            coco.file,
            f"mask does not decode: {problem}",
            annotation_id=ann["id"],
            image_id=ann["image_id"],
        )
    # A compressed RLE must cover its image exactly: pycocotools reads a short or long one
    # without a word (training's decoder refuses it), so it is checked here, all at once.
    totals, valid = _rle_totals([counts for _, counts, _ in strings])
    broken: set[int] = set()
    for (k, _, pixels), total, ok in zip(strings, totals.tolist(), valid.tolist(), strict=True):
        if ok and total == pixels:
            continue
        broken.add(k)
        ann = coco.annotations[rows[k]]
        problem = f"RLE covers {total} pixels, the image {pixels}" if ok else "malformed RLE"
        empty.add(
            coco.file,
            f"mask does not decode: {problem}",
            annotation_id=ann["id"],
            image_id=ann["image_id"],
        )
    if broken:
        rles = [r for k, r in enumerate(rles) if k not in broken]
        rows = [r for k, r in enumerate(rows) if k not in broken]
    if not rles:
        return
    pixels = _mask_areas(rles)
    mask_box = mask_utils.toBbox(rles)
    anns = [coco.annotations[i] for i in rows]
    stated = np.array([a["area"] for a in anns], dtype=np.float64)
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)

    none = np.flatnonzero(pixels == 0)
    empty.add_annotations(coco, [rows[k] for k in none], lambda k: "mask has no pixel")
    decoded = pixels > 0
    n["masks_decoded"] += int(decoded.sum())
    with np.errstate(invalid="ignore"):
        area_ok = np.abs(stated - pixels) <= AREA_TOLERANCE * pixels
        xyxy = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)
        mask_xyxy = np.concatenate([mask_box[:, :2], mask_box[:, :2] + mask_box[:, 2:]], axis=1)
        extent_ok = (np.abs(xyxy - mask_xyxy) <= BOX_TOLERANCE).all(axis=1)
    bad_area = np.flatnonzero(decoded & ~area_ok)
    bad_extent = np.flatnonzero(decoded & ~extent_ok)
    area.add_annotations(
        coco,
        [rows[k] for k in bad_area],
        lambda k: f"area {stated[bad_area[k]]:g}, mask {int(pixels[bad_area[k]])} px",
    )
    extent.add_annotations(
        coco,
        [rows[k] for k in bad_extent],
        lambda k: (
            f"bbox {_rounded(box[bad_extent[k]])}, mask extent {_rounded(mask_box[bad_extent[k]])}"
        ),
    )


def _mask_areas(rles: list[dict[str, Any]]) -> np.ndarray:
    """Pixel counts of many RLEs. pycocotools 2.0.11's `area` on numpy 2 raises OverflowError
    for more than 255 masks in one call, so it gets them 255 at a time."""
    chunks = [mask_utils.area(rles[i : i + _AREA_CHUNK]) for i in range(0, len(rles), _AREA_CHUNK)]
    return np.concatenate(chunks).astype(np.float64)


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(float(v), 2) for v in values]


def _rle_totals(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels each compressed COCO RLE string covers (the sum of its runs), and whether it
    is well-formed (not empty, its last count finished, no negative run).

    `training.masks.rle_counts` decodes one string the same way; one call per mask would cost
    minutes on a million masks, so here all strings are joined and decoded in one pass, and the
    delta coding (from the fourth count on, each is stored as the difference to the count two
    before) is undone by cumulative sums per string and parity.
    """
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    # Chunks of about a million chars keep the arrays in cache: one pass over 100M chars
    # would hold several GB of int64 temporaries.
    cut = np.searchsorted(np.cumsum(lengths), np.arange(_RLE_CHUNK, lengths.sum(), _RLE_CHUNK))
    bounds = [0, *np.unique(cut).tolist(), len(strings)]
    parts = [_rle_chunk(strings[a:b], lengths[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts])


def _rle_chunk(strings: Sequence[str], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum(lengths)
    c = np.frombuffer("".join(strings).encode("ascii"), np.uint8) - np.uint8(48)
    more = (c & 0x20) != 0
    filled = lengths > 0
    valid = filled.copy()
    valid[filled] = ~more[ends[filled] - 1]
    more[ends[filled] - 1] = False  # a truncated string's last count ends with it all the same
    last = np.flatnonzero(~more)  # the last char of every count
    first = np.concatenate(([0], last[:-1] + 1))
    starts_at = np.zeros(len(c), np.int64)
    starts_at[first] = first
    position = np.arange(len(c)) - np.maximum.accumulate(starts_at)  # of a char in its count
    shift = np.minimum(5 * position, 58)  # a count of more than 12 chars is garbage anyway
    x = np.add.reduceat((c & 0x1F).astype(np.int64) << shift, first)
    negative = (c[last] & 0x10) != 0
    x[negative] |= -1 << (shift[last[negative]] + 5)

    string = np.searchsorted(ends, last, side="right")  # the string of each count
    starts = np.searchsorted(string, np.arange(len(strings)))  # each string's first count
    k = np.arange(len(x)) - starts[string]  # each count's position in its string
    for parity, since in ((0, 2), (1, 1)):
        sel = np.flatnonzero((k % 2 == parity) & (k >= since))
        if not len(sel):
            continue
        run = np.cumsum(x[sel])
        segment = np.concatenate(([True], string[sel][1:] != string[sel][:-1]))
        base = np.maximum.accumulate(np.where(segment, np.arange(len(sel)), 0))
        x[sel] = run - run[base] + x[sel][base]

    totals = np.zeros(len(strings), np.int64)
    lowest = np.zeros(len(strings), np.int64)
    totals[filled] = np.add.reduceat(x, starts[filled])
    lowest[filled] = np.minimum.reduceat(x, starts[filled])
    return totals, valid & (lowest >= 0)


def _polygon_range_problem(seg: Any, height: int, width: int) -> str | None:
    """Polygon vertices far outside the image: pycocotools would rasterise the edges to them
    step by step (minutes for a vertex at 1e8), and no annotator drew them."""
    if not isinstance(seg, list):
        return None
    for polygon in seg:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if (np.abs(xy - [width / 2, height / 2]) > [width, height]).any():
            return f"polygon vertices lie far outside the {width}x{height} image"
    return None


@dataclass(frozen=True)
class _KeypointFindings:
    in_image: _Offenders
    in_person: _Offenders
    count: _Offenders


def _check_keypoints(coco: _Coco, found: _KeypointFindings, n: Counter[str]) -> None:
    names = {c["id"]: list(c.get("keypoints") or []) for c in coco.categories}
    by_category: dict[int, list[int]] = defaultdict(list)
    for i, ann in enumerate(coco.annotations):
        kps = ann.get("keypoints")
        if kps is None:
            continue
        expected = names[ann["category_id"]]
        if len(kps) != 3 * len(expected):
            found.count.add(
                coco.file,
                f"{len(kps)} keypoint values, category {ann['category_id']} has "
                f"{len(expected)} keypoint names (3 values each)",
                annotation_id=ann["id"],
                image_id=ann["image_id"],
            )
        elif expected:
            by_category[ann["category_id"]].append(i)

    for cid, rows in by_category.items():
        _check_category_keypoints(coco, rows, names[cid], found, n)


def _check_category_keypoints(
    coco: _Coco,
    rows: list[int],
    names: list[str],
    found: _KeypointFindings,
    n: Counter[str],
) -> None:
    """Keypoints of one category's annotations `rows`, all with one (x, y, v) per name."""
    anns = [coco.annotations[i] for i in rows]
    kps = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, len(names), 3)
    visible = kps[..., 2] > 0
    n["keypoint_instances"] += len(anns)
    n["keypoints_visible"] += int(visible.sum())
    stated = np.array([a.get("num_keypoints", -1) for a in anns])
    wrong = np.flatnonzero((stated >= 0) & (stated != visible.sum(axis=1)))
    found.count.add_annotations(
        coco,
        [rows[j] for j in wrong],
        lambda j: (
            f"num_keypoints {stated[wrong[j]]}, {int(visible[wrong[j]].sum())} keypoints labelled"
        ),
    )

    xy = kps[..., :2]
    size = np.array(
        [(coco.images[a["image_id"]]["width"], coco.images[a["image_id"]]["height"]) for a in anns],
        dtype=np.float64,
    )
    bounds = (np.full_like(size, -BOX_TOLERANCE), size + BOX_TOLERANCE)
    _add_outside(found.in_image, coco, rows, names, xy, visible, bounds, "the image")
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    margin = np.maximum(KEYPOINT_MARGIN * box[:, 2:], KEYPOINT_MIN_MARGIN)
    low, high = box[:, :2] - margin, box[:, :2] + box[:, 2:] + margin
    _add_outside(found.in_person, coco, rows, names, xy, visible, (low, high), "bbox")


def _add_outside(
    found: _Offenders,
    coco: _Coco,
    rows: list[int],
    names: list[str],
    xy: np.ndarray,
    visible: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    what: str,
) -> None:
    """Add annotations `rows` whose labelled keypoints `xy` (N, K, 2) leave [low, high] (N, 2)."""
    low, high = bounds
    with np.errstate(invalid="ignore"):
        inside = ((xy >= low[:, None]) & (xy <= high[:, None])).all(axis=-1)
    outside = visible & ~inside
    bad = np.flatnonzero(outside.any(axis=1))

    def problem(j: int) -> str:
        i = bad[j]
        first = int(np.flatnonzero(outside[i])[0])
        x, y = (round(float(v), 1) for v in xy[i, first])
        region = f"bbox {_rounded(coco.annotations[rows[i]]['bbox'])}" if what == "bbox" else what
        return (
            f"{int(outside[i].sum())} keypoint(s) outside {region}, e.g. {names[first]} at "
            f"({x}, {y})"
        )

    found.add_annotations(coco, [rows[j] for j in bad], problem)


# ---------------------------------------------------------------------------------------------
# Leakage


def _leakage(
    cocos: Sequence[_Coco], prepared: Path, reviewed: Path, leak_hamming: int
) -> list[Check]:
    missing = _Offenders()
    try:
        hashes, work_size = _reviewed_hashes(reviewed)
    except AnonlabError as e:
        return [
            Check("leakage.hashes", False, ERROR, f"leakage.hashes: {e}", {"count": None}),
            Check("leakage", False, ERROR, "leakage: not judged without pHashes", {"count": None}),
        ]

    pools: dict[str, dict[str, int]] = {}  # train / val / ref-<name> -> sha256 -> pHash
    first_image: dict[tuple[str, str], tuple[str, int, str]] = {}  # (split, sha) -> where
    hashed_from_files = 0
    for coco in cocos:
        pool = pools.setdefault(coco.split, {})
        for image_id, image in coco.images.items():
            sha = image.get("sha256")
            if not sha and coco.split.startswith("ref-") and work_size is not None:
                # An external reference set's image: never reviewed, so hash it as prepare did.
                path = prepared / image["file_name"]
                if not path.is_file():
                    continue  # schema reports it
                try:
                    sha, phash = _hash_file(path, work_size)
                except (OSError, ValueError) as e:
                    missing.add(
                        coco.file, f"cannot hash {image['file_name']}: {e}", image_id=image_id
                    )
                    continue
                hashes.setdefault(sha, phash)
                hashed_from_files += 1
            if (coco.split, sha) in first_image:
                continue  # another tile of the same source image
            first_image[(coco.split, sha)] = (coco.file, image_id, image["file_name"])
            if not sha:
                missing.add(coco.file, "no sha256", image_id=image_id)
            elif hashes.get(sha) is None:
                missing.add(
                    coco.file,
                    f"sha256 {sha[:12]}... has no pHash in {reviewed / MANIFEST}",
                    image_id=image_id,
                )
            else:
                pool[sha] = hashes[sha]

    references = {split: pool for split, pool in pools.items() if split.startswith("ref-")}
    leaks = _Offenders()
    for split in SPLITS:
        for leak in find_leaks(pools.get(split, {}), references, max_hamming=leak_hamming):
            file, image_id, _ = first_image[(split, leak.train_image)]
            ref_file, ref_id, ref_name = first_image[(leak.refset, leak.reference_image)]
            leaks.add(
                file,
                f"{leak.kind.replace('_', '-')} ({leak.distance} bits) to {ref_file} image "
                f"{ref_id} ({ref_name})",
                image_id=image_id,
                refset=leak.refset,
                reference_image_id=ref_id,
                kind=leak.kind,
                distance=leak.distance,
            )
    images = {split: len(pool) for split, pool in pools.items()}
    return [
        _result(
            "leakage.hashes",
            ERROR,
            missing,
            ok=f"every image has a pHash ({hashed_from_files} hashed from external files)",
            bad="image(s) without a pHash",
            todo="Run `anonlab review` and `anonlab prepare` again",
            hashed_from_files=hashed_from_files,
        ),
        _result(
            "leakage",
            ERROR,
            leaks,
            ok=f"no train or val image within {leak_hamming} pHash bits of a reference image",
            bad="train/val image(s) identical or near-identical to a reference image",
            todo="Take their sessions out of train/val (prepare.reference_sets) or remove the "
            "duplicates, then run `anonlab prepare` again",
            max_hamming=leak_hamming,
            images=images,
        ),
    ]


def _reviewed_hashes(reviewed: Path) -> tuple[dict[str, int | None], int | None]:
    """sha256 -> pHash (None where review wrote none) of the kept images, and review's work size."""
    path = reviewed / MANIFEST
    if not path.is_file():
        raise AnonlabError(f"{path} not found: run `anonlab review` first")
    try:
        records = read_manifest(path)
    except (TypeError, ValueError) as e:
        raise AnonlabError(f"{path} is not a manifest written by review ({e})") from None
    hashes: dict[str, int | None] = {}
    work_size = None
    for r in records:
        review = r.extra.get("review") or {}
        try:
            hashes[r.sha256] = int(review["phash"], 16)
        except (KeyError, TypeError, ValueError):
            hashes[r.sha256] = None
        work_size = review.get("work_size", work_size)
    return hashes, work_size


def _hash_file(path: Path, work_size: int) -> tuple[str, int]:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return sha, score_image(path, work_size=work_size).phash


# ---------------------------------------------------------------------------------------------
# Shift


def _objects(coco: _Coco) -> dict[str, dict[str, int]]:
    """Objects per class and size bucket, as prepare's stats.json counts them."""
    name_of = {c["id"]: str(c["name"]) for c in coco.categories}
    out = {name: dict.fromkeys(BUCKETS, 0) for name in name_of.values()}
    if coco.annotations:
        buckets = size_buckets(np.array([a["area"] for a in coco.annotations], dtype=np.float64))
        classes = [name_of[a["category_id"]] for a in coco.annotations]
        for (name, bucket), k in Counter(zip(classes, buckets.tolist(), strict=True)).items():
            out[name][bucket] = k
    return out


def _shift(
    current: Mapping[str, Mapping[str, Mapping[str, int]]],
    baseline: Mapping[str, Any] | None,
    *,
    max_shift: float,
    min_objects: int,
) -> list[Check]:
    if baseline is None:
        return [
            Check(
                f"shift.{split}",
                True,
                WARNING,
                f"shift.{split}: no baseline stats (first version): nothing compared",
                {"baseline": False, "objects": dict(objects)},
            )
            for split, objects in current.items()
        ]
    old_splits = {
        split: s["objects"]
        for split, s in baseline.items()
        if isinstance(s, Mapping) and isinstance(s.get("objects"), Mapping)
    }
    checks = []
    for split in [*current, *(s for s in old_splits if s not in current)]:
        name = f"shift.{split}"
        if split not in old_splits:
            checks.append(Check(name, True, WARNING, f"{name}: new split, not in the baseline", {}))
        elif split not in current:
            checks.append(
                Check(
                    name,
                    False,
                    WARNING,
                    f"{name}: in the baseline but not in this version. Check that it was meant "
                    "to go (prepare.reference_sets)",
                    {},
                )
            )
        else:
            checks.append(
                _shift_check(name, current[split], old_splits[split], max_shift, min_objects)
            )
    return checks


def _shift_check(
    name: str,
    new: Mapping[str, Mapping[str, int]],
    old: Mapping[str, Mapping[str, int]],
    max_shift: float,
    min_objects: int,
) -> Check:
    """Warn where a class/bucket's share of the split's objects moved by more than `max_shift`."""
    classes = [*new, *(c for c in old if c not in new)]

    def count(table: Mapping[str, Mapping[str, int]], c: str, bucket: str) -> int:
        per = table.get(c) or {}
        return int(sum(per.values())) if bucket == ALL else int(per.get(bucket, 0))

    new_total = sum(count(new, c, ALL) for c in classes)
    old_total = sum(count(old, c, ALL) for c in classes)
    rows: list[dict[str, Any]] = []
    flagged: list[tuple[float, str]] = []
    for c in classes:
        for bucket in (*BUCKETS, ALL):
            n_new, n_old = count(new, c, bucket), count(old, c, bucket)
            share_new = n_new / new_total if new_total else 0.0
            share_old = n_old / old_total if old_total else 0.0
            change = abs(share_new - share_old) / max(share_old, EPS)
            judged = max(n_new, n_old) >= min_objects
            # A class that appears or vanishes is worth a look whatever its count.
            note = ""
            if bucket == ALL and (n_old == 0) != (n_new == 0):
                note = "appeared" if n_old == 0 else "disappeared"
            flag = bool(note) or (judged and change > max_shift)
            rows.append(
                {
                    "class": c,
                    "bucket": bucket,
                    "old": n_old,
                    "new": n_new,
                    "old_share": round(share_old, 4),
                    "new_share": round(share_new, 4),
                    "relative_change": round(change, 4) if share_old > 0 else None,
                    "judged": judged,
                    "flagged": flag,
                }
            )
            if flag:
                text = f"{c} {note}" if note else _move(f"{c}/{bucket}", share_old, share_new)
                flagged.append((math.inf if note else change, text))
    # The message names the biggest moves: classes that come or go, then by relative change.
    flagged.sort(key=lambda f: -f[0])
    details = {
        "objects": {"old": old_total, "new": new_total},
        "max_shift": max_shift,
        "min_objects": min_objects,
        "count": len(flagged),
        "table": rows,
    }
    if not flagged:
        return Check(
            name,
            True,
            WARNING,
            f"{name}: no class/bucket share moved by more than {max_shift:.0%} "
            f"({old_total} -> {new_total} objects)",
            details,
        )
    shown = "; ".join(text for _, text in flagged[:SHOWN]) + (
        f" (and {len(flagged) - SHOWN} more)" if len(flagged) > SHOWN else ""
    )
    return Check(
        name,
        False,
        WARNING,
        f"{name}: {len(flagged)} class/bucket share(s) moved by more than {max_shift:.0%} since "
        f"the baseline ({old_total} -> {new_total} objects): {shown}. Check that the new data is "
        "what you meant",
        details,
    )


def _move(what: str, old: float, new: float) -> str:
    change = f"{new / old - 1:+.0%}" if old > 0 else "was none"
    return f"{what} share {old:.3f} -> {new:.3f} ({change})"
