"""Cut large images into overlapping training tiles and carry their COCO annotations along (pure).

`plan_tiles` lays out the tiles of one image, `crop` cuts an image (or a mask) to a tile,
`tile_annotations` turns the source image's COCO annotations into the tile's, and
`keep_empty_tiles` picks the tiles that go into training. `prepare` does the file I/O.

Conventions:
- Pixel (row r, column c) covers [c, c+1) x [r, r+1) in continuous coordinates, as in
  `data.synthetic` and `annotation.convert`; a tile covers the columns [x, x + width) and the
  rows [y, y + height), left- and top-closed, right- and bottom-open.
- Panoramas (2:1 equirectangular, `is_panorama`) wrap around the left-right seam: a tile with
  x + width > W takes the columns [x, W) and then [0, x + width - W), so an object drawn across
  the seam (pixels at both ends of the source) is one connected object in that tile. Only
  `plan_tiles(panorama=True)` makes such tiles; rows never wrap (the poles do not meet).
- Annotations are COCO instances whose `segmentation` is RLE (compressed, as `annotation.convert`
  writes it, or uncompressed) or polygons, at the source image's size. In a tile, the
  segmentation is the compressed RLE of the cropped mask (counts as str), `bbox` the cropped
  mask's extent and `area` its pixel count, so the three always agree.
- An annotation is kept when its visible fraction (its pixels in the tile / its pixels in the
  source) is at least `min_visible`, compared as an exact quotient so that 6 of 20 pixels is kept
  at min_visible=0.3; one with no pixel in the tile is never kept.
- Keypoints ([x, y, v] * k, continuous pixels) move into tile coordinates when the tile holds
  them: x in [tile.x, tile.x + width) after wrapping and y in [tile.y, tile.y + height), so a
  keypoint exactly on the edge between two tiles belongs to the right (lower) one only. A
  keypoint on the image's own right or bottom border (x == W or y == H) belongs to the tiles
  that reach that border, else no tile would hold it. Keypoints the tile does not hold become
  (0, 0, 0), as COCO writes missing ones, and `num_keypoints` counts the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from data.coco.rle import as_rle

# Rounding applied to ratio * count before taking the ceiling: 0.3 * 10 is 3.0000000000000004
# in floating point, and that must keep 3 tiles, not 4.
_COUNT_DECIMALS = 9


@dataclass(frozen=True)
class Tile:
    """A tile of a source image, in source pixels; in a panorama x + width may exceed the
    image's width: those columns wrap around to the left end."""

    x: int
    y: int
    width: int
    height: int


def is_panorama(width: int, height: int) -> bool:
    """Whether an image is a 2:1 equirectangular panorama: its height is within one pixel of
    half its width (odd widths and encoders that round either way)."""
    return width > 0 and height > 0 and abs(2 * height - width) <= 2


def plan_tiles(width: int, height: int, *, size: int, overlap: int, panorama: bool) -> list[Tile]:
    """The tiles of a `width` x `height` image, row by row, left to right.

    Along an axis no longer than `size` the tile spans the whole axis, so an image no larger
    than `size` is one tile. Along a longer axis tiles are `size` long, spread evenly from one
    end to the other with steps of at most `size - overlap`, so neighbours overlap by at least
    `overlap` pixels and every pixel is covered. A panorama's columns go on around the seam: the
    last column of tiles wraps, neighbours overlap by at least `overlap` across the seam too, and
    the seam always lies strictly inside a tile (never only on tile edges), even at overlap 0.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got {size=} {overlap=}")
    ys, tile_height = _spread(height, size, overlap)
    if panorama and width > size:
        xs, tile_width = _spread_around(width, size, overlap), size
    else:
        xs, tile_width = _spread(width, size, overlap)
    return [Tile(x, y, tile_width, tile_height) for y in ys for x in xs]


def _spread(length: int, size: int, overlap: int) -> tuple[list[int], int]:
    """Start positions and tile length along an axis that does not wrap."""
    if length <= size:
        return [0], length
    count = math.ceil((length - size) / (size - overlap)) + 1
    travel = length - size
    # Integer rounding of i * travel / (count - 1): every step is at most ceil(travel / (count
    # - 1)) <= size - overlap, and the last tile ends exactly at the far edge.
    last = count - 1
    return [(2 * i * travel + last) // (2 * last) for i in range(count)], size


def _spread_around(length: int, size: int, overlap: int) -> list[int]:
    """Start positions along a wrapping axis: `count` tiles evenly around the circle."""
    # A step of `size` (possible at overlap 0) would put a tile edge exactly on the seam.
    step = min(size - overlap, size - 1)
    count = math.ceil(length / step)
    return [(2 * i * length + count) // (2 * count) for i in range(count)]


def crop(image: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's pixels of an H x W or H x W x C array; a wrapping tile joins the right end of
    the image to its left end. A view when the tile does not wrap, else a new array."""
    height, width = image.shape[:2]
    _check_tile(tile, width, height)
    rows = image[tile.y : tile.y + tile.height]
    spans = _column_spans(tile, width)
    if len(spans) == 1:
        start, stop = spans[0]
        return rows[:, start:stop]
    return np.concatenate([rows[:, start:stop] for start, stop in spans], axis=1)


def tile_annotations(
    annotations: Sequence[dict[str, Any]],
    *,
    image_width: int,
    image_height: int,
    tile: Tile,
    min_visible: float,
) -> list[dict[str, Any]]:
    """The source image's COCO annotations as the tile sees them (see the module docstring).

    Each kept annotation is a new dict: the source's keys (category_id, iscrowd, image_id and
    any others) with `segmentation`, `bbox`, `area`, `keypoints` and `num_keypoints` redone for
    the tile, `source_id` set to the source annotation's id, and `id` numbered 1, 2, ... within
    the tile; `prepare` gives them their final ids and image ids when it writes the split.
    """
    if not 0 <= min_visible <= 1:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    _check_tile(tile, image_width, image_height)
    kept: list[dict[str, Any]] = []
    for source in annotations:
        rle = _source_rle(source, image_width, image_height)
        total = int(mask_util.area(rle))
        # Most objects lie far from most tiles: their box says so without decoding the mask.
        if total == 0 or not _box_meets_tile(mask_util.toBbox(rle), tile, image_width):
            continue
        mask = crop(mask_util.decode(rle), tile)
        visible = int(np.count_nonzero(mask))
        if visible == 0 or visible / total < min_visible:
            continue
        tile_rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
        ann = dict(source)
        ann.update(
            id=len(kept) + 1,
            source_id=source.get("id"),
            segmentation={
                "size": [int(s) for s in tile_rle["size"]],
                "counts": tile_rle["counts"].decode("ascii"),
            },
            bbox=[float(v) for v in mask_util.toBbox(tile_rle)],
            area=visible,
        )
        if "keypoints" in source:
            ann["keypoints"] = _tile_keypoints(source["keypoints"], tile, image_width, image_height)
            ann["num_keypoints"] = sum(v > 0 for v in ann["keypoints"][2::3])
        kept.append(ann)
    return kept


def keep_empty_tiles(
    tiles_with_counts: Sequence[tuple[Tile, int]], ratio: float, rng: np.random.Generator
) -> list[Tile]:
    """Every tile with objects, plus ceil(ratio * number of empty tiles) of the empty ones drawn
    by `rng` (so any ratio > 0 keeps at least one empty tile when there is one), in their input
    order. Empty tiles teach the model what is not a face or a plate (signs, posters)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio of empty tiles must be in [0, 1], got {ratio}")
    empty = [k for k, (_, count) in enumerate(tiles_with_counts) if count == 0]
    share = math.ceil(round(ratio * len(empty), _COUNT_DECIMALS))
    chosen = {empty[k] for k in rng.choice(len(empty), size=share, replace=False)}
    return [tile for k, (tile, count) in enumerate(tiles_with_counts) if count > 0 or k in chosen]


# ---------------------------------------------------------------------------------------------
# Geometry


def _check_tile(tile: Tile, width: int, height: int) -> None:
    if not (
        0 <= tile.x < width
        and tile.y >= 0
        and 0 < tile.width <= width
        and tile.height > 0
        and tile.y + tile.height <= height
    ):
        raise ValueError(f"{tile} does not fit an image of {width}x{height}")


def _column_spans(tile: Tile, width: int) -> list[tuple[int, int]]:
    """The source columns a tile takes, left to right in the tile: one span, or two when the
    tile wraps around the seam."""
    end = tile.x + tile.width
    if end <= width:
        return [(tile.x, end)]
    return [(tile.x, width), (0, end - width)]


def _box_meets_tile(box: np.ndarray, tile: Tile, width: int) -> bool:
    left, top, box_width, box_height = (float(v) for v in box)
    if top >= tile.y + tile.height or top + box_height <= tile.y:
        return False
    return any(
        left < stop and left + box_width > start for start, stop in _column_spans(tile, width)
    )


def _tile_keypoints(
    keypoints: Sequence[float], tile: Tile, width: int, height: int
) -> list[float | int]:
    out: list[float | int] = []
    for k in range(0, len(keypoints), 3):
        x, y, v = keypoints[k : k + 3]
        where = _in_tile(float(x), float(y), tile, width, height) if v > 0 else None
        out += [0, 0, 0] if where is None else [where[0], where[1], v]
    return out


def _in_tile(x: float, y: float, tile: Tile, width: int, height: int) -> tuple[float, float] | None:
    """A keypoint's tile coordinates, or None when the tile does not hold it."""
    bottom = tile.y + tile.height
    if not (tile.y <= y < bottom or y == bottom == height):
        return None
    offset = 0
    for start, stop in _column_spans(tile, width):
        if start <= x < stop or x == stop == width:
            return offset + x - start, y - tile.y
        offset += stop - start
    return None


# ---------------------------------------------------------------------------------------------
# Segmentation


def _source_rle(ann: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """The annotation's mask as compressed RLE at the source image's size."""
    segmentation = ann.get("segmentation")
    where = f"annotation {ann.get('id')!r}"
    if isinstance(segmentation, list):  # polygons
        if not segmentation:
            raise ValueError(f"{where} has an empty polygon list; it needs a mask to be tiled")
        return as_rle(segmentation, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(f"{where} has no RLE or polygon segmentation; it cannot be tiled")
    size = [int(s) for s in segmentation.get("size", ())]
    if size != [height, width]:
        raise ValueError(f"{where}: its mask is {size} (h, w), the image is {[height, width]}")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return as_rle(segmentation, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": size, "counts": counts}
