"""Tiling for `prepare`: tile layout and coverage (panorama seam included), wrapping crops, COCO
annotations clipped to tiles (masks, boxes, keypoints, min_visible) and the empty-tile share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_util

from data.tiling import (
    Tile,
    crop,
    is_panorama,
    keep_empty_tiles,
    plan_tiles,
    tile_annotations,
)

# pycocotools' own decode warns under numpy 2; nothing to do with the code under test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def annotation(mask: np.ndarray, ann_id: int = 7, **extra: Any) -> dict[str, Any]:
    """A COCO annotation of a source image, as annotation.convert writes one."""
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {
        "id": ann_id,
        "image_id": 3,
        "category_id": 2,
        "iscrowd": 0,
        "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        **extra,
    }


def decoded(ann: dict[str, Any]) -> np.ndarray:
    return mask_util.decode(ann["segmentation"]).astype(bool)


def extent(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [
        float(cols.min()),
        float(rows.min()),
        float(cols.max() - cols.min() + 1),
        float(rows.max() - rows.min() + 1),
    ]


def person(x: float, y: float, v: int = 2) -> dict[str, Any]:
    """A person with a 2x3 mask around (x, y) and the nose there; the other keypoints missing."""
    mask = np.zeros((20, 40), bool)
    col, row = min(int(x), 38), min(int(y), 18)
    mask[row : row + 2, max(col - 1, 0) : col + 2] = True
    return annotation(mask, keypoints=[x, y, v] + [0, 0, 0] * 4, num_keypoints=int(v > 0))


# ---------------------------------------------------------------------------------------------
# is_panorama and plan_tiles


def test_is_panorama_is_two_to_one_within_a_pixel() -> None:
    assert is_panorama(8192, 4096)
    assert is_panorama(8191, 4096) and is_panorama(8193, 4096)
    assert is_panorama(8194, 4096)  # height 4096 is a pixel short of 8194 / 2
    assert not is_panorama(8196, 4096)
    assert not is_panorama(8192, 4000)
    assert not is_panorama(1920, 1080)
    assert not is_panorama(0, 0)


@pytest.mark.parametrize("panorama", [False, True])
def test_an_image_no_larger_than_size_is_one_tile(panorama: bool) -> None:
    assert plan_tiles(30, 15, size=64, overlap=8, panorama=panorama) == [Tile(0, 0, 30, 15)]
    assert plan_tiles(64, 32, size=64, overlap=8, panorama=panorama) == [Tile(0, 0, 64, 32)]


def test_a_long_axis_is_tiled_and_a_short_one_spanned() -> None:
    tiles = plan_tiles(100, 30, size=40, overlap=10, panorama=False)
    assert all(t.height == 30 and t.y == 0 and t.width == 40 for t in tiles)
    assert tiles[0].x == 0 and tiles[-1].x + tiles[-1].width == 100


CASES = [
    # width, height, size, overlap
    (100, 30, 40, 10),
    (101, 77, 32, 0),
    (640, 480, 256, 64),
    (257, 256, 256, 255),
    (1000, 500, 300, 50),
    (96, 48, 32, 0),  # panorama whose width is a multiple of size at overlap 0
    (130, 65, 64, 16),
]


@pytest.mark.parametrize(("width", "height", "size", "overlap"), CASES)
@pytest.mark.parametrize("panorama", [False, True])
def test_tiles_cover_every_pixel_with_the_overlap(
    width: int, height: int, size: int, overlap: int, panorama: bool
) -> None:
    tiles = plan_tiles(width, height, size=size, overlap=overlap, panorama=panorama)
    assert len(set(tiles)) == len(tiles)
    assert all(t.width <= size and t.height <= size for t in tiles)
    covered = np.zeros((height, width), int)
    for t in tiles:
        assert 0 <= t.x < width and t.y >= 0 and t.y + t.height <= height
        if not panorama:
            assert t.x + t.width <= width
        cols = np.arange(t.x, t.x + t.width) % width
        covered[t.y : t.y + t.height, cols] += 1
    assert covered.min() >= 1

    # What overlap buys a user: any object no wider or taller than `overlap` lies whole in some
    # tile, wherever it is (around a panorama's seam too).
    if overlap == 0:
        return
    col_sets = {(t.x, t.width): set(np.arange(t.x, t.x + t.width) % width) for t in tiles}
    starts = range(width) if panorama else range(width - overlap + 1)
    for c in starts:
        window = set(np.arange(c, c + overlap) % width)
        assert any(window <= cols for cols in col_sets.values()), f"columns {c}+{overlap}"
    row_spans = {(t.y, t.y + t.height) for t in tiles}
    for r in range(height - overlap + 1):
        assert any(top <= r and r + overlap <= bottom for top, bottom in row_spans)


@pytest.mark.parametrize("overlap", [0, 8])
def test_a_panorama_seam_lies_inside_a_tile(overlap: int) -> None:
    # 96 = 3 * 32: at overlap 0 a naive grid would put tile edges exactly on the seam.
    tiles = plan_tiles(96, 48, size=32, overlap=overlap, panorama=True)
    assert any(t.x + t.width > 96 for t in tiles)
    xs = sorted({t.x for t in tiles})
    steps = np.diff([*xs, xs[0] + 96])
    assert steps.max() <= 32 - overlap and steps.max() < 32


def test_bad_tiling_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 50, size=32, overlap=32, panorama=False)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 50, size=32, overlap=-1, panorama=False)
    with pytest.raises(ValueError, match="size"):
        plan_tiles(0, 50, size=32, overlap=8, panorama=False)


# ---------------------------------------------------------------------------------------------
# crop


@pytest.mark.parametrize("shape", [(32, 64), (32, 64, 3)])
def test_crop_of_a_wrapping_tile_joins_both_ends(shape: tuple[int, ...]) -> None:
    image = np.arange(np.prod(shape)).reshape(shape)
    tile = Tile(x=56, y=4, width=16, height=10)
    expected = np.roll(image, -56, axis=1)[4:14, :16]
    np.testing.assert_array_equal(crop(image, tile), expected)
    np.testing.assert_array_equal(crop(image, Tile(8, 2, 16, 10)), image[2:12, 8:24])


def test_crop_refuses_a_tile_outside_the_image() -> None:
    image = np.zeros((32, 64), np.uint8)
    for tile in (Tile(64, 0, 8, 8), Tile(0, 30, 8, 8), Tile(0, 0, 65, 8), Tile(-1, 0, 8, 8)):
        with pytest.raises(ValueError, match="does not fit"):
            crop(image, tile)


# ---------------------------------------------------------------------------------------------
# tile_annotations: masks, boxes, min_visible


def test_an_object_across_the_seam_is_one_object_in_the_wrapping_tile() -> None:
    width, height = 64, 32
    source = np.zeros((height, width), bool)
    source[10:15, 60:64] = True  # right end: columns 60..63
    source[11:16, 0:3] = True  # left end: columns 0..2, one row lower
    ann = annotation(source)
    tile = Tile(x=56, y=8, width=16, height=16)  # columns 56..63 then 0..7

    [out] = tile_annotations(
        [ann], image_width=width, image_height=height, tile=tile, min_visible=1.0
    )

    expected = np.zeros((16, 16), bool)
    expected[2:7, 4:8] = True  # source columns 60..63 at tile columns 4..7
    expected[3:8, 8:11] = True  # source columns 0..2 at tile columns 8..10
    np.testing.assert_array_equal(decoded(out), expected)
    assert out["bbox"] == [4.0, 2.0, 7.0, 6.0]
    assert out["area"] == 35
    assert out["source_id"] == 7 and out["category_id"] == 2 and out["iscrowd"] == 0
    assert isinstance(out["segmentation"]["counts"], str)
    assert out["segmentation"]["size"] == [16, 16]


def test_a_planned_panorama_keeps_a_seam_object_whole_in_a_wrapping_tile() -> None:
    width, height = 128, 64
    source = np.zeros((height, width), bool)
    source[40:46, 124:] = True
    source[40:46, :5] = True
    tiles = plan_tiles(width, height, size=48, overlap=16, panorama=True)
    whole = []
    for tile in tiles:
        out = tile_annotations(
            [annotation(source)], image_width=width, image_height=height, tile=tile, min_visible=1
        )
        if out:
            whole.append(tile)
            np.testing.assert_array_equal(decoded(out[0]), crop(source, tile))
            assert out[0]["bbox"][2] == 9.0  # one box 9 columns wide, not the image's width
    assert whole and all(t.x + t.width > width for t in whole)


def test_an_object_across_a_tile_edge_is_clipped_on_both_sides() -> None:
    source = np.zeros((20, 40), bool)
    source[5:7, 17:27] = True  # 20 pixels: 6 left of column 20, 14 right of it
    left, right = Tile(0, 0, 20, 20), Tile(20, 0, 20, 20)

    def tiled(tile: Tile, min_visible: float) -> list[dict[str, Any]]:
        return tile_annotations(
            [annotation(source)],
            image_width=40,
            image_height=20,
            tile=tile,
            min_visible=min_visible,
        )

    [a] = tiled(left, 0.3)  # 6 / 20 is exactly 0.3: kept (0.3 * 20 > 6 in floating point)
    expected = np.zeros((20, 20), bool)
    expected[5:7, 17:20] = True
    np.testing.assert_array_equal(decoded(a), expected)
    assert a["bbox"] == [17.0, 5.0, 3.0, 2.0] and a["area"] == 6
    assert tiled(left, 0.31) == []

    [b] = tiled(right, 0.7)  # 14 / 20 is exactly 0.7
    expected = np.zeros((20, 20), bool)
    expected[5:7, 0:7] = True
    np.testing.assert_array_equal(decoded(b), expected)
    assert b["bbox"] == [0.0, 5.0, 7.0, 2.0] and b["area"] == 14
    assert tiled(right, 0.71) == []


def test_an_object_outside_the_tile_is_never_kept() -> None:
    source = np.zeros((20, 40), bool)
    source[2:4, 30:33] = True
    out = tile_annotations(
        [annotation(source)],
        image_width=40,
        image_height=20,
        tile=Tile(0, 0, 20, 20),
        min_visible=0,
    )
    assert out == []


def test_masks_and_boxes_follow_the_crop_in_every_tile() -> None:
    width, height = 50, 34
    masks = [np.zeros((height, width), bool) for _ in range(4)]
    masks[0][0:3, 0:5] = True  # top-left corner of the image
    masks[1][height - 2 :, width - 7 :] = True  # bottom-right corner
    masks[2][:, 24:26] = True  # a full-height pole through several tiles
    masks[3][10:20, 0] = True  # one column on the left border, a second piece elsewhere
    masks[3][12, 30:40] = True
    annotations = [annotation(m, ann_id=k + 1) for k, m in enumerate(masks)]
    for tile in plan_tiles(width, height, size=20, overlap=6, panorama=False):
        out = tile_annotations(
            annotations, image_width=width, image_height=height, tile=tile, min_visible=0
        )
        expected_ids = [k + 1 for k, m in enumerate(masks) if crop(m, tile).any()]
        assert [a["source_id"] for a in out] == expected_ids
        assert [a["id"] for a in out] == list(range(1, len(out) + 1))
        for a in out:
            clipped = crop(masks[a["source_id"] - 1], tile)
            np.testing.assert_array_equal(decoded(a), clipped)
            assert a["bbox"] == extent(clipped)
            assert a["area"] == int(clipped.sum())


def test_polygon_and_uncompressed_segmentations_are_read() -> None:
    source = np.zeros((20, 40), bool)
    source[4:8, 10:16] = True
    rle = mask_util.encode(np.asfortranarray(source, dtype=np.uint8))
    counts = []  # uncompressed RLE: run lengths in column-major order, starting with zeros
    flat = source.flatten(order="F")
    value, run = False, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    uncompressed = {"id": 1, "segmentation": {"size": [20, 40], "counts": counts}}
    compressed_bytes = {"id": 2, "segmentation": rle}
    out = tile_annotations(
        [uncompressed, compressed_bytes],
        image_width=40,
        image_height=20,
        tile=Tile(0, 0, 20, 20),
        min_visible=1,
    )
    assert [a["bbox"] for a in out] == [[10.0, 4.0, 6.0, 4.0]] * 2
    polygon = {"id": 3, "segmentation": [[10, 4, 16, 4, 16, 8, 10, 8]]}
    [a] = tile_annotations(
        [polygon], image_width=40, image_height=20, tile=Tile(0, 0, 20, 20), min_visible=1
    )
    assert a["source_id"] == 3 and a["area"] > 0


def test_a_mask_of_another_size_is_refused() -> None:
    ann = annotation(np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="annotation 7"):
        tile_annotations(
            [ann], image_width=40, image_height=20, tile=Tile(0, 0, 20, 20), min_visible=0
        )


# ---------------------------------------------------------------------------------------------
# tile_annotations: keypoints


LEFT, RIGHT = Tile(0, 0, 20, 20), Tile(20, 0, 20, 20)


def keypoints_in(ann: dict[str, Any], tile: Tile) -> list[Any] | None:
    out = tile_annotations([ann], image_width=40, image_height=20, tile=tile, min_visible=0)
    return out[0]["keypoints"][:3] if out else None


def test_a_keypoint_on_a_tile_edge_lands_in_exactly_one_tile() -> None:
    ann = person(20.0, 5.5)  # its mask has pixels in both tiles (as has the next one's)
    assert keypoints_in(ann, LEFT) == [0, 0, 0]
    assert keypoints_in(ann, RIGHT) == [0.0, 5.5, 2]
    ann = person(19.75, 5.5)
    assert keypoints_in(ann, LEFT) == [19.75, 5.5, 2]
    assert keypoints_in(ann, RIGHT) == [0, 0, 0]


def test_a_keypoint_on_the_image_border_stays_in_the_tile_there() -> None:
    ann = person(40.0, 20.0)  # the bottom-right corner of the image
    assert keypoints_in(ann, RIGHT) == [20.0, 20.0, 2]
    assert keypoints_in(ann, LEFT) is None  # its mask is not in the left tile at all


def test_keypoints_outside_the_tile_are_zeroed_and_counted_out() -> None:
    mask = np.zeros((20, 40), bool)
    mask[5:15, 15:25] = True
    kps = [16.5, 6.5, 2, 23.5, 6.5, 2, 17.0, 7.0, 1, 0, 0, 0, 30.0, 30.0, 0]
    ann = annotation(mask, keypoints=kps, num_keypoints=3)
    [a] = tile_annotations([ann], image_width=40, image_height=20, tile=LEFT, min_visible=0)
    assert a["keypoints"] == [16.5, 6.5, 2, 0, 0, 0, 17.0, 7.0, 1, 0, 0, 0, 0, 0, 0]
    assert a["num_keypoints"] == 2
    [b] = tile_annotations([ann], image_width=40, image_height=20, tile=RIGHT, min_visible=0)
    assert b["keypoints"] == [0, 0, 0, 3.5, 6.5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert b["num_keypoints"] == 1
    assert ann["keypoints"] == kps  # the source is left as it was


def test_keypoints_wrap_with_the_tile() -> None:
    source = np.zeros((32, 64), bool)
    source[10:14, 60:] = True
    source[10:14, :3] = True
    ann = annotation(source, keypoints=[62.5, 11.0, 2, 1.5, 12.0, 2, 30.0, 12.0, 2])
    tile = Tile(x=56, y=8, width=16, height=16)
    [a] = tile_annotations([ann], image_width=64, image_height=32, tile=tile, min_visible=1)
    assert a["keypoints"] == [6.5, 3.0, 2, 9.5, 4.0, 2, 0, 0, 0]
    assert a["num_keypoints"] == 2


# ---------------------------------------------------------------------------------------------
# keep_empty_tiles


def counted(n_full: int, n_empty: int) -> list[tuple[Tile, int]]:
    # Interleaved, so that keeping the input order is visible.
    items = [(Tile(k, 0, 1, 1), k % 3 + 1) for k in range(n_full)]
    items += [(Tile(k, 1, 1, 1), 0) for k in range(n_empty)]
    return sorted(items, key=lambda item: (item[0].x, item[0].y))


def test_keep_empty_tiles_keeps_all_full_tiles_and_a_share_of_empty_ones() -> None:
    items = counted(10, 20)
    kept = keep_empty_tiles(items, 0.25, np.random.default_rng(0))
    full = [t for t, n in items if n > 0]
    assert set(full) <= set(kept)
    assert len(kept) == 10 + 5
    assert kept == [t for t, _ in items if t in set(kept)]  # input order
    assert kept == keep_empty_tiles(items, 0.25, np.random.default_rng(0))
    others = {tuple(keep_empty_tiles(items, 0.25, np.random.default_rng(s))) for s in range(20)}
    assert len(others) > 1  # the rng does choose


@pytest.mark.parametrize(
    ("ratio", "n_empty", "expected"),
    [(0.0, 20, 0), (1.0, 20, 20), (0.3, 10, 3), (0.1, 10, 1), (0.01, 10, 1), (0.5, 0, 0)],
)
def test_the_share_of_empty_tiles_is_rounded_up(ratio: float, n_empty: int, expected: int) -> None:
    kept = keep_empty_tiles(counted(4, n_empty), ratio, np.random.default_rng(1))
    assert len(kept) == 4 + expected


def test_a_bad_ratio_is_refused() -> None:
    with pytest.raises(ValueError, match="ratio"):
        keep_empty_tiles(counted(1, 1), 1.5, np.random.default_rng(0))
