"""One image, upright: pictures stored turned, with EXIF orientations 1 to 8, and annotated as a
viewer shows them, go through collect, review, pull, prepare, the training dataset and evaluate's
reading of its ground truth, and every box, mask and keypoint stays on its object.

Each object is painted in its own colour at its annotated place in the upright picture; the
picture is then stored turned (by Pillow, not by the code under test) with the EXIF tag that
turns it back. Wherever a stage hands out an image with annotations, the annotated pixels must
carry the object's colour.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image, ImageOps
from pycocotools import mask as mask_util

from annotation.convert.region_masks import ellipse_region_mask as ellipse_mask
from annotation.convert.region_masks import rectangle_region_mask as rectangle_mask
from annotation.pull import run_pull
from data.coco.files import load_ground_truth
from data.collect import LABEL_STUDIO_LOCAL_FILES, run_collect
from data.config import compose
from data.errors import AnonlabError
from data.image_info import inspect_image
from data.manifest import read_manifest, read_reviewed
from data.prepare import run_prepare
from data.review import run_review
from data.shapes import polygon_mask
from evaluation.predict import predict_set
from serving.params import Project, load_project
from serving.runtime.detections import Detections
from serving.runtime.imagefile import FORMAT_EXTENSIONS, read_upright
from serving.runtime.tiles import TilingSpec
from tests.conftest import REPO
from training.dataset import CocoDetection

CLASSES = ["face", "person", "license_plate", "vehicle"]
KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
# RGB, far from every grey of the background and from each other.
COLOUR = {
    "face": (255, 0, 0),
    "person": (0, 0, 255),
    "license_plate": (0, 200, 0),
    "vehicle": (255, 0, 255),
    "nose": (255, 255, 0),
}
TOLERANCE = 70  # per channel: JPEG's chroma subsampling blurs colour edges
# Pillow's transposition that undoes each orientation (Pillow's exif_transpose applies the
# other way round): 6 and 8 undo each other, the others undo themselves.
STORE_TURN = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# Upright sizes: larger than prepare's 512-px tiles (cut), smaller (whole), reference (whole).
KINDS = {"tiled": (700, 380), "whole": (400, 300), "ref": (400, 300)}
# A manifest row, less its sizes and orientation.
ROW = {
    "path": "images/aa/x.jpg",
    "source": "test",
    "source_path": "/drive/x.jpg",
    "session": "drive",
    "format": "JPEG",
    "bit_depth": 8,
    "channels": 3,
    "size": 1000,
    "source_version": "1000:1",
    "collected_at": "2026-01-01T00:00:00+00:00",
    "delete_after": "2026-07-01T00:00:00+00:00",
}


def near(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Which pixels (any shape ending in RGB) are within TOLERANCE of `colour`."""
    lo = np.clip(np.array(colour) - TOLERANCE, 0, 255).astype(float)
    hi = np.clip(np.array(colour) + TOLERANCE, 0, 255).astype(float)
    flat = np.ascontiguousarray(pixels, np.uint8).reshape(-1, 1, 3)
    return cv2.inRange(flat, lo, hi).reshape(pixels.shape[:-1]) > 0


def scene(width: int, height: int, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An upright picture (grey structure, one painted object per class, a nose on the person)
    and its Label Studio regions, drawn on that upright picture."""
    rng = np.random.default_rng(seed)
    grey = np.full((height, width), 120, np.int16)
    for _ in range(10):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        grey[y : y + height // 3, x : x + width // 4] = int(rng.integers(50, 200))
    grey += rng.integers(-15, 15, grey.shape).astype(np.int16)
    picture = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)

    def pct(v: float, size: int) -> float:
        return v / size * 100

    def region(rid: str, kind: str, label: str, **value: Any) -> dict[str, Any]:
        return {
            "id": rid,
            "type": kind,
            "from_name": kind.removesuffix("labels"),
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {**value, kind: [label]},
        }

    # One object per quarter of the picture, placed at random within it.
    cells = rng.permutation([(0, 0), (1, 0), (0, 1), (1, 1)])
    corner = [
        (
            int(cx * width / 2 + rng.integers(10, width / 2 - 90)),
            int(cy * height / 2 + rng.integers(10, height / 2 - 80)),
        )
        for cx, cy in cells
    ]
    (fx, fy), (px, py), (lx, ly), (vx, vy) = corner
    face = ellipse_mask(fx + 30, fy + 35, 28, 34, 0, width, height)
    person_points = [(px, py), (px + 60, py + 5), (px + 70, py + 70), (px + 5, py + 65)]
    person = polygon_mask(np.array(person_points, float), width, height)
    plate = rectangle_mask(lx, ly, 75, 30, 0, width, height)
    yy, xx = np.mgrid[:height, :width]
    vehicle = (xx - vx - 35) ** 2 + (yy - vy - 30) ** 2 <= 30**2
    for name, mask in (("face", face), ("person", person), ("license_plate", plate)):
        picture[mask] = COLOUR[name]
    picture[vehicle] = COLOUR["vehicle"]
    nose = (px + 35.5, py + 35.5)
    picture[int(nose[1]) - 5 : int(nose[1]) + 6, int(nose[0]) - 5 : int(nose[0]) + 6] = COLOUR[
        "nose"
    ]
    result = [
        region(
            "f",
            "ellipselabels",
            "face",
            x=pct(fx + 30, width),
            y=pct(fy + 35, height),
            radiusX=pct(28, width),
            radiusY=pct(34, height),
            rotation=0,
        ),
        region(
            "p",
            "polygonlabels",
            "person",
            points=[[pct(x, width), pct(y, height)] for x, y in person_points],
            closed=True,
        ),
        region(
            "l",
            "rectanglelabels",
            "license_plate",
            x=pct(lx, width),
            y=pct(ly, height),
            width=pct(75, width),
            height=pct(30, height),
            rotation=0,
        ),
        region(
            "v",
            "brushlabels",
            "vehicle",
            format="rle",
            rle=mask2rle((vehicle * 255).astype(np.uint8)),
        ),
        region(
            "n",
            "keypointlabels",
            "nose",
            x=pct(nose[0], width),
            y=pct(nose[1], height),
            width=0.3,
        ),
        {"type": "relation", "from_id": "p", "to_id": "n", "direction": "bi",
         "labels": ["same_object"]},
    ]  # fmt: skip
    return picture, result


def stored_file(picture: np.ndarray, orientation: int, fmt: str) -> bytes:
    """The upright `picture` stored turned, with the EXIF orientation that turns it back."""
    img = Image.fromarray(picture)
    if orientation != 1:
        img = img.transpose(STORE_TURN[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    data = out.getvalue()
    # A viewer (Pillow's) shows the picture as it was painted.
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert shown.shape == picture.shape and np.abs(shown.astype(int) - picture).mean() < 8
    return data


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """24 pictures (orientations 1-8, three kinds each, some PNG) collected from two folders,
    annotated upright in a Label Studio export, reviewed, pulled and prepared."""
    import hashlib

    root = tmp_path_factory.mktemp("upright")
    tasks = []
    for orientation in range(1, 9):
        for k, (kind, (width, height)) in enumerate(KINDS.items()):
            picture, result = scene(width, height, seed=10 * orientation + k)
            fmt = "PNG" if kind == "whole" and orientation % 2 == 0 else "JPEG"
            data = stored_file(picture, orientation, fmt)
            ext = ".png" if fmt == "PNG" else ".jpg"
            folder = "refs" if kind == "ref" else "pool"
            path = root / folder / f"{kind}-o{orientation}" / f"frame{ext}"
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            task_id = len(tasks) + 1
            url = f"{LABEL_STUDIO_LOCAL_FILES}images/{sha[:2]}/{sha}{ext}"
            annotation = {
                "id": task_id,
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "updated_at": "2026-01-01T10:00:00.000000Z",
            }
            tasks.append({"id": task_id, "data": {"image": url}, "annotations": [annotation]})
    (root / "export.json").write_text(json.dumps(tasks))
    (root / "params.yaml").write_text(compose(REPO / "conf"))
    project = load_project(
        root / "params.yaml",
        [
            f"collect.sources=[{{uri:{root / 'pool'}}},{{uri:{root / 'refs'},name:refs}}]",
            "annotation.source=export",
            f"annotation.export_file={root / 'export.json'}",
            "prepare.reference_sets=[{name:holdout,tags:[refs]}]",
        ],
    )
    p, artifacts = project.params, project.artifacts
    run_collect(p.collect, artifacts / "raw", taxonomy=p.taxonomy, root=project.root)
    review = run_review(p.review, artifacts / "raw", artifacts / "reviewed")
    assert review.kept == 24, "review rejected a picture; the test needs all of them"
    pulled = run_pull(p.annotation, p.taxonomy, artifacts, project.root)
    # Drawn at the upright size, which is the image's size: no size mismatch, nothing left out.
    assert pulled.issues == {} and pulled.objects == dict.fromkeys(CLASSES, 24)
    run_prepare(p.prepare, p.taxonomy, artifacts, project.root)
    return project


def test_collect_records_the_upright_size_and_the_stored_one(project: Project) -> None:
    records = read_manifest(project.artifacts / "raw" / "manifest.jsonl")
    assert sorted(r.orientation for r in records) == sorted(list(range(1, 9)) * 3)
    for r in records:
        kind = Path(r.source_path).parent.name.split("-")[0]
        assert (r.width, r.height) == KINDS[kind]
        turned = r.orientation >= 5
        stored = (r.height, r.width) if turned else (r.width, r.height)
        assert (r.stored_width, r.stored_height) == stored
    assert {r.sha256 for r in read_reviewed(project.artifacts)} == {r.sha256 for r in records}


def check_sample(image: np.ndarray, target: dict[str, Any], where: str) -> int:
    """Every box, mask and nose of one training sample on its object's colour; the count."""
    boxes, masks, labels = target["boxes"].numpy(), target["masks"].numpy(), target["labels"]
    keypoints = target["keypoints"].numpy()
    for i, label in enumerate(labels.tolist()):
        colour = COLOUR[CLASSES[label - 1]]
        mask = masks[i].astype(bool)
        assert near(image[mask], colour).mean() > 0.7, f"{where}: mask of {CLASSES[label - 1]}"
        ys, xs = np.nonzero(near(image, colour))
        x0, y0, x1, y1 = boxes[i]
        # The painted object fills the box (up to a pixel of JPEG blur at its edges).
        painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.allclose(painted, [x0, y0, x1, y1], atol=2), f"{where}: box of {label}"
        if CLASSES[label - 1] == "person":
            x, y, v = keypoints[i][0]
            assert v > 0 and near(image[int(y), int(x)], COLOUR["nose"]), f"{where}: nose"
    return len(labels)


def test_training_samples_have_every_annotation_on_its_object(project: Project) -> None:
    prepared = project.artifacts / "prepared"
    objects: dict[str, set[str]] = {}
    tiles = 0
    for split in ("train", "val"):
        dataset = CocoDetection(
            prepared / f"{split}.json", classes=CLASSES, keypoint_names=KEYPOINTS
        )
        for index, info in enumerate(dataset.images):
            tensor, target = dataset[index]
            image = tensor.permute(1, 2, 0).numpy()
            where = f"{split} {info['file_name']}"
            assert image.shape[:2] == (info["height"], info["width"])
            check_sample(image, target, where)
            objects.setdefault(info["sha256"], set()).update(
                CLASSES[int(label) - 1] for label in target["labels"]
            )
            if "tile" in info:
                tiles += 1
                # Tiles are written upright, with no orientation tag to turn them again.
                assert 0x0112 not in Image.open(prepared / info["file_name"]).getexif()
    # 16 pictures, 8 of them cut into tiles; no object lost on the way.
    assert len(objects) == 16 and tiles >= 8
    assert all(found == set(CLASSES) for found in objects.values())


def colour_detector(windows: list[np.ndarray]) -> list[Detections]:
    """Finds each class by its colour: boxes and masks where the pixels it is given have it."""
    out = []
    for window in windows:
        boxes, labels, masks = [], [], []
        for label, name in enumerate(CLASSES, start=1):
            hit = near(window, COLOUR[name])
            if name == "person":
                hit |= near(window, COLOUR["nose"])
            ys, xs = np.nonzero(hit)
            if len(xs):
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                boxes.append([x0, y0, x1, y1])
                labels.append(label)
                masks.append(hit[y0:y1, x0:x1])
        out.append(Detections(np.array(boxes).reshape(-1, 4), [1.0] * len(labels), labels, masks))
    return out


def test_evaluate_reads_reference_images_in_the_frame_of_their_ground_truth(
    project: Project,
) -> None:
    path = project.artifacts / "prepared" / "refs" / "holdout.json"
    gt = load_ground_truth(path)
    assert len(gt["images"]) == 8
    results, _ = predict_set(
        gt["images"],
        colour_detector,
        TilingSpec(tile=512, overlap=64),
        images_root=path.parent.parent,
        category_ids=[c["id"] for c in gt["categories"]],
        desc="refs",
    )
    found = {(r["image_id"], r["category_id"]): r for r in results}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for ann in gt["annotations"]:
        where = f"ref image {ann['image_id']}, {names[ann['category_id']]}"
        hit = found[(ann["image_id"], ann["category_id"])]
        truth = mask_util.decode(ann["segmentation"]).astype(bool)
        shown = mask_util.decode(hit["segmentation"]).astype(bool)
        assert (truth & shown).sum() / (truth | shown).sum() > 0.8, where
        assert np.allclose(hit["bbox"], ann["bbox"], atol=2), where
        if names[ann["category_id"]] == "person":
            image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
            x, y = ann["keypoints"][:2]
            upright = read_upright(path.parent.parent / image["file_name"])
            assert near(upright[int(y), int(x)], COLOUR["nose"]), where


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_collect_measures_the_image_the_upright_decode_gives(fmt: str) -> None:
    picture = np.repeat(np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, 8, 0), 8, 1)
    picture = np.dstack([picture, 255 - picture, picture // 2])  # 32x24, no symmetry
    for orientation in range(1, 9):
        data = stored_file(picture, orientation, fmt)
        info = inspect_image(data, "frame" + FORMAT_EXTENSIONS[fmt][0], 10**6)
        upright = read_upright(data)
        assert upright.shape == (info.height, info.width, 3) == picture.shape
        assert info.orientation == orientation
        if fmt in ("PNG", "TIFF"):  # lossless: the very picture
            assert np.array_equal(upright, picture)
        else:
            assert np.abs(upright.astype(int) - picture).mean() < 8


def test_a_manifest_written_with_stored_sizes_is_read_upright(tmp_path: Path) -> None:
    # Rows written before the stored size was recorded: width/height as Pillow gave them (as
    # stored; upright for TIFF), None when the file has no orientation.
    rows = [
        {**ROW, "sha256": "a" * 64, "width": 64, "height": 48, "orientation": 6},
        {**ROW, "sha256": "b" * 64, "width": 64, "height": 48, "orientation": None},
        {**ROW, "sha256": "c" * 64, "width": 48, "height": 64, "orientation": 6,
         "format": "TIFF"},
        {**ROW, "sha256": "d" * 64, "width": 48, "height": 64, "orientation": 6,
         "stored_width": 64, "stored_height": 48},
    ]  # fmt: skip
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sizes = [
        (r.width, r.height, r.stored_width, r.stored_height, r.orientation)
        for r in read_manifest(path)
    ]
    assert sizes == [(48, 64, 64, 48, 6), (64, 48, 64, 48, 1)] + [(48, 64, 64, 48, 6)] * 2


def test_prepare_refuses_annotations_made_at_the_stored_size(
    project: Project, tmp_path: Path
) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project.root, copy)
    coco_file = copy / "artifacts" / "annotations" / "coco.json"
    coco = json.loads(coco_file.read_text())
    turned = {r.sha256 for r in read_reviewed(copy / "artifacts") if r.orientation >= 5}
    for image in coco["images"]:
        if image["sha256"] in turned:  # as a pull from a manifest of stored sizes gave them
            image["width"], image["height"] = image["height"], image["width"]
    coco_file.write_text(json.dumps(coco))
    before = (copy / "artifacts" / "prepared" / "train.json").read_bytes()
    p = project.params
    with pytest.raises(AnonlabError, match=r"12 image\(s\) annotated at another size(?s:.*)pull"):
        run_prepare(p.prepare, p.taxonomy, copy / "artifacts", copy)
    assert (copy / "artifacts" / "prepared" / "train.json").read_bytes() == before
