"""Scores a detector's COCO results against COCO ground truth for anonymization: COCO AP equal to
pycocotools' own (computed by faster-coco-eval, `scoring/coco_summary.py`), and recall and pixel
coverage per class and size bucket with bootstrap intervals.

Decisions the numbers rest on:
- `coco.segm` is computed when every ground-truth annotation has a segmentation and at least one
  prediction has one; predictions without a mask then count as their box (as pycocotools'
  `loadRes` does). Otherwise `coco.segm` is null and recall matches by box IoU.
- Objects with `iscrowd` or `ignore` set are not counted; a detection matched to one is neither a
  hit nor a false positive. (pycocotools itself overwrites `ignore` with `iscrowd`, so `coco.*`
  treats an `ignore`-only object as a normal one.)
- Recall, false positives and curves use each (image, class)'s `max_dets` best predictions, as
  COCO does; coverage uses every prediction above threshold, as the blurring runtime would.
- Coverage from a hidden mask (`hidden`, per image id: the pixels an anonymizer hides, as
  evaluate computes them for the runtime's rule): when given, an object's share is that of its
  pixels (mask, else box) inside its image's hidden mask, and the predictions only serve
  recall by IoU, COCO AP, false positives and curves. An image absent from `hidden` hides
  nothing.
- Identifiability (`ScoreOptions.min_identifiable`): an object whose box is shorter than its
  class's minimum height cannot identify anyone. It is scored in its own row
  (`below_identifiable`), is in no size bucket and not in `all`, and a detection matched to it
  is neither a hit nor a false positive (hiding it is never wrong). `all`, the size buckets, the
  precision/recall curves and the operating thresholds are those of identifiable objects; with
  no minimum every object is identifiable. `coco.*` is pycocotools' own, over every object.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from data.coco.files import load_ground_truth, load_predictions
from evaluation.scoring.coco_summary import coco_summaries, gt_copy, prediction_copy
from evaluation.scoring.coverage import HiddenMask, covered_shares, hidden_shares
from evaluation.scoring.curves import precision_recall_curve
from evaluation.scoring.instances import detection_arrays, mask_mode, truth_arrays
from evaluation.scoring.matching import greedy_match, matching_pairs
from evaluation.scoring.options import (
    ScoreOptions,
    check_options,
    resolve_targets,
    resolve_thresholds,
)
from evaluation.scoring.recall import (
    ALL,
    BUCKET_NAMES,
    bucket_members,
    is_identifiable,
    recall_tables,
)
from evaluation.scoring.result import CurvePoint, ObjectOutcome, OperatingPoint, ScoreResult

DEFAULT_OPTIONS = ScoreOptions()


def score_files(
    gt_path: Path,
    pred_path: Path,
    options: ScoreOptions = DEFAULT_OPTIONS,
    timings: dict[str, float] | None = None,
) -> ScoreResult:
    """Load and check both files, then `score` them. `timings` (when given) receives the wall
    seconds of each phase, and its CPU seconds under the phase's name + "_cpu": load (read and
    check), coco (the COCO evaluation, on inputs prepared as pycocotools' loadRes does), metrics
    (the rest)."""
    clock = _Stopwatch(timings)
    gt = load_ground_truth(gt_path)
    predictions = load_predictions(pred_path, gt, gt_name=str(gt_path))
    clock.lap("load")
    return score(gt, predictions, options, timings)


def score(
    gt: dict,
    predictions: list[dict],
    options: ScoreOptions = DEFAULT_OPTIONS,
    timings: dict[str, float] | None = None,
    *,
    hidden: Mapping[int, HiddenMask] | None = None,
) -> ScoreResult:
    """All metrics of checked ground truth and predictions (see `check_ground_truth` and
    `check_predictions`); `timings` as in `score_files`. `hidden`: per image id, the pixels an
    anonymizer hides ((height, width) bool array or COCO RLE); coverage is then measured
    against them instead of the predictions (module docstring)."""
    clock = _Stopwatch(timings)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    classes = [c["name"] for c in categories]
    thresholds = resolve_thresholds(options.thresholds, classes)
    check_options(options)
    targets = resolve_targets(options.target_recall, classes)
    image_ids = np.array(sorted(image["id"] for image in gt["images"]), dtype=np.int64)
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    heights = {image["id"]: image["height"] for image in gt["images"]}
    widths = {image["id"]: image["width"] for image in gt["images"]}

    gt_anns = [gt_copy(a, heights[a["image_id"]], widths[a["image_id"]]) for a in gt["annotations"]]
    clock.lap("coco")
    truth = truth_arrays(gt, gt_anns, image_ids, category_ids)
    dets = detection_arrays(predictions, image_ids, category_ids)
    notes: list[str] = []
    masks = mask_mode(truth, dets, notes)
    clock.lap("metrics")
    dt_anns = [prediction_copy(p, i, masks) for i, p in enumerate(predictions)]

    coco, ious = coco_summaries(gt, gt_anns, dt_anns, masks, iou_rows=options.max_dets)
    clock.lap("coco")

    pairs = matching_pairs(ious, truth, dets, image_ids, category_ids, options.max_dets)
    del ious  # the matrices are in `pairs` now
    rank = pairs.rank
    kept = rank < options.max_dets
    det_threshold = np.array([thresholds[c] for c in classes])[dets.category]
    above = dets.score >= det_threshold
    gt_threshold = np.array([thresholds[c] for c in classes])[truth.category]
    counted = ~truth.ignored
    identifiable = is_identifiable(truth, classes, options.min_identifiable)
    members = bucket_members(truth, identifiable)

    found: dict[str, np.ndarray] = {}
    status_all: tuple[np.ndarray, np.ndarray] | None = None
    for bucket in BUCKET_NAMES:
        in_bucket = members[bucket]
        ignored = truth.ignored | ~in_bucket
        det_gt = greedy_match(
            pairs, truth.crowd, ignored, len(dets.score), min(options.iou, 1 - 1e-10)
        )
        hit = det_gt >= 0
        hit[hit] = ~ignored[det_gt[hit]]
        best = np.full(len(counted), -np.inf)
        best[det_gt[hit]] = dets.score[hit]
        found[bucket] = (best >= gt_threshold) & counted & in_bucket
        if bucket == ALL:
            false = (det_gt < 0) & kept
            status_all = (hit, false)
    assert status_all is not None
    hit_all, false_all = status_all

    if hidden is None:
        share = covered_shares(gt_anns, dt_anns, truth, dets, above, image_ids, heights, widths)
    else:
        share = hidden_shares(gt_anns, truth, image_ids, heights, widths, hidden)
    covered = (share >= options.coverage) & counted  # nan (not counted) compares False

    recall = recall_tables(truth, members, found, covered, classes, len(image_ids), options)
    n_images = len(image_ids)
    false_positives = {
        name: float(np.count_nonzero(false_all & above & (dets.category == c)) / n_images)
        for c, name in enumerate(classes)
    }
    pr_curves: dict[str, list[CurvePoint]] = {}
    operating: dict[str, OperatingPoint | None] = {}
    for c, name in enumerate(classes):
        of_class = kept & (dets.category == c)
        n = int(np.count_nonzero(counted & identifiable & (truth.category == c)))
        curve, operating[name], note = precision_recall_curve(
            dets.score[of_class],
            hit_all[of_class],
            false_all[of_class],
            n,
            targets[name],
            options.min_threshold,
        )
        pr_curves[name] = curve
        if note:
            notes.append(f"{name}: {note}")

    objects = None
    if options.per_object:
        objects = [
            ObjectOutcome(
                id=int(gt["annotations"][i]["id"]),
                found=bool(found[ALL][i]),
                covered=bool(covered[i]),
                coverage=float(share[i]),
                identifiable=bool(identifiable[i]),
            )
            for i in np.flatnonzero(counted)
        ]
    result = ScoreResult(
        images=n_images,
        coco=coco,
        iou_type="segm" if masks else "bbox",
        recall=recall,
        false_positives_per_image=false_positives,
        pr_curve=pr_curves,
        operating_points=operating,
        options={
            "thresholds": thresholds,
            "coverage": float(options.coverage),
            "target_recall": targets,
            "min_threshold": float(options.min_threshold),
            "iou": float(options.iou),
            "max_dets": options.max_dets,
            "n_boot": options.n_boot,
            "seed": options.seed,
            "min_identifiable": {
                name: float((options.min_identifiable or {}).get(name, 0.0)) for name in classes
            },
        },
        notes=notes,
        objects=objects,
    )
    clock.lap("metrics")
    return result


class _Stopwatch:
    """Adds the wall and CPU seconds since its last lap to a phase of `timings` (CPU time stays
    honest on a busy machine)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + wall - self.wall
            cpu_phase = f"{phase}_cpu"
            self.timings[cpu_phase] = self.timings.get(cpu_phase, 0.0) + cpu - self.cpu
        self.wall, self.cpu = wall, cpu
