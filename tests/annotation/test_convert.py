"""Label Studio export -> COCO: brush RLE against the SDK's encoder, exact percent and rotation
geometry, the synthetic ground truth round trip, the annotation rule, every issue kind, and
COCO that pycocotools reads back."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from label_studio_sdk.converter.brush import encode_rle, mask2rle
from pycocotools.coco import COCO

from annotation.convert import Conversion, ImageRef, to_coco
from annotation.convert.brush_rle import decode_brush_rle, encode_brush_rle
from annotation.convert.records import ISSUE_KINDS
from annotation.convert.region_masks import ellipse_region_mask as ellipse_mask
from annotation.convert.region_masks import polygon_self_intersects
from annotation.convert.region_masks import rectangle_region_mask as rectangle_mask
from annotation.convert.tasks import choose_annotation
from data.config import SyntheticConfig
from data.errors import AnonlabError
from data.shapes import rectangle_corners
from data.synthetic import generate, labelstudio_task
from data.synthetic.images import CLASSES, KEYPOINTS, SyntheticImage

# pycocotools' own decode warns under numpy 2; nothing to do with the code under test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[2]
W, H = 333, 187  # odd sizes: percent round trips must still land on the right pixels


# ---------------------------------------------------------------------------------------------
# Builders: regions and tasks as Label Studio exports them


def region(rid: str, kind: str, label: str, size: tuple[int, int] = (W, H), **value: Any) -> dict:
    control = kind.removesuffix("labels")
    return {
        "id": rid,
        "type": kind,
        "from_name": control,
        "to_name": "image",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {**value, kind: [label]},
    }


def polygon(rid: str, label: str, points_px: Any, size: tuple[int, int] = (W, H)) -> dict:
    w, h = size
    pts = [[x / w * 100, y / h * 100] for x, y in points_px]
    return region(rid, "polygonlabels", label, size, points=pts, closed=True)


def ellipse(rid: str, cx: float, cy: float, rx: float, ry: float, rot: float = 0.0) -> dict:
    return region(
        rid,
        "ellipselabels",
        "face",
        x=cx / W * 100,
        y=cy / H * 100,
        radiusX=rx / W * 100,
        radiusY=ry / H * 100,
        rotation=rot,
    )


def rectangle(rid: str, x: float, y: float, w: float, h: float, rot: float = 0.0) -> dict:
    return region(
        rid,
        "rectanglelabels",
        "license_plate",
        x=x / W * 100,
        y=y / H * 100,
        width=w / W * 100,
        height=h / H * 100,
        rotation=rot,
    )


def keypoint(rid: str, name: str, x: float, y: float) -> dict:
    return region(rid, "keypointlabels", name, x=x / W * 100, y=y / H * 100, width=0.3)


def brush(rid: str, label: str, mask: np.ndarray) -> dict:
    h, w = mask.shape
    rle = mask2rle((mask * 255).astype(np.uint8))
    return region(rid, "brushlabels", label, (w, h), format="rle", rle=rle)


def link(a: str, b: str) -> dict:
    return {
        "type": "relation",
        "from_id": a,
        "to_id": b,
        "direction": "bi",
        "labels": ["same_object"],
    }


def annotation(aid: int, result: list[dict], **extra: Any) -> dict:
    return {
        "id": aid,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "updated_at": "2026-01-01T10:00:00.000000Z",
        **extra,
    }


def task(tid: int, *annotations: dict) -> dict:
    return {
        "id": tid,
        "data": {"image": f"/data/local-files/?d=img{tid}.jpg"},
        "annotations": list(annotations),
    }


def convert(tasks: list[dict], size: tuple[int, int] = (W, H), **kwargs: Any) -> Conversion:
    def resolve(t: dict) -> ImageRef | None:
        return ImageRef(f"raw/images/{t['id']}.jpg", size[0], size[1], f"{t['id']:064x}")

    kwargs.setdefault("resolve_image", resolve)
    return to_coco(tasks, classes=list(CLASSES), keypoints=list(KEYPOINTS), **kwargs)


def masks(conv: Conversion) -> list[np.ndarray]:
    coco = pycoco(conv)
    return [coco.annToMask(a).astype(bool) for a in conv.coco["annotations"]]


def pycoco(conv: Conversion) -> COCO:
    coco = COCO()
    coco.dataset = conv.coco
    coco.createIndex()
    return coco


def kinds(conv: Conversion) -> list[str]:
    return [i.kind for i in conv.issues]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def even_odd(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels whose centres lie inside a polygon, by ray casting (independent of cv2)."""
    xs, ys = pixel_centres(width, height)
    inside = np.zeros((height, width), bool)
    for (ax, ay), (bx, by) in zip(points, np.roll(points, -1, axis=0), strict=True):
        if ay == by:
            continue
        crosses = (ys >= min(ay, by)) & (ys < max(ay, by))
        inside ^= crosses & (xs < ax + (ys - ay) * (bx - ax) / (by - ay))
    return inside


def pixel_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)


# ---------------------------------------------------------------------------------------------
# Brush RLE


def brush_masks() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    out = [
        ("empty", np.zeros((23, 37), bool)),
        ("full", np.ones((23, 37), bool)),
        ("single pixel", np.zeros((23, 37), bool)),
        ("last pixel", np.zeros((31, 17), bool)),
        ("1x1", np.ones((1, 1), bool)),
        ("noise", rng.random((29, 41)) < 0.5),
        ("long runs", np.ones((190, 190), bool)),  # runs longer than 2**16 values
    ]
    out[2][1][11, 18] = True
    out[3][1][-1, -1] = True
    for k in range(4):
        blob = np.zeros((47 + k, 61 + 2 * k), np.uint8)
        for _ in range(3):
            centre = rng.integers(0, (blob.shape[1], blob.shape[0]))
            axes = rng.integers(2, 20, 2)
            cv2.ellipse(
                blob,
                tuple(int(v) for v in centre),
                tuple(int(v) for v in axes),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        out.append((f"blobs {k}", blob.astype(bool)))
    return out


@pytest.mark.parametrize(("name", "mask"), brush_masks(), ids=[n for n, _ in brush_masks()])
def test_brush_rle_decodes_what_the_sdk_encodes(name: str, mask: np.ndarray) -> None:
    h, w = mask.shape
    assert np.array_equal(decode_brush_rle(mask2rle((mask * 255).astype(np.uint8)), w, h), mask)
    # What push writes: the SDK's bytes exactly.
    assert encode_brush_rle(mask) == mask2rle((mask * 255).astype(np.uint8))
    # What the Label Studio editor paints: the label's colour with alpha, so values vary
    # within a pixel (literal runs rather than repeats).
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[mask] = (30, 144, 255, 200)
    assert np.array_equal(decode_brush_rle(encode_rle(rgba.ravel()), w, h), mask)


def test_brush_rle_that_does_not_fit_the_image_is_an_error() -> None:
    rle = mask2rle(np.full((10, 12), 255, np.uint8))
    with pytest.raises(ValueError, match="holds 480 values, a 12x11 RGBA image has 528"):
        decode_brush_rle(rle, 12, 11)
    with pytest.raises(ValueError, match=r"ends before the image does|past the"):
        decode_brush_rle(mask2rle(np.eye(12, dtype=np.uint8) * 255)[:-4], 12, 12)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        decode_brush_rle([*rle[:-1], 300], 12, 10)


def test_brush_regions_become_masks_and_sizes_are_checked() -> None:
    mask = np.zeros((H, W), bool)
    mask[40:90, 100:180] = True
    mask[60:70, 5:9] = True
    block = np.zeros((H, W), bool)
    block[40:90, 100:180] = True
    # Sampled at pixel centres: the same block, drawn on the image at about half size.
    h, w = H // 2 + 1, W // 2 + 1
    rows, cols = (
        ((np.arange(h) + 0.5) * H / h).astype(int),
        ((np.arange(w) + 0.5) * W / w).astype(int),
    )
    small = block[rows][:, cols]
    conv = convert(
        [
            task(1, annotation(1, [brush("b1", "person", mask)])),
            task(2, annotation(2, [brush("b2", "vehicle", small)])),
            task(3, annotation(3, [brush("b3", "vehicle", np.zeros((H, W), bool))])),
        ]
    )
    got = masks(conv)
    assert np.array_equal(got[0], mask)
    assert iou(got[1], block) > 0.95  # drawn at half size: resized to the image
    assert kinds(conv) == ["size_mismatch", "degenerate"]
    assert conv.issues[0].task_id == 2 and f"{W // 2 + 1}x{H // 2 + 1}" in conv.issues[0].detail
    assert conv.issues[1].task_id == 3 and "b3" in conv.issues[1].detail


# ---------------------------------------------------------------------------------------------
# Geometry: percent coordinates and rotations, as Label Studio draws them


ROTATED = [
    # x, y, w, h (pixels), degrees clockwise
    (40.3, 30.7, 120.2, 44.9, 0.0),
    (150.5, 20.25, 90.0, 35.5, 30.0),
    (200.0, 60.0, 70.0, 50.0, 90.0),
    (60.0, 150.0, 140.0, 40.0, -35.0),
    (300.0, 100.0, 80.0, 30.0, 200.0),  # partly outside the image: clipped
]


def test_rectangle_rotation_turns_clockwise_about_the_top_left_corner() -> None:
    corners = rectangle_corners(100.0, 50.0, 40.0, 20.0, 90.0)
    assert np.allclose(corners, [[100, 50], [100, 90], [80, 90], [80, 50]])
    (got,) = masks(convert([task(1, annotation(1, [rectangle("r", 100, 50, 40, 20, 90)]))]))
    rows, cols = np.nonzero(got)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (80, 99, 50, 89)


@pytest.mark.parametrize("rect", ROTATED)
def test_rotated_rectangles_match_an_independent_rasterization(rect: tuple) -> None:
    x, y, w, h, deg = rect
    # Corners with plain numpy: the top edge leaves (x, y) at `deg` clockwise (y points down).
    th = np.deg2rad(deg)
    top, side = np.array([np.cos(th), np.sin(th)]) * w, np.array([-np.sin(th), np.cos(th)]) * h
    o = np.array([x, y])
    corners = np.array([o, o + top, o + top + side, o + side])
    assert np.allclose(rectangle_corners(x, y, w, h, deg), corners)
    (got,) = masks(convert([task(1, annotation(1, [rectangle("r", x, y, w, h, deg)]))]))
    assert iou(got, even_odd(corners, W, H)) > 0.97
    assert np.array_equal(got, rectangle_mask(x, y, w, h, deg, W, H))
    # The mask reaches each corner (clipped to the image) to within a pixel.
    rows, cols = np.nonzero(got)
    lo = np.clip(corners.min(axis=0), 0, [W, H])
    hi = np.clip(corners.max(axis=0), 0, [W, H])
    assert abs(cols.min() - lo[0]) <= 1 and abs(cols.max() + 1 - hi[0]) <= 1
    assert abs(rows.min() - lo[1]) <= 1 and abs(rows.max() + 1 - hi[1]) <= 1


ELLIPSES = [
    # cx, cy, rx, ry (pixels), degrees clockwise
    (100.3, 80.6, 40.0, 20.0, 0.0),
    (166.5, 93.5, 60.2, 25.7, 30.0),
    (250.0, 60.0, 30.0, 45.0, 123.0),
    (20.0, 170.0, 50.0, 30.0, -20.0),  # partly outside: clipped
]


@pytest.mark.parametrize("shape", ELLIPSES)
def test_rotated_ellipses_match_an_independent_rasterization(shape: tuple) -> None:
    cx, cy, rx, ry, deg = shape
    # Independent: a polygon of 720 points on the ellipse, turned clockwise.
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    th = np.deg2rad(deg)
    px = cx + rx * np.cos(t) * np.cos(th) - ry * np.sin(t) * np.sin(th)
    py = cy + rx * np.cos(t) * np.sin(th) + ry * np.sin(t) * np.cos(th)
    (got,) = masks(convert([task(1, annotation(1, [ellipse("e", cx, cy, rx, ry, deg)]))]))
    assert iou(got, even_odd(np.stack([px, py], 1), W, H)) > 0.97
    # Exactly the pixels whose centres the ellipse holds.
    xs, ys = pixel_centres(W, H)
    dx, dy = xs - cx, ys - cy
    u = (dx * math.cos(th) + dy * math.sin(th)) / rx
    v = (-dx * math.sin(th) + dy * math.cos(th)) / ry
    assert np.array_equal(got, u**2 + v**2 <= 1)
    assert np.array_equal(got, ellipse_mask(cx, cy, rx, ry, deg, W, H))
    cols = np.nonzero(got)[1]
    reach_x = math.hypot(rx * math.cos(th), ry * math.sin(th))
    assert abs(cols.min() - max(0, cx - reach_x)) <= 1


def test_ellipse_radii_are_percent_of_width_and_height_and_rotation_is_clockwise() -> None:
    # 90 degrees clockwise: the long axis (radiusX) turns vertical.
    (got,) = masks(convert([task(1, annotation(1, [ellipse("e", 150.0, 90.0, 60.0, 10.0, 90)]))]))
    rows, cols = np.nonzero(got)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 149, 140, 159)
    # 45 degrees clockwise: the long axis runs down to the right (y grows downwards).
    (got,) = masks(convert([task(1, annotation(1, [ellipse("e", 150.0, 90.0, 60.0, 10.0, 45)]))]))
    assert got[90 + 30, 150 + 30] and not got[90 - 30, 150 + 30]


def test_tiny_shapes_keep_the_pixel_under_their_centre() -> None:
    conv = convert(
        [
            task(
                1,
                annotation(
                    1, [ellipse("e", 10.2, 10.2, 0.2, 0.2), rectangle("r", 50.1, 50.1, 0.3, 0.3)]
                ),
            )
        ]
    )
    face, plate = masks(conv)
    assert face.sum() == 1 and face[10, 10] and plate.sum() == 1 and plate[50, 50]
    assert conv.issues == []


def test_polygons_round_trip_through_percent_coordinates() -> None:
    rng = np.random.default_rng(3)
    blob = np.zeros((H, W), np.uint8)
    for _ in range(4):
        centre = (int(rng.integers(60, 270)), int(rng.integers(40, 150)))
        cv2.ellipse(
            blob,
            centre,
            (int(rng.integers(5, 40)), int(rng.integers(5, 30))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
    n, pieces = cv2.connectedComponents(blob, connectivity=8)
    result = []
    for k in range(1, n):
        contours, _ = cv2.findContours(
            (pieces == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        # Vertices at the centres of the boundary pixels, as the synthetic export traces them.
        result.append(polygon(f"p{k}", "vehicle", max(contours, key=len).reshape(-1, 2) + 0.5))
    result += [link("p1", f"p{k}") for k in range(2, n)]
    conv = convert([task(1, annotation(1, result))])
    (got,) = masks(conv)
    # Outer outlines only: holes, if any, are filled.
    filled = np.zeros_like(blob)
    for k in range(1, n):
        contours, _ = cv2.findContours(
            (pieces == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(filled, contours, -1, 1, -1)
    assert np.array_equal(got, filled.astype(bool))
    assert conv.issues == []
    # A sub-pixel polygon holds about the pixels whose centres it contains.
    star = [
        (160 + r * math.cos(a), 90 + r * math.sin(a))
        for a, r in zip(
            np.linspace(0, 2 * np.pi, 10, endpoint=False), [70.3, 30.1] * 5, strict=True
        )
    ]
    (got,) = masks(convert([task(1, annotation(1, [polygon("s", "person", star)]))]))
    inside = even_odd(np.array(star), W, H)
    assert iou(got, inside) > 0.9 and not (inside & ~got).any()


def test_self_intersecting_polygons_are_reported_and_kept() -> None:
    bowtie = [(50, 50), (150, 120), (150, 50), (50, 120)]
    conv = convert([task(4, annotation(1, [polygon("bow", "person", bowtie)]))])
    assert kinds(conv) == ["self_intersecting"]
    assert conv.issues[0].task_id == 4 and "bow" in conv.issues[0].detail
    (got,) = masks(conv)
    # Both lobes (left and right of the crossing) are filled; above and below it is not.
    assert got[85, 60] and got[85, 140] and not got[55, 100] and not got[115, 100]
    # Traced 1-pixel spurs go out and back along the same line: touching, not crossing.
    spur = np.array([(10, 10), (20, 10), (30, 10), (20, 10), (20, 20), (10, 20)], float)
    assert not polygon_self_intersects(spur)
    assert polygon_self_intersects(np.array(bowtie, float))


# ---------------------------------------------------------------------------------------------
# The synthetic source's ground truth, converted back


def synthetic_config() -> SyntheticConfig:
    defaults = yaml.safe_load((REPO / "conf" / "collect" / "default.yaml").read_text())
    # Seed 2: drives of two frames, two of them panoramas with objects across the seam.
    return SyntheticConfig(
        **{
            **defaults["synthetic"],
            "count": 8,
            "seed": 2,
            "width": 480,
            "height": 360,
            "panorama_width": 768,
            "panorama_share": 0.5,
            "frames_per_session": 2,
        }
    )


@pytest.fixture(scope="module")
def synthetic_images() -> list[SyntheticImage]:
    return list(generate(synthetic_config()))


def synthetic_tasks(images: list[SyntheticImage]) -> list[dict]:
    return [
        labelstudio_task(img, f"/data/local-files/?d={img.name}", img.index + 1) for img in images
    ]


def convert_synthetic(images: list[SyntheticImage], tasks: list[dict]) -> Conversion:
    by_id = {img.index + 1: img for img in images}

    def resolve(t: dict) -> ImageRef:
        img = by_id[t["id"]]
        return ImageRef(f"raw/{img.name}", img.width, img.height, f"{img.index:064x}")

    return to_coco(tasks, classes=list(CLASSES), keypoints=list(KEYPOINTS), resolve_image=resolve)


def test_synthetic_ground_truth_round_trips(synthetic_images: list[SyntheticImage]) -> None:
    images = synthetic_images
    assert any(img.panorama for img in images) and any(not img.objects for img in images)
    conv = convert_synthetic(images, synthetic_tasks(images))
    assert conv.issues == []
    assert conv.counts["tasks"] == conv.counts["tasks.converted"] == len(images)
    assert len(conv.coco["images"]) == len(images)  # empty frames too: negatives
    coco = pycoco(conv)
    checked: Counter[str] = Counter()
    seams = 0
    for img in images:
        anns = coco.imgToAnns[img.index + 1]
        # One instance per object, in the export's order; region ids name the object.
        assert len(anns) == len(img.objects), img.name
        for obj, ann in zip(img.objects, anns, strict=True):
            assert {r.split("-")[0] for r in ann["region_ids"]} == {f"o{obj.instance_id}"}
            assert coco.cats[ann["category_id"]]["name"] == obj.label
            got = coco.annToMask(ann).astype(bool)
            rows, cols = np.nonzero(obj.mask)
            big = cols.max() - cols.min() >= 20 and rows.max() - rows.min() >= 20
            if obj.label in ("person", "vehicle") and big:
                assert iou(got, obj.mask) > 0.9, (img.name, obj.instance_id)
                checked[obj.label] += 1
            if obj.label in ("face", "license_plate") and obj.amodal_mask.sum() >= 40:
                # Ellipses and rectangles are the whole shape; the mask only what shows.
                assert iou(got, obj.amodal_mask) > 0.9, (img.name, obj.instance_id)
                assert not (obj.mask & ~got).any()
                checked[obj.label] += 1
            if obj.mask[:, 0].any() and obj.mask[:, -1].any():
                if got[:, 0].any() and got[:, -1].any():
                    # One instance with pixels at both ends; prepare splits seams.
                    assert ann["bbox"][2] == img.width
                    seams += 1
                else:  # the export leaves out pieces under 4 pixels
                    assert (obj.mask & ~got).sum() < 4
            if obj.label == "person":
                placed = np.array(ann["keypoints"], float).reshape(len(KEYPOINTS), 3)
                for name, (x, y, v) in obj.keypoints.items():
                    gx, gy, gv = placed[KEYPOINTS.index(name)]
                    if v > 0:
                        assert gv == 2 and abs(gx - x) <= 1 and abs(gy - y) <= 1
                    else:
                        assert (gx, gy, gv) == (0, 0, 0)
                assert ann["num_keypoints"] == sum(v > 0 for _, _, v in obj.keypoints.values())
    assert seams >= 2
    assert all(checked[c] >= 2 for c in CLASSES), checked


def test_unlinked_keypoints_find_their_person_or_are_reported(
    synthetic_images: list[SyntheticImage],
) -> None:
    tasks = synthetic_tasks(synthetic_images)
    points: set[str] = set()
    for t in tasks:
        result = t["annotations"][0]["result"]
        ids = {r["id"] for r in result if r["type"] == "keypointlabels"}
        t["annotations"][0]["result"] = [r for r in result if r.get("to_id") not in ids]
        points |= {f"{t['id']}/{rid}" for rid in ids}
    conv = convert_synthetic(synthetic_images, tasks)
    assert set(kinds(conv)) <= {"orphan_keypoint"}
    right = 0
    for ann in conv.coco["annotations"]:
        owner = ann["region_ids"][0].split("-")[0]  # the person's first polygon
        placed = [r for r in ann["region_ids"] if f"{ann['image_id']}/{r}" in points]
        assert len(placed) == ann.get("num_keypoints", 0)
        right += sum(r.split("-")[0] == owner for r in placed)
    placed_total = sum(a.get("num_keypoints", 0) for a in conv.coco["annotations"])
    # Every keypoint is placed or reported; hidden ones (behind another person) may land on
    # the wrong person, which is why the synthetic export links them.
    assert placed_total + kinds(conv).count("orphan_keypoint") == len(points)
    assert right >= 0.8 * len(points)


# ---------------------------------------------------------------------------------------------
# Which annotation, and what happens to every task


def test_the_annotation_rule_and_its_conflicts() -> None:
    old = annotation(11, [rectangle("a", 10, 10, 30, 10)], updated_at="2026-01-01T09:00:00Z")
    new = annotation(12, [rectangle("b", 100, 100, 30, 10)], updated_at="2026-01-02T09:00:00Z")
    cancelled = annotation(13, [], was_cancelled=True, updated_at="2026-01-03T09:00:00Z")
    winner, issues = choose_annotation(task(1, old, new, cancelled))
    assert winner is new
    assert [i.kind for i in issues] == ["cancelled", "conflict"]
    assert "13" in issues[0].detail
    assert "11, 12" in issues[1].detail and "converted 12" in issues[1].detail
    # Ground truth beats recency.
    truth = {**old, "ground_truth": True}
    winner, issues = choose_annotation(task(1, truth, new))
    assert winner is truth and "converted 11 (marked ground truth)" in issues[0].detail
    # Through to_coco: the winner's regions only, the conflict reported.
    conv = convert([task(5, old, new, cancelled)])
    (ann,) = conv.coco["annotations"]
    assert ann["region_ids"] == ["b"] and ann["bbox"][:2] == [100.0, 100.0]
    assert conv.coco["images"][0]["ls_annotation_id"] == 12
    assert [(i.task_id, i.kind) for i in conv.issues] == [(5, "cancelled"), (5, "conflict")]


def test_every_task_is_converted_or_counted_with_an_issue() -> None:
    face = ellipse("f", 50, 50, 10, 12)
    tasks = [
        task(1, annotation(1, [face])),
        task(2),  # never annotated
        {**task(3), "drafts": [{"id": 1, "result": [face]}], "predictions": [{"result": [face]}]},
        task(4, annotation(4, [face], was_cancelled=True)),  # skipped
        task(5, annotation(5, [])),  # annotated: nothing in it
        task(6, annotation(6, [face])),  # its image is not known
    ]
    conv = convert(
        tasks, resolve_image=lambda t: None if t["id"] == 6 else ImageRef("x.jpg", W, H, "0")
    )
    assert [(i.task_id, i.kind) for i in conv.issues] == [
        (2, "unannotated"),
        (3, "unannotated"),
        (4, "skipped"),
        (6, "unknown_image"),
    ]
    assert "1 drafts, 1 predictions" in conv.issues[1].detail
    assert "img6.jpg" in conv.issues[3].detail
    counts = conv.counts
    assert counts["tasks"] == 6
    assert (counts["tasks.converted"], counts["tasks.unannotated"]) == (2, 2)
    assert (counts["tasks.skipped"], counts["tasks.unknown_image"]) == (1, 1)
    assert counts["objects"] == counts["objects.face"] == 1 and counts["objects.vehicle"] == 0
    assert counts["issues"] == 4 and counts["issues.unannotated"] == 2
    assert [img["id"] for img in conv.coco["images"]] == [1, 5]  # 5: a negative image


# ---------------------------------------------------------------------------------------------
# Region issues


def test_degenerate_and_outside_shapes_are_reported_with_their_region() -> None:
    nan = polygon("nan", "person", [(10, 10), (40, 10), (40, 40)])
    nan["value"]["points"][1][0] = float("nan")
    bad_brush = brush("brush-bad", "person", np.ones((H, W), bool))
    bad_brush["value"]["rle"] = bad_brush["value"]["rle"][:5]
    regions = [
        polygon("two", "person", [(10, 10), (40, 40)]),
        polygon("point", "person", [(10, 10), (10, 10), (10, 10)]),
        nan,
        ellipse("flat", 50, 50, 0, 10),
        rectangle("thin", 50, 50, 20, 0),
        polygon("far", "vehicle", [(-50, -50), (-10, -50), (-10, -10)]),
        ellipse("gone", W + 30, 50, 10, 10),
        rectangle("below", 10, H + 1, 20, 10),
        keypoint("kp-out", "nose", W + 5, 10),
        region("no-value", "polygonlabels", "person"),
        bad_brush,
        polygon("edge", "vehicle", [(-20, 100), (30, 100), (30, 140), (-20, 140)]),  # clipped
    ]
    del regions[9]["value"]
    conv = convert([task(9, annotation(1, regions))])
    expected = [
        ("two", "degenerate"),
        ("point", "degenerate"),
        ("nan", "degenerate"),
        ("flat", "degenerate"),
        ("thin", "degenerate"),
        ("far", "outside_image"),
        ("gone", "outside_image"),
        ("below", "outside_image"),
        ("kp-out", "outside_image"),
        ("no-value", "malformed_region"),
        ("brush-bad", "malformed_region"),
    ]
    assert [i.kind for i in conv.issues] == [kind for _, kind in expected]
    for issue, (rid, _) in zip(conv.issues, expected, strict=True):
        assert (
            issue.task_id == 9 and f"region {rid} " in issue.detail and "left out" in issue.detail
        )
    (edge,) = masks(conv)
    # Clipped at the left edge; filled with its outline (at most half a pixel more).
    assert edge[100:140, 0:30].all() and edge.sum() <= 31 * 41 and not edge[:, 31:].any()
    assert conv.counts["regions"] == len(regions) and conv.counts["regions.kept"] == 1


def test_labels_outside_the_taxonomy_and_odd_results_are_reported() -> None:
    two = rectangle("two", 10, 10, 20, 10)
    two["value"]["rectanglelabels"] = ["license_plate", "face"]
    unlabeled = rectangle("none", 10, 10, 20, 10)
    unlabeled["value"]["rectanglelabels"] = []
    text = {"id": "p", "type": "textarea", "from_name": "ocr", "value": {"text": ["AB-12"]}}
    result = [
        polygon("bike", "bicycle", [(10, 10), (40, 10), (40, 40)]),
        keypoint("chin", "chin", 20, 20),
        two,
        unlabeled,
        text,
        rectangle("p", 100, 100, 30, 10),
        {"type": "relation", "from_id": "p", "to_id": "ghost", "labels": ["same_object"]},
        {"type": "relation", "from_id": "p", "to_id": "bike", "labels": ["parent_of"]},
        {"type": "relation", "from_id": "p", "to_id": "bike", "labels": ["same_object"]},
    ]
    conv = convert([task(3, annotation(1, result))])
    assert kinds(conv) == [
        "unknown_label",
        "unknown_label",
        "ambiguous_label",
        "unknown_label",
        "unsupported",
        "dangling_relation",
        "unsupported",
    ]
    assert "'bicycle'" in conv.issues[0].detail and "region bike " in conv.issues[0].detail
    assert "'chin'" in conv.issues[1].detail
    assert "textarea" in conv.issues[4].detail and "ghost" in conv.issues[5].detail
    (plate,) = conv.coco["annotations"]  # the link to the left-out "bike" is no error
    assert plate["region_ids"] == ["p"]
    assert set(ISSUE_KINDS) >= set(kinds(conv))


def test_linked_regions_of_several_classes_become_one_object_each() -> None:
    result = [
        polygon("body", "person", [(50, 50), (90, 50), (90, 150), (50, 150)]),
        ellipse("face", 70, 60, 8, 10),
        link("body", "face"),
    ]
    conv = convert([task(1, annotation(1, result))])
    assert kinds(conv) == ["mixed_labels"]
    assert [a["region_ids"] for a in conv.coco["annotations"]] == [["body"], ["face"]]


# ---------------------------------------------------------------------------------------------
# Keypoints


def person_box(rid: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return polygon(rid, "person", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def test_keypoints_go_to_the_person_that_holds_them() -> None:
    result = [
        person_box("left", 20, 20, 80, 180),
        person_box("right", 200, 20, 260, 180),
        keypoint("n1", "nose", 50.5, 30.25),  # inside left's mask
        keypoint("n2", "nose", 230, 30),  # inside right's mask
        keypoint("e2", "left_eye", 263, 25),  # just beside right's box: within the margin
        keypoint("n3", "nose", 52, 32),  # a second nose in left: left has one
        keypoint("far", "right_ear", 140, 100),  # between them, near neither
        keypoint("linked", "left_ear", 300, 10),  # linked: it goes where the link says
        link("left", "linked"),
    ]
    conv = convert([task(2, annotation(1, result))])
    left, right = conv.coco["annotations"]
    kps = {name: tuple(left["keypoints"][3 * k : 3 * k + 3]) for k, name in enumerate(KEYPOINTS)}
    assert kps["nose"] == (50.5, 30.25, 2) and kps["left_ear"] == (300.0, 10.0, 2)
    assert kps["left_eye"] == kps["right_eye"] == kps["right_ear"] == (0, 0, 0)
    assert left["num_keypoints"] == 2 and right["num_keypoints"] == 2
    assert right["keypoints"][:6] == [230.0, 30.0, 2, 263.0, 25.0, 2]
    # A nose already taken: the point goes to the next person lacking one, if near, else orphan.
    assert kinds(conv) == ["orphan_keypoint", "orphan_keypoint"]
    assert "n3" in conv.issues[0].detail and "far" in conv.issues[1].detail
    assert all(i.task_id == 2 for i in conv.issues)


def test_linked_duplicate_keypoints_and_persons_without_keypoints() -> None:
    result = [
        person_box("p", 20, 20, 80, 180),
        keypoint("a", "nose", 50, 30),
        keypoint("b", "nose", 52, 31),
        link("p", "a"),
        link("a", "b"),
        person_box("q", 200, 20, 260, 180),
    ]
    conv = convert([task(1, annotation(1, result))])
    assert kinds(conv) == ["duplicate_keypoint"] and "region b " in conv.issues[0].detail
    p, q = conv.coco["annotations"]
    assert p["num_keypoints"] == 1 and q["num_keypoints"] == 0
    assert q["keypoints"] == [0.0, 0.0, 0] * len(KEYPOINTS)


# ---------------------------------------------------------------------------------------------
# Malformed exports and the COCO output


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"tasks": []}, "JSON list of tasks, got dict"),
        ([task(1), "task"], r"task #1 of the export is str"),
        ([{"data": {}}], r"task #0 of the export has no integer 'id'"),
        ([{"id": 4}], r"task #0 \(id 4\) has no 'data'"),
        ([task(1), task(1)], r"task #1 \(id 1\): id 1 appears twice"),
        ([{**task(7), "annotations": {}}], r"task #0 \(id 7\): 'annotations' is not a list"),
        ([task(7, {"id": 3, "result": None})], r"annotation #0 \(id 3\) has no 'result'"),
        ([task(7, {"id": 3, "result": ["x"]})], r"annotation #0 \(id 3\) has no 'result'"),
    ],
)
def test_malformed_exports_raise_a_clear_error(export: Any, message: str) -> None:
    with pytest.raises(AnonlabError, match=message):
        convert(export)


def test_coco_output_loads_in_pycocotools_and_carries_the_taxonomy() -> None:
    body = person_box("p", 20, 20, 80, 180)
    result = [body, keypoint("k", "nose", 50, 30), ellipse("f", 150, 60, 9, 12, 20)]
    conv = convert(
        [task(1, annotation(1, result)), task(2, annotation(2, [rectangle("r", 5, 5, 30, 9)]))]
    )
    coco = pycoco(conv)
    cats = conv.coco["categories"]
    assert [(c["id"], c["name"]) for c in cats] == list(enumerate(CLASSES, start=1))
    person = coco.loadCats(coco.getCatIds(catNms=["person"]))[0]
    assert person["keypoints"] == list(KEYPOINTS) and person["skeleton"] == []
    assert all("keypoints" not in c for c in cats if c["name"] != "person")
    assert conv.coco["images"][0] == {
        "id": 1,
        "file_name": "raw/images/1.jpg",
        "width": W,
        "height": H,
        "sha256": f"{1:064x}",
        "ls_annotation_id": 1,
    }
    ours = [
        ellipse_mask(150, 60, 9, 12, 20, W, H),
        rectangle_mask(5, 5, 30, 9, 0, W, H),
    ]
    anns = conv.coco["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3] and [a["image_id"] for a in anns] == [1, 1, 2]
    for ann, mask in zip(anns[1:], ours, strict=True):
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
        rows, cols = np.nonzero(mask)
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
        assert ann["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
        assert isinstance(ann["segmentation"]["counts"], str)
    assert anns[0]["keypoints"][:3] == [50.0, 30.0, 2] and anns[0]["num_keypoints"] == 1
    assert coco.getAnnIds(imgIds=[1], catIds=coco.getCatIds(catNms=["face"])) == [2]
