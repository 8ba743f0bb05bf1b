"""Precision/recall curves per class and the operating threshold that reaches a target recall."""

from __future__ import annotations

import numpy as np

from evaluation.scoring.result import CurvePoint, OperatingPoint

PR_LEVELS = 100  # a precision/recall curve keeps its first point and one per 1% of recall


def precision_recall_curve(
    scores: np.ndarray, hit: np.ndarray, false: np.ndarray, n: int, target: float, floor: float
) -> tuple[list[CurvePoint], OperatingPoint | None, str | None]:
    """The precision/recall curve of one class (its points where the score threshold changes,
    thinned to one per 1% of recall), and its operating point: the highest threshold, not below
    `floor`, whose recall meets `target` (`reached`), else `floor` with the recall there."""
    if n == 0:
        return [], None, "no ground-truth objects: no curve or operating threshold"
    if not len(scores):
        missed = OperatingPoint(threshold=floor, recall=0.0, reached=False)
        return [], missed, "no predictions: no curve or operating threshold"
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    hits = np.cumsum(hit[order])
    falses = np.cumsum(false[order])
    last_of_tie = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    thresholds = ordered[last_of_tie]
    recall = hits[last_of_tie] / n
    judged = hits[last_of_tie] + falses[last_of_tie]

    allowed = np.flatnonzero(thresholds >= floor)
    reached = allowed[recall[allowed] >= target]
    note = None
    if len(reached):
        k = reached[0]
        point = OperatingPoint(float(thresholds[k]), float(recall[k]), reached=True)
    else:
        best = float(recall[allowed[-1]]) if len(allowed) else 0.0
        lowest = float(thresholds[allowed[-1]]) if len(allowed) else floor
        point = OperatingPoint(floor if floor > 0 else lowest, best, reached=False)
        note = (
            f"recall never reaches {target:g} (at most {best:.4f}, at score >= "
            f"{point.threshold:g}): no operating threshold"
        )

    # Points before any prediction is judged (all matched ignored objects) have no precision.
    usable = np.flatnonzero(judged > 0)
    if not len(usable):
        return [], point, note
    levels = np.arange(1, PR_LEVELS + 1) / PR_LEVELS
    picks = np.searchsorted(recall[usable], levels, side="left")
    picks = np.unique(np.append(picks[picks < len(usable)], 0))
    points = [
        CurvePoint(
            score=float(thresholds[k]),
            precision=float(hits[last_of_tie[k]] / judged[k]),
            recall=float(recall[k]),
        )
        for k in usable[picks].tolist()
    ]
    return points, point, note
