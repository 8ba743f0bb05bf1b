"""The anonymizer as evaluate scores it, on hand-built detections: heads from a keypoint model's
persons hide faces the face class misses, the head threshold rule, and heads-only faces."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from evaluation.anonymizer import (
    AnonymizerSetup,
    MemberRun,
    anonymizer_report,
    evaluate_anonymizer,
)
from evaluation.config import GalleryConfig
from evaluation.head_threshold import HeadChoice, choose_head_threshold
from evaluation.report import render_report
from evaluation.scoring.options import ScoreOptions
from serving.runtime.anonymize import DEFAULT_STYLES
from serving.runtime.composite import Member
from serving.runtime.detections import Detections
from serving.runtime.heads import HEAD_KEYPOINTS, HeadSpec
from serving.runtime.tiles import TilingSpec

CLASSES = ["face", "person", "license_plate", "vehicle"]
SIDE = 100
MASK = Member("masks", tuple(CLASSES), "maskrcnn")
KEYPOINTS = Member("keypoints", ("person",), "keypointrcnn", HEAD_KEYPOINTS)
# Four 8 px faces: A found by the face class, B and C under the heads of persons the keypoint
# model scores 0.8 and 0.4 (the face class misses both), D hidden by nothing.
FACES = {"A": [10, 10, 8, 8], "B": [46, 12, 8, 8], "C": [76, 12, 8, 8], "D": [10, 60, 8, 8]}
OPTIONS = ScoreOptions(
    coverage=0.9, target_recall=0.95, min_threshold=0.05, n_boot=0, min_identifiable={"face": 6}
)


def ground_truth() -> dict:
    return {
        "images": [{"id": 1, "width": SIDE, "height": SIDE, "file_name": "a.png"}],
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 64, "iscrowd": 0}
            for k, box in enumerate(FACES.values())
        ],
    }


def nose_only(nose: tuple[float, float]) -> np.ndarray:
    """Head keypoints of a person seen with only its nose visible."""
    points = np.zeros((len(HEAD_KEYPOINTS), 3), np.float32)
    points[0] = (*nose, 5.0)
    return points


def runs(keypoint_person_threshold: float = 0.9, scores: tuple = ({}, {})) -> list[MemberRun]:
    """The two members' runs: their detections on val and holdout (one image, the same), their
    thresholds, and `scores`, each one's own scores (only the report reads them)."""
    face = Detections([[9, 9, 19, 19]], [0.9], [1])  # face A, label face of MASK
    persons = Detections(
        [[40, 10, 60, 90], [70, 10, 90, 90]],
        [0.8, 0.4],
        [1, 1],
        keypoints=np.stack([nose_only((50, 16)), nose_only((80, 16))]),
    )
    entry = {"threshold": 0.5, "val_recall": 1.0, "reached": True}
    kp_entry = {**entry, "threshold": keypoint_person_threshold}
    return [
        MemberRun(
            MASK,
            "a" * 64,
            "1",
            dict.fromkeys(CLASSES, entry),
            scores[0],
            {s: {1: face} for s in ("val", "holdout")},
        ),
        MemberRun(
            KEYPOINTS,
            "b" * 64,
            None,
            {"person": kp_entry},
            scores[1],
            {s: {1: persons} for s in ("val", "holdout")},
        ),
    ]


def setup(face_target: float, heads: bool = True) -> AnonymizerSetup:
    return AnonymizerSetup(
        heads=HeadSpec() if heads else None,
        styles=DEFAULT_STYLES,
        spec=TilingSpec(tile=512),
        options=OPTIONS,
        face_target=face_target,
    )


@pytest.mark.parametrize(
    ("target", "cap", "threshold", "recall", "reached"),
    [
        (0.75, 0.9, 0.4, 0.75, True),  # B and C need heads: the lower person score
        (0.5, 0.9, 0.8, 0.5, True),  # the highest score that reaches the target
        (0.5, 0.6, 0.6, 0.5, True),  # never above the keypoint model's person threshold
        (0.8, 0.9, 0.05, 0.75, False),  # unreachable: every head (the floor)
    ],
)
def test_head_threshold_is_the_highest_person_score_reaching_the_face_target(
    target: float, cap: float, threshold: float, recall: float, reached: bool
) -> None:
    gt = ground_truth()
    result = evaluate_anonymizer(runs(cap), {"val": gt, "holdout": gt}, setup(target))
    head = result.thresholds["head"]
    assert head == {
        "threshold": pytest.approx(threshold),
        "val_recall": recall,
        "reached": reached,
        "model": "keypoints",
    }
    assert result.composition.supplies == {**dict.fromkeys(CLASSES, "masks"), "head": "keypoints"}
    # The recall the rule chose by is what the scorer measures on the hidden pixels.
    assert result.scores["val"].recall["face"]["all"].coverage == recall
    # Faces covered with the heads and not without: B (and C from 0.4).
    assert result.entry()["heads_only"] == {"holdout": 2 if threshold <= 0.4 else 1}


def test_a_face_only_a_head_hides_counts_for_the_anonymizer_not_for_the_face_model() -> None:
    gt = ground_truth()
    with_heads = evaluate_anonymizer(runs(), {"val": gt, "holdout": gt}, setup(0.75))
    cell = with_heads.scores["holdout"].recall["face"]["all"]
    assert cell.n == 4 and cell.coverage == 0.75  # A by its face detection, B and C by heads
    assert cell.iou == 0.25  # found by IoU: only A, the heads are no face detections
    # Faces B and C (annotations 2, 3) with their cover scores, the scores of their persons.
    assert with_heads.heads_only["holdout"] == [(2, pytest.approx(0.8)), (3, pytest.approx(0.4))]
    without = evaluate_anonymizer(runs(), {"val": gt, "holdout": gt}, setup(0.75, heads=False))
    assert without.scores["holdout"].recall["face"]["all"].coverage == 0.25
    assert "head" not in without.thresholds and without.entry()["heads"] == {}
    assert without.entry()["heads_only"] == {"holdout": 0}
    # Heads enabled but no keypoint model: no heads either.
    alone = evaluate_anonymizer(runs()[:1], {"val": gt, "holdout": gt}, setup(0.75))
    assert alone.entry()["heads"] == {} and "head" not in alone.entry()["supplies"]
    entry = with_heads.entry()
    assert entry["members"] == {
        "masks": {"weights_sha256": "a" * 64, "version": "1"},
        "keypoints": {"weights_sha256": "b" * 64, "version": None},
    }
    assert entry["styles"]["head"] == DEFAULT_STYLES["face"].to_dict()
    assert entry["thresholds"]["face"]["model"] == "masks"
    assert set(entry["sets"]) == {"val", "holdout"}


def test_choose_head_threshold_without_faces_keeps_the_keypoint_models_threshold() -> None:
    none = choose_head_threshold(np.zeros(0), target=0.9, cap=0.7, floor=0.05)
    assert none == HeadChoice(0.7, None, False)
    # Faces covered without heads reach any target at the cap; faces never covered lower it.
    covered = np.array([math.inf, math.inf])
    assert choose_head_threshold(covered, target=1.0, cap=0.7, floor=0.05).threshold == 0.7
    never = np.array([math.inf, -math.inf])
    choice = choose_head_threshold(never, target=0.9, cap=0.7, floor=0.05)
    assert (choice.threshold, choice.val_recall, choice.reached) == (0.05, 0.5, False)


def test_report_shows_the_anonymizer_first_with_the_faces_only_heads_hid(tmp_path: Path) -> None:
    gt = ground_truth()
    cv2.imwrite(str(tmp_path / "a.png"), np.full((SIDE, SIDE, 3), 128, np.uint8))
    # The members' own scores: each alone, on the classes it detects.
    persons = {**gt, "annotations": [], "categories": [{"id": 2, "name": "person"}]}
    masks = evaluate_anonymizer(runs()[:1], {"val": gt, "holdout": gt}, setup(0.75)).scores
    keypoints = evaluate_anonymizer(runs()[1:], {"holdout": persons}, setup(0.75)).scores
    both = {"val": gt, "holdout": gt}
    result = evaluate_anonymizer(runs(scores=(masks, keypoints)), both, setup(0.75))
    gallery = GalleryConfig(max_per_set=1, context=1.0)
    section = anonymizer_report(result, "anon", {"holdout": gt}, {"holdout": tmp_path}, gallery)
    assert section.sets[0].heads_only_total == 2 and len(section.sets[0].heads_only) == 1
    assert section.sets[0].heads_only[0].caption == (
        "face (tiny, 8x8 px), covered with the heads of persons scoring 0.80 or more; a.png"
    )
    page = render_report(
        [],
        targets=dict.fromkeys(CLASSES, 0.95),
        coverage=0.9,
        identifiable={"face": 6},
        generated="now",
        anonymizer=section,
    )
    assert "Anonymizer anon: the models run as one" in page
    assert "the release gate judges" in page
    assert "Faces only the heads hid on holdout: 2" in page
    assert page.count("data:image/jpeg;base64,") == 1  # at most gallery.max_per_set crops
    assert "scoring at least <b>0.400</b>" in page  # the head threshold
    face_rows = [row for row in page.split("<tr>") if row.startswith("<td>face</td>")]
    assert len(face_rows) == 2  # the member detecting faces, then the anonymizer
    assert "0.750" in face_rows[-1] and "<b>anonymizer</b>" in face_rows[-1]
    person_rows = [row for row in page.split("<tr>") if row.startswith("<td>person</td>")]
    assert len(person_rows) == 3  # both members detect persons
