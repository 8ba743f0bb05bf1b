"""The scorer's metrics as a table for a terminal."""

from __future__ import annotations

from evaluation.scoring.coco_summary import COCO_STATS
from evaluation.scoring.recall import BELOW
from evaluation.scoring.result import ScoreResult


def format_table(metrics: ScoreResult) -> str:
    """The metrics of `score` as a table for a terminal."""
    options = metrics.options
    lines = [
        f"{metrics.images} images; matching by {metrics.iou_type} IoU >= "
        f"{options['iou']:g}; covered at >= {options['coverage']:.0%} of pixels; "
        f"95% intervals from {options['n_boot']} image resamples",
        "",
        "COCO  " + "".join(f"{name:>7}" for name in COCO_STATS),
    ]
    for iou_type in ("bbox", "segm"):
        stats = metrics.coco.get(iou_type)
        if stats:
            lines.append(f"{iou_type:<6}" + "".join(f"{stats[k]:7.3f}" for k in COCO_STATS))
    lines += [
        "",
        f"{'class':<16}{'bucket':<8}{'n':>7}  {'recall':<22}{'coverage':<22}",
    ]
    operating_thresholds = metrics.operating_thresholds
    for name, buckets in metrics.recall.items():
        rows = [(b, cell) for b, cell in buckets.items() if b != BELOW or cell.n]
        for k, (bucket, cell) in enumerate(rows):
            label = name if k == 0 else ""
            shown = "below" if bucket == BELOW else bucket
            lines.append(
                f"{label:<16}{shown:<8}{cell.n:>7}  "
                f"{_with_interval(cell.iou, cell.iou_ci):<22}"
                f"{_with_interval(cell.coverage, cell.coverage_ci):<22}"
            )
        threshold = operating_thresholds.get(name)
        operating = "none" if threshold is None else f"{threshold:.4g}"
        lines.append(
            f"{'':<16}threshold {options['thresholds'][name]:g}; false positives per image "
            f"{metrics.false_positives_per_image[name]:.3f}; threshold for recall "
            f"{options['target_recall'][name]:g}: {operating}"
        )
    minimum = {k: v for k, v in (options.get("min_identifiable") or {}).items() if v}
    if minimum:
        heights = ", ".join(f"{k} {v:g} px" for k, v in minimum.items())
        lines += [
            "",
            f"identifiable from a box height of {heights}: smaller objects are in `below` "
            "only, and hiding them is never a false positive",
        ]
    if metrics.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in metrics.notes]
    return "\n".join(line.rstrip() for line in lines)


def _with_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
