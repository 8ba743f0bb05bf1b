"""A drawn object as a layer: its canvas of part codes and colours placed in the frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from data.shapes import fill_polygon
from data.synthetic.camera import Camera
from data.synthetic.patches import column_runs


@dataclass(eq=False)
class Layer:
    """One drawn object: its canvas (part codes and colours) placed at (left, top)."""

    label: str  # person | vehicle
    depth: float
    left: int  # may lie outside [0, width) in panoramas: columns wrap
    top: int
    parts: np.ndarray  # uint8 (h, w)
    colours: np.ndarray  # float32 (h, w, 3)
    keypoints: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    ellipse: tuple[float, float, float, float, float] | None = None
    rect: tuple[float, float, float, float, float] | None = None
    text: str | None = None

    def rows(self) -> slice:
        return slice(self.top, self.top + self.parts.shape[0])

    def runs(self, width: int) -> list[tuple[slice, slice]]:
        return column_runs(self.left, self.parts.shape[1], width)

    def under(self, frame: np.ndarray) -> np.ndarray:
        """The part of a frame-sized array under this canvas (a copy)."""
        return np.concatenate([frame[self.rows(), f] for f, _ in self.runs(frame.shape[1])], 1)


# Figures are drawn at 1/16 pixel (4 bits of fixed point): the images the source has always made.
_FIGURE_SUBPIXEL_BITS = 4


def fill_part(parts: np.ndarray, origin: np.ndarray, points: np.ndarray, code: int) -> None:
    """Set part `code` in a canvas placed at `origin` over the polygon `points` (frame pixels)."""
    fill_polygon(parts, points, code, origin=origin, subpixel_bits=_FIGURE_SUBPIXEL_BITS)


def canvas_box(camera: Camera, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
    """Integer box (left, top, right, bottom) around lo..hi, clipped to the frame (rows only in
    panoramas, whose columns wrap)."""
    left, right = math.floor(lo[0]) - 1, math.ceil(hi[0]) + 1
    top, bottom = max(0, math.floor(lo[1]) - 1), min(camera.height, math.ceil(hi[1]) + 1)
    if camera.panorama:
        right = min(right, left + camera.width)
    else:
        left, right = max(0, left), min(camera.width, right)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def paint_parts(parts: np.ndarray, palette: dict[int, tuple[float, float, float]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    for code, colour in palette.items():
        lut[code] = colour
    return lut[parts]
