"""evaluate's report.html on a hand-built set scored by the real scorer: the gallery counts the
misses of every object of a class ("N of M missed"), captions each crop with its image's file and
session, draws the model's own detections at its thresholds; IoU is named mask or box; false
positives per image are shown."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from evaluation.config import GalleryConfig
from evaluation.gallery import detections_at, miss_gallery
from evaluation.report import ModelReport, SetReport, render_report
from evaluation.score import score
from evaluation.scoring.options import ScoreOptions

SIDE = 120
THRESHOLDS = {"face": 0.5, "license_plate": 0.5}
# Face A found and covered; face B under a detection scoring below the threshold (missed); face C
# with nothing on it (missed); the plate found. One face detection matches nothing: a false
# positive, 1 per image on this one-image set.
BOXES = {"A": [10, 10, 16, 16], "B": [50, 10, 16, 16], "C": [10, 70, 16, 16], "P": [70, 80, 30, 10]}


def _rle(box: list[int]) -> dict:
    x, y, w, h = box
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[y : y + h, x : x + w] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _case(tmp_path: Path, session: bool = True) -> tuple[dict, list[dict]]:
    cv2.imwrite(str(tmp_path / "frame-0001.png"), np.full((SIDE, SIDE, 3), 90, np.uint8))
    image = {"id": 1, "width": SIDE, "height": SIDE, "file_name": "images/frame-0001.png"}
    if session:
        image["session"] = "drive-07"
    (tmp_path / "images").mkdir()
    (tmp_path / "frame-0001.png").rename(tmp_path / "images" / "frame-0001.png")
    names = {"A": 1, "B": 1, "C": 1, "P": 2}
    gt = {
        "images": [image],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "license_plate"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": names[key],
                "bbox": box,
                "area": box[2] * box[3],
                "segmentation": _rle(box),
                "iscrowd": 0,
            }
            for k, (key, box) in enumerate(BOXES.items())
        ],
    }

    def detection(box: list[int], category: int, s: float) -> dict:
        return {
            "image_id": 1,
            "category_id": category,
            "bbox": box,
            "score": s,
            "segmentation": _rle(box),
        }

    results = [
        detection(BOXES["A"], 1, 0.9),
        detection(BOXES["B"], 1, 0.3),  # below the face threshold: not hidden, not drawn
        detection(BOXES["P"], 2, 0.8),
        detection([90, 20, 12, 12], 1, 0.7),  # on no object: a false positive
    ]
    return gt, results


def _colours(jpeg: bytes) -> dict[str, np.ndarray]:
    """Where a crop is red (the object's box) and cyan (the model's detections), JPEG's blur
    allowed for."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    b, g, r = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    return {"red": r - np.maximum(b, g) > 80, "cyan": np.minimum(b, g) - r > 80}


def _scored(gt: dict, results: list[dict]):
    options = ScoreOptions(thresholds=THRESHOLDS, coverage=0.9, n_boot=0, per_object=True)
    return score(gt, results, options)


def test_gallery_counts_every_object_captions_by_file_and_session_and_draws_detections(
    tmp_path: Path,
) -> None:
    gt, results = _case(tmp_path)
    result = _scored(gt, results)
    shown = detections_at(results, gt, THRESHOLDS)
    assert sorted(d["score"] for d in shown[1]) == [0.7, 0.8, 0.9]  # 0.3 is below its threshold
    gallery = miss_gallery(
        tmp_path, gt, result.objects, shown, GalleryConfig(max_per_set=2, context=1.0)
    )

    assert gallery.by_class == {"face": (2, 3), "license_plate": (0, 1)}
    assert len(gallery.crops) == 2  # B then C: identifiable, smallest first (a tie: in order)
    assert gallery.crops[0].caption == (
        "face (small, 16x16 px), 0% covered; frame-0001.png, session drive-07"
    )
    # B's crop (x 26-90, y 0-50, drawn at twice the size): its red box, and in cyan the
    # detections above threshold that reach into it (A at the left edge, the false positive
    # at the right), never the one below the threshold on B itself.
    b, c = (_colours(m.jpeg) for m in gallery.crops)
    assert b["red"][20:52, 48:80].any() and b["cyan"].any()
    assert not b["cyan"][24:48, 52:76].any()
    assert c["red"].any() and not c["cyan"].any()  # nothing above threshold near C

    page = render_report(
        [
            ModelReport(
                name="m",
                version=None,
                champion_version=None,
                thresholds={c: {"threshold": t, "reached": True} for c, t in THRESHOLDS.items()},
                sets=[SetReport("holdout", result, misses=gallery.crops, missed=gallery.by_class)],
            )
        ],
        targets={"face": 0.95, "license_plate": 0.95},
        coverage=0.9,
        identifiable={},
        generated="now",
    )
    assert "Missed on holdout: 2 of 4 objects missed (face 2 of 3, license_plate 0 of 1)" in page
    assert "Showing 2 of 2" in page
    assert "frame-0001.png, session drive-07" in page
    assert result.iou_type == "segm" and "<th>mask IoU</th>" in page and ">iou<" not in page
    assert "val recall (mask IoU)" in page
    face = [row for row in page.split("<tr>") if row.startswith("<td>face</td>")]
    assert face[-1].startswith("<td>face</td><td>1.000</td>")  # FP / image at the threshold
    assert result.false_positives_per_image["face"] == 1.0


def test_box_iou_is_named_and_an_image_without_session_is_captioned_by_its_file(
    tmp_path: Path,
) -> None:
    gt, results = _case(tmp_path, session=False)
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    result = _scored(gt, boxes_only)
    gallery = miss_gallery(
        tmp_path, gt, result.objects, {}, GalleryConfig(max_per_set=5, context=1.0)
    )
    assert [m.caption.rsplit("; ", 1)[1] for m in gallery.crops] == ["frame-0001.png"] * 2
    page = render_report(
        [
            ModelReport(
                "m",
                None,
                None,
                {c: {"threshold": t} for c, t in THRESHOLDS.items()},
                [SetReport("holdout", result, misses=gallery.crops, missed=gallery.by_class)],
            )
        ],
        targets={},
        coverage=0.9,
        identifiable={},
        generated="now",
    )
    assert result.iou_type == "bbox"
    assert "<th>box IoU</th>" in page and "<th>mask IoU</th>" not in page
    assert "val recall (box IoU)" in page
