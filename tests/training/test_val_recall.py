"""The training-time recall counts found objects as worked out by hand: thresholds, labels,
one-to-one greedy matching, size buckets by `area`, crowd, accumulation, empty inputs."""

from __future__ import annotations

import pytest
import torch

from training.val_recall import RecallCounter, flat_metrics

CLASSES = ["face", "person", "license_plate", "vehicle"]
FACE, PERSON, PLATE = 1, 2, 3


def _target(boxes, labels, areas=None, iscrowd=None) -> dict[str, torch.Tensor]:
    """A dataset target; `area` defaults to the box area, as for a box-shaped mask."""
    box = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if areas is None:
        areas = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).tolist()
    return {
        "boxes": box,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "area": torch.tensor(areas, dtype=torch.float32),
        "iscrowd": torch.tensor(iscrowd or [0] * len(labels), dtype=torch.int64),
    }


def _pred(boxes, labels, scores) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def _counts(counter: RecallCounter, name: str, bucket: str = "all") -> tuple[int, int]:
    entry = counter.result()["recall"][name][bucket]
    return entry["n"], entry["found"]


def test_perfect_predictions_recall_one_where_objects_exist() -> None:
    # A 20x20 face (small), a 100x200 person (large), a 40x10 plate (area 400: small).
    boxes = [[0, 0, 20, 20], [100, 0, 200, 200], [300, 300, 340, 310]]
    labels = [FACE, PERSON, PLATE]
    counter = RecallCounter(CLASSES)
    counter.update([_pred(boxes, labels, [0.9, 0.8, 0.7])], [_target(boxes, labels)])
    result = counter.result()

    assert result["recall"]["face"]["small"] == {"n": 1, "found": 1, "recall": 1.0}
    assert result["recall"]["person"]["large"] == {"n": 1, "found": 1, "recall": 1.0}
    assert result["recall"]["license_plate"]["small"] == {"n": 1, "found": 1, "recall": 1.0}
    for name in ["face", "person", "license_plate"]:
        assert result["recall"][name]["all"]["recall"] == 1.0
    # Buckets without objects, and the class without any, have no recall.
    assert result["recall"]["face"]["tiny"] == {"n": 0, "found": 0, "recall": None}
    assert result["recall"]["vehicle"]["all"] == {"n": 0, "found": 0, "recall": None}
    # Mean over the three classes with objects, each 1.0.
    assert result["mean_recall"] == 1.0
    assert result["scorer"] == "minimal"
    assert result["score_threshold"] == 0.5
    assert result["iou_threshold"] == 0.5
    assert set(result["recall"]["face"]) == {"tiny", "small", "medium", "large", "all"}


def test_detection_below_score_threshold_does_not_count() -> None:
    box = [[0, 0, 50, 50]]
    counter = RecallCounter(CLASSES)
    # 0.49 < 0.5: ignored; the face is missed.
    counter.update([_pred(box, [FACE], [0.49])], [_target(box, [FACE])])
    assert _counts(counter, "face") == (1, 0)
    assert counter.result()["recall"]["face"]["all"]["recall"] == 0.0
    # Exactly at the threshold counts (score >= threshold).
    counter.update([_pred(box, [FACE], [0.5])], [_target(box, [FACE])])
    assert _counts(counter, "face") == (2, 1)
    # A lower operating point lets 0.3 count.
    low = RecallCounter(CLASSES, score_threshold=0.3)
    low.update([_pred(box, [FACE], [0.3])], [_target(box, [FACE])])
    assert _counts(low, "face") == (1, 1)


def test_wrong_label_does_not_count() -> None:
    box = [[0, 0, 50, 50]]
    counter = RecallCounter(CLASSES)
    # A plate detection exactly on a face does not find the face.
    counter.update([_pred(box, [PLATE], [0.99])], [_target(box, [FACE])])
    assert _counts(counter, "face") == (1, 0)
    assert _counts(counter, "license_plate") == (0, 0)


@pytest.mark.parametrize(
    ("detection", "found"),
    [
        # GT [0,0,100,100] (area 10000). Detection [0,0,100,y1] contains it, so
        # IoU = 10000 / (100 * y1).
        ([0, 0, 100, 201], 0),  # 10000 / 20100 = 0.4975 < 0.5
        ([0, 0, 100, 200], 1),  # 10000 / 20000 = 0.5 exactly: counts (IoU >= threshold)
        ([0, 0, 100, 199], 1),  # 10000 / 19900 = 0.5025 >= 0.5
    ],
)
def test_iou_just_below_and_above_threshold(detection: list[int], found: int) -> None:
    counter = RecallCounter(CLASSES)
    counter.update([_pred([detection], [FACE], [0.9])], [_target([[0, 0, 100, 100]], [FACE])])
    assert _counts(counter, "face") == (1, found)


def test_iou_threshold_is_configurable() -> None:
    # IoU 0.5025 as above: found at 0.5, missed at 0.75.
    strict = RecallCounter(CLASSES, iou_threshold=0.75)
    strict.update([_pred([[0, 0, 100, 199]], [FACE], [0.9])], [_target([[0, 0, 100, 100]], [FACE])])
    assert _counts(strict, "face") == (1, 0)


def test_one_detection_overlapping_two_objects_finds_one() -> None:
    # Faces A [0,0,10,10] and B [2,0,12,10]; detection [1,0,11,10] overlaps each by 9x10 = 90,
    # union 110: IoU 0.818 with both. One-to-one: it finds one of them, the other is missed.
    counter = RecallCounter(CLASSES)
    counter.update(
        [_pred([[1, 0, 11, 10]], [FACE], [0.9])],
        [_target([[0, 0, 10, 10], [2, 0, 12, 10]], [FACE, FACE])],
    )
    assert _counts(counter, "face") == (2, 1)


@pytest.mark.parametrize(
    ("scores", "found"),
    [
        # Faces A [0,0,10,10], B [2,0,12,10].
        # D1 [0.5,0,10.5,10]: IoU with A 95/105 = 0.905, with B 85/115 = 0.739.
        # D2 [-3,0,7,10]:      IoU with A 70/130 = 0.538, with B 50/150 = 0.333.
        # D1 first (higher score) takes A, its best; D2 then overlaps only A, taken: B missed.
        # Greedy by score, as COCO, not the best assignment (D1->B, D2->A would find both).
        ((0.6, 0.9), 1),
        # D2 first takes A; D1 then takes B, the free one: both found.
        ((0.9, 0.6), 2),
    ],
)
def test_matching_is_greedy_by_descending_score(scores: tuple[float, float], found: int) -> None:
    # D2 is listed first: order in the tensor must not matter, only scores.
    d2_score, d1_score = scores
    counter = RecallCounter(CLASSES)
    counter.update(
        [_pred([[-3, 0, 7, 10], [0.5, 0, 10.5, 10]], [FACE, FACE], [d2_score, d1_score])],
        [_target([[0, 0, 10, 10], [2, 0, 12, 10]], [FACE, FACE])],
    )
    assert _counts(counter, "face") == (2, found)


def test_buckets_by_area() -> None:
    # Square faces far apart, all found except the 50x50 one (no detection).
    sides = {"tiny": 15, "small": 20, "medium": 50, "large": 200}
    boxes, x = [], 0
    for side in sides.values():
        boxes.append([x, 0, x + side, side])
        x += side + 10
    # 15² = 225 < 256: tiny; 20² = 400 < 1024: small; 50² = 2500 < 9216: medium; 200²: large.
    labels = [FACE] * 4
    detected = [b for b, side in zip(boxes, sides.values(), strict=True) if side != 50]
    counter = RecallCounter(CLASSES)
    counter.update([_pred(detected, [FACE] * 3, [0.9] * 3)], [_target(boxes, labels)])
    recall = counter.result()["recall"]["face"]
    assert recall["tiny"] == {"n": 1, "found": 1, "recall": 1.0}
    assert recall["small"] == {"n": 1, "found": 1, "recall": 1.0}
    assert recall["medium"] == {"n": 1, "found": 0, "recall": 0.0}
    assert recall["large"] == {"n": 1, "found": 1, "recall": 1.0}
    assert recall["all"] == {"n": 4, "found": 3, "recall": 0.75}


def test_bucket_comes_from_area_not_box() -> None:
    # A 100x100 box whose mask covers 255 pixels (< 16² = 256): tiny, as COCO buckets by area.
    # Area exactly 256 is small (bounds are exclusive upper bounds).
    boxes = [[0, 0, 100, 100], [200, 0, 300, 100]]
    counter = RecallCounter(CLASSES)
    counter.update(
        [_pred(boxes, [FACE, FACE], [0.9, 0.9])],
        [_target(boxes, [FACE, FACE], areas=[255.0, 256.0])],
    )
    assert _counts(counter, "face", "tiny") == (1, 1)
    assert _counts(counter, "face", "small") == (1, 1)
    assert _counts(counter, "face", "large") == (0, 0)


def test_crowd_objects_are_not_counted() -> None:
    # A crowd of faces (missed) and one face (found): n = 1, recall 1.0. A detection on the
    # crowd region does not count either way.
    boxes = [[0, 0, 100, 100], [200, 0, 250, 50]]
    counter = RecallCounter(CLASSES)
    counter.update(
        [_pred([[200, 0, 250, 50], [0, 0, 100, 100]], [FACE, FACE], [0.9, 0.9])],
        [_target(boxes, [FACE, FACE], iscrowd=[1, 0])],
    )
    assert _counts(counter, "face") == (1, 1)
    assert _counts(counter, "face", "large") == (0, 0)
    # A crowd alone: no objects at all.
    only_crowd = RecallCounter(CLASSES)
    only_crowd.update([_pred([], [], [])], [_target([[0, 0, 100, 100]], [FACE], iscrowd=[1])])
    assert only_crowd.result()["mean_recall"] is None


def test_two_updates_equal_one_update_with_both_images() -> None:
    # Image 1: face found, plate missed. Image 2: face missed (score 0.2), person found.
    preds = [
        _pred([[0, 0, 30, 30]], [FACE], [0.9]),
        _pred([[0, 0, 30, 30], [50, 50, 150, 250]], [FACE, PERSON], [0.2, 0.8]),
    ]
    targets = [
        _target([[0, 0, 30, 30], [100, 100, 140, 110]], [FACE, PLATE]),
        _target([[0, 0, 30, 30], [50, 50, 150, 250]], [FACE, PERSON]),
    ]
    split = RecallCounter(CLASSES)
    split.update(preds[:1], targets[:1])
    split.update(preds[1:], targets[1:])
    joined = RecallCounter(CLASSES)
    joined.update(preds, targets)
    assert split.result() == joined.result()
    # face 1/2 = 0.5, person 1/1 = 1.0, plate 0/1 = 0.0; mean (0.5 + 1.0 + 0.0) / 3 = 0.5.
    assert _counts(joined, "face") == (2, 1)
    assert joined.result()["mean_recall"] == pytest.approx(0.5)


def test_empty_predictions_and_empty_targets() -> None:
    nothing = _pred([], [], [])
    no_objects = _target([], [])
    # No predictions: every object missed, recall 0.0 (not None).
    counter = RecallCounter(CLASSES)
    counter.update([nothing], [_target([[0, 0, 40, 40]], [FACE])])
    assert _counts(counter, "face") == (1, 0)
    assert counter.result()["mean_recall"] == 0.0
    # No objects: predictions change nothing; no recall anywhere.
    empty = RecallCounter(CLASSES)
    empty.update([_pred([[0, 0, 40, 40]], [FACE], [0.9]), nothing], [no_objects, no_objects])
    empty.update([], [])
    result = empty.result()
    assert result["mean_recall"] is None
    assert all(
        entry == {"n": 0, "found": 0, "recall": None}
        for buckets in result["recall"].values()
        for entry in buckets.values()
    )
    assert flat_metrics(result) == {}


def test_bad_input_is_a_clear_error() -> None:
    counter = RecallCounter(CLASSES)
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        counter.update([_pred([], [], [])] * 2, [_target([], [])])
    with pytest.raises(ValueError, match=r"label 5 is outside 1\.\.4"):
        counter.update([_pred([], [], [])], [_target([[0, 0, 10, 10]], [5])])


def test_flat_metrics_names() -> None:
    # Face found (small, 20x20), plate missed (small, 40x10): recall 1.0 and 0.0, mean 0.5.
    counter = RecallCounter(CLASSES)
    counter.update(
        [_pred([[0, 0, 20, 20]], [FACE], [0.9])],
        [_target([[0, 0, 20, 20], [100, 100, 140, 110]], [FACE, PLATE])],
    )
    assert flat_metrics(counter.result()) == {
        "val/recall/face/small": 1.0,
        "val/recall/face/all": 1.0,
        "val/recall/license_plate/small": 0.0,
        "val/recall/license_plate/all": 0.0,
        "val/mean_recall": 0.5,
    }
    assert set(flat_metrics(counter.result(), prefix="val_tiles")) == {
        "val_tiles/recall/face/small",
        "val_tiles/recall/face/all",
        "val_tiles/recall/license_plate/small",
        "val_tiles/recall/license_plate/all",
        "val_tiles/mean_recall",
    }
