"""evaluate's headline.json and plot rows, from real scorer results."""

from __future__ import annotations

import pytest

from evaluation.headline import evaluate_headline
from evaluation.plot_rows import pr_rows, recall_by_size_rows
from evaluation.score import score
from evaluation.scoring.result import ScoreResult, sets_to_json
from tests.evaluation.test_score import FAST, random_case


@pytest.fixture(scope="module")
def scored() -> dict[str, ScoreResult]:
    """One result with masks (mask IoU), one without (box IoU)."""
    return {
        "masks": score(*random_case(3, masks=True, n_images=4), FAST),
        "boxes": score(*random_case(4, masks=False, n_images=4), FAST),
    }


def test_the_headline_holds_every_class_of_each_entry_on_reference_sets_only(
    scored: dict[str, ScoreResult],
) -> None:
    masks, boxes = scored["masks"], scored["boxes"]
    metrics = {
        "model": {"sets": sets_to_json({"val": masks, "holdout": masks}), "version": 3},
        "anonymizer": {"sets": sets_to_json({"val": boxes, "holdout": boxes, "night": boxes})},
        "peer:centerface": {"sets": sets_to_json({"holdout": boxes})},
    }
    headline = evaluate_headline(metrics, ["model", "anonymizer"], ["holdout", "night"])
    assert set(headline) == {"model", "anonymizer"}  # peers are baselines, left out
    assert set(headline["model"]) == {"holdout"}  # the model was not scored on `night`
    assert set(headline["anonymizer"]) == {"holdout", "night"}
    model = headline["model"]["holdout"]
    for metric in ("iou", "coverage"):
        assert model[metric] == {c: cells["all"].value(metric) for c, cells in masks.recall.items()}
    assert model["fp_per_image"] == masks.false_positives_per_image
    assert model["mask_AP"] == masks.coco["segm"]["AP"] and "box_AP" not in model
    boxed = headline["anonymizer"]["night"]
    assert boxed["box_AP"] == boxes.coco["bbox"]["AP"] and "mask_AP" not in boxed


def test_plot_rows_carry_the_class_of_each_series_and_name_the_iou(
    scored: dict[str, ScoreResult],
) -> None:
    masks, boxes = scored["masks"], scored["boxes"]
    pr = pr_rows(masks)
    assert len(pr) == sum(len(curve) for curve in masks.pr_curve.values())
    assert {r["class"] for r in pr} == {c for c, curve in masks.pr_curve.items() if curve}
    labelled = {"IoU (mask) >= 0.5": masks, "IoU (box) >= 0.5": boxes}
    for iou_label, result in labelled.items():
        measures = (iou_label, "coverage >= 0.9")
        rows = recall_by_size_rows(result)
        assert {r["measure"] for r in rows} == set(measures)
        # one row per class, bucket and measure, each with its cell's recall and count
        cells = [
            (c, b, cell) for c, buckets in result.recall.items() for b, cell in buckets.items()
        ]
        assert len(rows) == 2 * len(cells)
        iou = {(r["class"], r["bucket"]): r for r in rows if r["measure"] == measures[0]}
        for name, bucket, cell in cells:
            assert iou[name, bucket]["recall"] == cell.iou and iou[name, bucket]["n"] == cell.n
