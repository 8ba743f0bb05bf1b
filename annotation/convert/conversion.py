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
  the pixels whose centres it contains (`data.shapes`, as the synthetic source). Ellipses: centre
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
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from annotation.convert.objects import ConvertedObject, build_objects
from annotation.convert.records import Conversion, ImageRef, Issue, Reporter
from annotation.convert.tasks import check_export, choose_annotation
from data.coco import KEYPOINT_CLASS
from data.coco import categories as coco_categories
from serving.runtime.progress import bar

log = logging.getLogger(__name__)


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
        report = Reporter(task_id, issues)
        objects = build_objects(annotation["result"], ref, classes, keypoints, report, counts)
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


def _coco_annotation(
    obj: ConvertedObject,
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
