"""Box-crop RLE decoding and bit-packed instance masks agree with pycocotools and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from training.augment import build_augmenter
from training.masks import PackedMasks, decode_crop, rle_counts

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    kind = rng.integers(0, 3)
    if kind == 0:  # scattered pixels: many short runs, counts that go up and down
        mask = (rng.random((height, width)) < 0.3).astype(np.uint8)
    elif kind == 1:  # rectangles, some touching the borders
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, height), rng.integers(0, width)
            mask[y : y + rng.integers(1, height + 1), x : x + rng.integers(1, width + 1)] = 1
    return mask  # kind 2: empty


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, starting with zeros, computed here with numpy."""
    flat = mask.T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], edges, [len(flat)]))
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _paste(crop, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), np.uint8)
    if crop is not None:
        x0, y0, x1, y1 = crop.box
        full[y0:y1, x0:x1] = crop.pixels
    return full


def test_rle_counts_reads_pycocotools_compressed_strings() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        mask = _random_mask(rng, height, width)
        compressed = mask_utils.encode(np.asfortranarray(mask))["counts"]
        expected = _runs(mask)
        assert rle_counts(compressed).tolist() == expected
        assert rle_counts(compressed.decode("ascii")).tolist() == expected


def test_rle_counts_refuses_a_truncated_string() -> None:
    with pytest.raises(ValueError, match="truncated"):
        rle_counts("0" * 3 + "h")  # 'h' (0x38 = 56 - 48 = 8 | 0x20 set) promises more


@pytest.mark.parametrize("form", ["bytes", "str", "list"])
def test_decode_crop_equals_the_full_decode(form: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = _random_mask(rng, height, width)
        rle = mask_utils.encode(np.asfortranarray(mask))
        if form == "str":
            rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        elif form == "list":
            rle = {"size": rle["size"], "counts": _runs(mask)}
        crop = decode_crop(rle, height, width)
        np.testing.assert_array_equal(_paste(crop, height, width), mask)
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert crop.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        else:
            assert crop is None


def test_decode_crop_of_polygons_matches_pycocotools() -> None:
    polygons = [[5, 5, 30, 8, 25, 40, 4, 30], [40, 40, 50, 40, 50, 45]]
    crop = decode_crop(polygons, 60, 70)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 60, 70)))
    np.testing.assert_array_equal(_paste(crop, 60, 70), expected)
    assert decode_crop([], 60, 70) is None


def test_decode_crop_refuses_an_rle_of_another_size() -> None:
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 12), np.uint8)))
    with pytest.raises(ValueError, match=r"size \[10, 12\] differs from the image's \[10, 13\]"):
        decode_crop(rle, 10, 13)
    with pytest.raises(ValueError, match="covers 120 pixels, the image 130"):
        decode_crop({"counts": rle["counts"]}, 10, 13)


def test_packed_masks_round_trip_forty_instances() -> None:
    rng = np.random.default_rng(2)
    masks = np.stack([_random_mask(rng, 37, 53) for _ in range(40)])
    packed = PackedMasks.from_dense(masks)
    assert packed.bits.shape == (37, 53, 5)
    boxes, present = packed.boxes()
    np.testing.assert_array_equal(present, masks.any(axis=(1, 2)))
    for box, mask in zip(boxes[present], masks[present], strict=True):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_array_equal(packed.dense(range(40), boxes), masks)
    np.testing.assert_array_equal(packed.dense([7, 3], boxes[[7, 3]]), masks[[7, 3]])


@pytest.mark.parametrize(
    "transform",
    [
        {"name": "Rotate", "limit": [-30, 30], "p": 1.0},
        {"name": "Affine", "scale": [0.7, 1.3], "shear": [-10, 10], "p": 1.0},
        {"name": "RandomResizedCrop", "size": [41, 57], "scale": [0.4, 1.0], "p": 1.0},
        {"name": "Perspective", "scale": [0.05, 0.1], "p": 1.0},
        {"name": "ElasticTransform", "p": 1.0},
    ],
    ids=lambda t: t["name"],
)
def test_many_instances_move_as_each_would_alone(transform: dict) -> None:
    """Forty instances share five channels of bits; each must land where it would if it were
    the only instance (one channel, one bit), for warps that resample every pixel."""
    rng = np.random.default_rng(3)
    height, width = 48, 64
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    masks = np.zeros((40, height, width), np.uint8)
    for i in range(40):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        masks[i, y : y + rng.integers(3, 12), x : x + rng.integers(3, 12)] = 1
    boxes = np.array([_box(m) for m in masks], np.float32)

    def target(index: slice) -> dict[str, np.ndarray]:
        n = len(masks[index])
        return {
            "boxes": boxes[index],
            "labels": np.ones(n, np.int64),
            "masks": masks[index],
            "keypoints": np.zeros((n, len(NAMES), 3), np.float32),
            "instance_ids": np.arange(40)[index],
        }

    augmenter = build_augmenter([transform], keypoint_names=NAMES, seed=5)
    _, together = augmenter(image, target(slice(None)))
    assert len(together["instance_ids"]) > 20  # most instances survive, so this tests something
    for i in range(40):
        augmenter.set_seed(5)  # the same draw as for the whole set
        _, alone = augmenter(image, target(slice(i, i + 1)))
        where = np.flatnonzero(together["instance_ids"] == i)
        assert len(where) == len(alone["instance_ids"])
        if len(where):
            np.testing.assert_array_equal(together["masks"][where[0]], alone["masks"][0])
            np.testing.assert_array_equal(together["boxes"][where[0]], alone["boxes"][0])


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
