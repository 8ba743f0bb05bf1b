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
from dataclasses import dataclass
from typing import Any

import numpy as np

# The fields of faster-coco-eval's ImageEvaluation, as its __getstate__ returns them.
_STATE_FIELDS = 6
_MATCHES, _SCORES, _GT_IGNORES, _IGNORES = 0, 2, 3, 4


@dataclass(frozen=True)
class Matches:
    """The per-image matches of one category and area range, images in order, as flat arrays:
    each image's detections in its own score order (at most the largest maxDets), and per image
    T rows of them (`matched`, `ignored` at [t * n_det + d]), images one after the other."""

    n_det: np.ndarray  # per image
    scores: np.ndarray
    matched: np.ndarray  # matched to an object (bool)
    ignored: np.ndarray
    n_counted: int  # objects neither ignored nor outside the area range

    @staticmethod
    def join(parts: Sequence[Matches]) -> Matches:
        """The matches of consecutive chunks of images as one."""
        return Matches(
            n_det=np.concatenate([p.n_det for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            matched=np.concatenate([p.matched for p in parts]),
            ignored=np.concatenate([p.ignored for p in parts]),
            n_counted=sum(p.n_counted for p in parts),
        )

    def top(self, max_det: int, n_t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each image's first `max_det` detections: matched and ignored [T, N], scores [N]."""
        start = np.cumsum(self.n_det) - self.n_det
        rank = np.arange(len(self.scores)) - np.repeat(start, self.n_det)
        image = np.repeat(np.arange(len(self.n_det)), self.n_det)
        keep = np.flatnonzero(rank < max_det)
        image, rank = image[keep], rank[keep]
        at = n_t * start[image] + np.arange(n_t)[:, None] * self.n_det[image] + rank
        return self.matched[at], self.ignored[at], self.scores[keep]


def image_matches(params: Any, image_evaluations: Sequence[Any]) -> list[Matches]:
    """Per (category, area range), category first, the `Matches` of faster-coco-eval's
    per-image evaluations (`COCOeval_faster(separate_eval=True)`'s `_evalImgs_cpp`: by
    category, then area range, then image)."""
    n_k, n_a, n_i = len(params.catIds), len(params.areaRng), len(params.imgIds)
    if len(image_evaluations) != n_k * n_a * n_i:
        raise RuntimeError(
            f"faster-coco-eval returned {len(image_evaluations)} image evaluations, expected "
            f"{n_k} categories x {n_a} area ranges x {n_i} images"
        )
    out = []
    for start in range(0, n_k * n_a * n_i, max(n_i, 1)):
        states = [e.__getstate__() for e in image_evaluations[start : start + n_i]]
        if states and len(states[0]) != _STATE_FIELDS:
            raise RuntimeError(
                "faster-coco-eval's ImageEvaluation state has changed layout; the scorer reads "
                f"{_STATE_FIELDS} fields: pin the version in pyproject.toml"
            )
        out.append(
            Matches(
                n_det=np.fromiter((len(s[_SCORES]) for s in states), np.int64, len(states)),
                scores=_flat(states, _SCORES, float),
                matched=_flat(states, _MATCHES, np.int64) > 0,
                ignored=_flat(states, _IGNORES, bool),
                n_counted=int(np.count_nonzero(~_flat(states, _GT_IGNORES, bool))),
            )
        )
    if n_i == 0:
        out = [Matches(*(np.zeros(0, t) for t in (np.int64, float, bool, bool)), 0)] * (n_k * n_a)
    return out


def _flat(states: list[tuple], field: int, dtype: type) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(s[field] for s in states), dtype)


def accumulate(params: Any, matches: Sequence[Matches]) -> dict[str, np.ndarray]:
    """pycocotools' `eval` arrays (precision [T, R, K, A, M], recall [T, K, A, M], scores) from
    the `Matches` of every (category, area range), category first, over `params.imgIds`."""
    n_t, n_r = len(params.iouThrs), len(params.recThrs)
    n_k, n_a, n_m = len(params.catIds), len(params.areaRng), len(params.maxDets)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    scores = -np.ones((n_t, n_r, n_k, n_a, n_m))
    rec_thresholds = np.asarray(params.recThrs)
    for (k, a), block in zip(itertools.product(range(n_k), range(n_a)), matches, strict=True):
        if block.n_counted == 0:
            continue
        for m, max_det in enumerate(params.maxDets):
            matched, ignored, det_scores = block.top(max_det, n_t)
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
