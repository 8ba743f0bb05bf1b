"""Detections as Label Studio regions, read back by convert as pull reads them: a face across a
panorama's seam stays one object, a box-only person keeps its keypoints."""

from __future__ import annotations

import numpy as np

from annotation.convert import ImageRef, to_coco
from annotation.labeling_config import labels_by_control
from annotation.predictions import detection_regions
from data.synthetic.images import CLASSES, KEYPOINTS
from serving.runtime.detections import Detections

OFFERED = labels_by_control(CLASSES, KEYPOINTS)


def _read_back(result: list[dict], width: int, height: int) -> list[dict]:
    task = {"id": 7, "data": {}, "annotations": [{"id": 1, "result": result}]}
    ref = ImageRef("x.jpg", width, height, "0" * 64)
    conversion = to_coco(
        [task], classes=list(CLASSES), keypoints=list(KEYPOINTS), resolve_image=lambda t: ref
    )
    assert not conversion.issues
    return conversion.coco["annotations"]


def test_a_face_across_the_seam_is_drawn_at_both_ends_as_one_object() -> None:
    width, height = 400, 200
    mask = np.ones((10, 20), bool)  # the window of a box from x 390 to 410: 10 px past the seam
    dets = Detections([[390, 50, 410, 60]], [0.8], [CLASSES.index("face") + 1], masks=[mask])
    result = detection_regions(
        dets, classes=CLASSES, keypoint_names=[], offered=OFFERED, width=width, height=height
    )
    assert [r["type"] for r in result] == ["ellipselabels", "ellipselabels", "relation"]
    assert [r["value"]["x"] for r in result[:2]] == [100.0, 0.0]  # centre at 400 and at 0
    [face] = _read_back(result, width, height)
    x, y, w, h = face["bbox"]
    assert (x, w) == (0, width)  # pixels at both ends: one object across the seam
    assert y >= 50 and y + h <= 60


def test_a_box_only_person_becomes_a_polygon_with_its_keypoints() -> None:
    width, height = 160, 120
    names = list(KEYPOINTS)
    keypoints = np.zeros((1, len(names), 3), np.float32)
    keypoints[0, :, :2] = [[60 + 2 * k, 30 + k] for k in range(len(names))]
    keypoints[0, :, 2] = 1.0
    keypoints[0, 1, 2] = -2.0  # a keypoint the model does not place
    dets = Detections(
        [[50.0, 20.0, 90.0, 110.0]], [0.9], [CLASSES.index("person") + 1], keypoints=keypoints
    )
    result = detection_regions(
        dets, classes=CLASSES, keypoint_names=names, offered=OFFERED, width=width, height=height
    )
    kinds = [r["type"] for r in result]
    assert kinds.count("polygonlabels") == 1
    assert kinds.count("keypointlabels") == len(names) - 1
    [person] = _read_back(result, width, height)
    assert person["bbox"] == [50, 20, 40, 90]
    got = np.array(person["keypoints"]).reshape(-1, 3)
    for k in range(len(names)):
        if k == 1:
            assert got[k].tolist() == [0, 0, 0]
        else:
            assert np.allclose(got[k, :2], keypoints[0, k, :2], atol=0.01) and got[k, 2] == 2
