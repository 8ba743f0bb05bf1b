"""Label Studio JSON export -> COCO instances with person keypoints (pure: no files, no server).

Input is a list of tasks as Label Studio's "JSON" export writes them (or
`data.synthetic.labelstudio_task`); `to_coco` returns the COCO dict, every issue found and
counts. The controls and the `same_object` relation are those of `annotation.labeling_config`.

Rules:
- Which annotation: cancelled ones (`was_cancelled`, Label Studio's "skip") never count; of the
  rest, one marked `ground_truth` wins, then the most recently updated (`updated_at`, else
  `created_at`), then the highest id. Two or more remaining -> Issue "conflict" naming them all
  and the winner. Predictions and drafts are never ground truth.
- Every task ends as exactly one of `tasks.converted`, `tasks.unannotated` (no submitted
  annotation), `tasks.skipped` (only cancelled ones) or `tasks.unknown_image` (`resolve_image`
  returned None); all but converted come with an Issue, so nothing is dropped silently. A
  submitted annotation without regions is a converted image with no objects (a negative).
- Geometry (Label Studio stores percent of the image's width and height; angles are degrees,
  clockwise in the image): a pixel (row r, column c) covers [c, c+1) x [r, r+1) and a shape holds
  the pixels whose centres it contains, the synthetic source's convention. Ellipses: centre
  (x, y), radii radiusX (of the width) and radiusY (of the height), turned by `rotation` about the
  centre. Rectangles: top-left corner (x, y), width, height, turned by `rotation` about that
  corner. Polygons are filled with their outline (cv2.fillPoly), so a polygon traced through the
  centres of a piece's boundary pixels gives the piece back, and a collinear one (a 1-pixel-wide
  piece, as the synthetic export traces them) the pixels it runs through. Brushes: Label
  Studio's RLE of an RGBA image at `original_width` x `original_height`; the mask is alpha > 0.
  A shape of non-zero size that overlaps the image but contains no pixel centre keeps the pixel
  under its centre: the tiny faces and plates are the ones anonymization must not lose. Shapes
  partly outside the image are clipped; a panorama object drawn on both sides of the seam is one
  mask with pixels at both ends, so its `bbox` spans the width (prepare splits seams later).
- The image size is the ImageRef's. Regions drawn at another `original_width`/`_height` ->
  Issue "size_mismatch" (once per task): percent coordinates scale to the ImageRef size, brush
  masks are resized (nearest pixel centre).
- Objects: regions linked by `same_object` relations (any direction; a relation without a label
  counts too, it is the only one the config offers) form one object, the union of their masks.
  A group mixing classes becomes one object per class (Issue "mixed_labels").
- Keypoints (x, y in continuous pixels, v=2 when placed since Label Studio has no visibility,
  0, 0, 0 when missing) go to the person they are linked to; an unlinked keypoint goes to the
  person whose mask holds it, else to the nearest person box within
  max(3 px, 10% of the box's longer side), among persons that lack that keypoint; else Issue
  "orphan_keypoint". A second keypoint of the same name on a person -> "duplicate_keypoint".
- Degenerate (Issue "degenerate", left out): a polygon of fewer than 3 points or with all its
  points at one place, radii or sizes <= 0, non-finite numbers, an empty brush. A polygon whose
  edges cross is reported ("self_intersecting") and kept as cv2 fills it. A collinear polygon of
  distinct points is kept, no issue: it is how a 1-pixel-wide piece is traced (the synthetic
  export writes them). Shapes and keypoints entirely outside the image -> "outside_image".
- Region problems are reported per region (task id, region id, what was done) and never stop
  the conversion; a malformed export (not a list of tasks, a task without an int id or a data
  dict, annotations or results that are not lists of objects, duplicate task ids) raises
  AnonlabError before anything is converted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

from annotation.labeling_config import SAME_OBJECT
from data.coco import KEYPOINT_CLASS
from data.coco import categories as coco_categories
from data.errors import AnonlabError
from serving.runtime.progress import bar

log = logging.getLogger(__name__)

# Issue kinds: stable names, what they mean and what was done.
ISSUE_KINDS = {
    "unannotated": "the task has no submitted annotation; left out (counted)",
    "skipped": "every annotation of the task was cancelled (skipped); left out",
    "cancelled": "a cancelled annotation was ignored; another one was converted",
    "conflict": "several submitted annotations; the rule picked one (named in the detail)",
    "unknown_image": "resolve_image found no image for the task; left out",
    "size_mismatch": "regions drawn at another image size; scaled to the image's size",
    "unknown_label": "a region's label is not in the taxonomy (or it has none); left out",
    "ambiguous_label": "a region carries several labels; left out",
    "malformed_region": "a region's value is missing or not numbers; left out",
    "unsupported": "a result type, relation or rotated view the config does not offer; ignored",
    "dangling_relation": "a relation names a region the annotation does not have; ignored",
    "degenerate": "a shape that covers nothing (too few points, zero size, NaN); left out",
    "self_intersecting": "a polygon whose edges cross; reported, its filled mask kept",
    "outside_image": "a shape or keypoint entirely outside the image; left out",
    "mixed_labels": "regions of several classes linked as one object; one object per class",
    "orphan_keypoint": "a keypoint that fits no person; left out",
    "duplicate_keypoint": "a person has that keypoint already; left out",
}

_SHAPE_TYPES = ("polygonlabels", "brushlabels", "ellipselabels", "rectanglelabels")
_KEYPOINT_TYPE = "keypointlabels"
_RELATION_TYPE = "relation"
# Pixel coordinates beyond this are no drawing, and would overflow cv2's fixed-point input.
_MAX_COORD = 1e6
_SUBPIXEL_BITS = 8  # cv2.fillPoly fixed point: vertices at 1/256 pixel
_EPS = 1e-6  # pixels: percent round trips must not move a pixel centre off a shape's edge


@dataclass(frozen=True)
class ImageRef:
    file_name: str  # path as COCO should record it (relative), e.g. "raw/images/ab/ab12....jpg"
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class Issue:
    task_id: int
    kind: str  # a key of ISSUE_KINDS
    detail: str  # which region or annotation, what is wrong, what was done


@dataclass
class Conversion:
    coco: dict[str, Any]  # images, annotations, categories, info
    issues: list[Issue]
    counts: dict[str, int]  # tasks.<outcome>, objects.<class>, issues.<kind>, ...


class RegionError(ValueError):
    """A region that cannot be converted: `kind` is an Issue kind, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# Entry point


def to_coco(
    tasks: Sequence[dict[str, Any]],
    *,
    classes: Sequence[str],
    keypoints: Sequence[str],
    resolve_image: Callable[[dict[str, Any]], ImageRef | None],
) -> Conversion:
    """Convert a Label Studio export to COCO; see the module docstring for the rules."""
    check_export(tasks)
    categories = coco_categories(classes, keypoints)
    category_ids = {c["name"]: c["id"] for c in categories}

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    issues: list[Issue] = []
    counts: Counter[str] = Counter()
    for task in bar(tasks, desc="convert", unit="task"):
        task_id = task["id"]
        counts["tasks"] += 1
        annotation, chosen = choose_annotation(task)
        issues.extend(chosen)
        if annotation is None:
            outcome = "skipped" if any(i.kind == "skipped" for i in chosen) else "unannotated"
            counts[f"tasks.{outcome}"] += 1
            continue
        ref = resolve_image(task)
        if ref is None or ref.width <= 0 or ref.height <= 0:
            where = task["data"].get("image", task["data"])
            size = "" if ref is None else f" (it has size {ref.width}x{ref.height})"
            issues.append(
                Issue(task_id, "unknown_image", f"no image for {where!r}{size}; task left out")
            )
            counts["tasks.unknown_image"] += 1
            continue
        counts["tasks.converted"] += 1
        report = _Reporter(task_id, issues)
        objects = _objects(annotation["result"], ref, classes, keypoints, report, counts)
        images.append(
            {
                "id": task_id,
                "file_name": ref.file_name,
                "width": ref.width,
                "height": ref.height,
                "sha256": ref.sha256,
                "ls_annotation_id": annotation.get("id"),
            }
        )
        for obj in objects:
            ann = _coco_annotation(obj, len(annotations) + 1, ref, task_id, category_ids, keypoints)
            annotations.append(ann)
            counts["objects"] += 1
            counts[f"objects.{obj.label}"] += 1
            counts["keypoints"] += ann.get("num_keypoints", 0)

    zero = ["tasks.converted", "tasks.unannotated", "tasks.skipped", "tasks.unknown_image"]
    zero += ["objects", "keypoints", "regions", "regions.kept", *(f"objects.{c}" for c in classes)]
    for key in zero:  # every count is there, even when nothing was counted
        counts.setdefault(key, 0)
    counts["issues"] = len(issues)
    counts.update(f"issues.{issue.kind}" for issue in issues)
    coco = {
        "info": {
            "description": "Label Studio annotations converted by anonlab (annotation.convert)",
            "version": "1",
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    log.info(
        "converted %d of %d tasks: %d objects, %d issues",
        counts["tasks.converted"],
        counts["tasks"],
        counts["objects"],
        counts["issues"],
    )
    return Conversion(coco=coco, issues=issues, counts=dict(counts))


def check_export(tasks: Any) -> None:
    """Raise AnonlabError when the export's structure is not that of a Label Studio JSON export."""
    fix = "export the project again as JSON (Label Studio: Export -> JSON)"
    if not isinstance(tasks, (list, tuple)):
        raise AnonlabError(
            f"a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}; {fix}"
        )
    seen: set[int] = set()
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise AnonlabError(
                f"task #{index} of the export is {type(task).__name__}, not an object"
            )
        task_id = task.get("id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise AnonlabError(f"task #{index} of the export has no integer 'id' ({task_id!r})")
        where = f"task #{index} (id {task_id})"
        if task_id in seen:
            raise AnonlabError(f"{where}: id {task_id} appears twice in the export; {fix}")
        seen.add(task_id)
        if not isinstance(task.get("data"), dict):
            raise AnonlabError(f"{where} has no 'data' object (where its image is); {fix}")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise AnonlabError(f"{where}: 'annotations' is not a list; {fix}")
        for k, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise AnonlabError(f"{where}: annotation #{k} is not an object; {fix}")
            result = annotation.get("result")
            if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
                raise AnonlabError(
                    f"{where}: annotation #{k} (id {annotation.get('id')}) has no 'result' "
                    f"list of regions; {fix}"
                )


# ---------------------------------------------------------------------------------------------
# Which annotation


def choose_annotation(task: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    """The task's winning annotation (None: nothing to convert) and the issues the choice
    raised: "unannotated", "skipped", "cancelled" for ignored cancelled ones, "conflict"."""
    task_id = task["id"]
    annotations = task.get("annotations") or []
    cancelled = [a for a in annotations if a.get("was_cancelled")]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if cancelled:
            ids = _ids(cancelled)
            return None, [
                Issue(task_id, "skipped", f"only cancelled annotations ({ids}); left out")
            ]
        extra = [f"{len(task.get(k) or [])} {k}" for k in ("drafts", "predictions")]
        detail = f"no submitted annotation ({', '.join(extra)} are not ground truth)"
        return None, [Issue(task_id, "unannotated", detail)]
    winner = max(submitted, key=_rank)
    issues = [
        Issue(task_id, "cancelled", f"cancelled annotation {a.get('id')} ignored")
        for a in cancelled
    ]
    if len(submitted) > 1:
        why = (
            "marked ground truth"
            if winner.get("ground_truth")
            and sum(bool(a.get("ground_truth")) for a in submitted) == 1
            else "ground truth first, then most recently updated, then highest id"
        )
        issues.append(
            Issue(
                task_id,
                "conflict",
                f"{len(submitted)} submitted annotations ({_ids(submitted)}); "
                f"converted {winner.get('id')} ({why})",
            )
        )
    return winner, issues


def _rank(annotation: dict[str, Any]) -> tuple[bool, datetime, int]:
    when = _time(annotation.get("updated_at")) or _time(annotation.get("created_at"))
    ident = annotation.get("id")
    return (
        bool(annotation.get("ground_truth")),
        when or datetime.min.replace(tzinfo=UTC),
        ident if isinstance(ident, int) else -1,
    )


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    # Label Studio writes UTC, with or without the "Z".
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ids(annotations: list[dict[str, Any]]) -> str:
    return ", ".join(str(a.get("id")) for a in annotations)


# ---------------------------------------------------------------------------------------------
# Regions -> objects


@dataclass(frozen=True)
class _Patch:
    """A mask kept as its bounding box only: a task's regions on a large panorama would not
    fit in memory as full masks."""

    top: int
    left: int
    crop: np.ndarray  # bool

    @staticmethod
    def of(mask: np.ndarray) -> _Patch:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        return _Patch(int(rows[0]), int(cols[0]), crop)

    @staticmethod
    def union(patches: list[_Patch]) -> _Patch:
        top, left = min(p.top for p in patches), min(p.left for p in patches)
        bottom, right = max(p.bottom for p in patches), max(p.right for p in patches)
        crop = np.zeros((bottom - top, right - left), bool)
        for p in patches:
            crop[p.top - top : p.bottom - top, p.left - left : p.right - left] |= p.crop
        return _Patch(top, left, crop)

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
class _Region:
    id: str
    type: str
    label: str
    patch: _Patch | None = None  # shapes
    point: tuple[float, float] | None = None  # keypoints: continuous pixels


@dataclass
class _Object:
    label: str
    patch: _Patch
    region_ids: list[str]
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)


class _Reporter:
    def __init__(self, task_id: int, issues: list[Issue]) -> None:
        self.task_id = task_id
        self.issues = issues

    def __call__(self, kind: str, detail: str) -> None:
        self.issues.append(Issue(self.task_id, kind, detail))


def _objects(
    result: list[dict[str, Any]],
    ref: ImageRef,
    classes: Sequence[str],
    keypoints: Sequence[str],
    report: _Reporter,
    counts: Counter[str],
) -> list[_Object]:
    regions, links = _regions(result, ref, classes, keypoints, report, counts)
    objects: list[_Object] = []
    loose: list[_Region] = []  # keypoints not linked to a person
    for group in _groups(list(regions), links):
        members = [regions[rid] for rid in group]
        by_class: dict[str, list[_Region]] = {}
        for region in members:
            if region.patch is not None:
                by_class.setdefault(region.label, []).append(region)
        if len(by_class) > 1:
            parts = "; ".join(f"{c}: {', '.join(r.id for r in rs)}" for c, rs in by_class.items())
            report(
                "mixed_labels",
                f"regions linked as one object have several classes ({parts}); "
                "converted one object per class",
            )
        person: _Object | None = None
        for label, shapes in by_class.items():
            patch = _Patch.union([r.patch for r in shapes if r.patch is not None])
            obj = _Object(label, patch, [r.id for r in shapes])
            objects.append(obj)
            if label == KEYPOINT_CLASS:
                person = obj
        for region in members:
            if region.point is None:
                continue
            if person is None:
                loose.append(region)
            else:
                _place(person, region, report)
    persons = [o for o in objects if o.label == KEYPOINT_CLASS]
    for region in loose:
        owner = _owner(persons, region, ref)
        if owner is None:
            x, y = region.point  # type: ignore[misc]
            report(
                "orphan_keypoint",
                f"keypoint region {region.id} '{region.label}' at ({x:.1f}, {y:.1f}) px is "
                "linked to no person, lies in no person's mask and near no person's box that "
                "lacks it; left out",
            )
        else:
            _place(owner, region, report)
    return objects


def _place(person: _Object, region: _Region, report: _Reporter) -> None:
    if region.label in person.keypoints:
        report(
            "duplicate_keypoint",
            f"keypoint region {region.id} '{region.label}': the person of regions "
            f"{', '.join(person.region_ids)} has one already; left out",
        )
        return
    assert region.point is not None
    person.keypoints[region.label] = region.point
    person.region_ids.append(region.id)


def _owner(persons: list[_Object], region: _Region, ref: ImageRef) -> _Object | None:
    """The person an unlinked keypoint belongs to: one whose mask holds it, else the nearest
    box within a margin (ears and noses lie on a silhouette's edge), among those lacking it."""
    assert region.point is not None
    x, y = region.point
    free = [p for p in persons if region.label not in p.keypoints]
    col, row = min(int(x), ref.width - 1), min(int(y), ref.height - 1)
    for person in free:
        if person.patch.holds(row, col):
            return person
    best, best_gap = None, math.inf
    for person in free:
        p = person.patch  # its box is the mask's: patches are cropped tight
        x0, x1, y0, y1 = p.left, p.right, p.top, p.bottom
        gap = math.hypot(max(x0 - x, 0, x - x1), max(y0 - y, 0, y - y1))
        margin = max(3.0, 0.1 * max(x1 - x0, y1 - y0))
        if gap <= margin and gap < best_gap:
            best, best_gap = person, gap
    return best


def _groups(ids: list[str], links: list[tuple[str, str]]) -> list[list[str]]:
    """Connected groups of region ids (union-find), ordered by their first region."""
    parent = {rid: rid for rid in ids}

    def root(rid: str) -> str:
        while parent[rid] != rid:
            parent[rid] = parent[parent[rid]]
            rid = parent[rid]
        return rid

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            # The earlier region stays the root, so groups come out in drawing order.
            first, second = (ra, rb) if ids.index(ra) < ids.index(rb) else (rb, ra)
            parent[second] = first
    out: dict[str, list[str]] = {}
    for rid in ids:
        out.setdefault(root(rid), []).append(rid)
    return list(out.values())


def _regions(
    result: list[dict[str, Any]],
    ref: ImageRef,
    classes: Sequence[str],
    keypoints: Sequence[str],
    report: _Reporter,
    counts: Counter[str],
) -> tuple[dict[str, _Region], list[tuple[str, str]]]:
    """The annotation's usable regions by id (in order) and its same_object links."""
    regions: dict[str, _Region] = {}
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
            if kind == "polygonlabels" and polygon_self_intersects(_points(item, ref)):
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
) -> _Region:
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
        x, y = _numbers(value, "x", "y")
        x, y = x * width / 100, y * height / 100
        if not (math.isfinite(x) and math.isfinite(y)):
            raise RegionError("degenerate", f"keypoint '{label}' at ({x}, {y}); left out")
        if not (0 <= x <= width and 0 <= y <= height):
            raise RegionError(
                "outside_image",
                f"keypoint '{label}' at ({x:.1f}, {y:.1f}) px is outside the "
                f"{width}x{height} image; left out",
            )
        return _Region(rid, kind, label, point=(x, y))
    if kind == "brushlabels":
        mask = _brush(item, value, width, height)
        if not mask.any():
            raise RegionError("degenerate", f"'{label}' brush mask is empty; left out")
        return _Region(rid, kind, label, patch=_Patch.of(mask))
    if kind == "polygonlabels":
        mask = _polygon(_points(item, ref), label, width, height)
    elif kind == "ellipselabels":
        mask = _ellipse(value, label, width, height)
    else:
        mask = _rectangle(value, label, width, height)
    return _Region(rid, kind, label, patch=_Patch.of(mask))


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


def _numbers(value: dict[str, Any], *keys: str) -> list[float]:
    out = []
    for key in keys:
        number = value.get(key)
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise RegionError("malformed_region", f"'{key}' is {number!r}, not a number; left out")
        out.append(float(number))
    return out


# ---------------------------------------------------------------------------------------------
# Geometry: every function returns a bool mask of the image's size


def _points(item: dict[str, Any], ref: ImageRef) -> np.ndarray:
    """A polygon region's vertices in pixels, (N, 2)."""
    try:
        pct = np.asarray(item["value"].get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        pct = np.zeros((0, 0))
    if pct.ndim != 2 or pct.shape[1] != 2:
        raise RegionError("malformed_region", "points are not [x, y] pairs; left out")
    return pct * [ref.width / 100, ref.height / 100]


def _polygon(px: np.ndarray, label: str, width: int, height: int) -> np.ndarray:
    if not np.isfinite(px).all():
        raise RegionError("degenerate", f"'{label}' polygon has non-finite points; left out")
    if len(px) < 3 or len(np.unique(px, axis=0)) < 2:
        raise RegionError(
            "degenerate",
            f"'{label}' polygon has {len(np.unique(px, axis=0))} distinct of {len(px)} points, "
            "needs 3 points and 2 distinct; left out",
        )
    _inside_or_raise(label, "polygon", px.min(axis=0), px.max(axis=0), width, height)
    mask = polygon_mask(px, width, height)
    return _at_least_centre(mask, px.min(axis=0), px.max(axis=0))


def _ellipse(value: dict[str, Any], label: str, width: int, height: int) -> np.ndarray:
    x, y, rx, ry = _numbers(value, "x", "y", "radiusX", "radiusY")
    (rotation,) = _numbers({"rotation": value.get("rotation", 0.0)}, "rotation")
    cx, cy, a, b = x * width / 100, y * height / 100, rx * width / 100, ry * height / 100
    if not all(map(math.isfinite, (cx, cy, a, b, rotation))) or a <= 0 or b <= 0:
        raise RegionError(
            "degenerate",
            f"'{label}' ellipse at ({cx}, {cy}) px with radii {a}, {b} px covers nothing; left out",
        )
    th = math.radians(rotation)
    ex, ey = (
        math.hypot(a * math.cos(th), b * math.sin(th)),
        math.hypot(a * math.sin(th), b * math.cos(th)),
    )
    lo, hi = np.array([cx - ex, cy - ey]), np.array([cx + ex, cy + ey])
    _inside_or_raise(label, "ellipse", lo, hi, width, height)
    return _at_least_centre(ellipse_mask(cx, cy, a, b, rotation, width, height), lo, hi)


def _rectangle(value: dict[str, Any], label: str, width: int, height: int) -> np.ndarray:
    x, y, w, h = _numbers(value, "x", "y", "width", "height")
    (rotation,) = _numbers({"rotation": value.get("rotation", 0.0)}, "rotation")
    x, y, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    if not all(map(math.isfinite, (x, y, w, h, rotation))) or w <= 0 or h <= 0:
        raise RegionError(
            "degenerate", f"'{label}' rectangle of {w} x {h} px covers nothing; left out"
        )
    corners = rectangle_corners(x, y, w, h, rotation)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    _inside_or_raise(label, "rectangle", lo, hi, width, height)
    return _at_least_centre(rectangle_mask(x, y, w, h, rotation, width, height), lo, hi)


def _brush(item: dict[str, Any], value: dict[str, Any], width: int, height: int) -> np.ndarray:
    # Exports put the RLE in the value; some older ones beside it.
    rle = value.get("rle", item.get("rle"))
    if value.get("format", "rle") != "rle" or not isinstance(rle, list):
        raise RegionError("malformed_region", "brush value has no 'rle' list; left out")
    src_w = item.get("original_width") or width
    src_h = item.get("original_height") or height
    try:
        mask = decode_brush_rle(rle, int(src_w), int(src_h))
    except ValueError as e:
        raise RegionError("malformed_region", f"brush RLE: {e}; left out") from None
    if (src_w, src_h) != (width, height):
        resized = cv2.resize(
            mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT
        )
        mask = resized.astype(bool)
    return mask


def _inside_or_raise(
    label: str, shape: str, lo: np.ndarray, hi: np.ndarray, width: int, height: int
) -> None:
    if max(abs(lo).max(), abs(hi).max()) > _MAX_COORD:
        raise RegionError(
            "malformed_region", f"'{label}' {shape} reaches beyond {_MAX_COORD:.0e} px; left out"
        )
    if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= width or lo[1] >= height:
        raise RegionError(
            "outside_image",
            f"'{label}' {shape} spanning ({lo[0]:.1f}, {lo[1]:.1f})-({hi[0]:.1f}, {hi[1]:.1f}) "
            f"px lies outside the {width}x{height} image; left out",
        )


def _at_least_centre(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A shape that overlaps the image but holds no pixel centre keeps the pixel under its
    (clipped) centre: a tiny face is still a face to hide."""
    if not mask.any():
        height, width = mask.shape
        cx, cy = (lo + hi) / 2
        mask[min(max(int(cy), 0), height - 1), min(max(int(cx), 0), width - 1)] = True
    return mask


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels of a polygon given as (N, 2) continuous pixel coordinates, outline included."""
    mask = np.zeros((height, width), np.uint8)
    # cv2 puts pixel centres at integers; fixed point keeps sub-pixel vertices.
    fixed = np.round((np.asarray(points) - 0.5) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.view(bool)


def polygon_self_intersects(points: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon cross properly (touching and
    collinear overlaps, as traced 1-pixel spurs have, do not count)."""
    p = np.asarray(points, np.float64)
    n = len(p)
    if n < 4:
        return False
    a, d = p, np.roll(p, -1, axis=0) - p  # edge k runs from a[k] along d[k]
    tol = _EPS * max(1.0, float(np.abs(d).max()))

    def side(origin: np.ndarray, direction: np.ndarray, q: np.ndarray) -> np.ndarray:
        cross = direction[..., 0] * (q[..., 1] - origin[..., 1]) - direction[..., 1] * (
            q[..., 0] - origin[..., 0]
        )
        return np.where(np.abs(cross) <= tol, 0.0, np.sign(cross))

    b = a + d
    step = max(1, 1_000_000 // n)  # pairs per block: bounded memory for long outlines
    for start in range(0, n, step):
        i = np.arange(start, min(n, start + step))[:, None]
        j = np.arange(n)[None, :]
        ai, di, bi = a[i], d[i], b[i]
        s1 = side(ai, di, a[j]) * side(ai, di, b[j])
        s2 = side(a[j], d[j], ai) * side(a[j], d[j], bi)
        if ((s1 < 0) & (s2 < 0)).any():
            return True
    return False


def ellipse_mask(
    cx: float, cy: float, rx: float, ry: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """Pixels whose centres lie in the ellipse (pixels; `rotation` degrees clockwise)."""
    mask = np.zeros((height, width), bool)
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    ex, ey = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
    c0, c1 = max(0, math.floor(cx - ex)), min(width, math.ceil(cx + ex) + 1)
    r0, r1 = max(0, math.floor(cy - ey)), min(height, math.ceil(cy + ey) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    x = (np.arange(c0, c1) + 0.5 - cx)[None, :]
    y = (np.arange(r0, r1) + 0.5 - cy)[:, None]
    u, v = (x * c + y * s) / rx, (-x * s + y * c) / ry
    mask[r0:r1, c0:c1] = u * u + v * v <= 1.0 + _EPS
    return mask


def rectangle_corners(x: float, y: float, w: float, h: float, rotation: float) -> np.ndarray:
    """Corners (top-left, top-right, bottom-right, bottom-left) of a Label Studio rectangle:
    top-left (x, y), turned `rotation` degrees clockwise about that corner (pixels)."""
    th = math.radians(rotation)
    along, down = np.array([math.cos(th), math.sin(th)]), np.array([-math.sin(th), math.cos(th)])
    tl = np.array([x, y])
    return np.array([tl, tl + w * along, tl + w * along + h * down, tl + h * down])


def rectangle_mask(
    x: float, y: float, w: float, h: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """Pixels whose centres lie in the rotated rectangle (see `rectangle_corners`)."""
    mask = np.zeros((height, width), bool)
    corners = rectangle_corners(x, y, w, h, rotation)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    c0, c1 = max(0, math.floor(lo[0])), min(width, math.ceil(hi[0]) + 1)
    r0, r1 = max(0, math.floor(lo[1])), min(height, math.ceil(hi[1]) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    dx = (np.arange(c0, c1) + 0.5 - x)[None, :]
    dy = (np.arange(r0, r1) + 0.5 - y)[:, None]
    u, v = dx * c + dy * s, -dx * s + dy * c  # along the top edge, down the left edge
    mask[r0:r1, c0:c1] = (u >= -_EPS) & (u <= w + _EPS) & (v >= -_EPS) & (v <= h + _EPS)
    return mask


# ---------------------------------------------------------------------------------------------
# Label Studio brush RLE


class _Bits:
    """A big-endian bit reader over bytes (the rle-pack stream Label Studio writes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data + bytes(8)  # reads near the end take 8 bytes at a time
        self.size = len(data) * 8
        self.pos = 0
        self._bits: np.ndarray | None = None

    def read(self, n: int) -> int:
        """The next `n` (<= 32) bits as an unsigned integer."""
        start = self.pos >> 3
        chunk = int.from_bytes(self.data[start : start + 8], "big")
        value = (chunk >> (64 - (self.pos & 7) - n)) & ((1 << n) - 1)
        self.pos += n
        return value

    def words(self, count: int, size: int) -> np.ndarray:
        """The next `count` words of `size` bits each."""
        if count <= 4:
            return np.array([self.read(size) for _ in range(count)], np.int64)
        if self._bits is None:
            self._bits = np.unpackbits(np.frombuffer(self.data, np.uint8))
        block = self._bits[self.pos : self.pos + count * size].reshape(count, size)
        self.pos += count * size
        return block.astype(np.int64) @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def decode_brush_rle(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """A Label Studio brush RLE (`value.rle`) as a bool mask: its RGBA image's alpha > 0.

    The stream (thi.ng rle-pack): 32 bits value count, 5 bits word size - 1, four 4-bit run
    length sizes - 1; then runs: 1 bit repeat flag, 2 bits run size index, the run length - 1,
    then one word (repeat) or that many words (literal). Raises ValueError when the stream is
    not such an image of `width` x `height`.
    """
    values = np.asarray(rle)
    if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) < 7:
        raise ValueError("not a list of bytes long enough for the header")
    if values.min() < 0 or values.max() > 255:
        raise ValueError("values outside 0..255")
    bits = _Bits(values.astype(np.uint8).tobytes())
    count = bits.read(32)
    expected = width * height * 4
    if count != expected:
        raise ValueError(f"it holds {count} values, a {width}x{height} RGBA image has {expected}")
    word = bits.read(5) + 1
    run_sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < count:
        repeat = bits.read(1)
        j = i + 1 + bits.read(run_sizes[bits.read(2)])
        if j > count:
            raise ValueError(f"a run reaches value {j}, past the {count} the header announces")
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = bits.words(j - i, word)
        i = j
        if bits.pos > bits.size:
            raise ValueError("the stream ends before the image does")
    return out.reshape(height, width, 4)[:, :, 3] > 0


# The encoder's run length fields (bits), as Label Studio's SDK writes them: a run of up to
# 2 ** 16 values fits the largest.
_RUN_BITS = (3, 4, 8, 16)


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """A bool (H, W) mask as a Label Studio brush RLE (`value.rle`): the RGBA image whose four
    channels are 255 on the mask and 0 elsewhere, written as repeat runs of 8-bit words in the
    stream `decode_brush_rle` reads: the bytes the SDK's `mask2rle` writes."""
    flat = np.asarray(mask, bool).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4
    fields = [f"{flat.size * 4:032b}", f"{8 - 1:05b}"] + [f"{b - 1:04b}" for b in _RUN_BITS]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        word = f"{255 if flat[start] else 0:08b}"
        while length > 0:
            run = min(length, 1 << _RUN_BITS[-1])
            size = next(k for k, bits in enumerate(_RUN_BITS) if run <= 1 << bits)
            fields.append(f"1{size:02b}{run - 1:0{_RUN_BITS[size]}b}{word}")
            length -= run
    bits = "".join(fields)
    bits += "0" * (8 - len(bits) % 8)  # 1 to 8 zero bits, as the SDK pads
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


# ---------------------------------------------------------------------------------------------
# COCO


def _coco_annotation(
    obj: _Object,
    ann_id: int,
    ref: ImageRef,
    image_id: int,
    category_ids: dict[str, int],
    keypoints: Sequence[str],
) -> dict[str, Any]:
    mask = obj.patch.full(ref.width, ref.height)
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    area = int(mask_util.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_ids[obj.label],
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]},
        "area": area,
        "bbox": bbox,
        "iscrowd": 0,
        "region_ids": obj.region_ids,
    }
    if obj.label == KEYPOINT_CLASS:
        flat: list[float] = []
        for name in keypoints:
            x, y = obj.keypoints.get(name, (0.0, 0.0))
            flat += [round(x, 3), round(y, 3), 2 if name in obj.keypoints else 0]
        ann["keypoints"] = flat
        ann["num_keypoints"] = len(obj.keypoints)
    return ann
