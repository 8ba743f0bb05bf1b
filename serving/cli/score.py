"""`anonlab score`: any detector's COCO results scored against COCO ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.runtime.commands.command import Command, probability, share


def run(args: argparse.Namespace) -> int:
    from data.coco.files import load_ground_truth, load_predictions
    from evaluation.score import score
    from evaluation.scoring.options import ScoreOptions, parse_heights, parse_thresholds
    from evaluation.scoring.table import format_table

    gt = load_ground_truth(Path(args.gt))
    predictions = load_predictions(Path(args.pred), gt, gt_name=args.gt)
    classes = [c["name"] for c in gt["categories"]]
    options = ScoreOptions(
        thresholds=parse_thresholds(args.thresholds, classes),
        coverage=args.coverage,
        target_recall=args.target_recall,
        n_boot=args.n_boot,
        seed=args.seed,
        min_identifiable=parse_heights(args.identifiable or "", classes),
    )
    metrics = score(gt, predictions, options)
    print(format_table(metrics))
    if args.out:
        from data.atomic import write_json

        write_json(Path(args.out), metrics.to_json())
        print(f"wrote {args.out}")
    return 0


def thresholds(text: str) -> str:
    """--thresholds as given, once every number in it is from 0 to 1; its class names are
    checked against the ground truth's (`parse_thresholds`)."""
    for part in text.split(","):
        value = part.rpartition("=")[2].strip()
        if value:
            try:
                probability(value)
            except argparse.ArgumentTypeError as exc:
                where = "" if value == text.strip() else f"{text!r}: "
                raise argparse.ArgumentTypeError(f"{where}{exc}") from None
    return text


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="COCO ground truth (instances) JSON")
    p.add_argument("--pred", required=True, help="COCO results JSON (a list of detections)")
    p.add_argument(
        "--thresholds",
        type=thresholds,
        default="0.5",
        help="operating score thresholds, from 0 to 1: one for all classes (0.5) or per class "
        "(face=0.6,license_plate=0.4; others 0.5)",
    )
    p.add_argument(
        "--coverage",
        type=share,
        default=0.9,
        help="share of an object's pixels that must be covered for it to count as "
        "anonymized, above 0 and at most 1",
    )
    p.add_argument(
        "--target-recall",
        type=share,
        default=0.95,
        help="recall the reported operating thresholds must reach, above 0 and at most 1",
    )
    p.add_argument(
        "--identifiable",
        metavar="CLASS=PX,...",
        help="per class, the box height in pixels from which an object can identify someone "
        "(e.g. face=6,license_plate=5, the project's taxonomy.identifiable); smaller objects "
        "are scored in their own row (below_identifiable), not in `all` or the size buckets, "
        "and detections on them are no false positives. Default: every object counts",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", help="write every number as JSON here")


COMMAND = Command(
    "score any detector's COCO results against COCO ground truth",
    "Recall per class and object size (by IoU and by pixel coverage: a face inside a "
    "detected person counts as covered) with bootstrap 95% intervals, at per-class "
    "operating thresholds; the 12 COCO AP/AR numbers (equal to pycocotools'); false "
    "positives per image; precision/recall curves; and the highest threshold per class "
    "that still reaches --target-recall. Class names are the ground truth's. Reads no "
    "params.yaml and takes no key=value overrides.",
    add_args,
    run,
)
