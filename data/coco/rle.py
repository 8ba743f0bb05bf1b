"""COCO masks as run-length encodings: any segmentation (polygons, uncompressed or compressed
RLE) to one RLE, and the alphabet of compressed RLE strings."""

from __future__ import annotations

import re
from typing import Any

from pycocotools import mask as mask_utils

RLE_CHARS = re.compile(r"[0-o]+")  # pycocotools' compressed RLE alphabet, chr(48)..chr(111)


def as_rle(seg: Any, height: int, width: int) -> dict:
    """One RLE from any COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg
