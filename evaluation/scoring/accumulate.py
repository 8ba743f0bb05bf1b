"""pycocotools' `accumulate` and `summarize`, bit for bit, on the per-image matches that
faster-coco-eval's C++ `evaluate` computes.

faster-coco-eval's own C++ `accumulate` writes precision as tp / (tp + fp), where pycocotools
writes tp / (fp + tp + np.spacing(1)): the same number except after exactly one judged detection
(1 against 0.9999999999999998), which moves AP in its last bits. The arrays here are computed
with pycocotools' formulas in pycocotools' order (detections of all images merged by a stable
sort on score, images in id order), so `precision`, `recall`, `scores` and the summary numbers
equal pycocotools' exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

# The fields of faster-coco-eval's ImageEvaluation, as its __getstate__ returns them.
_STATE_FIELDS = 6
_MATCHES, _SCORES, _GT_IGNORES, _IGNORES = 0, 2, 3, 4


def accumulate(params: Any, image_evaluations: Sequence[Any]) -> dict[str, np.ndarray]:
    """pycocotools' `eval` arrays (precision [T, R, K, A, M], recall [T, K, A, M], scores) from
    faster-coco-eval's per-image evaluations (`COCOeval_faster(separate_eval=True)`, ordered by
    category, then area range, then image, as its `_evalImgs_cpp`)."""
    n_t, n_r = len(params.iouThrs), len(params.recThrs)
    n_k, n_a, n_m = len(params.catIds), len(params.areaRng), len(params.maxDets)
    n_i = len(params.imgIds)
    if len(image_evaluations) != n_k * n_a * n_i:
        raise RuntimeError(
            f"faster-coco-eval returned {len(image_evaluations)} image evaluations, expected "
            f"{n_k} categories x {n_a} area ranges x {n_i} images"
        )
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    scores = -np.ones((n_t, n_r, n_k, n_a, n_m))
    rec_thresholds = np.asarray(params.recThrs)
    for k, a in itertools.product(range(n_k), range(n_a)):
        start = (k * n_a + a) * n_i
        block = _Block([e.__getstate__() for e in image_evaluations[start : start + n_i]], n_t)
        if block.n_counted == 0:
            continue
        for m, max_det in enumerate(params.maxDets):
            matched, ignored, det_scores = block.top(max_det)
            order = np.argsort(-det_scores, kind="mergesort")
            sorted_scores = det_scores[order]
            matched, ignored = matched[:, order], ignored[:, order]
            tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(float)
            fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(float)
            n_d = tp_sum.shape[1]
            rc = tp_sum / block.n_counted
            pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
            recall[:, k, a, m] = rc[:, -1] if n_d else 0
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
            for t in range(n_t):
                picks = np.searchsorted(rc[t], rec_thresholds, side="left")
                found = picks < n_d
                q, ss = np.zeros(n_r), np.zeros(n_r)
                q[found] = pr[t, picks[found]]
                ss[found] = sorted_scores[picks[found]]
                precision[t, :, k, a, m] = q
                scores[t, :, k, a, m] = ss
    return {"precision": precision, "recall": recall, "scores": scores}


class _Block:
    """The images' evaluations of one category and area range, as flat arrays."""

    def __init__(self, states: list[tuple], n_t: int) -> None:
        if states and len(states[0]) != _STATE_FIELDS:
            raise RuntimeError(
                "faster-coco-eval's ImageEvaluation state has changed layout; the scorer reads "
                f"{_STATE_FIELDS} fields: pin the version in pyproject.toml"
            )
        self.n_t = n_t
        self.n_det = np.fromiter((len(s[_SCORES]) for s in states), np.int64, len(states))
        self.scores = np.fromiter(itertools.chain.from_iterable(s[_SCORES] for s in states), float)
        # Per image, T rows of its detections: [t * n_det + d], images one after the other.
        self.matched = np.fromiter(
            itertools.chain.from_iterable(s[_MATCHES] for s in states), np.int64
        )
        self.ignored = np.fromiter(itertools.chain.from_iterable(s[_IGNORES] for s in states), bool)
        gt_ignored = np.fromiter(
            itertools.chain.from_iterable(s[_GT_IGNORES] for s in states), bool
        )
        self.n_counted = int(np.count_nonzero(~gt_ignored))
        self.start = np.cumsum(self.n_det) - self.n_det
        self.rank = np.arange(len(self.scores)) - np.repeat(self.start, self.n_det)
        self.image = np.repeat(np.arange(len(states)), self.n_det)

    def top(self, max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each image's first `max_det` detections (already in its score order): matched and
        ignored [T, N], and scores [N], images in order."""
        keep = np.flatnonzero(self.rank < max_det)
        image, rank = self.image[keep], self.rank[keep]
        at = self.n_t * self.start[image] + np.arange(self.n_t)[:, None] * self.n_det[image] + rank
        return self.matched[at] > 0, self.ignored[at], self.scores[keep]


def summarize(evaluation: dict[str, np.ndarray], params: Any, keypoints: bool) -> np.ndarray:
    """pycocotools' `summarize` numbers (12 for boxes and masks, 10 for keypoints), without
    its printing."""

    def mean(ap: int, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        a = [i for i, label in enumerate(params.areaRngLbl) if label == area]
        m = [i for i, n in enumerate(params.maxDets) if n == max_dets]
        s = evaluation["precision" if ap else "recall"]
        if iou is not None:
            s = s[np.where(iou == params.iouThrs)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    if keypoints:
        d = 20
        return np.array(
            [
                mean(1, max_dets=d),
                mean(1, max_dets=d, iou=0.5),
                mean(1, max_dets=d, iou=0.75),
                mean(1, max_dets=d, area="medium"),
                mean(1, max_dets=d, area="large"),
                mean(0, max_dets=d),
                mean(0, max_dets=d, iou=0.5),
                mean(0, max_dets=d, iou=0.75),
                mean(0, max_dets=d, area="medium"),
                mean(0, max_dets=d, area="large"),
            ]
        )
    d = params.maxDets[2]
    return np.array(
        [
            mean(1),
            mean(1, iou=0.5, max_dets=d),
            mean(1, iou=0.75, max_dets=d),
            mean(1, area="small", max_dets=d),
            mean(1, area="medium", max_dets=d),
            mean(1, area="large", max_dets=d),
            mean(0, max_dets=params.maxDets[0]),
            mean(0, max_dets=params.maxDets[1]),
            mean(0, max_dets=d),
            mean(0, area="small", max_dets=d),
            mean(0, area="medium", max_dets=d),
            mean(0, area="large", max_dets=d),
        ]
    )
