"""evaluate's headline (`eval/headline.json`, its DVC `metrics:`): per model and the anonymizer,
per reference set, the numbers a person compares between experiments. The full scores
(`eval/metrics.json`) stay a plain output: validate, export and reports read them there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.scoring.result import METRICS, recall_from_json

ALL = "all"  # the bucket of every counted object, whatever its size


def evaluate_headline(
    metrics: Mapping[str, Any], entries: Sequence[str], sets: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """For each entry of metrics.json named in `entries` and each set of `sets` it was scored
    on: recall per class over all sizes by IoU (`iou`) and by pixel coverage (`coverage`),
    false positives per image per class, and COCO AP (`mask_AP` when masks were scored, else
    `box_AP`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in entries:
        scored = metrics[entry]["sets"]
        out[entry] = {name: _set_headline(scored[name]) for name in sets if name in scored}
    return out


def _set_headline(scored: Mapping[str, Any]) -> dict[str, Any]:
    recall = recall_from_json(scored["recall"])
    out: dict[str, Any] = {
        metric: {name: buckets[ALL].value(metric) for name, buckets in recall.items()}
        for metric in METRICS
    }
    out["fp_per_image"] = dict(scored["false_positives_per_image"])
    coco = scored["coco"]
    if coco.get("segm"):
        out["mask_AP"] = coco["segm"]["AP"]
    elif coco.get("bbox"):
        out["box_AP"] = coco["bbox"]["AP"]
    return out
