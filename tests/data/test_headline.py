"""Each stage's headline.json holds the few numbers a person compares, taken from the full
metrics its stage writes."""

from __future__ import annotations

import pytest

from data.headline import (
    annotate_headline,
    collect_headline,
    prepare_headline,
    review_headline,
    train_headline,
)
from data.prepare import sizes_rows

STATS = {
    "train": {
        "images": 5,
        "objects": {"face": {"tiny": 3, "large": 1}, "person": {"tiny": 0, "large": 2}},
    },
    "ref-holdout": {
        "images": 2,
        "objects": {"face": {"tiny": 1, "large": 0}, "person": {"tiny": 0, "large": 0}},
        "expiring": {"images": 0, "earliest": None, "within_days": 30},
    },
}


def test_prepare_headline_counts_images_and_objects_per_split() -> None:
    headline = prepare_headline(STATS)["prepared"]
    assert headline == {
        "train": {"images": 5, "objects": 6},
        "ref-holdout": {"images": 2, "objects": 1},
    }
    # sizes.json, the plot of the same counts, adds up to the same objects per split.
    rows = sizes_rows(STATS)
    for split, numbers in headline.items():
        assert sum(r["objects"] for r in rows if r["split"] == split) == numbers["objects"]
    assert {(r["class"], r["bucket"]) for r in rows} == {
        (c, b) for c in ("face", "person") for b in ("tiny", "large")
    }


def test_collect_review_and_annotate_keep_the_counts_under_their_folder() -> None:
    collected = {"images": 9, "new": 4, "duplicate": 1, "quarantined": 2, "seen": 12}
    collected["quarantined_by_reason"] = {"truncated": 2}
    assert collect_headline(collected) == {
        "raw": {"images": 9, "new": 4, "duplicate": 1, "quarantined": 2}
    }
    reviewed = {"input": 9, "kept": 7, "rejected": 2, "rejected_by_reason": {"blurry": 2}}
    reviewed["thresholds"] = {"blur_threshold": 40.0}
    assert review_headline(reviewed) == {"reviewed": {"input": 9, "kept": 7, "rejected": 2}}
    pulled = {
        "tasks": 10,
        "images": 7,
        "objects": {"face": 3, "person": 4},
        "issues": {"not_reviewed": 3, "unknown_label": 1},
        "conversion": {"regions": 40},
    }
    assert annotate_headline(pulled) == {
        "annotations": {
            "images": 7,
            "objects": 7,
            "objects_by_class": {"face": 3, "person": 4},
            "issues": 4,
        }
    }


def test_train_headline_is_the_best_validation_beside_the_last_and_the_untrained() -> None:
    best = {"step": 40, "score": -0.1, "recall": {"face": {"iou": 0.2, "coverage": 0.5}}}
    metrics = {
        "model": "m",
        "steps": 60,
        "best": best,
        "final": {"step": 60, "score": -0.3, "recall": {"face": {"iou": 0.1, "coverage": 0.4}}},
        "untrained": {"step": 0, "score": -0.9},
    }
    assert train_headline(metrics)["m"] == {
        "best_step": 40,
        "best_score": -0.1,
        "final_score": -0.3,
        "untrained_score": -0.9,
        "iou": {"face": 0.2},
        "coverage": {"face": 0.5},
    }


@pytest.mark.parametrize("best", [{}, {"step": 2, "score": 0.5}])
def test_train_headline_without_a_measured_recall_has_no_recall_columns(best: dict) -> None:
    headline = train_headline({"model": "m", "best": best, "final": {}, "untrained": {}})["m"]
    assert "iou" not in headline and "coverage" not in headline
    assert headline["best_step"] == best.get("step")
