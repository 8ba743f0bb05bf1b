"""Detection on large images and panoramas: cut them into overlapping windows, run the detector
on each, and merge what it finds back into one set of detections in image coordinates.

`plan_windows` lays out the windows, `cut` takes a window's pixels, `merge` maps the detector's
per-window output back and unites duplicates, and `detect_tiled` does all three. Evaluation
calls `detect_tiled` too, so the recall it measures is the recall of this tiling.

Conventions and decisions:
- A pass of scale s looks at the image resampled by s (s = 2: enlarged, for small distant
  objects). Its image is ceil(W * s) x ceil(H * s) pixels, and scaled coordinate u is image
  coordinate u / s. Scales must be simple fractions p/q (q <= 16: 0.5, 0.75, 1.5, 2, 3) so a
  window can be resampled from a block of source pixels that starts on a whole scaled pixel:
  `cut` then gives exactly the pixels that resampling the whole image would give (INTER_LINEAR
  when enlarging, INTER_AREA when shrinking), without resampling the whole image (a 2x copy of
  a large panorama would take gigabytes).
- Along an axis no longer than `tile` a window spans the whole axis: an image no larger than the
  tile is one window at scale 1, cut without resampling, and `detect_tiled` returns the
  detector's own result. Along a longer axis windows are `tile` long, as few as the overlap
  allows, spread evenly with the last one ending on the far edge (shifted inward, never padded).
- Panoramas (width / height within 1% of `panorama_aspect`) wrap around the left-right seam:
  their windows go round the full 360 degrees, neighbours overlapping by at least `overlap`
  across the seam too, so one window always holds the seam inside it (columns W-a..W-1, then
  0..b-1). A panorama no wider than the tile gets two full-width windows, the second centred on
  the seam. Rows never wrap.
- Detections are mapped back by `Detections.shifted(x / s, y / s, 1 / s)`. In a panorama a box
  is then moved by whole turns so that 0 <= x0 < W; one crossing the seam keeps x1 > W (its
  mask too runs past the width; `Detections.full_mask` wraps it). In other images boxes and
  masks are clipped to the image (a scaled image can be a fraction of a pixel larger).
- Two same-class detections from different windows (or passes) are one object when their IoU
  is at least `merge_iou`, or when they overlap (more than `SNAP` px each way) and either of them
  comes within `BORDER_PX` pixels of a cut edge of its window: an edge inside the image, or any
  left/right edge in a panorama. An object cut by a window edge is seen as a piece there, and
  a blur limited to that piece would leave part of a face visible, so the pieces are united,
  never dropped. Detections that do not overlap are never united, so adjacent objects stay
  apart; those from one window are left to the detector's own suppression. Panorama boxes are
  compared modulo the width. Merging is transitive (connected components of the pairs).
- A merged object has the union of its members' boxes, the highest score, the union (OR) of
  their masks (box-only members count as filled boxes) and the keypoints of its best-scored
  member. Merged detections come in the order of their first member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from serving.runtime.detections import SNAP, Detections, mask_window, mask_windows, rewindow

# A box within this many window pixels of a cut edge was (maybe) cut by it.
BORDER_PX = 2.0
# Largest denominator of a pass's scale as a fraction (see the module docstring).
MAX_SCALE_DENOMINATOR = 16
# Rows of the pairwise overlap matrix computed at once: bounds memory at a few thousand boxes.
_PAIR_CHUNK = 512

Detector = Callable[[list[np.ndarray]], list[Detections]]


@dataclass(frozen=True)
class TilingSpec:
    """How an image is cut into windows and how their detections are merged.

    tile: window side at the pass's scale (the model's input size). overlap: pixels shared by
    neighbouring windows. scales: one pass per scale, e.g. (1.0, 2.0). panorama_aspect: images
    whose width / height is within 1% of it wrap around the seam; 0 turns that off. merge_iou:
    same-class detections from different windows at or above this IoU are one object.
    """

    tile: int = 1024
    overlap: int = 128
    scales: tuple[float, ...] = (1.0,)
    panorama_aspect: float = 2.0
    merge_iou: float = 0.5

    def __post_init__(self) -> None:
        # Config files give lists; a frozen spec keeps a tuple.
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.tile <= 0 or not 0 <= self.overlap < self.tile:
            raise ValueError(
                f"tiling needs tile > 0 and 0 <= overlap < tile, got tile={self.tile} "
                f"overlap={self.overlap}"
            )
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"tiling scales must be distinct and at least one, got {self.scales}")
        for scale in self.scales:
            _fraction(scale)
        if self.panorama_aspect < 0:
            raise ValueError(f"panorama_aspect must be >= 0 (0: none), got {self.panorama_aspect}")
        if not 0 < self.merge_iou <= 1:
            raise ValueError(f"merge_iou must be in (0, 1], got {self.merge_iou}")


@dataclass(frozen=True)
class Window:
    """A window of one pass, in that pass's scaled image coordinates. `wrap`: the image is a
    panorama, so columns continue around the seam (x + width may exceed the scaled width)."""

    scale: float
    x: int
    y: int
    width: int
    height: int
    wrap: bool = False


def is_panorama(width: int, height: int, spec: TilingSpec) -> bool:
    """Whether an image is an equirectangular panorama: width / height within 1% of the spec's
    panorama aspect."""
    if spec.panorama_aspect <= 0 or width <= 0 or height <= 0:
        return False
    return abs(width / height - spec.panorama_aspect) <= 0.01 * spec.panorama_aspect


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size of a pass's image: ceil(width * scale) x ceil(height * scale)."""
    p, q = _fraction(scale)
    return -(-width * p // q), -(-height * p // q)


def plan_windows(width: int, height: int, spec: TilingSpec) -> list[Window]:
    """The windows of every pass, pass by pass in the spec's order, then row by row, left to
    right (see the module docstring)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    wrap = is_panorama(width, height, spec)
    windows: list[Window] = []
    for scale in spec.scales:
        scaled_width, scaled_height = scaled_size(width, height, scale)
        ys, window_height = _spread(scaled_height, spec.tile, spec.overlap)
        if wrap:
            xs, window_width = _spread_around(scaled_width, spec.tile, spec.overlap)
        else:
            xs, window_width = _spread(scaled_width, spec.tile, spec.overlap)
        windows += [Window(scale, x, y, window_width, window_height, wrap) for y in ys for x in xs]
    return windows


def _spread(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Window starts and length along an axis that does not wrap."""
    if length <= tile:
        return [0], length
    last = math.ceil((length - tile) / (tile - overlap))
    travel = length - tile
    # round(i * travel / last): steps are at most ceil(travel / last) <= tile - overlap.
    return [(2 * i * travel + last) // (2 * last) for i in range(last + 1)], tile


def _spread_around(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Window starts and length around a wrapping axis."""
    if length <= tile:
        # One window starts at the seam; the second holds it in its middle.
        return ([0, length // 2] if length > 1 else [0]), length
    count = math.ceil(length / (tile - overlap))
    return [(2 * i * length + count) // (2 * count) for i in range(count)], tile


def cut(image: np.ndarray, window: Window) -> np.ndarray:
    """The window's pixels of an (H, W) or (H, W, C) image, resampled for the window's scale
    (INTER_LINEAR up, INTER_AREA down), columns wrapping around the seam when `window.wrap`.
    Always a new array: the detector may do what it likes with it."""
    height, width = image.shape[:2]
    p, q = _fraction(window.scale)
    _check_window(window, width, height)
    if p == q:
        rows = image[window.y : window.y + window.height]
        if window.x + window.width <= width:
            return rows[:, window.x : window.x + window.width].copy()
        return rows[:, np.arange(window.x, window.x + window.width) % width]
    # A block of source pixels whose first one starts on a whole scaled pixel (a multiple of q
    # source pixels is a multiple of p scaled ones), with a margin of at least one source pixel
    # so that interpolation at the window's edges sees the true neighbours.
    k0, k1 = window.x // p - 1, -(-(window.x + window.width) // p) + 1
    j0, j1 = window.y // p - 1, -(-(window.y + window.height) // p) + 1
    cols = np.arange(k0 * q, k1 * q)
    cols = cols % width if window.wrap else np.clip(cols, 0, width - 1)
    rows = np.clip(np.arange(j0 * q, j1 * q), 0, height - 1)
    block = image[rows][:, cols]
    resized = cv2.resize(
        block,
        ((k1 - k0) * p, (j1 - j0) * p),
        interpolation=cv2.INTER_LINEAR if p > q else cv2.INTER_AREA,
    )
    if image.ndim == 3 and resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[:, :, None]
    x, y = window.x - k0 * p, window.y - j0 * p
    return np.ascontiguousarray(resized[y : y + window.height, x : x + window.width])


def detect_tiled(
    image: np.ndarray, detector: Detector, spec: TilingSpec, batch: int = 4
) -> Detections:
    """Run `detector` over the windows of `image` and merge.

    `detector` takes a list of window images and returns one `Detections` per window, in that
    window's pixel coordinates; it is called with `batch` windows at a time. A detector with a
    `stream` method (the runtime's backends) is given every window instead, as an iterator that
    cuts each one when it is taken, and batches them itself. When the plan is the whole image
    at scale 1 as one window, its result is returned as it is.
    """
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    height, width = image.shape[:2]
    windows = plan_windows(width, height, spec)
    stream = getattr(detector, "stream", None)
    if stream is not None and len(windows) > 1:
        found = list(stream(cut(image, window) for window in windows))
    else:
        found = []
        for start in range(0, len(windows), batch):
            chunk = [cut(image, window) for window in windows[start : start + batch]]
            found += detector(chunk)
    if len(found) != len(windows):
        raise ValueError(f"the detector returned {len(found)} results for {len(windows)} tiles")
    if windows == [Window(1.0, 0, 0, width, height)]:
        return found[0]
    return merge(list(zip(windows, found, strict=True)), width, height, spec)


def merge(
    parts: Sequence[tuple[Window, Detections]], width: int, height: int, spec: TilingSpec
) -> Detections:
    """The detections of all windows in image coordinates, each object once.

    `parts` pairs each window with the detector's output for it, in the window's own pixel
    coordinates; `width` x `height` is the image's size at scale 1.
    """
    period = width if is_panorama(width, height, spec) else None
    with_masks = any(found.masks is not None for _, found in parts)
    mapped: list[Detections] = []
    window_ids: list[np.ndarray] = []
    touching: list[np.ndarray] = []
    for k, (window, found) in enumerate(parts):
        if not len(found):
            continue
        touching.append(_touches_cut(found.boxes, window, width, height))
        inverse = 1.0 / window.scale
        mapped.append(found.shifted(window.x * inverse, window.y * inverse, inverse))
        window_ids.append(np.full(len(found), k))
    if not mapped:
        return Detections.empty(with_masks)
    dets, kept = _into_image(Detections.concat(mapped), width, height, period)
    window_id = np.concatenate(window_ids)[kept]
    touch = np.concatenate(touching)[kept]
    first, second = _same_object_pairs(dets, window_id, touch, spec.merge_iou, period)
    return _unite(dets, _components(len(dets), first, second), period)


def _fraction(scale: float) -> tuple[int, int]:
    """A scale as numerator and denominator, or ValueError for one that is not simple."""
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"a tiling scale must be a positive number, got {scale!r}")
    fraction = Fraction(scale).limit_denominator(MAX_SCALE_DENOMINATOR)
    if abs(float(fraction) - scale) > 1e-9 * scale:
        raise ValueError(
            f"tiling scale {scale} is not a simple fraction p/q with q <= "
            f"{MAX_SCALE_DENOMINATOR} (such as 0.5, 0.75, 1.5, 2): windows would not fall on "
            "whole pixels"
        )
    return fraction.numerator, fraction.denominator


def _check_window(window: Window, width: int, height: int) -> None:
    scaled_width, scaled_height = scaled_size(width, height, window.scale)
    fits = (
        0 <= window.x < scaled_width
        and 0 < window.width <= scaled_width
        and (window.wrap or window.x + window.width <= scaled_width)
        and window.y >= 0
        and window.height > 0
        and window.y + window.height <= scaled_height
    )
    if not fits:
        raise ValueError(
            f"{window} does not fit an image of {width}x{height} "
            f"({scaled_width}x{scaled_height} at scale {window.scale})"
        )


def _touches_cut(boxes: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    """Which boxes (window coordinates) come within BORDER_PX of an edge where the window cuts
    the image: one inside the image, or any left/right edge of a panorama's window."""
    scaled_width, scaled_height = scaled_size(width, height, window.scale)
    left = window.wrap or window.x > 0
    right = window.wrap or window.x + window.width < scaled_width
    top = window.y > 0
    bottom = window.y + window.height < scaled_height
    return (
        (left & (boxes[:, 0] <= BORDER_PX))
        | (right & (boxes[:, 2] >= window.width - BORDER_PX))
        | (top & (boxes[:, 1] <= BORDER_PX))
        | (bottom & (boxes[:, 3] >= window.height - BORDER_PX))
    )


def _into_image(
    dets: Detections, width: int, height: int, period: int | None
) -> tuple[Detections, np.ndarray]:
    """Detections brought into the image: panorama boxes moved by whole turns to 0 <= x0 < W,
    other boxes clipped to it; rows clipped always. Also the positions kept: a box lying wholly
    outside the image (a detector's stray regression) is dropped, there is nothing to blur."""
    boxes = dets.boxes.astype(np.float64)
    inside = (boxes[:, 1] < height) & (boxes[:, 3] > 0)
    turns = np.zeros(len(dets), np.int64)
    if period is not None:
        turns = np.floor((boxes[:, 0] + SNAP) / period).astype(np.int64)
        boxes[:, [0, 2]] -= (turns * period)[:, None]
    else:
        inside &= (boxes[:, 0] < width) & (boxes[:, 2] > 0)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    kept = np.flatnonzero(inside)
    boxes, turns = boxes[kept].astype(np.float32), turns[kept]
    keypoints = None
    if dets.keypoints is not None:
        keypoints = dets.keypoints[kept].copy()
        keypoints[..., 0] -= (turns * (period or 0))[:, None]
    masks = None
    if dets.masks is not None:
        # Where moving or clipping changed a mask's window, carry its pixels over.
        old = mask_windows(dets.boxes[kept])
        old[:, [0, 2]] -= (turns * (period or 0))[:, None]
        new = mask_windows(boxes)
        masks = [dets.masks[i] for i in kept]
        for i in np.flatnonzero(np.any(old != new, axis=1)):
            masks[i] = rewindow(masks[i], old[i], new[i])
    return Detections(boxes, dets.scores[kept], dets.labels[kept], masks, keypoints), kept


def _same_object_pairs(
    dets: Detections,
    window_id: np.ndarray,
    touch: np.ndarray,
    merge_iou: float,
    period: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j) of the detection pairs that are one object (module docstring); a pair
    may come twice, in either order.

    Per class, boxes sorted by x0 are taken a chunk at a time and compared with the boxes that
    start before the chunk's rightmost x1 (and, in a panorama, one turn further right): the
    only ones they can overlap. Memory and time stay near linear when boxes are spread out.
    """
    boxes = dets.boxes.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # A panorama box may meet another one turn to the left or right of it.
    shifts = (0.0,) if period is None else (-float(period), 0.0, float(period))
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for label in np.unique(dets.labels):
        idx = np.flatnonzero(dets.labels == label)
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(boxes[idx, 0], kind="stable")]
        b, area, win, cut_ = boxes[idx], areas[idx], window_id[idx], touch[idx]
        for start in range(0, len(idx), _PAIR_CHUNK):
            rows = np.arange(start, min(start + _PAIR_CHUNK, len(idx)))
            reach = b[rows, 2].max()
            cols = np.arange(start, np.searchsorted(b[:, 0], reach))
            if period is not None:
                # Boxes near x = 0 that meet this chunk's boxes running past the seam.
                wrapped = min(int(np.searchsorted(b[:, 0], reach - period)), start)
                cols = np.concatenate([np.arange(wrapped), cols])
            r, c = b[rows, None, :], b[None, cols, :]
            ih = np.minimum(r[..., 3], c[..., 3]) - np.maximum(r[..., 1], c[..., 1])
            iw = np.max(
                [
                    np.minimum(r[..., 2], c[..., 2] + d) - np.maximum(r[..., 0], c[..., 0] + d)
                    for d in shifts
                ],
                axis=0,
            )
            ih, iw = ih.clip(0), iw.clip(0)
            inter = ih * iw
            union = area[rows, None] + area[None, cols] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            overlap = (iw > SNAP) & (ih > SNAP)
            same = (iou >= merge_iou) | (overlap & (cut_[rows, None] | cut_[None, cols]))
            same &= win[rows, None] != win[None, cols]
            i, j = np.nonzero(same)
            firsts.append(idx[rows[i]])
            seconds.append(idx[cols[j]])
    return np.concatenate(firsts), np.concatenate(seconds)


def _components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The connected component of each of n items under the pairs, as the smallest member's
    position: union-find by repeated hooking of roots and pointer jumping, all in numpy."""
    root = np.arange(n)
    while True:
        a, b = root[first], root[second]
        if np.array_equal(a, b):
            return root
        low = np.minimum(a, b)
        np.minimum.at(root, a, low)
        np.minimum.at(root, b, low)
        while True:
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped


def _unite(dets: Detections, root: np.ndarray, period: int | None) -> Detections:
    """One detection per component: union box, best score, OR of masks, best keypoints."""
    roots, first = np.unique(root, return_index=True)
    order = np.argsort(first, kind="stable")
    out = dets.select(first[order])
    members_of = np.split(np.argsort(root, kind="stable"), np.cumsum(np.bincount(root)[roots])[:-1])
    boxes, scores = out.boxes.copy(), out.scores.copy()
    masks = None if out.masks is None else list(out.masks)
    keypoints = None if out.keypoints is None else out.keypoints.copy()
    for slot, group in enumerate(order):
        members = members_of[group]
        if len(members) == 1:
            continue
        best = members[np.argmax(dets.scores[members])]
        box, turns = _union_box(dets.boxes[members].astype(np.float64), dets.boxes[best], period)
        # Mask windows follow the float32 box the record will hold.
        box = box.astype(np.float32)
        shift = turns * (period or 0)
        mask = None
        if masks is not None:
            window = mask_window(box)
            mask = np.zeros((window[3] - window[1], window[2] - window[0]), dtype=bool)
            for member, turn in zip(members, shift, strict=True):
                own = mask_window(dets.boxes[member])
                own = (own[0] + turn, own[1], own[2] + turn, own[3])
                mask |= rewindow(dets.mask_or_box(member), own, window)
        box, mask, back = _normalise(box, mask, period)
        boxes[slot], scores[slot] = box, dets.scores[best]
        if masks is not None:
            masks[slot] = mask
        if keypoints is not None:
            keypoints[slot] = dets.keypoints[best]  # type: ignore[index]
            # The best member is the reference: it did not move before normalising.
            keypoints[slot, :, 0] -= back
    return Detections(boxes, scores, out.labels, masks, keypoints)


def _union_box(
    boxes: np.ndarray, reference: np.ndarray, period: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The union of boxes, panorama members first moved by the whole turns that bring their
    centres nearest the reference box's; also those turns per member."""
    turns = np.zeros(len(boxes), np.int64)
    if period is not None:
        centre = (boxes[:, 0] + boxes[:, 2]) / 2
        target = (float(reference[0]) + float(reference[2])) / 2
        turns = np.round((target - centre) / period).astype(np.int64)
        boxes = boxes.copy()
        boxes[:, [0, 2]] += (turns * period)[:, None]
    box = np.array([*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)])
    return box, turns


def _normalise(
    box: np.ndarray, mask: np.ndarray | None, period: int | None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """A united panorama box moved by whole turns to 0 <= x0 < W (and its mask with it), or
    folded onto [0, W] when it covers the full circle; also the distance it moved left."""
    if period is None:
        return box, mask, 0.0
    old = mask_window(box)
    if box[2] - box[0] >= period:
        folded = None
        if mask is not None:
            folded = np.zeros((mask.shape[0], period), dtype=bool)
            for start in range(0, mask.shape[1], period):
                piece = mask[:, start : start + period]
                columns = (old[0] + start + np.arange(piece.shape[1])) % period
                folded[:, columns] |= piece
        back = float(box[0])
        return np.array([0.0, box[1], period, box[3]], np.float32), folded, back
    turns = math.floor((float(box[0]) + SNAP) / period)
    moved = box.astype(np.float64)
    moved[[0, 2]] -= turns * period
    moved = moved.astype(np.float32)
    if mask is not None:
        new = mask_window(moved)
        shifted_old = (old[0] - turns * period, old[1], old[2] - turns * period, old[3])
        if new != shifted_old:
            mask = rewindow(mask, shifted_old, new)
    return moved, mask, float(turns * period)
