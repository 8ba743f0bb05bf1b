"""`anonlab evaluate`: recall of every trained model, and of the anonymizer they make together,
on val and each reference set."""

from __future__ import annotations

import argparse

from serving.cli.printing import fmt_score
from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from evaluation.evaluate import EvalSetup, run_evaluate
    from evaluation.scoring.result import recall_from_json

    metrics = run_evaluate(
        EvalSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    )
    for model, entry in metrics.items():
        for set_name, s in entry["sets"].items():
            cells = []
            for name, buckets in recall_from_json(s.get("recall") or {}).items():
                every = buckets["all"]
                cells.append(f"{name} {fmt_score(every.iou)}/{fmt_score(every.coverage)}")
            print(f"{model} on {set_name} (recall iou/coverage): {', '.join(cells)}")
    print(f"report: {project.stage_paths.eval.report}")
    return 0


COMMAND = Command(
    "recall of every trained model (and the champion) and of the anonymizer on val and each "
    "reference set",
    "Run each model of train.models over val and every reference set with the runtime's "
    "tiling (evaluate.tiling), choose per class the highest score threshold that reaches "
    "evaluate.target_recall on val, and score every set at those thresholds: recall by "
    "IoU and by pixel coverage per class and size bucket with bootstrap intervals, COCO "
    "AP, false positives per image. The registry's champion is scored the same way. Then "
    "the anonymizer (the models run as one, as the runtime runs them: each class from the "
    "model that supplies it, plus the head regions of the keypoint model's persons, the "
    "head threshold chosen on val for the face target) is scored the same way, its coverage "
    "measured on the pixels the runtime hides; it is metrics.json's `anonymizer` entry, "
    "which the release gate judges. Each independent detector of evaluate.peers "
    "(default CenterFace) is scored the same way on the classes it finds, as a baseline "
    "beside ours (metrics.json's peer:<name>, MLflow's peer/<name>/...); the gate never "
    "judges it. "
    "Writes artifacts/eval/: metrics.json, headline.json (DVC's metrics), plots/, "
    "predictions/, report.html (with a "
    "gallery of the missed objects); logs recall/<set>/<class>/<bucket> to MLflow.",
    no_args,
    run,
)
