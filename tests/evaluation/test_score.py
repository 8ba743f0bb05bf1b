"""Tests of the scorer: COCO numbers and recall against pycocotools run independently, coverage,
intervals and operating thresholds on hand-built cases, and errors on malformed input."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.coco.files import load_ground_truth, load_predictions
from data.coco.results import check_predictions
from data.coco.schema import check_ground_truth
from data.errors import AnonlabError
from evaluation.score import score, score_files
from evaluation.scoring.coco_summary import COCO_STATS
from evaluation.scoring.options import ScoreOptions, parse_heights, parse_thresholds
from evaluation.scoring.result import ScoreResult
from evaluation.scoring.table import format_table

CLASSES = ["face", "person", "license_plate"]
BUCKETS = ["tiny", "small", "medium", "large", "all"]
FAST = ScoreOptions(n_boot=50)


# ---------------------------------------------------------------------------------------------
# Building cases


def ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
    return inside.astype(np.uint8)


def rect(height: int, width: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def box_of(mask: np.ndarray) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))]


def gt_file(images: list[tuple[int, int, int]], annotations: list[dict]) -> dict:
    """Ground truth from (id, width, height) images and annotations without ids."""
    return {
        "images": [{"id": i, "width": w, "height": h} for i, w, h in images],
        "categories": [{"id": 7 + 2 * k, "name": name} for k, name in enumerate(CLASSES)],
        "annotations": [{**a, "id": k + 1} for k, a in enumerate(annotations)],
    }


def cat(name: str) -> int:
    return 7 + 2 * CLASSES.index(name)


def random_case(seed: int, *, masks: bool = True, n_images: int = 8) -> tuple[dict, list[dict]]:
    """Ground truth with objects of every size bucket (RLE, polygon and crowd masks) and
    predictions near them (jittered, duplicated, wrong class, tied scores) and elsewhere."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    for i in range(n_images):
        image_id = 100 + 7 * i  # ids neither contiguous nor in file order
        width, height = int(rng.integers(80, 220)), int(rng.integers(80, 220))
        images.append((image_id, width, height))
        for _ in range(int(rng.integers(0, 9))):
            radius = float(rng.choice([3, 6, 12, 25, 60])) * rng.uniform(0.7, 1.3)
            rx, ry = radius * rng.uniform(0.6, 1.4), radius * rng.uniform(0.6, 1.4)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            mask = ellipse(height, width, cx, cy, rx, ry)
            if not mask.any():
                continue
            name = str(rng.choice(CLASSES))
            crowd = rng.random() < 0.1
            ann = {
                "image_id": image_id,
                "category_id": cat(name),
                "bbox": box_of(mask),
                "area": float(mask.sum()),
                "iscrowd": int(crowd),
            }
            if masks:
                if crowd:
                    ann["segmentation"] = uncompressed_rle(mask)
                elif rng.random() < 0.3:
                    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                    polygon = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1)
                    ann["segmentation"] = [polygon.ravel().round(2).tolist()]
                    encoded = mask_utils.merge(
                        mask_utils.frPyObjects(ann["segmentation"], height, width)
                    )
                    ann["area"] = float(mask_utils.area(encoded))
                    ann["bbox"] = [float(v) for v in mask_utils.toBbox(encoded)]
                else:
                    ann["segmentation"] = rle(mask)
            annotations.append(ann)
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                shift = rng.normal(0, radius * 0.15, 2)
                scale = rng.uniform(0.8, 1.2)
                guess = ellipse(height, width, cx + shift[0], cy + shift[1], rx * scale, ry)
                if not guess.any():
                    continue
                wrong = rng.random() < 0.1
                predictions.append(
                    prediction(image_id, str(rng.choice(CLASSES)) if wrong else name, guess, rng)
                )
        for _ in range(int(rng.integers(0, 5))):
            guess = ellipse(
                height, width, *rng.uniform(0, width, 1), *rng.uniform(0, height, 1), 10, 8
            )
            if guess.any():
                predictions.append(prediction(image_id, str(rng.choice(CLASSES)), guess, rng))
    if not masks:
        for p in predictions:
            del p["segmentation"]
    return gt_file(images, annotations), predictions


def prediction(image_id: int, name: str, mask: np.ndarray, rng: np.random.Generator) -> dict:
    score_value = float(rng.choice([round(rng.random(), 1), rng.random()]))  # some ties
    return {
        "image_id": image_id,
        "category_id": cat(name),
        "bbox": box_of(mask),
        "score": score_value,
        "segmentation": rle(mask),
    }


# ---------------------------------------------------------------------------------------------
# pycocotools, run on its own


def pycoco(gt: dict, predictions: list[dict], iou_type: str, **params: object) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        for name, value in params.items():
            setattr(evaluation.params, name, value)
        evaluation.evaluate()
        evaluation.accumulate()
        if not {"areaRng", "maxDets"} & set(params):  # pycocotools summarizes its own only
            evaluation.summarize()
    return evaluation


def below(x: float) -> float:
    return float(np.nextafter(x, 0))


# pycocotools' area ranges are closed; these are the buckets tiny < 16², small < 32², ...
AREA_RANGES = [
    [0, 1e10],
    [0, below(16**2)],
    [16**2, below(32**2)],
    [32**2, below(96**2)],
    [96**2, 1e10],
]
AREA_LABELS = ["all", "tiny", "small", "medium", "large"]


def pycoco_recall(
    gt: dict,
    predictions: list[dict],
    thresholds: dict[str, float],
    iou_type: str,
    max_dets: int = 100,
    iou_index: int = 0,
) -> dict[str, dict[str, float]]:
    """pycocotools' recall per class and bucket, of the predictions above their thresholds."""
    name_of = {c["id"]: c["name"] for c in gt["categories"]}
    kept = [p for p in predictions if p["score"] >= thresholds[name_of[p["category_id"]]]]
    evaluation = pycoco(
        gt,
        kept,
        iou_type,
        areaRng=AREA_RANGES,
        areaRngLbl=AREA_LABELS,
        maxDets=[max_dets],
    )
    recall = evaluation.eval["recall"]
    out: dict[str, dict[str, float]] = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        out[name_of[category_id]] = {
            label: float(recall[iou_index, k, a, 0]) for a, label in enumerate(AREA_LABELS)
        }
    return out


# ---------------------------------------------------------------------------------------------
# COCO numbers and recall equal pycocotools'


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("masks", [True, False])
def test_coco_summary_equals_pycocotools(seed: int, masks: bool) -> None:
    gt, predictions = random_case(seed, masks=masks)
    result = score(gt, predictions, FAST)
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        expected = pycoco(gt, predictions, iou_type).stats
        assert [result.to_json()["coco"][iou_type][k] for k in COCO_STATS] == expected.tolist()
    if not masks:
        assert result.to_json()["coco"]["segm"] is None
        assert result.to_json()["iou_type"] == "bbox"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("masks", [True, False])
def test_recall_equals_pycocotools_on_thresholded_predictions(seed: int, masks: bool) -> None:
    gt, predictions = random_case(100 + seed, masks=masks, n_images=10)
    thresholds = {"face": 0.3, "person": 0.55, "license_plate": 0.0}
    result = score(gt, predictions, ScoreOptions(thresholds=thresholds, n_boot=20))
    expected = pycoco_recall(gt, predictions, thresholds, "segm" if masks else "bbox")
    compared = 0
    for name in CLASSES:
        for bucket in BUCKETS:
            entry = result.to_json()["recall"][name][bucket]
            counted = [
                a
                for a in gt["annotations"]
                if a["category_id"] == cat(name) and not a["iscrowd"] and in_bucket(a, bucket)
            ]
            assert entry["n"] == len(counted)
            if expected[name][bucket] == -1:
                assert entry["iou"] is None
            else:
                assert entry["iou"] == expected[name][bucket]
                compared += 1
    assert compared >= 10


def in_bucket(ann: dict, bucket: str) -> bool:
    low, high = AREA_RANGES[AREA_LABELS.index(bucket)]
    return low <= ann["area"] <= high


@pytest.mark.parametrize(("max_dets", "seed"), [(1, 0), (3, 1), (150, 2)])
def test_recall_honours_max_dets_as_pycocotools(max_dets: int, seed: int) -> None:
    gt, predictions = random_case(200 + seed)
    rng = np.random.default_rng(seed)
    image = gt["images"][0]
    for _ in range(160):  # enough for one (image, class) to pass 100 detections
        mask = ellipse(image["height"], image["width"], *rng.uniform(0, 80, 2), 9, 9)
        if mask.any():
            predictions.append(prediction(image["id"], "face", mask, rng))
    thresholds = dict.fromkeys(CLASSES, 0.2)
    result = score(gt, predictions, ScoreOptions(thresholds=thresholds, max_dets=max_dets))
    expected = pycoco_recall(gt, predictions, thresholds, "segm", max_dets=max_dets)
    for name in CLASSES:
        for bucket in BUCKETS:
            value = result.to_json()["recall"][name][bucket]["iou"]
            assert (-1 if value is None else value) == expected[name][bucket]


def test_recall_at_another_iou_equals_pycocotools() -> None:
    gt, predictions = random_case(7, n_images=12)
    iou = float(np.linspace(0.5, 0.95, 10)[5])  # pycocotools' own 0.75
    thresholds = dict.fromkeys(CLASSES, 0.1)
    result = score(gt, predictions, ScoreOptions(thresholds=thresholds, iou=iou, n_boot=0))
    expected = pycoco_recall(gt, predictions, thresholds, "segm", iou_index=5)
    for name in CLASSES:
        value = result.to_json()["recall"][name]["all"]["iou"]
        assert (-1 if value is None else value) == expected[name]["all"]


def test_some_predictions_without_masks_count_as_their_boxes() -> None:
    gt, predictions = random_case(11)
    for p in predictions[::3]:
        del p["segmentation"]
    result = score(gt, predictions, FAST)
    assert [result.to_json()["coco"]["segm"][k] for k in COCO_STATS] == pycoco(
        gt, predictions, "segm"
    ).stats.tolist()
    assert any("have no mask" in note for note in result.to_json()["notes"])


def test_ground_truth_without_masks_gives_no_segm_and_box_matching() -> None:
    gt, predictions = random_case(12)
    for a in gt["annotations"]:
        a.pop("segmentation", None)
    result = score(gt, predictions, FAST)
    assert result.to_json()["coco"]["segm"] is None
    assert result.to_json()["iou_type"] == "bbox"
    thresholds = dict.fromkeys(CLASSES, 0.5)
    expected = pycoco_recall(gt, predictions, thresholds, "bbox")
    for name in CLASSES:
        value = result.to_json()["recall"][name]["all"]["iou"]
        assert (-1 if value is None else value) == expected[name]["all"]


def pixels(seg: object, box: list[float], height: int, width: int) -> np.ndarray:
    """An annotation's pixels, decoded to a boolean array (its box when it has no mask)."""
    if not seg:
        seg = [[box[0], box[1], box[0], box[1] + box[3], box[0] + box[2], box[1] + box[3]]]
        seg[0] += [box[0] + box[2], box[1]]
    if isinstance(seg, list):
        encoded = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        encoded = mask_utils.frPyObjects(seg, height, width)
    else:
        encoded = seg
    return mask_utils.decode(encoded).astype(bool)


@pytest.mark.parametrize(("seed", "masks"), [(31, True), (32, True), (33, False)])
def test_coverage_equals_pixel_counting(seed: int, masks: bool) -> None:
    gt, predictions = random_case(seed, masks=masks, n_images=10)
    thresholds = {"face": 0.2, "person": 0.6, "license_plate": 0.4}
    options = ScoreOptions(thresholds=thresholds, coverage=0.7, n_boot=0)
    result = score(gt, predictions, options)
    name_of = {c["id"]: c["name"] for c in gt["categories"]}
    covered = {(n, b): 0 for n in CLASSES for b in BUCKETS}
    for image in gt["images"]:
        h, w = image["height"], image["width"]
        union = np.zeros((h, w), bool)
        for p in predictions:
            if p["image_id"] == image["id"] and p["score"] >= thresholds[name_of[p["category_id"]]]:
                union |= pixels(p.get("segmentation"), p["bbox"], h, w)
        for a in gt["annotations"]:
            if a["image_id"] != image["id"] or a["iscrowd"]:
                continue
            shape = pixels(a.get("segmentation"), a["bbox"], h, w)
            if shape.any() and (shape & union).sum() / shape.sum() >= 0.7:
                for bucket in BUCKETS:
                    covered[name_of[a["category_id"]], bucket] += in_bucket(a, bucket)
    checked = 0
    for (name, bucket), count in covered.items():
        entry = result.to_json()["recall"][name][bucket]
        if entry["n"]:
            assert entry["coverage"] == count / entry["n"]
            checked += count > 0
    assert checked >= 5


def test_result_is_plain_json_and_inputs_are_untouched() -> None:
    gt, predictions = random_case(3)
    before = copy.deepcopy((gt, predictions))
    result = score(gt, predictions, FAST)
    assert (gt, predictions) == before
    assert json.loads(json.dumps(result.to_json(), allow_nan=False)) == result.to_json()
    assert result.to_json()["images"] == 8
    assert set(result.to_json()["recall"]) == set(CLASSES)
    named = {*BUCKETS, "below_identifiable"}
    assert all(set(buckets) == named for buckets in result.to_json()["recall"].values())


# ---------------------------------------------------------------------------------------------
# Hand-built cases

SIDE = 100


def test_result_reads_back_from_its_json() -> None:
    gt, predictions = random_case(4)
    for options in (FAST, ScoreOptions(n_boot=0, per_object=True, min_identifiable={"face": 6})):
        result = score(gt, predictions, options)
        data = json.loads(json.dumps(result.to_json()))
        assert ScoreResult.from_json(data).to_json() == result.to_json()
        assert ScoreResult.from_json(data) == result
    assert "objects" not in score(gt, predictions, FAST).to_json()
    assert score(gt, predictions, replace(FAST, per_object=True)).to_json()["objects"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("false_positives_per_image"), "missing key 'false_positives_per_image'"),
        (lambda d: d.update(recal={}), "unknown key 'recal'"),
        (lambda d: d["recall"]["face"]["all"].pop("n"), "recall cell: missing key 'n'"),
        (lambda d: d["recall"]["face"]["all"].update(iou_lo=0.1), "unknown key 'iou_lo'"),
        (lambda d: d["operating_points"]["face"].pop("reached"), "missing key 'reached'"),
        (lambda d: d["pr_curve"]["face"][0].update(f1=0.5), "curve point: unknown key 'f1'"),
    ],
)
def test_result_json_with_a_missing_or_unknown_key_is_an_error(edit: Any, message: str) -> None:
    gt, predictions = random_case(4)
    data = score(gt, predictions, ScoreOptions(n_boot=0, target_recall=0.1)).to_json()
    edit(data)
    with pytest.raises(AnonlabError, match=re.escape(message)):
        ScoreResult.from_json(data)


def one_image(objects: list[dict], *, images: int = 1) -> dict:
    return gt_file([(i + 1, SIDE, SIDE) for i in range(images)], objects)


def mask_object(name: str, mask: np.ndarray, image_id: int = 1, **extra: object) -> dict:
    return {
        "image_id": image_id,
        "category_id": cat(name),
        "bbox": box_of(mask),
        "area": float(mask.sum()),
        "segmentation": rle(mask),
        "iscrowd": 0,
        **extra,
    }


def box_object(name: str, box: list[float], image_id: int = 1, **extra: object) -> dict:
    return {"image_id": image_id, "category_id": cat(name), "bbox": box, "iscrowd": 0, **extra}


def box_prediction(name: str, box: list[float], score_value: float, image_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": cat(name), "bbox": box, "score": score_value}


def mask_prediction(name: str, mask: np.ndarray, score_value: float, image_id: int = 1) -> dict:
    return {**box_prediction(name, box_of(mask), score_value, image_id), "segmentation": rle(mask)}


def test_face_inside_a_person_mask_is_covered() -> None:
    face = ellipse(SIDE, SIDE, 50, 30, 6, 8)
    person = ellipse(SIDE, SIDE, 50, 55, 20, 40)
    assert (person >= face).all()
    gt = one_image([mask_object("face", face), mask_object("person", person)])
    result = score(gt, [mask_prediction("person", person, 0.9)], FAST)
    assert result.to_json()["recall"]["face"]["all"]["coverage"] == 1.0
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 0.0  # no face detection matched it
    assert result.to_json()["recall"]["person"]["all"]["iou"] == 1.0


def test_half_covered_box_is_covered_only_below_half() -> None:
    gt = one_image([box_object("license_plate", [20, 20, 20, 10], area=200)])
    predictions = [box_prediction("person", [20, 20, 10, 10], 0.8)]
    strict = score(gt, predictions, ScoreOptions(coverage=0.9, n_boot=10))
    loose = score(gt, predictions, ScoreOptions(coverage=0.4, n_boot=10))
    exact = score(gt, predictions, ScoreOptions(coverage=0.5, n_boot=10))
    assert strict.to_json()["recall"]["license_plate"]["all"]["coverage"] == 0.0
    assert loose.to_json()["recall"]["license_plate"]["all"]["coverage"] == 1.0
    assert (
        exact.to_json()["recall"]["license_plate"]["all"]["coverage"] == 1.0
    )  # at least, not above


def test_objects_below_the_identifiable_height_have_their_own_row_and_no_false_positives() -> None:
    # Two faces 20 px tall (identifiable), one 4 px tall (not), and a plate 3 px tall.
    faces = [[10, 10, 16, 20], [50, 10, 16, 20], [80, 80, 4, 4]]
    gt = one_image(
        [box_object("face", b, area=b[2] * b[3]) for b in faces]
        + [box_object("license_plate", [10, 60, 12, 3], area=36)]
    )
    # One identifiable face found; the small face and the plate hidden by their own detections.
    predictions = [
        box_prediction("face", faces[0], 0.9),
        box_prediction("face", faces[2], 0.8),
        box_prediction("license_plate", [10, 60, 12, 3], 0.7),
    ]
    minimum = {"face": 6, "license_plate": 5}
    options = ScoreOptions(thresholds=0.5, n_boot=0, min_identifiable=minimum)
    judged = score(gt, predictions, options)
    face = judged.to_json()["recall"]["face"]
    assert face["all"]["n"] == 2 and face["all"]["iou"] == 0.5 and face["all"]["coverage"] == 0.5
    assert face["below_identifiable"]["n"] == 1 and face["below_identifiable"]["iou"] == 1.0
    assert face["tiny"]["n"] == 0  # the 4 px face is in no size bucket
    plate = judged.to_json()["recall"]["license_plate"]
    assert plate["all"]["n"] == 0 and plate["below_identifiable"]["n"] == 1
    # Hiding what cannot identify anyone is never a false positive.
    assert judged.to_json()["false_positives_per_image"] == {
        "face": 0.0,
        "person": 0.0,
        "license_plate": 0.0,
    }
    assert judged.to_json()["options"]["min_identifiable"]["face"] == 6.0
    table = format_table(judged)
    assert "identifiable from a box height of face 6 px, license_plate 5 px" in table

    # Without a minimum every object counts, the small face in `all` and `tiny`.
    every = score(gt, predictions, ScoreOptions(thresholds=0.5, n_boot=0))
    assert (
        every.to_json()["recall"]["face"]["all"]["n"] == 3
        and every.to_json()["recall"]["face"]["tiny"]["n"] == 1
    )
    assert every.to_json()["recall"]["face"]["below_identifiable"]["n"] == 0
    with pytest.raises(AnonlabError, match="min_identifiable of 'face' must be a height"):
        score(gt, predictions, ScoreOptions(min_identifiable={"face": -1}))


def test_two_predictions_together_cover_an_object() -> None:
    plate = rect(SIDE, SIDE, 30, 40, 30, 10)
    left, right = rect(SIDE, SIDE, 28, 38, 16, 14), rect(SIDE, SIDE, 44, 38, 18, 14)
    gt = one_image([mask_object("license_plate", plate)])
    both = [mask_prediction("license_plate", left, 0.7), mask_prediction("face", right, 0.6)]
    assert score(gt, both, FAST).to_json()["recall"]["license_plate"]["all"]["coverage"] == 1.0
    only = score(gt, both[:1], FAST).to_json()["recall"]["license_plate"]["all"]
    assert only["coverage"] == 0.0  # about half alone


def test_prediction_below_its_class_threshold_does_not_cover() -> None:
    face = rect(SIDE, SIDE, 10, 10, 8, 8)
    gt = one_image([mask_object("face", face)])
    predictions = [mask_prediction("person", rect(SIDE, SIDE, 0, 0, 40, 40), 0.45)]
    low = ScoreOptions(thresholds={"person": 0.4}, n_boot=10)
    high = ScoreOptions(thresholds={"person": 0.5, "face": 0.1}, n_boot=10)
    assert score(gt, predictions, low).to_json()["recall"]["face"]["all"]["coverage"] == 1.0
    assert score(gt, predictions, high).to_json()["recall"]["face"]["all"]["coverage"] == 0.0


def test_coverage_counts_pixels_of_polygons_and_boxes() -> None:
    # GT given as a polygon (a 20 x 20 square); a predicted box covers 18 of its 20 columns.
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    gt = one_image([box_object("face", [10, 10, 20, 20], area=400, segmentation=square)])
    predictions = [box_prediction("face", [12, 0, 40, 50], 0.9)]
    assert (
        score(gt, predictions, ScoreOptions(coverage=0.9, n_boot=0)).to_json()["recall"]["face"][
            "all"
        ]["coverage"]
        == 1.0
    )
    assert (
        score(gt, predictions, ScoreOptions(coverage=0.91, n_boot=0)).to_json()["recall"]["face"][
            "all"
        ]["coverage"]
        == 0.0
    )


@pytest.mark.parametrize("as_rle", [False, True])
def test_coverage_from_a_hidden_mask_counts_the_objects_pixels_inside_it(as_rle: bool) -> None:
    # A face (mask) and a plate (box only) in image 1; a face in image 2, which has no mask.
    face = rect(SIDE, SIDE, 10, 10, 20, 20)
    gt = one_image(
        [
            mask_object("face", face),
            box_object("license_plate", [50, 50, 20, 10], area=200),
            mask_object("face", face, image_id=2),
        ],
        images=2,
    )
    # Face detections that cover everything: with a hidden mask they hide nothing by themselves.
    everything = rect(SIDE, SIDE, 0, 0, SIDE, SIDE)
    predictions = [mask_prediction("face", everything, 0.9, image_id=i) for i in (1, 2)]
    half = np.zeros((SIDE, SIDE), bool)
    half[10:30, 10:20] = True  # the face's left half
    half[50:60, 50:70] = True  # the whole plate
    whole = half.copy()
    whole[10:30, 20:30] = True
    options = ScoreOptions(coverage=0.9, n_boot=0, per_object=True)

    def recall(hidden: np.ndarray, coverage: float = 0.9) -> dict:
        given = rle(hidden.astype(np.uint8)) if as_rle else hidden
        result = score(gt, predictions, replace(options, coverage=coverage), hidden={1: given})
        return result.to_json()

    at_half = recall(half)
    assert at_half["recall"]["face"]["all"]["coverage"] == 0.0  # neither face reaches 90%
    assert at_half["recall"]["license_plate"]["all"]["coverage"] == 1.0
    shares = {o["id"]: o["coverage"] for o in at_half["objects"]}
    assert shares == {1: 0.5, 2: 1.0, 3: 0.0}  # image 2 has no hidden mask: nothing hidden
    assert recall(half, coverage=0.5)["recall"]["face"]["all"]["coverage"] == 0.5
    at_whole = recall(whole)
    assert at_whole["recall"]["face"]["all"]["coverage"] == 0.5  # image 1's face, not image 2's
    # Recall by IoU, COCO and false positives still come from the predictions.
    default = score(gt, predictions, options).to_json()
    assert default["recall"]["face"]["all"]["coverage"] == 1.0  # the big masks cover both
    for key in ("coco", "false_positives_per_image", "pr_curve"):
        assert at_whole[key] == default[key]
    assert at_whole["recall"]["face"]["all"]["iou"] == default["recall"]["face"]["all"]["iou"]


def test_a_hidden_mask_of_another_size_is_an_error() -> None:
    gt = one_image([box_object("face", [10, 10, 10, 10], area=100)])
    with pytest.raises(AnonlabError, match=r"hidden mask of image 1 is \(50, 100\)"):
        score(gt, [], FAST, hidden={1: np.zeros((50, SIDE), bool)})
    small = rle(np.zeros((50, SIDE), np.uint8))
    with pytest.raises(AnonlabError, match=r"hidden mask \(RLE\) of image 1 has size \[50, 100\]"):
        score(gt, [], FAST, hidden={1: small})


def scored_faces() -> tuple[dict, list[dict]]:
    """Four faces found at scores 0.9 .. 0.6, a false alarm at 0.95, a second empty image."""
    boxes = [[10 + 20 * k, 10, 10, 10] for k in range(4)]
    gt = one_image([box_object("face", b, area=100) for b in boxes], images=2)
    predictions = [box_prediction("face", [50, 60, 10, 10], 0.95)]
    scores = [0.9, 0.8, 0.7, 0.6]
    predictions += [box_prediction("face", b, s) for b, s in zip(boxes, scores, strict=True)]
    return gt, predictions


@pytest.mark.parametrize(("target", "expected"), [(0.5, 0.8), (0.75, 0.7), (1.0, 0.6)])
def test_operating_threshold_is_the_highest_meeting_the_target(
    target: float, expected: float
) -> None:
    gt, predictions = scored_faces()
    result = score(gt, predictions, ScoreOptions(target_recall=target, n_boot=0))
    assert result.to_json()["operating_thresholds"]["face"] == expected
    assert result.to_json()["operating_thresholds"]["person"] is None  # no persons at all


def test_operating_threshold_is_none_with_a_note_when_never_reached() -> None:
    gt, predictions = scored_faces()
    gt["annotations"].append({**box_object("face", [80, 80, 10, 10], area=100), "id": 99})
    result = score(gt, predictions, ScoreOptions(target_recall=0.9, n_boot=0))
    assert result.to_json()["operating_thresholds"]["face"] is None
    assert any(
        note.startswith("face: recall never reaches 0.9") for note in result.to_json()["notes"]
    )


def test_operating_points_take_a_target_per_class_and_stop_at_the_floor() -> None:
    gt, predictions = scored_faces()
    classes = [c["name"] for c in gt["categories"]]
    targets = {**dict.fromkeys(classes, 0.95), "face": 0.75}
    result = score(gt, predictions, ScoreOptions(target_recall=targets, n_boot=0))
    assert result.to_json()["operating_points"]["face"] == {
        "threshold": 0.7,
        "recall": 0.75,
        "reached": True,
    }
    assert result.to_json()["operating_points"]["person"] is None  # no persons: nothing to choose
    assert result.to_json()["options"]["target_recall"] == targets

    # Recall 1.0 needs score 0.6; with a floor of 0.65 the point is the floor, and says so.
    floored = score(gt, predictions, ScoreOptions(target_recall=1.0, min_threshold=0.65, n_boot=0))
    assert floored.to_json()["operating_points"]["face"] == {
        "threshold": 0.65,
        "recall": 0.75,
        "reached": False,
    }
    assert floored.to_json()["operating_thresholds"]["face"] is None


def test_a_target_per_class_must_name_every_class_and_the_floor_be_a_score() -> None:
    gt, predictions = scored_faces()
    classes = [c["name"] for c in gt["categories"]]
    with pytest.raises(AnonlabError, match="target_recall has no value for 'person'"):
        score(gt, predictions, ScoreOptions(target_recall={"face": 0.9}, n_boot=0))
    zero_face = {**dict.fromkeys(classes, 1.0), "face": 0.0}
    with pytest.raises(AnonlabError, match="target_recall of 'face' must be in"):
        score(gt, predictions, ScoreOptions(target_recall=zero_face))
    with pytest.raises(AnonlabError, match=r"min_threshold must be in \[0, 1\], found 1.5"):
        score(gt, predictions, ScoreOptions(min_threshold=1.5))


def test_false_positives_and_precision_recall_curve() -> None:
    gt, predictions = scored_faces()
    result = score(gt, predictions, ScoreOptions(thresholds=0.65, n_boot=0))
    assert (
        result.to_json()["false_positives_per_image"]["face"] == 0.5
    )  # one false alarm, two images
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 0.75
    curve = [
        (p["score"], p["precision"], p["recall"]) for p in result.to_json()["pr_curve"]["face"]
    ]
    assert curve == [
        (0.95, 0.0, 0.0),
        (0.9, 1 / 2, 0.25),
        (0.8, 2 / 3, 0.5),
        (0.7, 3 / 4, 0.75),
        (0.6, 4 / 5, 1.0),
    ]


def test_equal_ious_go_to_the_later_object_as_in_pycocotools() -> None:
    # The first detection overlaps both faces equally (IoU 9/11); taking the later one leaves
    # the earlier for the second detection, which overlaps only it (IoU 7/13).
    gt = one_image([box_object("face", [13, 0, 10, 10], area=100)])
    gt["annotations"].insert(0, {**box_object("face", [15, 0, 10, 10], area=100), "id": 2})
    gt["annotations"].reverse()  # file order: x=13 first, then x=15
    predictions = [
        box_prediction("face", [14, 0, 10, 10], 0.9),
        box_prediction("face", [10, 0, 10, 10], 0.8),
    ]
    result = score(gt, predictions, ScoreOptions(n_boot=0))
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 1.0
    expected = pycoco_recall(gt, predictions, dict.fromkeys(CLASSES, 0.5), "bbox")
    assert expected["face"]["all"] == 1.0


@pytest.mark.parametrize(("first", "expected"), [("left", 1.0), ("middle", 0.5)])
def test_equal_scores_keep_file_order_as_in_pycocotools(first: str, expected: float) -> None:
    # Same score: the file's order decides. The middle one prefers face A (IoU 9/11 over 8/12);
    # the left one overlaps only A. Left first: left takes A, middle B; middle first: only A.
    gt = one_image(
        [box_object("face", [5, 0, 10, 10], area=100), box_object("face", [8, 0, 10, 10], area=100)]
    )
    left = box_prediction("face", [3, 0, 10, 10], 0.7)
    middle = box_prediction("face", [6, 0, 10, 10], 0.7)
    predictions = [left, middle] if first == "left" else [middle, left]
    result = score(gt, predictions, ScoreOptions(n_boot=0))
    assert result.to_json()["recall"]["face"]["all"]["iou"] == expected
    reference = pycoco_recall(gt, predictions, dict.fromkeys(CLASSES, 0.5), "bbox")
    assert reference["face"]["all"] == expected


def test_thresholds_and_iou_bounds_are_inclusive() -> None:
    # A score equal to the threshold counts; an IoU of exactly 0.5 matches (100 / 200).
    gt = one_image([box_object("face", [0, 0, 10, 10], area=100)], images=2)
    predictions = [
        box_prediction("face", [0, 0, 20, 10], 0.6),
        box_prediction("person", [50, 50, 10, 10], 0.7),
    ]
    options = ScoreOptions(thresholds={"face": 0.6, "person": 0.7}, coverage=1.0, n_boot=0)
    result = score(gt, predictions, options)
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 1.0
    assert result.to_json()["recall"]["face"]["all"]["coverage"] == 1.0
    assert result.to_json()["false_positives_per_image"]["person"] == 0.5
    reference = pycoco_recall(gt, predictions, {"face": 0.6, "person": 0.7}, "bbox")
    assert reference["face"]["all"] == 1.0


def test_crowd_and_ignored_objects_are_neither_counted_nor_false_positives() -> None:
    crowd = rect(SIDE, SIDE, 0, 0, 50, 50)
    gt = one_image(
        [
            {**mask_object("face", crowd), "iscrowd": 1, "segmentation": uncompressed_rle(crowd)},
            mask_object("face", rect(SIDE, SIDE, 60, 60, 10, 10), ignore=1),
            mask_object("face", rect(SIDE, SIDE, 80, 10, 10, 10)),
        ]
    )
    predictions = [
        mask_prediction("face", rect(SIDE, SIDE, 5, 5, 10, 10), 0.9),  # inside the crowd
        mask_prediction("face", rect(SIDE, SIDE, 20, 20, 10, 10), 0.9),  # inside the crowd
        mask_prediction("face", rect(SIDE, SIDE, 60, 60, 10, 10), 0.9),  # on the ignored one
        mask_prediction("face", rect(SIDE, SIDE, 30, 70, 10, 10), 0.9),  # on nothing
    ]
    result = score(gt, predictions, FAST)
    assert result.to_json()["recall"]["face"]["all"]["n"] == 1
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 0.0
    assert result.to_json()["false_positives_per_image"]["face"] == 1.0


def test_same_size_bucket_boundaries_as_size_buckets() -> None:
    # Areas exactly at a bound belong to the bucket above it.
    areas = {"tiny": 255, "small": 256, "medium": 32**2, "large": 96**2}
    objects = [
        box_object("face", [10 * k, 0, 5, 5], area=float(a)) for k, a in enumerate(areas.values())
    ]
    result = score(one_image(objects), [], FAST)
    assert {b: result.to_json()["recall"]["face"][b]["n"] for b in areas} == dict.fromkeys(areas, 1)
    assert result.to_json()["recall"]["face"]["all"]["n"] == 4
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 0.0
    assert result.to_json()["recall"]["person"]["all"] == {
        "n": 0,
        "iou": None,
        "iou_ci": None,
        "coverage": None,
        "coverage_ci": None,
    }


# ---------------------------------------------------------------------------------------------
# Intervals


def test_intervals_contain_the_estimate_and_repeat_with_the_seed() -> None:
    gt, predictions = random_case(21, n_images=30)
    first = score(gt, predictions, ScoreOptions(n_boot=300, seed=5))
    again = score(gt, predictions, ScoreOptions(n_boot=300, seed=5))
    other = score(gt, predictions, ScoreOptions(n_boot=300, seed=6))
    assert first.to_json()["recall"] == again.to_json()["recall"]
    assert first.to_json()["recall"] != other.to_json()["recall"]
    checked = 0
    for buckets in first.to_json()["recall"].values():
        for entry in buckets.values():
            for key in ("iou", "coverage"):
                if entry["n"]:
                    low, high = entry[f"{key}_ci"]
                    assert low <= entry[key] <= high
                    checked += 1
    assert checked >= 20


def half_found(images: int) -> tuple[dict, list[dict]]:
    """Per image one face found and one missed, plus a second found on every other image."""
    objects, predictions = [], []
    for i in range(1, images + 1):
        objects += [box_object("face", [10, 10, 10, 10], i, area=100)]
        objects += [box_object("face", [50, 50, 10, 10], i, area=100)]
        predictions.append(box_prediction("face", [10, 10, 10, 10], 0.9, i))
        if i % 2:
            objects += [box_object("face", [70, 10, 10, 10], i, area=100)]
            predictions.append(box_prediction("face", [70, 10, 10, 10], 0.9, i))
    return one_image(objects, images=images), predictions


def test_intervals_narrow_with_more_images() -> None:
    widths = []
    for images in (10, 200):
        result = score(*half_found(images), ScoreOptions(n_boot=400))
        low, high = result.to_json()["recall"]["face"]["all"]["iou_ci"]
        widths.append(high - low)
    assert 0 < widths[1] < widths[0] / 2


def test_interval_width_matches_the_binomial_approximation() -> None:
    # 400 images with one face each, half of them found: recall 0.5, and a 95% interval of
    # about 0.5 +- 1.96 * sqrt(0.25 / 400) = +- 0.049.
    objects = [box_object("face", [10, 10, 10, 10], i, area=100) for i in range(1, 401)]
    predictions = [box_prediction("face", [10, 10, 10, 10], 0.9, i) for i in range(1, 401, 2)]
    result = score(one_image(objects, images=400), predictions, ScoreOptions(n_boot=2000))
    low, high = result.to_json()["recall"]["face"]["all"]["iou_ci"]
    assert low == pytest.approx(0.451, abs=0.008)
    assert high == pytest.approx(0.549, abs=0.008)


def test_no_intervals_without_resamples() -> None:
    result = score(*half_found(4), ScoreOptions(n_boot=0))
    assert result.to_json()["recall"]["face"]["all"]["iou"] == 0.6  # 3 of 5 per pair of images
    assert result.to_json()["recall"]["face"]["all"]["iou_ci"] is None


# ---------------------------------------------------------------------------------------------
# Thresholds from the command line


def test_parse_heights() -> None:
    assert parse_heights("face=6, license_plate=5", CLASSES) == {"face": 6.0, "license_plate": 5.0}
    assert parse_heights("", CLASSES) == {}
    with pytest.raises(AnonlabError, match="'dog=3' is not <class>=<pixels>"):
        parse_heights("dog=3", CLASSES)
    with pytest.raises(AnonlabError, match="'-1' is not a height in pixels >= 0"):
        parse_heights("face=-1", CLASSES)


def test_parse_thresholds() -> None:
    assert parse_thresholds("0.4", CLASSES) == 0.4
    assert parse_thresholds(" face=0.6, license_plate = 0.4", CLASSES) == {
        "face": 0.6,
        "person": 0.5,
        "license_plate": 0.4,
    }
    assert parse_thresholds("0.3,face=0.6", CLASSES) == {
        "face": 0.6,
        "person": 0.3,
        "license_plate": 0.3,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat=0.5", "unknown class 'cat'; the classes are face, person, license_plate"),
        ("face=high", "'high' is not a number"),
        ("face=nan", "not a finite number"),
        ("face=0.5,face=0.6", "class 'face' is given twice"),
        ("face=0.5,,person=0.1", "an empty entry"),
        ("0.5,0.6", "two thresholds for all classes"),
    ],
)
def test_parse_thresholds_rejects(text: str, message: str) -> None:
    with pytest.raises(AnonlabError, match=message.replace("(", r"\(")):
        parse_thresholds(text, CLASSES)


def test_unknown_class_in_options_is_an_error() -> None:
    gt, predictions = scored_faces()
    with pytest.raises(AnonlabError, match="unknown classes 'cat'"):
        score(gt, predictions, ScoreOptions(thresholds={"cat": 0.2}))


# ---------------------------------------------------------------------------------------------
# Files and malformed input


def write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_score_files_reads_both_and_reports_timings(tmp_path: Path) -> None:
    gt, predictions = random_case(4)
    timings: dict[str, float] = {}
    result = score_files(
        write(tmp_path / "gt.json", gt), write(tmp_path / "pred.json", predictions), FAST, timings
    )
    assert result == score(gt, predictions, FAST)
    assert set(timings) == {
        f"{p}{cpu}" for p in ("load", "coco", "metrics") for cpu in ("", "_cpu")
    }
    table = format_table(result)
    assert (
        "face" in table
        and "AP50" in table
        and f"{result.to_json()['coco']['bbox']['AP']:.3f}" in table
    )


GOOD_GT = {
    "images": [{"id": 1, "width": 50, "height": 40}, {"id": 2, "width": 50, "height": 40}],
    "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "license_plate"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 4], "area": 40},
    ],
}


def gt_with(path: str, value: object) -> dict:
    """GOOD_GT with one entry replaced: path like 'annotations.1.image_id'."""
    data = copy.deepcopy(GOOD_GT)
    *parents, last = path.split(".")
    node: object = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]  # type: ignore[index]
    if value is KeyError:
        del node[last]  # type: ignore[union-attr]
    else:
        node[int(last) if isinstance(node, list) else last] = value  # type: ignore[index]
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "GT.json: not valid JSON"),
        ([1, 2], "GT.json: expected a COCO object"),
        (gt_with("images", KeyError), "GT.json: missing 'images'"),
        (gt_with("annotations", {}), "GT.json: 'annotations' must be a list"),
        (gt_with("images.1.id", 1), "GT.json: image #1: duplicate image id 1"),
        (gt_with("images.0.width", 0), r"GT.json: image #0 \(id 1\): 'width' and 'height'"),
        (gt_with("categories.1.name", "face"), "category #1: duplicate category name 'face'"),
        (gt_with("annotations.1.id", 1), r"annotation #1 \(id 1\): duplicate annotation id 1"),
        (gt_with("annotations.1.id", 0), r"annotation #1 \(id 0\): 'id' must be a positive"),
        (gt_with("annotations.1.image_id", 99), r"#1 \(id 2\): image_id 99 is not among the"),
        (gt_with("annotations.0.category_id", 5), r"#0 \(id 1\): category_id 5 is not among"),
        (gt_with("annotations.0.bbox", [1, 2, -3, 4]), "#0 .*negative width or height"),
        (gt_with("annotations.0.area", "12"), r"#0 \(id 1\): 'area' must be a finite number"),
        (gt_with("annotations.0.iscrowd", 2), r"'iscrowd' must be 0 or 1"),
        (
            gt_with("annotations.0.segmentation", {"size": [40, 50], "counts": [1, 2]}),
            r"annotation #0 \(id 1\): segmentation 'counts' must be run lengths",
        ),
    ],
)
def test_malformed_ground_truth(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(AnonlabError, match=message):
        load_ground_truth(write(tmp_path / "GT.json", content))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AnonlabError, match="no such file"):
        load_ground_truth(tmp_path / "GT.json")


def good_predictions() -> list[dict]:
    box = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    mask = rle(rect(40, 50, 5, 5, 10, 4))
    return [dict(box) for _ in range(20)] + [{**box, "image_id": 2, "segmentation": mask}]


def predictions_with(index: int, key: str, value: object) -> list[dict]:
    data = good_predictions()
    if value is KeyError:
        del data[index][key]
    else:
        data[index][key] = value
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{]", "PRED.json: not valid JSON"),
        ({"annotations": []}, "PRED.json: expected a JSON list of COCO results"),
        ([*good_predictions(), 3], "PRED.json: prediction #21: expected an object, found a number"),
        (predictions_with(17, "score", KeyError), "PRED.json: prediction #17: missing 'score'"),
        (predictions_with(3, "bbox", KeyError), "prediction #3: missing 'bbox'"),
        (
            predictions_with(17, "image_id", 99),
            r"PRED.json: prediction #17: image_id 99 is not in the ground truth \(.*GT.json\)",
        ),
        (predictions_with(2, "image_id", "1"), 'prediction #2: image_id "1" is not in'),
        (predictions_with(5, "category_id", 3), "prediction #5: category_id 3 is not a category"),
        (predictions_with(6, "score", "0.5"), "prediction #6: 'score' must be a finite number"),
        (predictions_with(6, "score", math.nan), "prediction #6: 'score' must be a finite"),
        (predictions_with(7, "score", True), "prediction #7: 'score' must be a finite"),
        (predictions_with(8, "bbox", [1, 2, math.inf, 4]), "prediction #8: 'bbox' must be 4"),
        (predictions_with(8, "bbox", [1, 2, 3]), "prediction #8: 'bbox' must be 4"),
        (predictions_with(9, "bbox", [1, 2, 3, -1]), "prediction #9: 'bbox' has a negative"),
        (
            predictions_with(20, "segmentation", {"size": [50, 40], "counts": "abc"}),
            r"prediction #20: segmentation size \[50, 40\] differs from the image's",
        ),
        (
            predictions_with(20, "segmentation", {"size": [40, 50], "counts": "ab c"}),
            "prediction #20: segmentation 'counts' is not a compressed RLE string",
        ),
        (
            predictions_with(20, "segmentation", [[1, 2, 3, 4]]),
            "prediction #20: segmentation polygon #0 must be a list of at least 3",
        ),
        (
            predictions_with(20, "segmentation", "mask"),
            "prediction #20: segmentation must be polygons",
        ),
    ],
)
def test_malformed_predictions(tmp_path: Path, content: object, message: str) -> None:
    gt_path = write(tmp_path / "GT.json", GOOD_GT)
    gt = load_ground_truth(gt_path)
    text = content if isinstance(content, str) else json.dumps(content)  # NaN stays NaN
    with pytest.raises(AnonlabError, match=message):
        load_predictions(write(tmp_path / "PRED.json", text), gt, gt_name=str(gt_path))


def test_valid_inputs_pass_the_checks() -> None:
    check_ground_truth(GOOD_GT)
    check_predictions(good_predictions(), GOOD_GT)
    gt, predictions = random_case(5)
    check_ground_truth(gt)
    check_predictions(predictions, gt)
    check_predictions([], gt)
