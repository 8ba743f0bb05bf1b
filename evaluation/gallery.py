"""Crops of ground-truth objects for report.html: each object with context around it, its box
drawn in red and, for a missed object, the model's own detections at its operating thresholds
drawn in cyan (mask outline, box and score), as small JPEGs (the gallery of misses, and the
faces only the heads caught)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

from data.size_buckets import size_bucket
from evaluation.config import GalleryConfig
from evaluation.report import Miss
from evaluation.scoring.result import ObjectOutcome
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright

__all__ = [
    "MissGallery",
    "caption",
    "crop_jpeg",
    "crops",
    "detections_at",
    "image_label",
    "miss_gallery",
    "read_bgr",
]

# BGR: the missed object's box, and the model's detections.
TRUTH_COLOUR = (0, 0, 255)
DETECTION_COLOUR = (255, 255, 0)
SIDE = 240  # the longest side of a crop, in px


def crops(
    images_root: Path,
    gt: dict[str, Any],
    chosen: Sequence[tuple[int, str]],
    context: float,
    detections: Mapping[int, Sequence[dict[str, Any]]] | None = None,
) -> list[Miss]:
    """A crop per (annotation id, caption) of `gt`, in order; images paths are relative to
    `images_root`. `detections`: per image id, COCO results to draw in its crops (cyan: box,
    mask outline and score). An object whose image cannot be read is left out."""
    anns = {a["id"]: a for a in gt["annotations"]}
    images = {i["id"]: i for i in gt["images"]}
    cache: dict[int, np.ndarray | None] = {}
    shown: list[Miss] = []
    for ann_id, text in chosen:
        ann = anns[ann_id]
        image_id = ann["image_id"]
        if image_id not in cache:
            cache[image_id] = read_bgr(images_root / images[image_id]["file_name"])
        bgr = cache[image_id]
        if bgr is not None:
            drawn = (detections or {}).get(image_id, ())
            jpeg = crop_jpeg(bgr, ann["bbox"], context, drawn)
            sha = images[image_id].get("sha256", "")
            shown.append(Miss(jpeg=jpeg, caption=text, image=sha))
    return shown


@dataclass(frozen=True)
class MissGallery:
    """The gallery of one model on one set: the crops shown, and per class (objects missed,
    objects counted)."""

    crops: list[Miss]
    by_class: dict[str, tuple[int, int]]


def miss_gallery(
    images_root: Path,
    gt: dict[str, Any],
    outcomes: Sequence[ObjectOutcome],
    detections: Mapping[int, Sequence[dict[str, Any]]],
    gallery: GalleryConfig,
) -> MissGallery:
    """Crops of the objects not covered (`outcomes`: the scorer's, per counted object),
    identifiable ones first (the legal incidents), each group smallest first, at most
    gallery.max_per_set, with `detections` (the model's at its operating thresholds, per image
    id) drawn in them; and per class of `gt` with objects, how many of them were missed."""
    anns = {a["id"]: a for a in gt["annotations"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    counts = {name: [0, 0] for name in names.values()}
    for o in outcomes:
        count = counts[names[anns[o.id]["category_id"]]]
        count[0] += not o.covered
        count[1] += 1
    missed = sorted(
        (o for o in outcomes if not o.covered),
        key=lambda o: (not o.identifiable, anns[o.id]["area"]),
    )
    chosen = [
        (o.id, caption(gt, o.id, o.identifiable, f"{o.coverage:.0%} covered"))
        for o in missed[: gallery.max_per_set]
    ]
    return MissGallery(
        crops=crops(images_root, gt, chosen, gallery.context, detections),
        by_class={name: (m, n) for name, (m, n) in counts.items() if n},
    )


def detections_at(
    results: Sequence[dict[str, Any]], gt: dict[str, Any], thresholds: Mapping[str, float]
) -> dict[int, list[dict[str, Any]]]:
    """Per image id, the COCO `results` at or above their class's threshold (`thresholds`: class
    name -> score; a class without one is left out): what the model hides there."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        threshold = thresholds.get(names.get(r["category_id"], ""))
        if threshold is not None and r["score"] >= threshold:
            out[r["image_id"]].append(r)
    return dict(out)


def caption(gt: dict[str, Any], ann_id: int, identifiable: bool, detail: str) -> str:
    """What a crop says of its object: class, size bucket (or below identifiable), box size,
    `detail` (how much of it is covered, or by what), and its image (`image_label`)."""
    ann = next(a for a in gt["annotations"] if a["id"] == ann_id)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    size = size_bucket(ann["area"]) if identifiable else "below identifiable"
    return (
        f"{names[ann['category_id']]} ({size}, "
        f"{ann['bbox'][2]:.0f}x{ann['bbox'][3]:.0f} px), "
        f"{detail}; {image_label(image)}"
    )


def image_label(image: Mapping[str, Any]) -> str:
    """An image as a person finds it: its file's name (the COCO entry's `file_name`) and its
    capture session (which prepare copies from the manifest), when the entry has one."""
    name = PurePosixPath(str(image["file_name"])).name
    session = image.get("session")
    return f"{name}, session {session}" if session else name


def read_bgr(path: Path) -> np.ndarray | None:
    """The image upright (the frame of its boxes) in OpenCV's BGR; None when it cannot be read:
    the gallery then leaves its objects out."""
    try:
        return cv2.cvtColor(read_upright(path), cv2.COLOR_RGB2BGR)
    except (OSError, ImageError):
        return None


def crop_jpeg(
    bgr: np.ndarray,
    bbox: Sequence[float],
    context: float,
    detections: Sequence[dict[str, Any]] = (),
) -> bytes:
    """The object with `context` times its size around it (at least 24 px), scaled to at most
    240 px, its box in red; `detections` (COCO results in the image's pixels) drawn over it in
    cyan, each with its mask's outline when it has one, its box and its score. JPEG bytes."""
    x, y, w, h = bbox
    pad_x, pad_y = max(w * context, 24), max(h * context, 24)
    height, width = bgr.shape[:2]
    x0, y0 = int(max(x - pad_x, 0)), int(max(y - pad_y, 0))
    x1, y1 = int(min(x + w + pad_x, width)), int(min(y + h + pad_y, height))
    crop = bgr[y0:y1, x0:x1]
    # Drawn after scaling, so lines and scores stay one pixel and legible whatever the zoom.
    scale = min(SIDE / max(crop.shape[:2]), 2.0)
    size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
    kind = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    out = cv2.resize(crop, size, interpolation=kind)

    def at(px: float, py: float) -> tuple[int, int]:
        return round((px - x0) * scale), round((py - y0) * scale)

    for det in detections:
        dx, dy, dw, dh = det["bbox"]
        if dx > x1 or dy > y1 or dx + dw < x0 or dy + dh < y0:
            continue  # not in this crop
        if det.get("segmentation"):
            _outline(out, det["segmentation"], (x0, y0, x1, y1), size)
        top_left, bottom_right = at(dx, dy), at(dx + dw, dy + dh)
        cv2.rectangle(out, top_left, bottom_right, DETECTION_COLOUR, 1)
        _label(out, f"{det['score']:.2f}", top_left)
    cv2.rectangle(out, at(x, y), at(x + w, y + h), TRUTH_COLOUR, 1)
    ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data.tobytes() if ok else b""


def _outline(
    out: np.ndarray,
    rle: dict[str, Any],
    window: tuple[int, int, int, int],
    size: tuple[int, int],
) -> None:
    """The outline of a detection's mask (COCO RLE of the whole image) inside `window`, drawn
    on `out` (the window scaled to `size`)."""
    x0, y0, x1, y1 = window
    full = mask_util.decode({"size": rle["size"], "counts": rle["counts"]})
    part = np.ascontiguousarray(full[y0:y1, x0:x1], dtype=np.uint8)
    if not part.any():
        return
    scaled = cv2.resize(part, size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(scaled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, DETECTION_COLOUR, 1)


def _label(out: np.ndarray, text: str, corner: tuple[int, int]) -> None:
    """`text` at the top left corner of a box, kept inside the crop, dark-edged to read on any
    background."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    x = min(max(corner[0], 0), max(out.shape[1] - tw, 0))
    y = min(max(corner[1] - 2, th), out.shape[0] - 1)
    cv2.putText(out, text, (x, y), font, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (x, y), font, scale, DETECTION_COLOUR, 1, cv2.LINE_AA)
