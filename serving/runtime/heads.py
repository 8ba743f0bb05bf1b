"""Heads from a keypoint model's persons: a region around each head, hidden as a face is.

The face class misses faces seen from behind or the side, small, occluded, under a helmet or
behind sunglasses. A Keypoint R-CNN finds the person and its head keypoints (nose, eyes, ears)
in those cases too, so each person it finds gives a head region, hidden in the face's style
(an ellipse with a soft edge). The geometry, in the person's image pixels (`head_boxes`):

- visible keypoints: the head keypoints (`HeadSpec.keypoints`) whose score (the keypoint head's
  heatmap logit; a visibility flag for keypoints from annotations) is at least
  `HeadSpec.keypoint_threshold`;
- size s (the head's width): the largest of `spread` x the largest distance between two
  visible keypoints (ear to ear is about three quarters of a head's width, eye to eye a third:
  twice the spread covers either), `box_share` x the shorter side of the person's box (a
  standing person's box is about two heads wide; a head is never missed because its keypoints
  were too close together, or there was one), and `min_px` (a tiny person's head still gets a
  region);
- centre: the mean of the visible keypoints (ears only: between them, which is the head's
  centre seen from behind); with none visible, the top of the person's box, horizontally
  centred (a person with no visible head keypoint still has a head somewhere near there);
- the head box is s wide and `aspect` x s tall around that centre. The runtime then hides it
  as it hides a face box (`anonymize`: the ellipse through the corners of the box grown by the
  style's margin, and its feathered edge), so the hidden ellipse reaches about 0.8 s either
  side of the centre.

Erring large is the safe side: a head hidden too generously is a cosmetic flaw, a visible one a
legal incident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from serving.runtime.detections import Detections

__all__ = ["HEAD", "HEAD_KEYPOINTS", "HeadSpec", "head_boxes", "head_detections"]

HEAD = "head"
HEAD_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")


@dataclass(frozen=True)
class HeadSpec:
    """How a person's keypoints make its head region (module docstring). Stored as a dict in a
    composite artifact's manifest."""

    keypoints: tuple[str, ...] = HEAD_KEYPOINTS
    keypoint_threshold: float = 1.0
    spread: float = 2.0
    box_share: float = 0.5
    aspect: float = 1.25
    min_px: float = 10.0

    def __post_init__(self) -> None:
        names = self.keypoints
        if (
            not isinstance(names, Sequence)
            or isinstance(names, str)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError(f"head keypoints must be a non-empty list of names, got {names!r}")
        object.__setattr__(self, "keypoints", tuple(names))
        bounds = {
            "keypoint_threshold": (-math.inf, math.inf),
            "spread": (0.0, 10.0),
            "box_share": (0.0, 2.0),
            "aspect": (0.25, 4.0),
            "min_px": (0.0, 1000.0),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"head {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"head {name} must be a number {low} to {high}, got {value}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["keypoints"] = list(self.keypoints)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> HeadSpec:
        """The spec a `to_dict` gave; unknown keys and bad values raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a head spec must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"head key(s) {unknown} not allowed; the keys are: {allowed}")
        return cls(**data)  # type: ignore[arg-type]

    def indices(self, names: Sequence[str]) -> list[int]:
        """Where the head keypoints are among a model's keypoint `names`; ValueError naming
        those the model lacks."""
        missing = [k for k in self.keypoints if k not in names]
        if missing:
            raise ValueError(
                f"the keypoint model has no keypoint {', '.join(missing)} (its keypoints: "
                f"{', '.join(names)}); name head keypoints it has"
            )
        return [list(names).index(k) for k in self.keypoints]


def head_boxes(
    boxes: np.ndarray, keypoints: np.ndarray | None, spec: HeadSpec, indices: Sequence[int]
) -> np.ndarray:
    """(N, 4) float32 head boxes x0, y0, x1, y1 of N persons (`boxes` (N, 4), `keypoints`
    (N, K, 3) x, y, score, or None: no keypoint is visible); `indices`: the head keypoints'
    positions among the K (`HeadSpec.indices`). Geometry: module docstring."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    width = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    height = np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    size = np.maximum(spec.box_share * np.minimum(width, height), spec.min_px)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = np.full(n, np.nan)
    if keypoints is not None and n:
        head = np.asarray(keypoints, dtype=np.float64)[:, list(indices), :]
        visible = head[..., 2] >= spec.keypoint_threshold
        count = visible.sum(axis=1)
        xy = np.where(visible[..., None], head[..., :2], 0.0)
        seen = count > 0
        mean = xy.sum(axis=1) / np.maximum(count, 1)[:, None]
        cx = np.where(seen, mean[:, 0], cx)
        cy = np.where(seen, mean[:, 1], cy)
        # The largest distance between two visible keypoints (0 with fewer than two).
        gaps = np.linalg.norm(head[:, :, None, :2] - head[:, None, :, :2], axis=-1)
        pair = visible[:, :, None] & visible[:, None, :]
        spread = np.where(pair, gaps, 0.0).max(axis=(1, 2)) if head.shape[1] else np.zeros(n)
        size = np.maximum(size, spec.spread * spread)
    tall = spec.aspect * size
    cy = np.where(np.isnan(cy), boxes[:, 1] + tall / 2, cy)
    out = np.stack([cx - size / 2, cy - tall / 2, cx + size / 2, cy + tall / 2], axis=1)
    return out.astype(np.float32)


def head_detections(
    persons: Detections, spec: HeadSpec, keypoint_names: Sequence[str], label: int
) -> Detections:
    """One detection per person of `persons`: its head box (`head_boxes`), the person's score,
    `label`; no masks, no keypoints."""
    boxes = head_boxes(persons.boxes, persons.keypoints, spec, spec.indices(keypoint_names))
    return Detections(
        boxes=boxes,
        scores=persons.scores.copy(),
        labels=np.full(len(persons), label, np.int64),
    )
