"""Composing a frame: layers painted far to near over the street, and the ground truth of
what each shows."""

from __future__ import annotations

import cv2
import numpy as np

from data.synthetic.figures import FACE_PARTS, LIGHTS, PLATE
from data.synthetic.images import KEYPOINTS, SyntheticObject
from data.synthetic.layers import Layer
from data.synthetic.patches import Patch

# Objects smaller than this (largest 8-connected visible piece, in pixels) are not annotated:
# an annotator cannot see them, and Label Studio cannot draw them.
MIN_PIECE = 4


def composite(
    background: np.ndarray, layers: list[Layer]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint layers in order (far to near) over the background, in place. Return the image,
    who owns each pixel (the number of the layer drawn there last, from 1; 0 for the street),
    and which pixels glow at night (vehicle lights)."""
    image = background
    height, width = image.shape[:2]
    owner = np.zeros((height, width), np.int32)
    glow = np.zeros((height, width), bool)
    for number, layer in enumerate(layers, start=1):
        rows = layer.rows()
        for frame_cols, canvas_cols in layer.runs(width):
            parts = layer.parts[:, canvas_cols]
            drawn = parts > 0
            # Basic slices are views: assigning through them paints the frame.
            image[rows, frame_cols][drawn] = layer.colours[:, canvas_cols][drawn]
            owner[rows, frame_cols][drawn] = number
            glow[rows, frame_cols][drawn] = np.isin(parts[drawn], LIGHTS)
    return image, owner, glow


def pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a mask, within its bounding box: (labels, areas, offset x, y).

    Labels number the components 1..n; `areas[k - 1]` is the size of component k.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), np.int32), np.zeros(0, int), np.zeros(2, int)
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA], np.array([cols[0], rows[0]])


def substantial(mask: np.ndarray) -> bool:
    """Whether the mask has a connected piece of at least MIN_PIECE pixels."""
    if np.count_nonzero(mask) < MIN_PIECE:
        return False
    # A full 2 x 2 block is a piece of 4 (= MIN_PIECE): far cheaper than labelling components.
    if (mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]).any():
        return True
    _, areas, _ = pieces(mask)
    return int(areas.max()) >= MIN_PIECE


def layer_objects(layers: list[Layer], owner: np.ndarray, panorama: bool) -> list[SyntheticObject]:
    """The ground truth of composited layers: what each shows, and its face or plate."""
    height, width = owner.shape
    objects: list[SyntheticObject] = []
    for number, layer in enumerate(layers, start=1):
        shown = layer.under(owner) == number
        if not substantial(shown):
            continue
        parent = SyntheticObject(
            label=layer.label,
            mask=Patch(layer.top, layer.left, shown, width, height).full(),
            instance_id=len(objects) + 1,
            keypoints=_keypoints(layer, owner, number, panorama),
            depth=layer.depth,
            amodal=Patch(layer.top, layer.left, layer.parts > 0, width, height),
        )
        objects.append(parent)
        if layer.ellipse is not None:
            label, part = "face", np.isin(layer.parts, FACE_PARTS)
        elif layer.rect is not None:
            label, part = "license_plate", layer.parts == PLATE
        else:
            continue
        if not substantial(part & shown):
            continue
        objects.append(
            SyntheticObject(
                label=label,
                mask=Patch(layer.top, layer.left, part & shown, width, height).full(),
                instance_id=len(objects) + 1,
                text=layer.text if label == "license_plate" else None,
                parent_id=parent.instance_id,
                depth=layer.depth,
                ellipse=layer.ellipse if label == "face" else None,
                rect=layer.rect if label == "license_plate" else None,
                amodal=Patch(layer.top, layer.left, part, width, height),
            )
        )
    return objects


def _keypoints(
    layer: Layer, owner: np.ndarray, number: int, panorama: bool
) -> dict[str, tuple[float, float, int]]:
    height, width = owner.shape
    out: dict[str, tuple[float, float, int]] = {}
    for name in KEYPOINTS if layer.keypoints else ():
        x, y, seen = layer.keypoints[name]
        if panorama:
            x %= width
        if not (0 <= x < width and 0 <= y < height):
            out[name] = (0.0, 0.0, 0)
            continue
        covered = owner[int(y), int(x)] not in (0, number)  # a nearer object was drawn there
        out[name] = (float(x), float(y), 2 if seen and not covered else 1)
    return out
