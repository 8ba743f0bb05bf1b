"""The rows evaluate writes for `dvc plots` (dvc.yaml declares their axes and templates): one
file per model and set, each row carrying its `class` so that each class is a series.

- `plots/pr/<model>/<set>.json`: precision/recall points, one per score threshold.
- `plots/recall_by_size/<model>/<set>.json`: recall per class and size bucket, by IoU and by
  pixel coverage (`measure` names which, with its rule), with the objects counted (`n`).
"""

from __future__ import annotations

from typing import Any

from data.atomic import write_json
from data.stage_paths import EvalOutputs
from evaluation.scoring.result import METRICS, ScoreResult


def pr_rows(metrics: ScoreResult) -> list[dict[str, Any]]:
    """Precision and recall at each score threshold, per class."""
    return [
        {"class": name, "score": p.score, "recall": p.recall, "precision": p.precision}
        for name, curve in metrics.pr_curve.items()
        for p in curve
    ]


def measure_label(metrics: ScoreResult, metric: str) -> str:
    """What a recall measures, as a plot says it: `IoU (mask) >= 0.5`, `coverage >= 0.9` (a
    plot orders them so, IoU first)."""
    if metric == "iou":
        kind = "mask" if metrics.iou_type == "segm" else "box"
        return f"IoU ({kind}) >= {metrics.options['iou']:g}"
    return f"coverage >= {metrics.options['coverage']:g}"


def recall_by_size_rows(metrics: ScoreResult) -> list[dict[str, Any]]:
    """Recall per class, size bucket and measure; a bucket without objects has recall None."""
    return [
        {
            "class": name,
            "bucket": bucket,
            "measure": measure_label(metrics, metric),
            "recall": cell.value(metric),
            "n": cell.n,
        }
        for metric in METRICS
        for name, buckets in metrics.recall.items()
        for bucket, cell in buckets.items()
    ]


def write_plots(outputs: EvalOutputs, model: str, set_name: str, metrics: ScoreResult) -> None:
    """Both plot files of `model` on `set_name`."""
    write_json(outputs.pr_plot(model, set_name), pr_rows(metrics))
    write_json(outputs.size_plot(model, set_name), recall_by_size_rows(metrics))
