"""The COCO backend: pycocotools' evaluation computed by faster-coco-eval (the same IoUs and
per-image matching, in C++) and accumulated and summarized as pycocotools does (`accumulate`), on
inputs prepared as pycocotools' `loadRes` prepares them. Its numbers and arrays equal
pycocotools' own for boxes, masks and keypoints; the tests compare them on generated cases."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from pycocotools import mask as mask_utils

from data.coco.rle import as_rle
from data.errors import AnonlabError
from evaluation.scoring.accumulate import Matches, accumulate, image_matches, summarize

logger = logging.getLogger(__name__)

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
# Images evaluated at a time: bounds the per-image matches and cached masks held at once.
CHUNK_IMAGES = 100

KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# COCO's per-keypoint OKS sigmas (the constants of pycocotools' keypoint evaluation), by name.
OKS_SIGMAS = {
    "nose": 0.026,
    "left_eye": 0.025,
    "right_eye": 0.025,
    "left_ear": 0.035,
    "right_ear": 0.035,
    "left_shoulder": 0.079,
    "right_shoulder": 0.079,
    "left_elbow": 0.072,
    "right_elbow": 0.072,
    "left_wrist": 0.062,
    "right_wrist": 0.062,
    "left_hip": 0.107,
    "right_hip": 0.107,
    "left_knee": 0.087,
    "right_knee": 0.087,
    "left_ankle": 0.089,
    "right_ankle": 0.089,
}


def oks_sigmas(names: Sequence[str]) -> list[float]:
    """The OKS sigma of each keypoint name (taxonomy.keypoints), in order."""
    unknown = [name for name in names if name not in OKS_SIGMAS]
    if unknown:
        raise AnonlabError(
            f"taxonomy.keypoints: no COCO OKS sigma for {', '.join(map(repr, unknown))}; the "
            f"named keypoints are {', '.join(OKS_SIGMAS)}"
        )
    return [OKS_SIGMAS[name] for name in names]


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


def quiet_coco(images: list, categories: list, annotations: list) -> COCO:
    """A COCO index of these lists (faster-coco-eval's, which logs instead of printing). The
    evaluation writes into the annotations (`ignore`, `rle`): give it copies."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


@dataclass(frozen=True)
class CocoEvaluation:
    """One IoU type's evaluation: `eval` (precision, recall, scores) and `stats` as
    pycocotools computes them, and `ious` per (image id, category id): for each image and
    class with objects and detections, the IoU (or OKS) matrix of its detections by score
    (rows, at least pycocotools' maxDets of them) and objects in file order (columns)."""

    eval: dict[str, np.ndarray]
    stats: np.ndarray
    ious: dict[tuple[int, int], np.ndarray]


def evaluate(
    coco_gt: COCO,
    coco_dt: COCO,
    iou_type: str,
    sigmas: Sequence[float] | None = None,
    *,
    iou_rows: int = 0,
) -> CocoEvaluation:
    """pycocotools' COCOeval of one IoU type (bbox, segm, or keypoints with these OKS sigmas).
    `iou_rows`: keep the IoUs of that many detections per image and class when it is more than
    pycocotools' maxDets. Images are evaluated CHUNK_IMAGES at a time, and the masks
    faster-coco-eval caches in the annotations (`rle`) are dropped after each chunk, so that
    memory follows the chunk, not the set."""
    evaluation = COCOeval_faster(
        coco_gt,
        coco_dt,
        iou_type,
        kpt_oks_sigmas=sigmas,
        separate_eval=True,
        print_function=logger.debug,  # its progress lines, twice per chunk: not for the user
    )
    params = evaluation.params
    # Every category of the ground truth, as pycocotools (faster-coco-eval keeps, for keypoints,
    # only the categories with objects).
    params.catIds = sorted(coco_gt.getCatIds())
    image_ids = sorted(coco_gt.getImgIds())
    compute = evaluation.computeOks if iou_type == "keypoints" else evaluation.computeIoU
    parts, ious = [], {}
    for start in range(0, len(image_ids), CHUNK_IMAGES):
        chunk = image_ids[start : start + CHUNK_IMAGES]
        params.imgIds = chunk
        evaluation.evaluate()
        parts.append(image_matches(params, evaluation._evalImgs_cpp))
        del evaluation._evalImgs_cpp
        if iou_rows > params.maxDets[-1]:
            saved, params.maxDets = params.maxDets, [iou_rows]
            evaluation.ious = {k: compute(*k) if len(m) else m for k, m in evaluation.ious.items()}
            params.maxDets = saved
        ious.update({(int(i), int(c)): m for (i, c), m in evaluation.ious.items() if len(m)})
        for coco in (coco_gt, coco_dt):
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=chunk)):
                ann.pop("rle", None)
    params.imgIds = image_ids
    if not parts:
        parts.append(image_matches(params, []))
    matches = [Matches.join(group) for group in zip(*parts, strict=True)]
    arrays = accumulate(params, matches)
    return CocoEvaluation(arrays, summarize(arrays, params, iou_type == "keypoints"), ious)


def coco_summaries(
    gt: dict, gt_anns: list[dict], dt_anns: list[dict], masks: bool, iou_rows: int = 0
) -> tuple[dict, dict[tuple[int, int], np.ndarray]]:
    """pycocotools' 12 summary numbers for boxes (and masks), and the IoU matrices that
    matching reuses (of masks when compared, else of boxes; `iou_rows` as in `evaluate`)."""
    coco_gt = quiet_coco(gt["images"], gt["categories"], gt_anns)
    coco_dt = quiet_coco(gt["images"], gt["categories"], dt_anns)
    summaries: dict[str, dict[str, float] | None] = {"bbox": None, "segm": None}
    ious: dict[tuple[int, int], np.ndarray] = {}
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        ious = {}  # the box IoUs are free before the masks' are computed
        evaluation = evaluate(coco_gt, coco_dt, iou_type, iou_rows=iou_rows)
        summaries[iou_type] = dict(zip(COCO_STATS, map(float, evaluation.stats), strict=True))
        ious = evaluation.ious
        del evaluation
    return summaries, ious
