"""Tiled detection: window plans, cutting, and merging back to every object found once, whole.

The detector here "detects" the shapes drawn on a synthetic image: the connected components of
channel (label - 1) in each tile, with their boxes and masks in tile coordinates. Whatever a
window cuts off comes back as a piece, so a merge that drops, splits or over-unites objects
shows up as a wrong count, box or mask.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from serving.runtime import tiles
from serving.runtime.detections import Detections, mask_window
from serving.runtime.tiles import (
    TilingSpec,
    Window,
    cut,
    detect_tiled,
    is_panorama,
    merge,
    plan_windows,
    scaled_size,
)

# ---------------------------------------------------------------------------------------------
# The synthetic scene and the fake detector


@dataclass
class Drawn:
    label: int
    box: tuple[float, float, float, float]  # x1 > width for one drawn across a panorama's seam
    mask: np.ndarray  # (H, W) bool, seam-crossing columns folded onto the left end


def rect(x0: int, y0: int, x1: int, y1: int) -> tuple[str, tuple[int, ...]]:
    return "rect", (x0, y0, x1, y1)


def ellipse(cx: int, cy: int, ax: int, ay: int) -> tuple[str, tuple[int, ...]]:
    return "ellipse", (cx, cy, ax, ay)


def scene(
    width: int, height: int, shapes: list[tuple[int, tuple[str, tuple[int, ...]]]]
) -> tuple[np.ndarray, list[Drawn]]:
    """An RGB image with each (label, shape) filled at 255 in channel label - 1. Shapes are in
    "unrolled" coordinates 0..2W: columns at or past W wrap to the left end (a panorama)."""
    image = np.zeros((height, width, 3), np.uint8)
    drawn = []
    for label, (kind, args) in shapes:
        wide = np.zeros((height, 2 * width), np.uint8)
        if kind == "rect":
            x0, y0, x1, y1 = args
            wide[y0:y1, x0:x1] = 1
        else:
            cx, cy, ax, ay = args
            cv2.ellipse(wide, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        rows, cols = np.nonzero(wide)
        left = int(cols.min()) % width
        box = (left, int(rows.min()), left + int(cols.max()) + 1 - int(cols.min()), rows.max() + 1)
        mask = (wide[:, :width] | wide[:, width:]).astype(bool)
        assert not image[mask, label - 1].any(), "test shapes of one class must not overlap"
        image[mask, label - 1] = 255
        drawn.append(Drawn(label, tuple(float(v) for v in box), mask))
    return image, drawn


class ShapeDetector:
    """Connected components of each class's channel, per tile, in tile coordinates."""

    def __init__(self, with_masks: bool = True, with_keypoints: bool = False) -> None:
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.calls: list[list[np.ndarray]] = []

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        self.calls.append(images)
        return [self.detect(image) for image in images]

    def detect(self, image: np.ndarray) -> Detections:
        boxes, scores, labels, masks, keypoints = [], [], [], [], []
        for label in (1, 2):
            # > 127: a pixel of an enlarged tile belongs to the shape when it is mostly shape.
            on = (image[..., label - 1] > 127).astype(np.uint8)
            count, ids, stats, centroids = cv2.connectedComponentsWithStats(on, connectivity=8)
            for k in range(1, count):
                x, y, w, h, area = (int(v) for v in stats[k])
                boxes.append([x, y, x + w, y + h])
                # Larger pieces score higher, so a whole object beats its pieces.
                scores.append(area / (area + 1000))
                labels.append(label)
                masks.append(ids[y : y + h, x : x + w] == k)
                keypoints.append([[*centroids[k], 1.0]])
        return Detections(
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            scores=np.array(scores, np.float32),
            labels=np.array(labels, np.int64),
            masks=masks if self.with_masks else None,
            keypoints=np.array(keypoints, np.float32).reshape(-1, 1, 3)
            if self.with_keypoints
            else None,
        )


def assert_found_once(dets: Detections, drawn: list[Drawn], width: int, height: int) -> None:
    """Each drawn shape is exactly one detection of its class with its box and its mask (its
    filled box for box-only detections), and there is nothing else."""
    assert len(dets) == len(drawn), f"{len(dets)} detections for {len(drawn)} shapes"
    for shape in drawn:
        same = np.flatnonzero(
            (dets.labels == shape.label) & np.all(np.abs(dets.boxes - shape.box) < 1e-3, axis=1)
        )
        assert len(same) == 1, f"shape {shape.label} {shape.box}: {len(same)} detections"
        expected = shape.mask
        if dets.masks is None:
            expected = Detections(np.array([shape.box]), [1.0], [1]).full_mask(0, width, height)
        np.testing.assert_array_equal(dets.full_mask(int(same[0]), width, height), expected)


def raw_parts(image: np.ndarray, spec: TilingSpec) -> list[tuple[Window, Detections]]:
    detector = ShapeDetector()
    height, width = image.shape[:2]
    return [(w, detector([cut(image, w)])[0]) for w in plan_windows(width, height, spec)]


def assert_merging_matters(image: np.ndarray, drawn: list[Drawn], spec: TilingSpec) -> None:
    """Without merging there are more detections than shapes, some of them pieces: the scene
    does test the merge."""
    parts = raw_parts(image, spec)
    assert sum(len(found) for _, found in parts) > len(drawn)
    boxes = {shape.box for shape in drawn}
    pieces = [
        window
        for window, found in parts
        for box in found.boxes
        if tuple(float(v) for v in (box / window.scale)) not in boxes
    ]
    assert pieces, "no window cut a shape"


# ---------------------------------------------------------------------------------------------
# Plans and cuts


def test_an_image_no_larger_than_the_tile_is_one_window_and_gets_the_detectors_result() -> None:
    spec = TilingSpec(tile=1024, overlap=128)
    image = np.random.default_rng(0).integers(0, 255, (700, 1024, 3), dtype=np.uint8)
    assert plan_windows(1024, 700, spec) == [Window(1.0, 0, 0, 1024, 700)]
    answer = Detections(np.array([[1.5, 2, 30, 40]]), [0.9], [1], keypoints=np.ones((1, 2, 3)))
    seen = []

    def detector(images: list[np.ndarray]) -> list[Detections]:
        seen.extend(images)
        return [answer]

    assert detect_tiled(image, detector, spec) is answer
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], image)


@pytest.mark.parametrize(
    ("width", "height", "spec"),
    [
        (3000, 1000, TilingSpec(tile=512, overlap=64)),
        (1025, 700, TilingSpec()),
        (700, 600, TilingSpec()),
        (1300, 900, TilingSpec(tile=256, overlap=32, scales=(0.5, 1.0, 1.5, 2.0))),
        (4096, 2048, TilingSpec(tile=1024, overlap=128, scales=(1.0, 2.0))),
        (1000, 500, TilingSpec()),  # a panorama narrower than the tile
        (1501, 750, TilingSpec(tile=512, overlap=100, scales=(0.5, 1.0, 1.5))),
    ],
)
def test_windows_cover_every_pixel_overlap_enough_and_are_as_few_as_can_be(
    width: int, height: int, spec: TilingSpec
) -> None:
    windows = plan_windows(width, height, spec)
    wrap = is_panorama(width, height, spec)
    assert {w.scale for w in windows} == set(spec.scales)
    for scale in spec.scales:
        own = [w for w in windows if w.scale == scale]
        scaled_width, scaled_height = scaled_size(width, height, scale)
        covered_x = np.zeros(scaled_width, bool)
        covered_y = np.zeros(scaled_height, bool)
        for w in own:
            assert w.wrap == wrap
            assert (w.width, w.height) == (
                min(spec.tile, scaled_width),
                min(spec.tile, scaled_height),
            )
            assert w.y >= 0 and w.y + w.height <= scaled_height
            assert 0 <= w.x < scaled_width and (wrap or w.x + w.width <= scaled_width)
            covered_x[np.arange(w.x, w.x + w.width) % scaled_width] = True
            covered_y[w.y : w.y + w.height] = True
        xs, ys = sorted({w.x for w in own}), sorted({w.y for w in own})
        # The windows are a grid (every start column with every start row), so covering every
        # column and every row covers every pixel.
        assert sorted((w.x, w.y) for w in own) == sorted((x, y) for x in xs for y in ys)
        assert covered_x.all() and covered_y.all()
        side_x, side_y = own[0].width, own[0].height
        steps_x = np.diff(xs + ([xs[0] + scaled_width] if wrap else []))
        assert np.all(steps_x <= side_x - min(spec.overlap, side_x // 2))
        assert np.all(np.diff(ys) <= side_y - spec.overlap)
        if wrap:
            # The seam lies inside a window, not only on window edges.
            assert any(w.x < scaled_width < w.x + w.width for w in own)
            if scaled_width > spec.tile:
                assert (len(xs) - 1) * (spec.tile - spec.overlap) < scaled_width
            else:
                assert len(xs) == 2
        elif len(xs) > 1:
            # One window fewer could not reach across, however it was spread.
            assert (len(xs) - 2) * (spec.tile - spec.overlap) + spec.tile < scaled_width
        if len(ys) > 1:
            assert (len(ys) - 2) * (spec.tile - spec.overlap) + spec.tile < scaled_height


def test_a_panorama_window_takes_the_columns_past_the_seam_from_the_left_end() -> None:
    image = np.random.default_rng(1).integers(0, 255, (200, 400, 3), dtype=np.uint8)
    spec = TilingSpec(tile=128, overlap=16)
    wrapping = [w for w in plan_windows(400, 200, spec) if w.x + w.width > 400]
    assert wrapping
    for w in wrapping:
        expected = np.concatenate(
            [
                image[w.y : w.y + w.height, w.x :],
                image[w.y : w.y + w.height, : w.x + w.width - 400],
            ],
            axis=1,
        )
        np.testing.assert_array_equal(cut(image, w), expected)


@pytest.mark.parametrize("panorama", [False, True])
@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_a_scaled_window_has_the_pixels_of_the_whole_image_resampled(
    scale: float, panorama: bool
) -> None:
    height, width = (200, 400) if panorama else (200, 300)
    image = np.random.default_rng(2).integers(0, 255, (height, width, 3), dtype=np.uint8)
    spec = TilingSpec(tile=96, overlap=16, scales=(scale,))
    scaled_width, scaled_height = scaled_size(width, height, scale)
    assert (scaled_width, scaled_height) == (width * scale, height * scale)
    interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
    # A panorama resamples as if it went on round and round: three turns, the middle one kept.
    turns = 3 if panorama else 1
    whole = cv2.resize(
        np.concatenate([image] * turns, axis=1),
        (scaled_width * turns, scaled_height),
        interpolation=interpolation,
    )
    start = scaled_width if panorama else 0
    windows = plan_windows(width, height, spec)
    assert all(w.wrap == panorama for w in windows)
    for w in windows:
        tile = cut(image, w)
        assert tile.shape == (w.height, w.width, 3) and tile.dtype == np.uint8
        expected = whole[w.y : w.y + w.height, start + w.x : start + w.x + w.width]
        np.testing.assert_array_equal(tile, expected, err_msg=str(w))


def test_bad_specs_and_windows_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="overlap < tile"):
        TilingSpec(tile=256, overlap=256)
    with pytest.raises(ValueError, match="simple fraction"):
        TilingSpec(scales=(1.0, 1.37))
    with pytest.raises(ValueError, match="merge_iou"):
        TilingSpec(merge_iou=0)
    with pytest.raises(ValueError, match="does not fit"):
        cut(np.zeros((100, 150, 3), np.uint8), Window(1.0, 100, 0, 100, 100))
    with pytest.raises(ValueError, match="returned 0 results for 1 tiles"):
        detect_tiled(np.zeros((10, 10, 3), np.uint8), lambda images: [], TilingSpec())
    assert TilingSpec(scales=[1, 2]).scales == (1.0, 2.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Detect and merge on drawn scenes

FLAT_SHAPES = [
    (1, rect(150, 40, 300, 90)),  # across both edges of the first overlap
    (2, ellipse(222, 330, 20, 15)),  # inside an overlap: seen whole twice
    (1, rect(170, 200, 280, 290)),  # across a corner where four windows meet
    (2, ellipse(600, 600, 290, 110)),  # across many windows, larger than any
    (1, rect(500, 150, 503, 153)),  # tiny
    (1, rect(1150, 300, 1200, 360)),  # on the image's right edge
    (1, rect(225, 400, 250, 440)),  # two distinct neighbours one pixel apart, the second
    (1, rect(251, 400, 300, 440)),  # cut by a window edge
    (2, ellipse(1000, 460, 40, 40)),  # across a row edge and a column edge
]


@pytest.mark.parametrize("with_masks", [True, False])
def test_shapes_cut_by_window_edges_are_each_found_once_whole(with_masks: bool) -> None:
    image, drawn = scene(1200, 900, FLAT_SHAPES)
    spec = TilingSpec(tile=256, overlap=32)
    assert len(plan_windows(1200, 900, spec)) == 24
    assert_merging_matters(image, drawn, spec)
    found = detect_tiled(image, ShapeDetector(with_masks=with_masks), spec)
    assert (found.masks is None) == (not with_masks)
    assert_found_once(found, drawn, 1200, 900)


def test_shapes_are_found_once_when_a_finer_pass_sees_them_too() -> None:
    image, drawn = scene(1200, 900, FLAT_SHAPES)
    spec = TilingSpec(tile=256, overlap=32, scales=(1.0, 2.0))
    parts = raw_parts(image, spec)
    assert any(len(found) for window, found in parts if window.scale == 2.0)
    assert_merging_matters(image, drawn, spec)
    assert_found_once(detect_tiled(image, ShapeDetector(), spec, batch=7), drawn, 1200, 900)


def test_the_finer_pass_alone_maps_back_to_the_original_coordinates() -> None:
    image, drawn = scene(1200, 900, FLAT_SHAPES)
    assert_found_once(
        detect_tiled(image, ShapeDetector(), TilingSpec(tile=256, overlap=32, scales=(2.0,))),
        drawn,
        1200,
        900,
    )


W_PANO = 1024
SEAM_SHAPES = [
    (1, rect(W_PANO - 20, 100, W_PANO + 15, 140)),  # across the seam
    (2, ellipse(W_PANO, 300, 30, 20)),  # across the seam
    (1, rect(W_PANO - 30, 400, W_PANO - 1, 430)),  # a column short of the seam, and
    (1, rect(0, 400, 25, 430)),  # one from it: two neighbours
    (2, ellipse(W_PANO, 450, 150, 25)),  # across the seam and two window edges
    (1, rect(500, 200, 530, 280)),
]


@pytest.mark.parametrize(
    ("scales", "with_masks"), [((1.0,), True), ((1.0,), False), ((1.0, 2.0), True)]
)
def test_shapes_across_the_panorama_seam_are_found_once_whole(
    scales: tuple[float, ...], with_masks: bool
) -> None:
    image, drawn = scene(W_PANO, W_PANO // 2, SEAM_SHAPES)
    assert drawn[0].box == (W_PANO - 20, 100, W_PANO + 15, 140)
    assert drawn[3].box == (0, 400, 25, 430)
    spec = TilingSpec(tile=256, overlap=32, scales=scales)
    assert is_panorama(W_PANO, W_PANO // 2, spec)
    assert_merging_matters(image, drawn, spec)
    found = detect_tiled(image, ShapeDetector(with_masks=with_masks), spec)
    assert_found_once(found, drawn, W_PANO, W_PANO // 2)


def test_a_panorama_narrower_than_the_tile_still_joins_across_its_seam() -> None:
    image, drawn = scene(600, 300, [(1, rect(580, 50, 630, 90)), (2, ellipse(300, 150, 40, 30))])
    spec = TilingSpec()
    assert [(w.x, w.width) for w in plan_windows(600, 300, spec)] == [(0, 600), (300, 600)]
    assert_found_once(detect_tiled(image, ShapeDetector(), spec), drawn, 600, 300)


def test_merged_objects_keep_the_best_score_and_its_keypoints() -> None:
    image, drawn = scene(1200, 900, [(1, rect(200, 40, 300, 90))])
    spec = TilingSpec(tile=256, overlap=32)
    found = detect_tiled(image, ShapeDetector(with_keypoints=True), spec)
    assert_found_once(found, drawn, 1200, 900)
    # The second window (189..444) sees the whole rectangle, the first (0..255) a piece of it:
    # the whole one's score (the higher) and its centroid.
    area = 100 * 50
    assert found.scores[0] == pytest.approx(area / (area + 1000))
    np.testing.assert_allclose(found.keypoints[0], [[249.5, 64.5, 1.0]])


# ---------------------------------------------------------------------------------------------
# merge on hand-made detections

WHOLE = Window(1.0, 0, 0, 600, 256)  # a window with no cut edge in a 600 x 256 image


def boxes_only(*boxes: list[float], label: int = 1, score: float = 0.5) -> Detections:
    return Detections(np.array(boxes), [score] * len(boxes), [label] * len(boxes))


def test_merging_is_transitive_and_only_across_windows_and_within_a_class() -> None:
    spec = TilingSpec(merge_iou=0.5)
    a, b, c = [10, 10, 30, 30], [14, 10, 34, 30], [18, 10, 38, 30]  # IoU(a, c) < 0.5
    merged = merge(
        [(WHOLE, boxes_only(a)), (WHOLE, boxes_only(b)), (WHOLE, boxes_only(c))], 600, 256, spec
    )
    np.testing.assert_array_equal(merged.boxes, [[10, 10, 38, 30]])
    one_window = merge([(WHOLE, boxes_only(a, b))], 600, 256, spec)
    assert len(one_window) == 2, "duplicates within a window are the detector's to suppress"
    classes = merge(
        [(WHOLE, boxes_only(a, label=1)), (WHOLE, boxes_only(a, label=2))], 600, 256, spec
    )
    assert sorted(classes.labels.tolist()) == [1, 2]


@pytest.mark.parametrize(("piece_right", "merged"), [(256, True), (254, True), (250, False)])
def test_a_piece_at_a_cut_edge_joins_what_it_overlaps(piece_right: float, merged: bool) -> None:
    left, right = Window(1.0, 0, 0, 256, 256), Window(1.0, 200, 0, 256, 256)
    piece = boxes_only([240, 10, piece_right, 50], score=0.3)
    whole = boxes_only([30, 10, 100, 50], score=0.9)  # 230..300 in the image: IoU < 0.5
    out = merge([(left, piece), (right, whole)], 600, 256, TilingSpec())
    if merged:
        np.testing.assert_array_equal(out.boxes, [[230, 10, 300, 50]])
        assert out.scores.tolist() == [pytest.approx(0.9)]
    else:
        assert len(out) == 2


def test_boxes_on_both_sides_of_the_seam_are_compared_modulo_the_width() -> None:
    spec = TilingSpec()
    beyond = Window(1.0, 768, 0, 512, 512, wrap=True)  # columns 768..1023, then 0..255
    start = Window(1.0, 0, 0, 256, 512, wrap=True)
    near_end = boxes_only([251, 10, 261, 30])  # 1019..1029: across the seam
    at_start = boxes_only([-5, 10, 5, 30])  # the same object, seen from the other side
    out = merge([(beyond, near_end), (start, at_start)], 1024, 512, spec)
    np.testing.assert_allclose(out.boxes, [[1019, 10, 1029, 30]])
    piece = boxes_only([0, 10, 4, 30])  # cut by the seam edge of its window
    out = merge([(beyond, near_end), (start, piece)], 1024, 512, spec)
    np.testing.assert_allclose(out.boxes, [[1019, 10, 1029, 30]])
    past = boxes_only([300, 10, 310, 30])  # 1068..1078 lies at 44..54
    out = merge([(beyond, past)], 1024, 512, spec)
    np.testing.assert_allclose(out.boxes, [[44, 10, 54, 30]])
    assert out.full_mask(0, 1024, 512)[10:30, 44:54].all()


def test_merged_masks_are_the_union_of_the_pieces() -> None:
    left, right = Window(1.0, 0, 0, 256, 256), Window(1.0, 200, 0, 256, 256)
    top = np.zeros((40, 16), bool)
    top[:20] = True
    bottom = np.zeros((40, 70), bool)
    bottom[20:] = True
    piece = Detections(np.array([[240, 10, 256, 50]]), [0.3], [1], masks=[top])
    whole = Detections(np.array([[30, 10, 100, 50]]), [0.9], [1], masks=[bottom])
    out = merge([(left, piece), (right, whole)], 600, 256, TilingSpec())
    expected = np.zeros((256, 600), bool)
    expected[10:30, 240:256] = True
    expected[30:50, 230:300] = True
    np.testing.assert_array_equal(out.full_mask(0, 600, 256), expected)


@pytest.mark.parametrize(("width", "height"), [(2000, 1500), (2048, 1024)])
def test_merge_with_many_detections_matches_a_pair_by_pair_reference(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: the pair matrix is built in many pieces, as for thousands of detections.
    monkeypatch.setattr(tiles, "_PAIR_CHUNK", 7)
    rng = np.random.default_rng(3)
    spec = TilingSpec(tile=512, overlap=64)
    wrap = is_panorama(width, height, spec)
    windows = plan_windows(width, height, spec)
    parts, flat = [], []
    for k, w in enumerate(windows):
        n = 20
        xy = rng.uniform(0, [w.width - 40, w.height - 40], (n, 2))
        if w.x + w.width > width:
            xy[:4, 0] = width - w.x - rng.uniform(1, 3, 4)  # across the seam
        boxes = np.concatenate([xy, xy + rng.uniform(3, 40, (n, 2))], axis=1).astype(np.float32)
        labels, scores = rng.integers(1, 3, n), rng.uniform(0.1, 1, n).astype(np.float32)
        parts.append((w, Detections(boxes, scores, labels)))
        for (x0, y0, x1, y1), label, score in zip(boxes.tolist(), labels, scores, strict=True):
            cuts = (
                (wrap or w.x > 0) and x0 <= 2,
                (wrap or w.x + w.width < width) and x1 >= w.width - 2,
                w.y > 0 and y0 <= 2,
                w.y + w.height < height and y1 >= w.height - 2,
            )
            left = (x0 + w.x) % width if wrap else x0 + w.x
            box = (left, y0 + w.y, left + x1 - x0, y1 + w.y)
            flat.append((k, label, score, box, any(cuts)))
    out = merge(parts, width, height, spec)
    # Reference: every pair by hand, union-find in Python.
    parent = list(range(len(flat)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, (ki, li, _, bi, ci) in enumerate(flat):
        for j in range(i + 1, len(flat)):
            kj, lj, _, bj, cj = flat[j]
            if ki == kj or li != lj:
                continue
            iw = max(
                min(bi[2], bj[2] + d) - max(bi[0], bj[0] + d)
                for d in ((-width, 0, width) if wrap else (0,))
            )
            ih = min(bi[3], bj[3]) - max(bi[1], bj[1])
            inter = max(iw, 0) * max(ih, 0)
            union = (bi[2] - bi[0]) * (bi[3] - bi[1]) + (bj[2] - bj[0]) * (bj[3] - bj[1]) - inter
            if inter / union >= spec.merge_iou or (iw > 1e-3 and ih > 1e-3 and (ci or cj)):
                parent[find(j)] = find(i)
    best: dict[int, float] = {}
    for i, (_, _, score, _, _) in enumerate(flat):
        best[find(i)] = max(best.get(find(i), 0.0), float(score))
    assert len(flat) == 20 * len(windows) >= 300
    assert len(out) == len(best) < len(flat)
    np.testing.assert_allclose(sorted(out.scores), sorted(best.values()))
    if wrap:
        assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 0] < width).all()
        assert (out.boxes[:, 2] > width).any(), "some boxes cross the seam"


def test_a_detector_without_detections_gives_an_empty_result() -> None:
    image = np.zeros((900, 1200, 3), np.uint8)
    found = detect_tiled(image, ShapeDetector(), TilingSpec(tile=256, overlap=32))
    assert len(found) == 0 and found.masks == []


# ---------------------------------------------------------------------------------------------
# The Detections record


def test_a_mask_covers_the_whole_pixels_its_box_touches() -> None:
    assert mask_window([10, 20, 30, 40]) == (10, 20, 30, 40)
    assert mask_window([10.5, 20.2, 29.5, 39.6]) == (10, 20, 30, 40)
    assert mask_window([9.9999, 20.0002, 30.0004, 40]) == (10, 20, 30, 40)  # float noise
    assert mask_window([5, 5, 5, 5]) == (5, 5, 6, 6)
    with pytest.raises(ValueError, match=r"mask 0 is \(3, 3\).*needs \(20, 20\)"):
        Detections(np.array([[10, 20, 30, 40]]), [1], [1], masks=[np.ones((3, 3), bool)])


def test_shifted_scales_then_shifts_boxes_keypoints_and_masks() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = mask[3, 2] = True
    dets = Detections(
        np.array([[0, 0, 4, 4]]), [0.5], [2], masks=[mask], keypoints=np.array([[[2, 2, 0.7]]])
    )
    half = dets.shifted(10, 20, 0.5)
    np.testing.assert_array_equal(half.boxes, [[10, 20, 12, 22]])
    np.testing.assert_allclose(half.keypoints, [[[11, 21, 0.7]]])
    # Nearest: new pixel (r, c) takes old pixel (2r + 1, 2c + 1), under its centre.
    np.testing.assert_array_equal(half.masks[0], [[True, False], [False, False]])
    double = dets.shifted(0, 0, 2.0)
    np.testing.assert_array_equal(double.masks[0], np.kron(mask, np.ones((2, 2), bool)))
    moved = dets.shifted(3, -1)
    assert moved.masks[0] is mask
    np.testing.assert_array_equal(moved.boxes, [[3, -1, 7, 3]])
    # Far from the origin float32 rounds coordinates; masks still fit their boxes.
    # Starts a hair from a whole pixel: rounding decides which window edge they get.
    x = np.linspace(0.997, 1.001, 200)
    many = Detections(np.stack([x, x, x + 2, x + 2], axis=1), np.ones(200), np.ones(200))
    many = Detections(
        many.boxes, many.scores, many.labels, [many.mask_or_box(i) for i in range(200)]
    )
    for dx in (16381, 32765.0):
        assert len(many.shifted(dx, 7)) == 200


def test_select_concat_and_empty() -> None:
    a = Detections(np.array([[0, 0, 2, 2], [5, 5, 6, 7]]), [0.9, 0.2], [1, 2])
    b = Detections(np.array([[1, 1, 3, 2]]), [0.4], [1], masks=[np.array([[True, False]])])
    assert a.select(np.array([False, True])).labels.tolist() == [2]
    assert a.select(np.array([1, 0])).scores.tolist() == [pytest.approx(0.2), pytest.approx(0.9)]
    both = Detections.concat([a, Detections.empty(), b])
    assert len(both) == 3
    # Box-only detections next to masked ones get their filled box as mask.
    assert both.masks[1].shape == (2, 1) and both.masks[1].all()
    np.testing.assert_array_equal(both.masks[2], [[True, False]])
    assert Detections.concat([]).masks is None and len(Detections.empty(with_masks=True)) == 0


def test_full_mask_wraps_columns_past_the_width_to_the_left_end() -> None:
    mask = np.array([[True, False, True, True]])
    dets = Detections(np.array([[8, 1, 12, 2]]), [1], [1], masks=[mask])
    full = dets.full_mask(0, 10, 3)
    assert full[1].nonzero()[0].tolist() == [0, 1, 8]
    assert not full[[0, 2]].any()
    assert Detections(np.array([[8, 1, 12, 2]]), [1], [1]).full_mask(0, 10, 3)[1].sum() == 4


def test_the_runtime_imports_neither_torch_nor_the_training_side() -> None:
    code = (
        "import sys, serving.runtime.tiles, serving.runtime.detections\n"
        "banned = {'torch', 'torchvision', 'data', 'training', 'annotation', 'evaluation'}\n"
        "print([m for m in sys.modules if m.split('.')[0] in banned "
        "or m in ('serving.params', 'serving.cli')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_scaled_sizes_round_up() -> None:
    assert scaled_size(1001, 501, 0.5) == (501, 251)
    assert scaled_size(1000, 500, 1.5) == (1500, 750)
    assert math.isclose(1 / 3, TilingSpec(scales=(1 / 3,)).scales[0])


def test_boxes_that_only_share_an_edge_stay_apart_even_at_a_cut() -> None:
    left, right = Window(1.0, 0, 0, 256, 256), Window(1.0, 200, 0, 256, 256)
    piece = boxes_only([240, 10, 256, 50])  # touches the cut at 256
    neighbour = boxes_only([56, 10, 100, 50])  # 256..300 in the image
    assert len(merge([(left, piece), (right, neighbour)], 600, 256, TilingSpec())) == 2


def test_boxes_reaching_past_the_image_are_clipped_and_those_outside_it_dropped() -> None:
    mask = np.zeros((13, 15), bool)
    mask[3:, :10] = True  # rows 0..12, columns 590..599 inside the image
    found = Detections(
        np.array([[590, -3, 605, 10], [610, 5, 620, 9], [20, 5, 20, 9]]),
        [0.9, 0.8, 0.7],
        [1, 1, 2],
        masks=[mask, np.ones((4, 10), bool), np.ones((4, 1), bool)],
    )
    out = merge([(WHOLE, found)], 600, 256, TilingSpec())
    np.testing.assert_array_equal(out.boxes, [[590, 0, 600, 10], [20, 5, 20, 9]])
    np.testing.assert_array_equal(out.masks[0], np.ones((10, 10), bool))
    assert out.full_mask(1, 600, 256)[5:9, 20].all()
