"""The scorer's COCO backend (faster-coco-eval, accumulated as pycocotools) against pycocotools
itself: the same IoU matrices, precision, recall and score arrays and summary numbers, bit for
bit, for boxes, masks and keypoints, on generated cases with crowd regions, `ignore` flags,
images without objects or without predictions, and classes nobody predicted."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools.cocoeval import COCOeval

from data.errors import AnonlabError
from evaluation.score import score
from evaluation.scoring import coco_summary
from evaluation.scoring.coco_summary import COCO_STATS, evaluate, oks_sigmas, quiet_coco
from evaluation.scoring.options import ScoreOptions
from tests.evaluation.test_score import CLASSES, cat, pycoco, random_case

TAXONOMY = Path(__file__).parents[2] / "conf" / "taxonomy" / "default.yaml"


def harder(seed: int, masks: bool) -> tuple[dict, list[dict]]:
    """A random case with `ignore` flags, images without objects, images without predictions
    and a class with objects but no prediction."""
    gt, predictions = random_case(seed, masks=masks, n_images=10)
    rng = np.random.default_rng(seed)
    for ann in gt["annotations"]:
        if not ann["iscrowd"] and rng.random() < 0.15:
            ann["ignore"] = 1
    quiet = gt["images"][1]["id"]  # objects, no predictions
    predictions = [p for p in predictions if p["image_id"] != quiet]
    empty = 10_000 + seed  # no objects, predictions
    gt["images"].append({"id": empty, "width": 90, "height": 70})
    predictions.append({**predictions[0], "image_id": empty, "score": 0.77})
    gt["images"].append({"id": empty + 1, "width": 50, "height": 50})  # nothing at all
    if masks:
        del predictions[0]["segmentation"]  # the empty image's copy keeps it
    return gt, [p for p in predictions if p["category_id"] != cat("license_plate")]


def backend(reference: COCOeval, iou_type: str, sigmas=None):
    """The backend on the very annotations pycocotools evaluated (after its loadRes)."""
    gt, dt = reference.cocoGt.dataset, reference.cocoDt.dataset
    coco_gt = quiet_coco(gt["images"], gt["categories"], copy.deepcopy(gt["annotations"]))
    coco_dt = quiet_coco(gt["images"], gt["categories"], copy.deepcopy(dt["annotations"]))
    return evaluate(coco_gt, coco_dt, iou_type, sigmas)


def assert_same(ours, theirs) -> None:
    for key in ("precision", "recall", "scores"):
        assert ours.eval[key].shape == theirs.eval[key].shape, key
        assert np.array_equal(ours.eval[key], theirs.eval[key]), key
    assert ours.stats.tolist() == theirs.stats.tolist()
    assert set(ours.ious) == {key for key, matrix in theirs.ious.items() if len(matrix)}
    for key, matrix in ours.ious.items():
        assert np.array_equal(np.asarray(matrix), np.asarray(theirs.ious[key])), key


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images evaluated 3 at a time, so that every case joins several chunks."""
    monkeypatch.setattr(coco_summary, "CHUNK_IMAGES", 3)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("masks", [True, False])
@pytest.mark.usefixtures("small_chunks")
def test_boxes_and_masks_equal_pycocotools_bit_for_bit(seed: int, masks: bool) -> None:
    gt, predictions = harder(300 + seed, masks)
    assert any(a.get("ignore") for a in gt["annotations"])
    assert any(a["iscrowd"] for a in gt["annotations"]) or seed % 2
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        reference = pycoco(gt, predictions, iou_type)
        assert_same(backend(reference, iou_type), reference)


@pytest.mark.parametrize("seed", range(3))
def test_score_coco_numbers_equal_pycocotools_on_harder_cases(seed: int) -> None:
    gt, predictions = harder(400 + seed, masks=True)
    result = score(gt, predictions, ScoreOptions(n_boot=0)).to_json()
    for iou_type in ("bbox", "segm"):
        expected = pycoco(gt, predictions, iou_type).stats.tolist()
        assert [result["coco"][iou_type][k] for k in COCO_STATS] == expected


def keypoint_case(seed: int, names: list[str]) -> tuple[dict, list[dict]]:
    """Persons with the taxonomy's head keypoints (some unlabelled, some with none, crowds)
    and predictions near them and elsewhere, over sizes of COCO's medium and large ranges."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    k = len(names)
    for i in range(10):
        image_id = 50 + 3 * i
        width, height = 400, 300
        images.append({"id": image_id, "width": width, "height": height})
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(10, 160), rng.uniform(20, 200)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            points = np.stack([rng.uniform(x, x + w, k), rng.uniform(y, y + h / 3, k)], 1)
            visible = rng.choice([0, 1, 2], size=k, p=[0.2, 0.3, 0.5])
            if rng.random() < 0.1:
                visible[:] = 0
            keypoints = np.where(visible[:, None] > 0, points, 0)
            flat = np.column_stack([keypoints.round(1), visible]).ravel().tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat("person"),
                    "bbox": [x, y, w, h],
                    "area": float(w * h * rng.uniform(0.4, 0.9)),
                    "iscrowd": int(rng.random() < 0.08),
                    "keypoints": flat,
                    "num_keypoints": int(np.count_nonzero(visible)),
                }
            )
            if i == 2:
                continue  # an image with persons and no predictions
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                guess = points + rng.normal(0, rng.uniform(0.5, 8), (k, 2))
                predictions.append(
                    {
                        "image_id": image_id,
                        "category_id": cat("person"),
                        "keypoints": np.column_stack([guess, np.ones(k)]).ravel().tolist(),
                        "score": float(rng.choice([round(rng.random(), 1), rng.random()])),
                    }
                )
        for _ in range(int(rng.integers(0, 3))):
            guess = np.stack([rng.uniform(0, width, k), rng.uniform(0, height, k)], 1)
            predictions.append(
                {
                    "image_id": image_id,
                    "category_id": cat("person"),
                    "keypoints": np.column_stack([guess, np.ones(k)]).ravel().tolist(),
                    "score": float(rng.random()),
                }
            )
    categories = [{"id": cat(name), "name": name} for name in CLASSES]
    categories[CLASSES.index("person")]["keypoints"] = names
    return {"images": images, "categories": categories, "annotations": annotations}, predictions


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.usefixtures("small_chunks")
def test_keypoints_with_the_taxonomys_sigmas_equal_pycocotools_bit_for_bit(seed: int) -> None:
    names = yaml.safe_load(TAXONOMY.read_text())["keypoints"]
    sigmas = oks_sigmas(names)
    assert sigmas == [0.026, 0.025, 0.025, 0.035, 0.035]  # COCO's, for the head keypoints
    gt, predictions = keypoint_case(500 + seed, names)
    reference = pycoco(gt, predictions, "keypoints", kpt_oks_sigmas=np.array(sigmas))
    assert (reference.eval["precision"] > 0).any()  # a case with matches, not all misses
    assert_same(backend(reference, "keypoints", sigmas), reference)


def test_a_keypoint_without_a_coco_sigma_is_an_error() -> None:
    with pytest.raises(AnonlabError, match=r"no COCO OKS sigma for 'chin'.*nose, left_eye"):
        oks_sigmas(["nose", "chin"])
