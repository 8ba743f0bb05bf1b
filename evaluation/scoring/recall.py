"""Recall per class and bucket: size buckets, `all` and `below_identifiable`, each with `n`,
IoU and coverage recall and their bootstrap intervals."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from data.size_buckets import BUCKETS
from evaluation.scoring.bootstrap import bootstrap_intervals
from evaluation.scoring.instances import TruthArrays
from evaluation.scoring.options import ScoreOptions
from evaluation.scoring.result import RecallCell, RecallTable

ALL = "all"
BELOW = "below_identifiable"
BUCKET_NAMES: tuple[str, ...] = (*BUCKETS, ALL, BELOW)


def is_identifiable(
    truth: TruthArrays, classes: list[str], minimum: Mapping[str, float] | None
) -> np.ndarray:
    """Per ground-truth object, whether its box is at least its class's minimum height."""
    heights = np.array([float((minimum or {}).get(name, 0.0)) for name in classes])
    if not len(truth.category):
        return np.zeros(0, dtype=bool)
    return truth.box[:, 3] >= heights[truth.category]


def bucket_members(truth: TruthArrays, identifiable: np.ndarray) -> dict[str, np.ndarray]:
    """Per bucket name, which objects it holds: the size buckets and `all` the identifiable
    ones, `below_identifiable` the others (ignored objects included: callers mask them)."""
    out = {b: identifiable & (truth.bucket == b) for b in BUCKETS}
    out[ALL] = identifiable.copy()
    out[BELOW] = ~identifiable
    return out


def recall_tables(
    truth: TruthArrays,
    members: dict[str, np.ndarray],
    found: dict[str, np.ndarray],
    covered: np.ndarray,
    classes: list[str],
    n_images: int,
    options: ScoreOptions,
) -> RecallTable:
    """recall.<class>.<bucket>: n, iou and coverage recall with their bootstrap intervals."""
    counted = ~truth.ignored
    columns = [(c, b) for c in range(len(classes)) for b in BUCKET_NAMES]
    key = truth.image * len(classes) + truth.category

    def per_image(flags: dict[str, np.ndarray]) -> np.ndarray:
        table = np.stack(
            [np.bincount(key[flags[b]], minlength=n_images * len(classes)) for b in BUCKET_NAMES],
            axis=-1,
        ).astype(np.float64)
        return table.reshape(n_images, len(classes) * len(BUCKET_NAMES))

    in_bucket = {b: counted & members[b] for b in BUCKET_NAMES}
    n = per_image(in_bucket)
    hits = per_image(found)
    cover = per_image({b: covered & in_bucket[b] for b in BUCKET_NAMES})
    intervals = bootstrap_intervals(n, np.hstack([hits, cover]), options.n_boot, options.seed)
    totals = n.sum(axis=0)
    hit_totals, cover_totals = hits.sum(axis=0), cover.sum(axis=0)

    width = len(columns)
    table: RecallTable = {name: {} for name in classes}
    for m, (c, b) in enumerate(columns):
        count = int(totals[m])
        cell = RecallCell(n=count)
        if count:
            iou_ci, coverage_ci = (None, None)
            if intervals is not None:
                iou_ci, coverage_ci = intervals[m], intervals[width + m]
            cell = RecallCell(
                n=count,
                iou=float(hit_totals[m] / totals[m]),
                iou_ci=None if iou_ci is None else (iou_ci[0], iou_ci[1]),
                coverage=float(cover_totals[m] / totals[m]),
                coverage_ci=None if coverage_ci is None else (coverage_ci[0], coverage_ci[1]),
            )
        table[classes[c]][b] = cell
    return table
