"""Shape rasterisation: the pixels a polygon, an ellipse or a rotated rectangle holds.

A pixel (row r, column c) covers [c, c+1) x [r, r+1) in continuous coordinates, and a shape
holds the pixels whose centres it contains; angles are degrees, clockwise in the image. The
synthetic source draws its ground truth with these functions and the Label Studio conversion
reads regions back with them, so that both agree on every pixel. A mask covers `width` x
`height` pixels whose top-left one sits at `origin` (x, y) of the image (a canvas placed in a
larger frame); `slack` (ellipses, convex shapes) widens the edges a little, for coordinates
that went through rounding (percent round trips) and must not lose a pixel centre on an edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

# cv2.fillPoly's fixed point: vertices at 1/256 pixel.
SUBPIXEL_BITS = 8


def fill_polygon(
    canvas: np.ndarray,
    points: np.ndarray,
    value: int,
    *,
    origin: Sequence[float] | np.ndarray = (0.0, 0.0),
    subpixel_bits: int = SUBPIXEL_BITS,
) -> None:
    """Set `value` in the canvas's pixels of a polygon given as (N, 2) continuous pixel
    coordinates, outline included (cv2.fillPoly, 8-connected)."""
    # cv2 puts pixel centres at integers; fixed point keeps sub-pixel vertices.
    shifted = np.asarray(points, np.float64) - origin - 0.5
    fixed = np.round(shifted * (1 << subpixel_bits)).astype(np.int32)
    cv2.fillPoly(
        canvas, [fixed.reshape(-1, 1, 2)], int(value), lineType=cv2.LINE_8, shift=subpixel_bits
    )


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels of a polygon given as (N, 2) continuous pixel coordinates, outline included."""
    mask = np.zeros((height, width), np.uint8)
    fill_polygon(mask, points, 1)
    return mask.view(bool)


def ellipse_mask(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    rotation: float,
    width: int,
    height: int,
    *,
    origin: Sequence[float] | np.ndarray = (0.0, 0.0),
    slack: float = 0.0,
) -> np.ndarray:
    """Pixels whose centres lie in the ellipse (centre, radii in pixels; `rotation` degrees
    clockwise); an ellipse without area holds none."""
    mask = np.zeros((height, width), bool)
    if rx <= 0 or ry <= 0:
        return mask
    ex, ey = ellipse_reach(rx, ry, rotation)
    c0 = max(0, math.floor(cx - ex - origin[0]))
    c1 = min(width, math.ceil(cx + ex - origin[0]) + 1)
    r0 = max(0, math.floor(cy - ey - origin[1]))
    r1 = min(height, math.ceil(cy + ey - origin[1]) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    x = (origin[0] + np.arange(c0, c1) + 0.5 - cx)[None, :]
    y = (origin[1] + np.arange(r0, r1) + 0.5 - cy)[:, None]
    u, v = (x * c + y * s) / rx, (-x * s + y * c) / ry
    mask[r0:r1, c0:c1] = u * u + v * v <= 1.0 + slack
    return mask


def ellipse_reach(rx: float, ry: float, rotation: float) -> tuple[float, float]:
    """How far a turned ellipse reaches from its centre: half its bounding box's width and
    height (radii in pixels, `rotation` degrees clockwise)."""
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    return math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)


def rectangle_corners(x: float, y: float, w: float, h: float, rotation: float) -> np.ndarray:
    """Corners (top-left, top-right, bottom-right, bottom-left) of a Label Studio rectangle:
    top-left (x, y), turned `rotation` degrees clockwise about that corner (pixels)."""
    th = math.radians(rotation)
    along, down = np.array([math.cos(th), math.sin(th)]), np.array([-math.sin(th), math.cos(th)])
    tl = np.array([x, y])
    return np.array([tl, tl + w * along, tl + w * along + h * down, tl + h * down])


def centred_rectangle_corners(rect: tuple[float, float, float, float, float]) -> np.ndarray:
    """Corners (top-left, top-right, bottom-right, bottom-left) of a rectangle given as centre,
    size and rotation: (cx, cy, w, h, degrees clockwise about the centre)."""
    cx, cy, w, h, deg = rect
    th = math.radians(deg)
    ex = np.array([math.cos(th), math.sin(th)]) * w / 2
    ey = np.array([-math.sin(th), math.cos(th)]) * h / 2
    c = np.array([cx, cy])
    return np.array([c - ex - ey, c + ex - ey, c + ex + ey, c - ex + ey])


def rectangle_mask(
    x: float,
    y: float,
    w: float,
    h: float,
    rotation: float,
    width: int,
    height: int,
    *,
    origin: Sequence[float] | np.ndarray = (0.0, 0.0),
    slack: float = 0.0,
) -> np.ndarray:
    """Pixels whose centres lie in the rotated rectangle (see `rectangle_corners`)."""
    corners = rectangle_corners(x, y, w, h, rotation)
    return convex_mask(corners, width, height, origin=origin, slack=slack)


def convex_mask(
    corners: np.ndarray,
    width: int,
    height: int,
    *,
    origin: Sequence[float] | np.ndarray = (0.0, 0.0),
    slack: float = 0.0,
) -> np.ndarray:
    """Pixels whose centres lie in a convex polygon whose (N, 2) corners run clockwise in the
    image (y down), as `rectangle_corners` gives them: inside is right of every edge."""
    mask = np.zeros((height, width), bool)
    lo = np.floor(corners.min(axis=0) - origin).astype(int)
    hi = np.ceil(corners.max(axis=0) - origin).astype(int) + 1
    c0, r0 = max(0, lo[0]), max(0, lo[1])
    c1, r1 = min(width, hi[0]), min(height, hi[1])
    if c0 >= c1 or r0 >= r1:
        return mask
    x = (origin[0] + np.arange(c0, c1) + 0.5)[None, :]
    y = (origin[1] + np.arange(r0, r1) + 0.5)[:, None]
    inside = np.ones((r1 - r0, c1 - c0), bool)
    for (ax, ay), (bx, by) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        # The cross product is the edge's length times the centre's distance inside it.
        reach = -slack * math.hypot(bx - ax, by - ay) if slack else 0
        inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= reach
    mask[r0:r1, c0:c1] = inside
    return mask
