"""Instance masks without megapixel copies: COCO RLE decoded to box crops, and bit-packed planes.

A 1024x1024 tile with eight instances holds eight megapixel masks, and moving each through
every augmentation step was most of what the training loader spent. Two representations keep the
work proportional to the objects instead of to N x the image:

- `MaskCrop`: an instance's mask decoded only inside its tight box (`decode_crop` reads COCO RLE,
  compressed or not, and polygons without decoding the full frame);
- `PackedMasks`: all instances of an image in one `(H, W, C)` uint8 array, instance `i` in bit
  `i % 8` of channel `i // 8`. Every transform that only moves pixels (flips, crops, nearest
  resizes, rotations and warps with nearest mask interpolation, zero fill) moves all instances
  in one call and keeps the bits exact; `training.augment` refuses transforms that would mix them.
  `dense()` unpacks to the `(N, H, W)` 0/1 masks torchvision's Mask R-CNN takes, box by box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from data.coco.rle import as_rle

__all__ = ["MaskCrop", "PackedMasks", "decode_crop", "rle_counts"]


@dataclass(frozen=True)
class MaskCrop:
    """The 0/1 pixels of one mask inside its tight box: `pixels[r, c]` is frame pixel
    `(y0 + r, x0 + c)`."""

    x0: int
    y0: int
    pixels: np.ndarray  # (h, w) uint8, 0 or 1, at least one 1

    @property
    def box(self) -> tuple[int, int, int, int]:
        """xyxy pixel edges."""
        h, w = self.pixels.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h


def rle_counts(counts: str | bytes | Sequence[int]) -> np.ndarray:
    """Run lengths (int64) of a COCO RLE, from its compressed string or its uncompressed list.

    The compressed form stores each count in 5-bit groups (chars from 48, 0x20 = more groups
    follow, 0x10 in the last group = negative) and, from the third count on, as the difference
    to the count two before; both are undone here with array operations instead of a char loop.
    """
    if not isinstance(counts, str | bytes):
        return np.asarray(counts, dtype=np.int64)
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    if not raw:
        return np.zeros(0, np.int64)
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("truncated RLE string: its last count is unfinished")
    last = np.flatnonzero(~more)  # the last char of every count
    first = np.concatenate(([0], last[:-1] + 1))
    group = np.repeat(np.arange(len(last)), last - first + 1)
    shift = 5 * (np.arange(len(c)) - first[group])
    x = np.add.reduceat((c & 0x1F) << shift, first)
    negative = (c[last] & 0x10) != 0
    x[negative] |= -1 << (shift[last[negative]] + 5)
    # From the third count on, each was stored as the difference to the count two before.
    x[2::2] = np.cumsum(x[2::2])
    x[1::2] = np.cumsum(x[1::2])
    return x


def decode_crop(segmentation: Any, height: int, width: int) -> MaskCrop | None:
    """Decode a COCO segmentation (polygons, RLE, compressed RLE) to its tight-box crop.

    Returns None for a segmentation without any pixel. Only the columns the mask spans are
    expanded, so a face costs a few thousand pixels, not the frame.
    """
    if isinstance(segmentation, list):  # polygons: pycocotools rasterises, as evaluation does
        if not segmentation:
            return None
        rle = as_rle(segmentation, height, width)
    else:
        rle = segmentation
    size = rle.get("size")
    if size is not None and tuple(size) != (height, width):
        raise ValueError(f"RLE size {list(size)} differs from the image's {[height, width]}")
    counts = rle_counts(rle["counts"])
    if counts.sum() != height * width:
        raise ValueError(f"RLE covers {int(counts.sum())} pixels, the image {height * width}")
    ends = np.cumsum(counts)
    starts = ends - counts
    # Odd runs are ones (RLE starts with zeros); column-major flat indices.
    s, e = starts[1::2], ends[1::2]
    nonempty = e > s
    s, e = s[nonempty], e[nonempty]
    if not len(s):
        return None
    x0, x1 = int(s[0] // height), int((e[-1] - 1) // height) + 1
    first_col, last_col = s // height, (e - 1) // height
    if np.any(first_col != last_col):
        y0, y1 = 0, height  # a run wraps from the bottom of one column to the top of the next
    else:
        y0, y1 = int((s % height).min()), int(((e - 1) % height).max()) + 1
    # Expand the spanned columns only: zeros and ones alternating, from column x0 to x1.
    base, end = x0 * height, x1 * height
    lengths = np.empty(2 * len(s) + 1, np.int64)
    lengths[0] = s[0] - base
    lengths[1::2] = e - s
    lengths[2:-1:2] = s[1:] - e[:-1]
    lengths[-1] = end - e[-1]
    values = np.zeros(len(lengths), np.uint8)
    values[1::2] = 1
    columns = np.repeat(values, lengths).reshape(x1 - x0, height)
    return MaskCrop(x0, y0, cv2.transpose(np.ascontiguousarray(columns[:, y0:y1])))


def crop_of(mask: np.ndarray) -> MaskCrop | None:
    """The tight-box crop of a dense (H, W) mask; None when it is empty."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))
    if w == 0 or h == 0:
        return None
    return MaskCrop(x, y, (mask[y : y + h, x : x + w] != 0).astype(np.uint8))


class PackedMasks:
    """`count` instance masks of one (H, W) image as bits of an (H, W, C) uint8 array."""

    def __init__(self, bits: np.ndarray, count: int) -> None:
        if bits.dtype != np.uint8 or bits.ndim != 3 or bits.shape[2] != channels_for(count):
            raise ValueError(
                f"{count} instances need an (H, W, {channels_for(count)}) uint8 array, "
                f"got {bits.dtype} {bits.shape}"
            )
        self.bits = bits
        self.count = count

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape[0], self.bits.shape[1]

    @classmethod
    def from_crops(cls, crops: Sequence[MaskCrop | None], height: int, width: int) -> PackedMasks:
        """Pack crops (None: an instance without a mask); only their boxes are touched."""
        bits = np.zeros((height, width, channels_for(len(crops))), np.uint8)
        for i, crop in enumerate(crops):
            if crop is None:
                continue
            x0, y0, x1, y1 = crop.box
            region = bits[y0:y1, x0:x1, i // 8]
            region |= crop.pixels << np.uint8(i % 8)
        return cls(bits, len(crops))

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> PackedMasks:
        """Pack an (N, H, W) array of masks (any non-zero pixel is the instance's)."""
        _, height, width = masks.shape
        return cls.from_crops([crop_of(m) for m in masks], height, width)

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) float32 tight xyxy boxes and (N,) bool: whether the instance has any pixel.

        Two OR-reductions per channel find every instance's rows and columns at once.
        """
        boxes = np.zeros((self.count, 4), np.float32)
        present = np.zeros(self.count, bool)
        for c in range(self.bits.shape[2]):
            plane = np.ascontiguousarray(self.bits[..., c])
            rows = np.bitwise_or.reduce(plane, axis=1)
            cols = np.bitwise_or.reduce(plane, axis=0)
            for b in range(min(8, self.count - 8 * c)):
                i = 8 * c + b
                ys = np.flatnonzero(rows & (1 << b))
                if not len(ys):
                    continue
                xs = np.flatnonzero(cols & (1 << b))
                boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
                present[i] = True
        return boxes, present

    def dense(self, indices: Sequence[int], boxes: np.ndarray) -> np.ndarray:
        """(len(indices), H, W) uint8 0/1 masks of the chosen instances.

        `boxes` are their tight boxes from `boxes()` (all-zero for an empty instance): only the
        pixels inside a box are unpacked, the rest is the zero fill.
        """
        height, width = self.shape
        out = np.zeros((len(indices), height, width), np.uint8)
        for j, i in enumerate(indices):
            x0, y0, x1, y1 = (int(v) for v in boxes[j])
            if x1 <= x0 or y1 <= y0:
                continue
            region = self.bits[y0:y1, x0:x1, i // 8]
            np.bitwise_and(region >> np.uint8(i % 8), 1, out=out[j, y0:y1, x0:x1])
        return out


def channels_for(count: int) -> int:
    """Channels holding `count` instance bits (at least one, so an empty image has a plane)."""
    return max(1, -(-count // 8))
