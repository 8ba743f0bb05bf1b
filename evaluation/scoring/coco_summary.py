"""pycocotools' own evaluation: inputs prepared as its `loadRes` does, and its 12 summary
numbers for boxes and masks."""

from __future__ import annotations

import contextlib
import io

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.coco.rle import as_rle

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


def gt_copy(ann: dict, height: int, width: int) -> dict:
    """The annotation as pycocotools gets it (it writes into what it gets): defaults filled."""
    copy = {**ann, "iscrowd": int(ann.get("iscrowd", 0))}
    if not ann.get("segmentation"):
        copy.pop("segmentation", None)
    if "area" not in ann:
        if "segmentation" in copy:
            copy["area"] = float(mask_utils.area(as_rle(copy["segmentation"], height, width)))
        else:
            copy["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return copy


def prediction_copy(p: dict, index: int, masks: bool) -> dict:
    """The result as pycocotools' `loadRes` makes it from a result with a box."""
    x, y, w, h = p["bbox"]
    copy = {**p, "area": w * h, "id": index + 1, "iscrowd": 0}
    if not p.get("segmentation"):
        copy.pop("segmentation", None)
        if masks:
            copy["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    return copy


def _quiet_coco(images: list, categories: list, annotations: list) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_summaries(
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
