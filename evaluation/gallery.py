"""Crops of ground-truth objects for report.html: each object with context around it and its
box drawn, as small JPEGs (the gallery of misses, and the faces only the heads caught)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.size_buckets import size_bucket
from evaluation.report import Miss
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright

__all__ = ["caption", "crop_jpeg", "crops", "read_bgr"]


def crops(
    images_root: Path,
    gt: dict[str, Any],
    chosen: Sequence[tuple[int, str]],
    context: float,
) -> list[Miss]:
    """A crop per (annotation id, caption) of `gt`, in order; images paths are relative to
    `images_root`. An object whose image cannot be read is left out."""
    anns = {a["id"]: a for a in gt["annotations"]}
    images = {i["id"]: i for i in gt["images"]}
    cache: dict[int, np.ndarray | None] = {}
    shown: list[Miss] = []
    for ann_id, text in chosen:
        ann = anns[ann_id]
        if ann["image_id"] not in cache:
            cache[ann["image_id"]] = read_bgr(images_root / images[ann["image_id"]]["file_name"])
        bgr = cache[ann["image_id"]]
        if bgr is not None:
            jpeg = crop_jpeg(bgr, ann["bbox"], context)
            sha = images[ann["image_id"]].get("sha256", "")
            shown.append(Miss(jpeg=jpeg, caption=text, image=sha))
    return shown


def caption(gt: dict[str, Any], ann_id: int, identifiable: bool, detail: str) -> str:
    """What a crop says of its object: class, size bucket (or below identifiable), box size,
    `detail` (how much of it is covered, or by what), and its image."""
    ann = next(a for a in gt["annotations"] if a["id"] == ann_id)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    size = size_bucket(ann["area"]) if identifiable else "below identifiable"
    return (
        f"{names[ann['category_id']]} ({size}, "
        f"{ann['bbox'][2]:.0f}x{ann['bbox'][3]:.0f} px), "
        f"{detail}; image {ann['image_id']}"
    )


def read_bgr(path: Path) -> np.ndarray | None:
    """The image upright (the frame of its boxes) in OpenCV's BGR; None when it cannot be read:
    the gallery then leaves its objects out."""
    try:
        return cv2.cvtColor(read_upright(path), cv2.COLOR_RGB2BGR)
    except (OSError, ImageError):
        return None


def crop_jpeg(bgr: np.ndarray, bbox: Sequence[float], context: float) -> bytes:
    """The object with `context` times its size around it (at least 24 px), its box in red,
    scaled to at most 160 px; JPEG bytes."""
    x, y, w, h = bbox
    pad_x, pad_y = max(w * context, 24), max(h * context, 24)
    height, width = bgr.shape[:2]
    x0, y0 = int(max(x - pad_x, 0)), int(max(y - pad_y, 0))
    x1, y1 = int(min(x + w + pad_x, width)), int(min(y + h + pad_y, height))
    crop = bgr[y0:y1, x0:x1].copy()
    cv2.rectangle(
        crop,
        (int(x - x0), int(y - y0)),
        (int(x + w - x0), int(y + h - y0)),
        (0, 0, 255),
        1,
    )
    scale = 160 / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    elif scale > 2:
        crop = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""
