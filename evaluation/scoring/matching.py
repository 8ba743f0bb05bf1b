"""Matching detections to ground-truth objects as COCO does (greedy, best detection first), for
every image and class at once, on the IoUs the COCO evaluation computed (`coco_summary`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from evaluation.scoring.instances import DetectionArrays, TruthArrays

_NON_IGNORED = np.int64(1) << np.int64(62)  # above the bits of any float64 in [0, 1]


@dataclass(frozen=True)
class Pairs:
    """Every (detection, object) IoU of the same image and class, for the detections COCO keeps,
    ordered for greedy matching: by detection rank, then (image, class), then object."""

    rank: np.ndarray  # per detection: its place in its (image, class) by score, as COCO sorts
    iou: np.ndarray
    det: np.ndarray
    gt: np.ndarray
    steps: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]


def matching_pairs(
    ious: Mapping[tuple[int, int], np.ndarray],
    truth: TruthArrays,
    dets: DetectionArrays,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    max_dets: int,
) -> Pairs:
    """The pairs to match, with the COCO evaluation's IoUs per (image id, category id)
    (`coco_summary.evaluate`, with at least `max_dets` rows)."""
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
    flat = []
    for g, r, c in zip(groups.tolist(), rows.tolist(), cols.tolist(), strict=True):
        matrix = np.asarray(ious[int(image_ids[g // n_classes]), int(category_ids[g % n_classes])])
        if matrix.shape[0] < r or matrix.shape[1] != c:
            raise RuntimeError(f"the COCO evaluation's IoU matrix {matrix.shape} is not {r} x {c}")
        flat.append(matrix[:r].ravel())
    # Millions of pairs on a large set: 32-bit indices, and each temporary freed once used.
    sizes = rows * cols
    iou = np.concatenate(flat) if flat else np.zeros(0)
    del flat
    pair = np.repeat(np.arange(len(groups), dtype=np.int32), sizes)
    local = np.arange(len(iou), dtype=np.int32) - np.repeat(
        (np.cumsum(sizes) - sizes).astype(np.int32), sizes
    )
    width = cols.astype(np.int32)[pair]
    row = local // width
    local -= row * width  # now the column
    del width
    det = det_order.astype(np.int32)[det_start[groups].astype(np.int32)[pair] + row]
    gt = gt_order.astype(np.int32)[gt_start[groups].astype(np.int32)[pair] + local]
    del pair, local

    order = np.argsort(row, kind="stable")
    row, iou, det, gt = row[order], np.ascontiguousarray(iou[order]), det[order], gt[order]
    del order
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
    return Pairs(rank=rank, iou=iou, det=det, gt=gt, steps=steps)


def greedy_match(
    pairs: Pairs, crowd: np.ndarray, ignored: np.ndarray, n_dets: int, threshold: float
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
