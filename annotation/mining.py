"""Mining misses for `annotate push`: faces an independent detector finds that the pre-annotation
does not cover, so that push queues those images first and says why.

The second opinion (`annotation.second_opinion`, an independent detector of
`serving.runtime.independent` that finds faces) looks at the upright image the pre-annotator
looks at. Each face it finds scoring at least `annotation.second_opinion_min_score` is *missed*
when less than half of its box (`COVERED`) lies inside the union of the pre-annotation's face
regions (the boxes of its face ellipses and face rectangles). Coverage, not IoU: a Haar face box
spans brows to mouth and a champion may draw a face larger than CenterFace does; a face inside a
wider region is still pre-annotated. Other classes' regions do not count: a face inside a
person's mask must still be drawn. The area is measured on a `GRID` x `GRID` lattice of points
over the box, x taken modulo the image width, so a face across a panorama's seam is covered by
the two halves drawn at both ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.runtime.independent import IndependentDetector, load_detector

__all__ = [
    "COVERED",
    "FACE",
    "GRID",
    "Missed",
    "SecondOpinion",
    "covered_share",
    "face_boxes",
    "queue_order",
    "queue_score",
]

FACE = "face"
COVERED = 0.5
GRID = 16


@dataclass(frozen=True)
class Missed:
    """The second opinion on one image: its detector and the faces it found that the
    pre-annotation does not cover (x0, y0, x1, y1 in the upright image's pixels, and scores),
    best first. In a panorama a box may run past the right edge (across the seam)."""

    detector: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    scores: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        return len(self.scores)

    def meta(self, width: int, height: int) -> dict[str, Any]:
        """What the task's `meta` says about it; the boxes in percent of the image."""
        out: dict[str, Any] = {"second_opinion": self.detector, "missed_faces": self.count}
        if self.count:
            out["missed_score"] = round(max(self.scores), 4)
            out["missed_boxes"] = [
                {
                    "x": round(100 * x0 / width, 2),
                    "y": round(100 * y0 / height, 2),
                    "width": round(100 * (x1 - x0) / width, 2),
                    "height": round(100 * (y1 - y0) / height, 2),
                    "score": round(score, 4),
                }
                for (x0, y0, x1, y1), score in zip(self.boxes, self.scores, strict=True)
            ]
        return out


class SecondOpinion:
    """An independent face detector (`name`) whose faces at or above `min_score` are checked
    against a pre-annotation."""

    def __init__(self, name: str, min_score: float) -> None:
        # The detector's own cut-off at min_score: the faces kept are those it would keep at a
        # lower one and then filter (its suppression keeps the best-scoring box first).
        self.detector: IndependentDetector = load_detector(name, threshold=min_score)
        if FACE not in self.detector.classes:
            raise ValueError(f"independent detector {name!r} finds no faces")
        self.name = name
        self.min_score = min_score
        self._label = self.detector.classes.index(FACE) + 1

    def missed(self, rgb: np.ndarray, result: Sequence[dict[str, Any]]) -> Missed:
        """The faces found in `rgb` (upright) that the regions `result` do not cover."""
        height, width = rgb.shape[:2]
        dets = self.detector.detect(rgb)
        faces = face_boxes(result, width, height)
        boxes, scores = [], []
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
            if int(label) != self._label or float(score) < self.min_score:
                continue
            if covered_share(box, faces, width) < COVERED:
                boxes.append(tuple(float(v) for v in box))
                scores.append(float(score))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return Missed(self.name, tuple(boxes[i] for i in order), tuple(scores[i] for i in order))


def face_boxes(result: Sequence[dict[str, Any]], width: int, height: int) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 in pixels of `width` x `height`: the extents of the face ellipses
    and face rectangles among Label Studio regions (values in percent)."""
    boxes = []
    for region in result:
        value = region.get("value", {})
        if FACE in value.get("ellipselabels", ()):
            cx, cy, rx, ry = value["x"], value["y"], value["radiusX"], value["radiusY"]
            boxes.append((cx - rx, cy - ry, cx + rx, cy + ry))
        elif FACE in value.get("rectanglelabels", ()):
            x, y = value["x"], value["y"]
            boxes.append((x, y, x + value["width"], y + value["height"]))
    scale = np.array([width, height, width, height], np.float64) / 100.0
    return np.asarray(boxes, np.float64).reshape(-1, 4) * scale


def covered_share(box: Sequence[float], faces: np.ndarray, width: int) -> float:
    """The share of `box` (x0, y0, x1, y1) inside the union of `faces`, on a GRID x GRID lattice
    of points, x modulo `width` (a panorama's seam)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not len(faces) or x1 <= x0 or y1 <= y0:
        return 0.0
    steps = (np.arange(GRID) + 0.5) / GRID
    xs = np.mod(x0 + steps * (x1 - x0), width)[None, :, None]
    ys = (y0 + steps * (y1 - y0))[:, None, None]
    inside = (
        (xs >= faces[:, 0]) & (xs <= faces[:, 2]) & (ys >= faces[:, 1]) & (ys <= faces[:, 3])
    ).any(axis=2)
    return float(inside.mean())


def queue_order(uncertainties: Sequence[float], missed: Sequence[int]) -> list[int]:
    """Import order: images with more missed faces first, then by decreasing uncertainty; ties
    keep their order (the manifest's)."""
    return sorted(range(len(uncertainties)), key=lambda i: (-missed[i], -uncertainties[i]))


def queue_score(uncertainty: float, missed: int) -> float:
    """The prediction's score, lowest first in Label Studio's uncertainty sampling:
    (1 - U / 2) / 2 ** missed. Without missed faces it lies in [0.5, 1]; each missed face halves
    it, so an image with n missed faces scores below every image with fewer."""
    return (1.0 - uncertainty / 2.0) / 2.0**missed
