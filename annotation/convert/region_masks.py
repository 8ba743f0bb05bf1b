"""Region values -> masks of the image's size: polygons, ellipses, rotated rectangles and
brushes in Label Studio's percent coordinates, with the checks that leave a region out."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from annotation.convert.brush_rle import decode_brush_rle
from annotation.convert.records import ImageRef, RegionError
from data.shapes import ellipse_mask, ellipse_reach, polygon_mask, rectangle_corners, rectangle_mask

# Pixel coordinates beyond this are no drawing, and would overflow cv2's fixed-point input.
_MAX_COORD = 1e6
_EPS = 1e-6  # pixels: percent round trips must not move a pixel centre off a shape's edge


def ellipse_region_mask(
    cx: float, cy: float, rx: float, ry: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """The pixels an ellipse region holds (pixels; `rotation` degrees clockwise): the centre
    rule of `data.shapes`, with the slack percent round trips need."""
    return ellipse_mask(cx, cy, rx, ry, rotation, width, height, slack=_EPS)


def rectangle_region_mask(
    x: float, y: float, w: float, h: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """The pixels a rectangle region holds (top-left corner, size, `rotation` degrees clockwise
    about that corner; pixels): the centre rule of `data.shapes`, with the same slack."""
    return rectangle_mask(x, y, w, h, rotation, width, height, slack=_EPS)


def read_numbers(value: dict[str, Any], *keys: str) -> list[float]:
    out = []
    for key in keys:
        number = value.get(key)
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise RegionError("malformed_region", f"'{key}' is {number!r}, not a number; left out")
        out.append(float(number))
    return out


def polygon_points(item: dict[str, Any], ref: ImageRef) -> np.ndarray:
    """A polygon region's vertices in pixels, (N, 2)."""
    try:
        pct = np.asarray(item["value"].get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        pct = np.zeros((0, 0))
    if pct.ndim != 2 or pct.shape[1] != 2:
        raise RegionError("malformed_region", "points are not [x, y] pairs; left out")
    return pct * [ref.width / 100, ref.height / 100]


def polygon_region(px: np.ndarray, label: str, width: int, height: int) -> np.ndarray:
    if not np.isfinite(px).all():
        raise RegionError("degenerate", f"'{label}' polygon has non-finite points; left out")
    if len(px) < 3 or len(np.unique(px, axis=0)) < 2:
        raise RegionError(
            "degenerate",
            f"'{label}' polygon has {len(np.unique(px, axis=0))} distinct of {len(px)} points, "
            "needs 3 points and 2 distinct; left out",
        )
    _inside_or_raise(label, "polygon", px.min(axis=0), px.max(axis=0), width, height)
    mask = polygon_mask(px, width, height)
    return _at_least_centre(mask, px.min(axis=0), px.max(axis=0))


def ellipse_region(value: dict[str, Any], label: str, width: int, height: int) -> np.ndarray:
    x, y, rx, ry = read_numbers(value, "x", "y", "radiusX", "radiusY")
    (rotation,) = read_numbers({"rotation": value.get("rotation", 0.0)}, "rotation")
    cx, cy, a, b = x * width / 100, y * height / 100, rx * width / 100, ry * height / 100
    if not all(map(math.isfinite, (cx, cy, a, b, rotation))) or a <= 0 or b <= 0:
        raise RegionError(
            "degenerate",
            f"'{label}' ellipse at ({cx}, {cy}) px with radii {a}, {b} px covers nothing; left out",
        )
    ex, ey = ellipse_reach(a, b, rotation)
    lo, hi = np.array([cx - ex, cy - ey]), np.array([cx + ex, cy + ey])
    _inside_or_raise(label, "ellipse", lo, hi, width, height)
    return _at_least_centre(ellipse_region_mask(cx, cy, a, b, rotation, width, height), lo, hi)


def rectangle_region(value: dict[str, Any], label: str, width: int, height: int) -> np.ndarray:
    x, y, w, h = read_numbers(value, "x", "y", "width", "height")
    (rotation,) = read_numbers({"rotation": value.get("rotation", 0.0)}, "rotation")
    x, y, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    if not all(map(math.isfinite, (x, y, w, h, rotation))) or w <= 0 or h <= 0:
        raise RegionError(
            "degenerate", f"'{label}' rectangle of {w} x {h} px covers nothing; left out"
        )
    corners = rectangle_corners(x, y, w, h, rotation)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    _inside_or_raise(label, "rectangle", lo, hi, width, height)
    mask = rectangle_region_mask(x, y, w, h, rotation, width, height)
    return _at_least_centre(mask, lo, hi)


def brush_region(
    item: dict[str, Any], value: dict[str, Any], width: int, height: int
) -> np.ndarray:
    # Exports put the RLE in the value; some older ones beside it.
    rle = value.get("rle", item.get("rle"))
    if value.get("format", "rle") != "rle" or not isinstance(rle, list):
        raise RegionError("malformed_region", "brush value has no 'rle' list; left out")
    src_w = item.get("original_width") or width
    src_h = item.get("original_height") or height
    try:
        mask = decode_brush_rle(rle, int(src_w), int(src_h))
    except ValueError as e:
        raise RegionError("malformed_region", f"brush RLE: {e}; left out") from None
    if (src_w, src_h) != (width, height):
        resized = cv2.resize(
            mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT
        )
        mask = resized.astype(bool)
    return mask


def _inside_or_raise(
    label: str, shape: str, lo: np.ndarray, hi: np.ndarray, width: int, height: int
) -> None:
    if max(abs(lo).max(), abs(hi).max()) > _MAX_COORD:
        raise RegionError(
            "malformed_region", f"'{label}' {shape} reaches beyond {_MAX_COORD:.0e} px; left out"
        )
    if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= width or lo[1] >= height:
        raise RegionError(
            "outside_image",
            f"'{label}' {shape} spanning ({lo[0]:.1f}, {lo[1]:.1f})-({hi[0]:.1f}, {hi[1]:.1f}) "
            f"px lies outside the {width}x{height} image; left out",
        )


def _at_least_centre(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A shape that overlaps the image but holds no pixel centre keeps the pixel under its
    (clipped) centre: a tiny face is still a face to hide."""
    if not mask.any():
        height, width = mask.shape
        cx, cy = (lo + hi) / 2
        mask[min(max(int(cy), 0), height - 1), min(max(int(cx), 0), width - 1)] = True
    return mask


def polygon_self_intersects(points: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon cross properly (touching and
    collinear overlaps, as traced 1-pixel spurs have, do not count)."""
    p = np.asarray(points, np.float64)
    n = len(p)
    if n < 4:
        return False
    a, d = p, np.roll(p, -1, axis=0) - p  # edge k runs from a[k] along d[k]
    tol = _EPS * max(1.0, float(np.abs(d).max()))

    def side(origin: np.ndarray, direction: np.ndarray, q: np.ndarray) -> np.ndarray:
        cross = direction[..., 0] * (q[..., 1] - origin[..., 1]) - direction[..., 1] * (
            q[..., 0] - origin[..., 0]
        )
        return np.where(np.abs(cross) <= tol, 0.0, np.sign(cross))

    b = a + d
    step = max(1, 1_000_000 // n)  # pairs per block: bounded memory for long outlines
    for start in range(0, n, step):
        i = np.arange(start, min(n, start + step))[:, None]
        j = np.arange(n)[None, :]
        ai, di, bi = a[i], d[i], b[i]
        s1 = side(ai, di, a[j]) * side(ai, di, b[j])
        s2 = side(a[j], d[j], ai) * side(a[j], d[j], bi)
        if ((s1 < 0) & (s2 < 0)).any():
            return True
    return False
