"""The synthetic source: determinism, kinds as review should judge them, exact ground truth,
panorama seams, the Label Studio export and the EXIF that `encode` writes."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import ExifTags, Image

from data.config import SyntheticConfig
from data.synthetic import generate, generate_one, labelstudio_task
from data.synthetic.images import CLASSES, KEYPOINTS, SyntheticImage, SyntheticObject
from data.synthetic.labelstudio import SAME_OBJECT
from data.synthetic.plan import KINDS

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "conf" / "collect" / "default.yaml").read_text())["synthetic"]
# Review's near-duplicate threshold (bits of a 64-bit perceptual hash).
NEAR_DUPLICATE_BITS = yaml.safe_load((REPO / "conf" / "review" / "default.yaml").read_text())[
    "near_duplicate_hamming"
]


def config(**overrides: object) -> SyntheticConfig:
    return SyntheticConfig(**{**DEFAULTS, **overrides})


@pytest.fixture(scope="module")
def images() -> list[SyntheticImage]:
    """The default configuration's images."""
    return list(generate(config()))


def small_config(**overrides: object) -> SyntheticConfig:
    """Small frames, with panoramas and near-duplicates early on."""
    base = {
        "count": 12,
        "width": 160,
        "height": 120,
        "panorama_width": 256,
        "panorama_share": 0.5,
        "frames_per_session": 4,
        "near_duplicate_share": 0.3,
    }
    return config(**{**base, **overrides})


def review_gray(img: SyntheticImage) -> np.ndarray:
    """The image as review scores it: the JPEG decoded at reduced size, long side 256."""
    im = Image.open(io.BytesIO(img.encode()))
    im.draft("L", (256, 256))
    im = im.convert("L")
    im.thumbnail((256, 256))
    return np.asarray(im)


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def phash(gray: np.ndarray) -> np.ndarray:
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    return low > np.median(low[1:])


def luminance(img: SyntheticImage) -> float:
    return float((img.image.astype(float) @ [0.299, 0.587, 0.114]).mean() / 255)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def shift_between(before: SyntheticImage, after: SyntheticImage) -> tuple[int, int] | None:
    """The small (dx, dy) that moves every mask of `before` onto `after`, away from the edges."""
    for dy, dx in itertools.product(range(-2, 3), repeat=2):
        if all(
            np.array_equal(np.roll(a.mask, (dy, dx), (0, 1))[3:-3, 3:-3], b.mask[3:-3, 3:-3])
            for a, b in zip(before.objects, after.objects, strict=True)
        ):
            return dx, dy
    return None


def top_level(img: SyntheticImage) -> list[SyntheticObject]:
    return [o for o in img.objects if o.parent_id is None]


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_config_gives_the_same_bytes() -> None:
    cfg = small_config()
    first, second = list(generate(cfg)), list(generate(cfg))
    assert len(first) == cfg.count
    assert {"near_duplicate", "normal"} <= {img.kind for img in first}
    assert any(img.panorama for img in first) and not all(img.panorama for img in first)
    assert [img.image.tobytes() for img in first] == [img.image.tobytes() for img in second]
    assert [img.encode() for img in first] == [img.encode() for img in second]


def test_raising_count_only_appends_images() -> None:
    short, long = small_config(count=6), small_config(count=12)
    a, b = list(generate(short)), list(generate(long))
    assert [x.encode() for x in a] == [x.encode() for x in b[:6]]
    for x, y in zip(a, b, strict=False):
        assert [o.label for o in x.objects] == [o.label for o in y.objects]
        assert all(
            np.array_equal(o.mask, p.mask) for o, p in zip(x.objects, y.objects, strict=True)
        )
    # A near-duplicate alone regenerates the frame it repeats: the same image as in sequence.
    dup = next(img for img in b if img.kind == "near_duplicate")
    assert generate_one(long, dup.index).encode() == dup.encode()


def test_negative_seeds_work() -> None:
    negative, positive = (
        generate_one(small_config(seed=-3), 0),
        generate_one(small_config(seed=3), 0),
    )
    assert negative.image.ndim == 3 and negative.encode() != positive.encode()


# ---------------------------------------------------------------------------------------------
# Structure and kinds


def test_sessions_names_times_and_places(images: list[SyntheticImage]) -> None:
    frames = DEFAULTS["frames_per_session"]
    assert [img.index for img in images] == list(range(DEFAULTS["count"]))
    assert len({img.name for img in images}) == len(images)
    for img in images:
        session, frame = divmod(img.index, frames)
        assert img.name == f"drive-{session:03d}/frame-{frame:04d}.jpg"
        assert img.session == f"synthetic-drive-{session:03d}"
        assert img.kind in KINDS
        assert img.image.dtype == np.uint8 and img.image.ndim == 3
    steps = set()
    for before, after in itertools.pairwise(images):
        if before.session == after.session:
            steps.add(after.captured_at - before.captured_at)
            assert after.panorama == before.panorama
            assert (after.gps is None) == (before.gps is None)
            if after.kind == "near_duplicate":
                assert after.gps == before.gps  # stopped
    (step,) = steps  # one frame rate
    assert step.total_seconds() > 0


def test_kinds_and_panoramas_follow_the_configured_shares() -> None:
    cfg = config(count=200, width=64, height=64, panorama_width=128)
    kinds, panoramas = [], 0
    for img in generate(cfg):
        kinds.append(img.kind)
        panoramas += img.panorama
        if img.kind == "empty":
            assert img.objects == []
    for kind in ("empty", "near_duplicate", "dark", "blurry"):
        share = kinds.count(kind) / cfg.count
        assert share == pytest.approx(getattr(cfg, f"{kind}_share"), abs=0.025), kind
    # Panoramas come by whole sessions (25 of them here).
    assert panoramas / cfg.count == pytest.approx(cfg.panorama_share, abs=0.06)


def test_kinds_look_as_review_should_judge_them(images: list[SyntheticImage]) -> None:
    by_kind: dict[str, list[SyntheticImage]] = {k: [] for k in KINDS}
    for img in images:
        by_kind[img.kind].append(img)
    assert all(by_kind[k] for k in KINDS), {k: len(v) for k, v in by_kind.items()}
    normal = by_kind["normal"]
    assert min(luminance(img) for img in normal) > 0.3
    assert max(luminance(img) for img in by_kind["dark"]) < 0.09
    # Review rejects blurry images below a Laplacian variance of 40 at its working size.
    assert min(sharpness(review_gray(img)) for img in normal) > 200
    assert max(sharpness(review_gray(img)) for img in by_kind["blurry"]) < 30
    for img in by_kind["empty"]:
        assert img.objects == []
    assert all(img.objects for img in normal)


def test_near_duplicates_repeat_their_previous_frame_and_others_do_not(
    images: list[SyntheticImage],
) -> None:
    for before, after in itertools.pairwise(images):
        if before.session != after.session:
            continue
        a, b = review_gray(before), review_gray(after)
        distance = int((phash(a) != phash(b)).sum())
        if after.kind == "near_duplicate":
            assert distance <= 2
            # Slightly softer than the original, so that review keeps the original.
            assert sharpness(b) < sharpness(a)
            assert [o.label for o in after.objects] == [o.label for o in before.objects]
            if after.objects:
                assert shift_between(before, after) not in (None, (0, 0))
        else:
            assert distance > NEAR_DUPLICATE_BITS + 2, (before.name, after.name)


# ---------------------------------------------------------------------------------------------
# Ground truth


def test_ground_truth_is_consistent(images: list[SyntheticImage]) -> None:
    occluded = 0
    for img in images:
        h, w = img.height, img.width
        ids = [o.instance_id for o in img.objects]
        assert len(set(ids)) == len(ids)
        by_id = {o.instance_id: o for o in img.objects}
        for obj in img.objects:
            assert obj.label in CLASSES
            assert obj.mask.shape == (h, w) and obj.mask.dtype == bool
            assert obj.mask.sum() >= 4
            amodal = obj.amodal_mask
            assert not (obj.mask & ~amodal).any()
            occluded += obj.mask.sum() < 0.8 * amodal.sum()
            if obj.label in ("face", "license_plate"):
                parent = by_id[obj.parent_id]
                assert parent.label == ("person" if obj.label == "face" else "vehicle")
                assert not (obj.mask & ~parent.mask).any(), "a part outside its parent"
            else:
                assert obj.parent_id is None
            assert (obj.text is not None) == (obj.label == "license_plate")
            assert (obj.ellipse is not None) == (obj.label == "face")
            assert (obj.rect is not None) == (obj.label == "license_plate")
        parents = top_level(img)
        for a in parents:
            for b in parents:
                if a is b:
                    continue
                assert not (a.mask & b.mask).any(), "two objects own one pixel"
                if a.depth < b.depth:  # a is nearer: where both would be, b is hidden
                    assert not (a.amodal_mask & b.mask).any()
        # What an object does not show is shown by something nearer (or, for at most a few
        # pixels, by a nearer object itself almost hidden, too small to annotate).
        for obj in parents:
            hidden = obj.amodal_mask & ~obj.mask
            nearer = np.zeros((h, w), bool)
            for other in parents:
                if other.depth <= obj.depth and other is not obj:
                    nearer |= other.mask
            assert (hidden & ~nearer).sum() < 4
        plates = [o.parent_id for o in img.objects if o.label == "license_plate"]
        faces = [o.parent_id for o in img.objects if o.label == "face"]
        assert len(set(plates)) == len(plates) and len(set(faces)) == len(faces)
    assert occluded >= 10, "the scenes should have occlusions to test"


def test_keypoints_follow_coco(images: list[SyntheticImage]) -> None:
    seen = {0: 0, 1: 0, 2: 0}
    behind_something = 0
    for img in images:
        for obj in img.objects:
            if obj.label != "person":
                assert obj.keypoints == {}
                continue
            assert list(obj.keypoints) == list(KEYPOINTS)
            others = [o for o in top_level(img) if o is not obj]
            for x, y, v in obj.keypoints.values():
                seen[v] += 1
                if v == 0:
                    assert (x, y) == (0.0, 0.0)
                    continue
                assert 0 <= x < img.width and 0 <= y < img.height
                covered = any(o.mask[int(y), int(x)] for o in others)
                # A keypoint under another object is hidden (v=1), never visible.
                assert not (covered and v == 2)
                behind_something += covered
    assert all(seen.values()), seen
    assert behind_something > 0


def test_faces_sit_on_their_heads(images: list[SyntheticImage]) -> None:
    """Eyes seen from the front lie inside the face ellipse; face pixels are skin coloured."""
    checked = 0
    for img in images:
        if img.kind != "normal":
            continue
        by_id = {o.instance_id: o for o in img.objects}
        for face in (o for o in img.objects if o.label == "face"):
            cx, cy, a, b, deg = face.ellipse
            person = by_id[face.parent_id]
            for eye in ("left_eye", "right_eye"):
                x, y, v = person.keypoints[eye]
                if v == 2 and not img.panorama:
                    th = math.radians(deg)
                    lx = (x - cx) * math.cos(th) + (y - cy) * math.sin(th)
                    ly = -(x - cx) * math.sin(th) + (y - cy) * math.cos(th)
                    assert (lx / a) ** 2 + (ly / b) ** 2 <= 1.0
            if face.mask.sum() > 200:
                r, g, bl = img.image[face.mask].astype(float).mean(axis=0)
                assert r > g > bl, "face pixels should be skin"
                checked += 1
    assert checked >= 3


def test_plates_are_light_and_readable_text(images: list[SyntheticImage]) -> None:
    checked = 0
    for img in images:
        for plate in (o for o in img.objects if o.label == "license_plate"):
            assert re.fullmatch(r"[A-Z0-9][A-Z0-9 -]{5,}[A-Z0-9]", plate.text)
            if img.kind == "normal" and plate.mask.sum() > 150:
                assert (img.image[plate.mask].astype(float) @ [0.299, 0.587, 0.114]).mean() > 140
                checked += 1
    assert checked >= 3


def test_objects_come_at_every_size(images: list[SyntheticImage]) -> None:
    faces = [o.mask.sum() for img in images for o in img.objects if o.label == "face"]
    assert min(faces) < 16 * 16 and max(faces) > 96 * 96
    plates = [o.mask.sum() for img in images for o in img.objects if o.label == "license_plate"]
    assert min(plates) < 8 * 8 and max(plates) > 32 * 32 / 2
    tilted = [o for img in images for o in img.objects if o.rect is not None and o.rect[4] != 0]
    assert tilted, "some plates hang crooked"


def test_panoramas_are_2_to_1_and_objects_cross_the_seam(images: list[SyntheticImage]) -> None:
    panoramas = [img for img in images if img.panorama]
    assert panoramas
    crossing = 0
    for img in panoramas:
        assert (img.width, img.height) == (
            DEFAULTS["panorama_width"],
            DEFAULTS["panorama_width"] // 2,
        )
        if img.kind == "empty":
            continue
        crossing += any(o.mask[:, 0].any() and o.mask[:, -1].any() for o in img.objects)
    non_empty = [img for img in panoramas if img.kind != "empty"]
    assert crossing >= 0.75 * len(non_empty)


# ---------------------------------------------------------------------------------------------
# Label Studio export


def rasterize_region(region: dict, width: int, height: int) -> np.ndarray:
    """The pixels (by centre) a Label Studio region covers, as its documented geometry says."""
    value = region["value"]
    out = np.zeros((height, width), bool)
    if region["type"] == "polygonlabels":
        pts = np.array(value["points"]) * [width / 100, height / 100]
        cv2.fillPoly(out.view(np.uint8), [np.round(pts - 0.5).astype(np.int32)], 1)
        return out
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    th = math.radians(value["rotation"])
    if region["type"] == "ellipselabels":
        dx, dy = xs - value["x"] * width / 100, ys - value["y"] * height / 100
        lx = dx * math.cos(th) + dy * math.sin(th)
        ly = -dx * math.sin(th) + dy * math.cos(th)
        a, b = value["radiusX"] * width / 100, value["radiusY"] * height / 100
        return (lx / a) ** 2 + (ly / b) ** 2 <= 1
    assert region["type"] == "rectanglelabels"
    # Label Studio: (x, y) is the top-left corner, the box turns clockwise about it.
    dx, dy = xs - value["x"] * width / 100, ys - value["y"] * height / 100
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    w, h = value["width"] * width / 100, value["height"] * height / 100
    return (u >= 0) & (u <= w) & (v >= 0) & (v <= h)


def regions_by_object(result: list[dict]) -> list[list[dict]]:
    """Group regions into objects by their same_object relations (as a converter would)."""
    regions = {r["id"]: r for r in result if r["type"] != "relation"}
    group = {rid: rid for rid in regions}
    for rel in (r for r in result if r["type"] == "relation"):
        assert rel["labels"] == [SAME_OBJECT] and rel["direction"] == "bi"
        group[rel["to_id"]] = group[rel["from_id"]]
    out: dict[str, list[dict]] = {}
    for rid, region in regions.items():
        out.setdefault(group[rid], []).append(region)
    return list(out.values())


def test_labelstudio_task_has_the_export_format(images: list[SyntheticImage]) -> None:
    img = next(i for i in images if i.kind == "normal" and not i.panorama)
    task = labelstudio_task(img, "/data/local-files/?d=raw/x.jpg", 7)
    json.dumps(task)
    assert task["id"] == 7 and task["data"] == {"image": "/data/local-files/?d=raw/x.jpg"}
    assert task["predictions"] == [] and task["meta"] == {}
    for key in ("created_at", "updated_at", "inner_id", "total_annotations", "project"):
        assert key in task
    assert (task["total_annotations"], task["cancelled_annotations"]) == (1, 0)
    (annotation,) = task["annotations"]
    assert isinstance(annotation["completed_by"], int) and annotation["was_cancelled"] is False
    assert annotation["ground_truth"] is False and annotation["lead_time"] > 0
    assert annotation["created_at"].endswith("Z")
    regions = [r for r in annotation["result"] if r["type"] != "relation"]
    assert len({r["id"] for r in regions}) == len(regions)
    names = {
        "polygonlabels": "polygon",
        "ellipselabels": "ellipse",
        "rectanglelabels": "rectangle",
        "keypointlabels": "keypoint",
    }
    for r in regions:
        assert r["from_name"] == names[r["type"]] and r["to_name"] == "image"
        assert (r["original_width"], r["original_height"]) == (img.width, img.height)
        assert r["image_rotation"] == 0 and r["origin"] == "manual"
        assert all(isinstance(v, float) for k, v in r["value"].items() if k in ("x", "y"))
    assert {r["type"] for r in regions} == set(names)
    # A second export of the same image is identical.
    assert labelstudio_task(img, "/data/local-files/?d=raw/x.jpg", 7) == task


def test_labelstudio_regions_reproduce_the_ground_truth(images: list[SyntheticImage]) -> None:
    checked = {"person": 0, "vehicle": 0, "face": 0, "license_plate": 0}
    for img in images:
        if img.kind == "empty":
            continue
        w, h = img.width, img.height
        task = labelstudio_task(img, f"synthetic://{img.name}", img.index + 1)
        groups = regions_by_object(task["annotations"][0]["result"])
        assert len(groups) == len(img.objects)
        for obj, group in zip(img.objects, groups, strict=True):
            shapes = [r for r in group if r["type"] != "keypointlabels"]
            drawn = np.zeros((h, w), bool)
            for region in shapes:
                label = region["value"][region["type"]]
                assert label == [obj.label]
                drawn |= rasterize_region(region, w, h)
            ys, xs = np.nonzero(obj.mask)
            big = xs.max() - xs.min() >= 20 and ys.max() - ys.min() >= 20
            if obj.label in ("person", "vehicle") and big:
                assert iou(drawn, obj.mask) > 0.93, (img.name, obj.instance_id)
                checked[obj.label] += 1
            if obj.label in ("face", "license_plate") and obj.amodal_mask.sum() >= 40:
                # Ellipses and rectangles are the whole shape; the mask only what shows.
                assert iou(drawn, obj.amodal_mask) > 0.97, (img.name, obj.instance_id)
                assert not (obj.mask & ~drawn).any()
                checked[obj.label] += 1
            points = [r for r in group if r["type"] == "keypointlabels"]
            expected = {k: (x, y) for k, (x, y, v) in obj.keypoints.items() if v > 0}
            assert {r["value"]["keypointlabels"][0] for r in points} == set(expected)
            for r in points:
                x, y = expected[r["value"]["keypointlabels"][0]]
                assert r["value"]["x"] == pytest.approx(x / w * 100)
                assert r["value"]["y"] == pytest.approx(y / h * 100)
                assert r["value"]["width"] == 0.3
    assert all(n >= 3 for n in checked.values()), checked


def test_seam_crossing_objects_are_linked_regions_on_both_sides(
    images: list[SyntheticImage],
) -> None:
    linked = 0
    for img in (i for i in images if i.panorama and i.kind != "empty"):
        task = labelstudio_task(img, "x", 1)
        groups = regions_by_object(task["annotations"][0]["result"])
        for obj, group in zip(img.objects, groups, strict=True):
            if not (obj.mask[:, 0].any() and obj.mask[:, -1].any()):
                continue
            shapes = [r for r in group if r["type"] != "keypointlabels"]
            assert len(shapes) >= 2, (img.name, obj.label)
            lefts = [rasterize_region(r, img.width, img.height)[:, :2].any() for r in shapes]
            rights = [rasterize_region(r, img.width, img.height)[:, -2:].any() for r in shapes]
            assert any(lefts) and any(rights)
            linked += 1
    assert linked >= 2


# ---------------------------------------------------------------------------------------------
# Encoding


def test_encode_writes_the_capture_metadata(images: list[SyntheticImage]) -> None:
    img = next(i for i in images if i.gps is not None and i.kind == "normal")
    for candidate in (img, dataclasses.replace(img, gps=None)):
        decoded = Image.open(io.BytesIO(candidate.encode()))
        assert decoded.format == "JPEG" and decoded.size == (img.width, img.height)
        exif = decoded.getexif()
        assert exif[ExifTags.Base.Orientation] == 1
        stamp = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal]
        assert stamp == candidate.captured_at.strftime("%Y:%m:%d %H:%M:%S")
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        if candidate.gps is None:
            assert not gps
            continue
        lat = sum(float(v) / 60**k for k, v in enumerate(gps[ExifTags.GPS.GPSLatitude]))
        lon = sum(float(v) / 60**k for k, v in enumerate(gps[ExifTags.GPS.GPSLongitude]))
        lat *= -1 if gps[ExifTags.GPS.GPSLatitudeRef] == "S" else 1
        lon *= -1 if gps[ExifTags.GPS.GPSLongitudeRef] == "W" else 1
        assert (lat, lon) == pytest.approx(candidate.gps, abs=1e-6)
        pixels = np.asarray(decoded.convert("RGB"), float)
        assert np.abs(pixels - img.image).mean() < 4
    panorama = next(i for i in images if i.panorama)
    xmp = Image.open(io.BytesIO(panorama.encode())).info.get("xmp", b"")
    assert b'GPano:ProjectionType="equirectangular"' in xmp
