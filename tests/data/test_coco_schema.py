"""COCO schema (data.coco): a NaN or infinite number in a box, an area or a score is a problem
that the message names, for ground truth and for results alike."""

from __future__ import annotations

import math

import pytest

from data.coco.results import check_predictions
from data.coco.schema import annotation_problem, check_ground_truth
from data.errors import AnonlabError

GT = {
    "images": [{"id": 1, "width": 50, "height": 40}],
    "categories": [{"id": 1, "name": "face"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bbox", [1, 2, math.nan, 4], r"'bbox' must be 4 finite numbers .*NaN"),
        ("bbox", [1, 2, 3, math.inf], r"'bbox' must be 4 finite numbers .*Infinity"),
        ("area", math.nan, r"'area' must be a finite number >= 0, found nan"),
        ("area", -math.inf, r"'area' must be a finite number >= 0, found -inf"),
    ],
)
def test_a_non_finite_box_or_area_in_ground_truth_is_named(
    key: str, value: object, message: str
) -> None:
    gt = {**GT, "annotations": [{**GT["annotations"][0], key: value}]}
    with pytest.raises(AnonlabError, match=r"GT: annotation #0 \(id 1\): " + message):
        check_ground_truth(gt, "GT")
    ann = gt["annotations"][0]
    assert annotation_problem(ann, {1: (40, 50)}, {1}, set()) is not None


@pytest.mark.parametrize(
    ("key", "value"), [("score", math.nan), ("score", math.inf), ("bbox", [math.nan, 2, 3, 4])]
)
def test_a_non_finite_score_or_box_in_results_is_named(key: str, value: object) -> None:
    prediction = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(AnonlabError, match=rf"PRED: prediction #0: '{key}' must be .*finite"):
        check_predictions([{**prediction, key: value}], GT, "PRED")
