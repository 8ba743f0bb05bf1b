"""The anonymizer's head threshold: the keypoint model's person score from which a head region
is hidden, chosen on val for the face target, as each class's operating threshold is.

The rule. A face counts when it is counted and identifiable (the scorer's `all` bucket). Its
cover score is the highest person score t such that the face is covered (at least
`evaluate.coverage` of its pixels) by the pixels the runtime fully hides (`hidden_mask(...,
full=True)`): every non-head detection of the anonymizer at its operating threshold, plus the
head regions of the persons scoring t or more. It is +inf for a face covered without any head,
-inf for one no head helps to cover. recall(t) is the share of faces whose cover score is at
least t, which is the anonymizer's face coverage recall with heads from score t. The threshold
is min(the keypoint model's own person operating threshold, the highest cover score t with
recall(t) >= the face target), so heads never come from fewer persons than the keypoint model
reports itself: a missed face is a legal incident, an extra head blur cosmetic. When no t
reaches the target the threshold is `evaluate.min_threshold` (every head the model gives) and
`reached` is false; without faces on val it is the keypoint model's person threshold, with no
recall (null) and `reached` false.

Cost: per face, pixels are counted on its box's crop only, and heads are added in descending
score order until the face is covered; each head's region is computed once per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from serving.runtime.anonymize import Region, Style, region
from serving.runtime.detections import Detections

__all__ = ["HeadChoice", "choose_head_threshold", "cover_scores"]


@dataclass(frozen=True)
class HeadChoice:
    """The head threshold chosen, the anonymizer's face coverage recall on val there (None
    without val faces), and whether that reaches the face target."""

    threshold: float
    val_recall: float | None
    reached: bool


def cover_scores(
    faces: Sequence[dict],
    base: np.ndarray,
    heads: Detections,
    style: Style,
    *,
    panorama: bool,
    coverage: float,
) -> np.ndarray:
    """The cover score (module docstring) of each face of one image.

    faces: the faces' pixels as COCO RLEs of the image's size. base: (height, width) bool, the
    pixels fully hidden without heads. heads: the head regions' boxes, scored by their persons
    (`Composition.combine`'s head detections at any threshold), hidden in `style`. panorama: as
    the runtime decides it for the image (regions wrap around the seam).
    """
    height, width = base.shape
    order = np.argsort(-heads.scores, kind="stable")
    regions: list[Region | None] = [None] * len(heads)
    computed = [False] * len(heads)
    out = np.full(len(faces), -math.inf)
    for f, rle in enumerate(faces):
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
        x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
        face = mask_utils.decode(rle)[y0:y1, x0:x1].astype(bool)
        area = int(face.sum())
        if not area:
            continue  # no pixel to cover: never counted as covered
        covered = base[y0:y1, x0:x1] & face
        if int(covered.sum()) / area >= coverage:
            out[f] = math.inf
            continue
        for i in order.tolist():
            if not computed[i]:
                regions[i] = region(heads, i, style, width, height, panorama=panorama)
                computed[i] = True
            found = regions[i]
            if found is None or not _add(covered, face, found, (x0, y0, x1, y1)):
                continue
            if int(covered.sum()) / area >= coverage:
                out[f] = float(heads.scores[i])
                break
    return out


def _add(
    covered: np.ndarray, face: np.ndarray, found: Region, window: tuple[int, int, int, int]
) -> bool:
    """Mark in `covered` (over `window` x0, y0, x1, y1) the face pixels `found` hides fully;
    whether the region reaches the window at all."""
    x0, y0, x1, y1 = window
    r0, r1 = max(found.y0, y0), min(found.y1, y1)
    if r0 >= r1:
        return False
    columns = np.arange(found.x0, found.x1) % found.width  # as hidden_mask places them
    inside = np.flatnonzero((columns >= x0) & (columns < x1))
    if not len(inside):
        return False
    full = found.alpha[r0 - found.y0 : r1 - found.y0][:, inside] >= 1
    rows = np.arange(r0, r1) - y0
    cols = columns[inside] - x0
    covered[np.ix_(rows, cols)] |= full & face[np.ix_(rows, cols)]
    return True


def choose_head_threshold(
    cover: np.ndarray, *, target: float, cap: float, floor: float
) -> HeadChoice:
    """The head threshold from the val faces' cover scores (module docstring). cap: the keypoint
    model's person operating threshold; floor: evaluate.min_threshold."""
    cover = np.asarray(cover, dtype=np.float64)
    if not len(cover):
        return HeadChoice(cap, None, False)

    def recall(t: float) -> float:
        return float(np.count_nonzero(cover >= t) / len(cover))

    if recall(cap) >= target:
        return HeadChoice(cap, recall(cap), True)
    candidates = np.unique(cover[np.isfinite(cover) & (cover < cap) & (cover >= floor)])
    for t in candidates[::-1].tolist():
        if recall(t) >= target:
            return HeadChoice(t, recall(t), True)
    return HeadChoice(floor, recall(floor), False)
