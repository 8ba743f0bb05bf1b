"""Ground-truth objects and detections as arrays in file order (`TruthArrays`,
`DetectionArrays`), and whether masks are compared."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.size_buckets import size_buckets


@dataclass(frozen=True)
class TruthArrays:
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
class DetectionArrays:
    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    box: np.ndarray
    has_mask: np.ndarray


def truth_arrays(
    gt: dict, copies: list[dict], image_ids: np.ndarray, category_ids: np.ndarray
) -> TruthArrays:
    """The ground truth's annotations (and `copies`, as pycocotools gets them) as arrays."""
    anns = gt["annotations"]
    crowd = np.array([bool(a["iscrowd"]) for a in copies], dtype=bool)
    ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    area = np.array([a["area"] for a in copies], dtype=np.float64)
    return TruthArrays(
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


def detection_arrays(
    predictions: list[dict], image_ids: np.ndarray, category_ids: np.ndarray
) -> DetectionArrays:
    """The predictions as arrays."""
    return DetectionArrays(
        image=np.searchsorted(image_ids, np.array([p["image_id"] for p in predictions], np.int64)),
        category=np.searchsorted(
            category_ids, np.array([p["category_id"] for p in predictions], np.int64)
        ),
        score=np.array([p["score"] for p in predictions], dtype=np.float64),
        box=np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4),
        has_mask=np.array([bool(p.get("segmentation")) for p in predictions], dtype=bool),
    )


def mask_mode(truth: TruthArrays, dets: DetectionArrays, notes: list[str]) -> bool:
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
