"""The `Detections` record: boxes, scores, labels and optional masks and keypoints of one image.

Coordinates are continuous pixels: pixel (row r, column c) covers [c, c+1) x [r, r+1), so a box
x0, y0, x1, y1 = 10, 20, 30, 40 covers columns 10..29 and rows 20..39 exactly.

A mask does not cover the whole image: it covers the integer window of its box, `mask_window`:
columns floor(x0)..ceil(x1) - 1 and rows floor(y0)..ceil(y1) - 1, at least one pixel each way.
A coordinate within `SNAP` (1e-3 px) of a whole number counts as that number, so that float
noise from scaling (19.9999 or 20.0001 for 20) does not add a column of pixels. Masks of many
small objects cost little this way, and a mask always agrees with its box.

In a panorama a box crossing the left-right seam keeps x1 > width (its mask too runs past the
width); `full_mask` wraps those columns to the left end of the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Distance (px) within which a coordinate counts as the whole number next to it.
SNAP = 1e-3


def mask_window(box: Sequence[float] | np.ndarray) -> tuple[int, int, int, int]:
    """The integer window (ix0, iy0, ix1, iy1), end-exclusive, that a box's mask covers."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0, iy0 = math.floor(x0 + SNAP), math.floor(y0 + SNAP)
    ix1 = max(math.ceil(x1 - SNAP), ix0 + 1)
    iy1 = max(math.ceil(y1 - SNAP), iy0 + 1)
    return ix0, iy0, ix1, iy1


def mask_windows(boxes: np.ndarray) -> np.ndarray:
    """`mask_window` of every box at once: (N, 4) int64 ix0, iy0, ix1, iy1."""
    b = boxes.astype(np.float64)
    lo = np.floor(b[:, :2] + SNAP)
    hi = np.maximum(np.ceil(b[:, 2:] - SNAP), lo + 1)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


@dataclass
class Detections:
    """Detections in one image's pixel coordinates (see the module docstring).

    boxes: (N, 4) float32 x0, y0, x1, y1; in a panorama x1 may exceed the image width (the box
        wraps across the seam). scores: (N,) float32. labels: (N,) int64, 1-based class indices
        (label i + 1 is classes[i]). masks: None for box-only models, else one bool array per
        detection of shape (iy1 - iy0, ix1 - ix0), its box's `mask_window`. keypoints: None or
        (N, K, 3) float32 x, y, score/visibility.

    Inputs are converted to these dtypes; shapes that do not agree raise ValueError.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: list[np.ndarray] | None = None
    keypoints: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got shape {boxes.shape}")
        n = len(boxes)
        self.boxes = boxes
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"{n} boxes but {len(self.scores)} scores and {len(self.labels)} labels"
            )
        if self.keypoints is not None:
            keypoints = np.asarray(self.keypoints, dtype=np.float32)
            if keypoints.size == 0 and n == 0:
                keypoints = keypoints.reshape(
                    0, keypoints.shape[1] if keypoints.ndim == 3 else 0, 3
                )
            if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
                raise ValueError(f"keypoints must be ({n}, K, 3), got shape {keypoints.shape}")
            self.keypoints = keypoints
        if self.masks is not None:
            self.masks = [np.asarray(m, dtype=bool) for m in self.masks]
            if len(self.masks) != n:
                raise ValueError(f"{n} boxes but {len(self.masks)} masks")
            for i, (mask, (ix0, iy0, ix1, iy1)) in enumerate(
                zip(self.masks, mask_windows(boxes).tolist(), strict=True)
            ):
                if mask.shape != (iy1 - iy0, ix1 - ix0):
                    raise ValueError(
                        f"mask {i} is {mask.shape} (h, w) but its box {boxes[i].tolist()} "
                        f"needs {(iy1 - iy0, ix1 - ix0)}: rows {iy0}..{iy1 - 1}, "
                        f"columns {ix0}..{ix1 - 1} (see mask_window)"
                    )

    @staticmethod
    def empty(with_masks: bool = False) -> Detections:
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
            masks=[] if with_masks else None,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: np.ndarray) -> Detections:
        """The detections at `index`: a boolean mask over them or integer positions, in order."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"boolean index of shape {index.shape} for {len(self)} detections")
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            masks=None if self.masks is None else [self.masks[i] for i in index],
            keypoints=None if self.keypoints is None else self.keypoints[index],
        )

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> Detections:
        """These detections mapped by x -> x * scale + dx, y -> y * scale + dy (scale first).

        Tile coordinates at a pass of scale s become image coordinates with
        `shifted(window.x / s, window.y / s, 1 / s)`. Keypoints move the same way (all of them,
        whatever their score). A mask is resampled to its new box's window by nearest neighbour
        (each new pixel takes the old pixel under its centre), unless the map is a shift by
        whole pixels, which keeps mask arrays as they are.
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        factor = np.array([scale, scale, scale, scale])
        offset = np.array([dx, dy, dx, dy])
        boxes = (self.boxes.astype(np.float64) * factor + offset).astype(np.float32)
        keypoints = None
        if self.keypoints is not None:
            keypoints = self.keypoints.astype(np.float64)
            keypoints[..., :2] = keypoints[..., :2] * scale + np.array([dx, dy])
            keypoints = keypoints.astype(np.float32)
        masks = self.masks
        if masks is not None:
            old, new = mask_windows(self.boxes), mask_windows(boxes)
            if scale == 1 and float(dx).is_integer() and float(dy).is_integer():
                # The same pixels, moved; float32 rounding of large coordinates can still move
                # a window edge by one pixel, which `rewindow` absorbs.
                moved = old + np.array([dx, dy, dx, dy], dtype=np.int64)
                masks = [
                    m if o == n else rewindow(m, o, n)
                    for m, o, n in zip(masks, moved.tolist(), new.tolist(), strict=True)
                ]
            else:
                masks = [
                    _resample(mask, o, n, dx, dy, scale)
                    for mask, o, n in zip(masks, old, new, strict=True)
                ]
        return Detections(boxes, self.scores.copy(), self.labels.copy(), masks, keypoints)

    @staticmethod
    def concat(parts: Sequence[Detections]) -> Detections:
        """All parts' detections, in order. When some parts carry masks and others do not, the
        box-only detections get filled-box masks (a box is the safe mask to blur). Non-empty parts
        must agree on keypoints (all or none, the same K)."""
        if not parts:
            return Detections.empty()
        filled = [p for p in parts if len(p)]
        with_masks = any(p.masks is not None for p in parts)
        if not filled:
            return Detections.empty(with_masks)
        has_keypoints = {p.keypoints is not None for p in filled}
        if len(has_keypoints) > 1:
            raise ValueError("cannot concatenate detections with keypoints and without")
        masks = None
        if with_masks:
            masks = []
            for p in filled:
                masks += (
                    p.masks
                    if p.masks is not None
                    else [_box_mask(w) for w in mask_windows(p.boxes)]
                )
        keypoints = None
        if has_keypoints == {True}:
            ks = {p.keypoints.shape[1] for p in filled}  # type: ignore[union-attr]
            if len(ks) > 1:
                raise ValueError(
                    f"cannot concatenate detections with different keypoint counts {ks}"
                )
            keypoints = np.concatenate([p.keypoints for p in filled])  # type: ignore[misc]
        return Detections(
            boxes=np.concatenate([p.boxes for p in filled]),
            scores=np.concatenate([p.scores for p in filled]),
            labels=np.concatenate([p.labels for p in filled]),
            masks=masks,
            keypoints=keypoints,
        )

    def mask_or_box(self, i: int) -> np.ndarray:
        """Detection i's mask over its `mask_window`: the mask, or the filled box without one."""
        if self.masks is not None:
            return self.masks[i]
        return _box_mask(mask_windows(self.boxes[i : i + 1])[0])

    def full_mask(self, i: int, width: int, height: int) -> np.ndarray:
        """Detection i's mask (or its filled box) pasted into a (height, width) bool image.

        Columns at or past `width` wrap to the left end and negative columns to the right end
        (the panorama seam); rows outside the image are dropped.
        """
        out = np.zeros((height, width), dtype=bool)
        ix0, iy0, ix1, iy1 = mask_windows(self.boxes[i : i + 1])[0].tolist()
        mask = self.mask_or_box(i)
        r0, r1 = max(iy0, 0), min(iy1, height)
        if r0 >= r1:
            return out
        rows = mask[r0 - iy0 : r1 - iy0]
        start = ix0
        # One slice per turn around the image: a mask crossing the seam takes two.
        while start < ix1:
            turn = start // width
            stop = min(ix1, (turn + 1) * width)
            out[r0:r1, start - turn * width : stop - turn * width] |= rows[
                :, start - ix0 : stop - ix0
            ]
            start = stop
        return out


def _box_mask(window: np.ndarray) -> np.ndarray:
    ix0, iy0, ix1, iy1 = (int(v) for v in window)
    return np.ones((iy1 - iy0, ix1 - ix0), dtype=bool)


def _resample(
    mask: np.ndarray, old: np.ndarray, new: np.ndarray, dx: float, dy: float, scale: float
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask from window `old` to window `new` under
    x -> x * scale + dx: each new pixel takes the old pixel under its centre, or False when its
    centre falls outside the old window."""
    cols = np.floor((np.arange(new[0], new[2]) + 0.5 - dx) / scale).astype(np.int64) - old[0]
    rows = np.floor((np.arange(new[1], new[3]) + 0.5 - dy) / scale).astype(np.int64) - old[1]
    col_ok = (cols >= 0) & (cols < mask.shape[1])
    row_ok = (rows >= 0) & (rows < mask.shape[0])
    picked = mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)]
    return picked & row_ok[:, None] & col_ok[None, :]


def rewindow(mask: np.ndarray, old: Sequence[int], new: Sequence[int]) -> np.ndarray:
    """A mask over integer window `old` (ix0, iy0, ix1, iy1) moved onto window `new`: the
    pixels both windows share keep their value, the rest of `new` is False."""
    out = np.zeros((new[3] - new[1], new[2] - new[0]), dtype=bool)
    x0, y0 = max(old[0], new[0]), max(old[1], new[1])
    x1, y1 = min(old[2], new[2]), min(old[3], new[3])
    if x0 < x1 and y0 < y1:
        out[y0 - new[1] : y1 - new[1], x0 - new[0] : x1 - new[0]] = mask[
            y0 - old[1] : y1 - old[1], x0 - old[0] : x1 - old[0]
        ]
    return out
