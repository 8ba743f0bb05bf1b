"""Masks kept as their bounding rows and columns (columns wrap in panoramas), and images or
masks moved by whole pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, eq=False)
class Patch:
    """A mask kept as its bounding rows and columns only; columns wrap in panoramas."""

    top: int
    left: int  # may lie outside [0, width) in panoramas
    crop: np.ndarray
    width: int
    height: int

    def full(self) -> np.ndarray:
        out = np.zeros((self.height, self.width), bool)
        rows = slice(self.top, self.top + self.crop.shape[0])
        for frame_cols, crop_cols in column_runs(self.left, self.crop.shape[1], self.width):
            out[rows, frame_cols] = self.crop[:, crop_cols]
        return out

    def shifted(self, dx: int, dy: int, wrap: bool) -> Patch:
        if wrap:
            return Patch(self.top, self.left + dx, self.crop, self.width, self.height)
        full = shift_pixels(self.full(), dx, dy, wrap=False)
        return Patch(0, 0, full, self.width, self.height)


def column_runs(left: int, count: int, width: int) -> list[tuple[slice, slice]]:
    """(frame columns, canvas columns) of a canvas `count` columns wide placed at `left`, its
    columns wrapped at `width`: one run, or two when it crosses a panorama's seam."""
    start = left % width
    first = min(count, width - start)
    runs = [(slice(start, start + first), slice(0, first))]
    if first < count:
        runs.append((slice(0, count - first), slice(first, count)))
    return runs


def shift_pixels(array: np.ndarray, dx: int, dy: int, wrap: bool) -> np.ndarray:
    """`array` (an image or a mask) moved by (dx, dy) pixels: columns wrap in panoramas; in
    frames the uncovered edge repeats the old edge, for images and masks alike."""
    if wrap:
        return np.roll(array, dx, axis=1)
    move = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (array.shape[1], array.shape[0])
    source = array.view(np.uint8) if array.dtype == bool else array
    out = cv2.warpAffine(
        source, move, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
    )
    return out.view(bool) if array.dtype == bool else out
