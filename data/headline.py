"""Each stage's headline: the few numbers a person compares between experiments, written as the
stage's `headline.json` (its DVC `metrics:`) beside the full counts or scores it keeps as a plain
output, so that `dvc metrics show` and `dvc exp show` stay readable.

Each function takes the dict its stage writes in full (collect's, review's and annotate's
`metrics.json`, prepare's `stats.json`, train's `metrics.json`) and returns plain numbers under
one key: the stage's folder (`raw`, `reviewed`, `annotations`, `prepared`) or the model's name,
so that each column of `dvc exp show` has a short name of its own (`reviewed.kept`) where DVC
would otherwise prefix the file's path to names that two files share. evaluate's headline is
`evaluation.headline`, keyed by model too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def collect_headline(metrics: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Images in the store, how many this run added, and what it set aside."""
    return {"raw": {k: metrics[k] for k in ("images", "new", "duplicate", "quarantined")}}


def review_headline(metrics: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Images reviewed, kept and rejected (the reasons stay in metrics.json)."""
    return {"reviewed": {k: metrics[k] for k in ("input", "kept", "rejected")}}


def annotate_headline(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Annotated images, objects in all and per class, and the issues found while pulling."""
    objects: Mapping[str, int] = metrics["objects"]
    return {
        "annotations": {
            "images": metrics["images"],
            "objects": sum(objects.values()),
            "objects_by_class": dict(objects),
            "issues": sum(metrics["issues"].values()),
        }
    }


def prepare_headline(stats: Mapping[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """Per split (train, val, ref-<name>): images and objects."""
    return {
        "prepared": {
            split: {
                "images": s["images"],
                "objects": sum(sum(buckets.values()) for buckets in s["objects"].values()),
            }
            for split, s in stats.items()
        }
    }


def train_headline(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Under the model's name: the best validation's step and score (the gate's smallest
    margin), the last one's and the untrained model's score, and the best validation's recall
    per class (IoU and coverage), when the validation measured it."""
    best, final = metrics.get("best") or {}, metrics.get("final") or {}
    out: dict[str, Any] = {
        "best_step": best.get("step"),
        "best_score": best.get("score"),
        "final_score": final.get("score"),
        "untrained_score": (metrics.get("untrained") or {}).get("score"),
    }
    recall: Mapping[str, Mapping[str, float]] = best.get("recall") or {}
    for metric in ("iou", "coverage"):
        if recall:
            out[metric] = {name: r.get(metric) for name, r in recall.items()}
    return {metrics["model"]: out}
