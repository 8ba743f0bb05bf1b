"""`anonlab export`: each validated model as a runtime artifact folder."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from serving.export import ExportSetup, run_export

    setup = ExportSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    for folder in run_export(setup):
        print(f"exported {folder}")
    return 0


COMMAND = Command(
    "write each validated model as a runtime artifact (ONNX checked against PyTorch)",
    "After a passing `anonlab validate`, write artifacts/serving/<model>-<version>/ for each "
    "model of train.models: model.onnx (checked at export: on val tiles holding objects of "
    "each class first, onnxruntime and PyTorch must give the same detections, masks and "
    "keypoints within export.parity, and at least export.parity.min_compared detections "
    "must be compared, every class of the model among them but those in "
    "export.parity.allow_absent, or nothing is written), "
    "weights.safetensors, MODEL_CARD.md (recall per reference set and size bucket with "
    "intervals, known limits) and manifest.json (operating thresholds chosen on val, "
    "anonymization style per class from export.styles, input size and tiling, provenance, "
    "the sha256 of every file). Only the weights the verdict names are exported: a "
    "weights.safetensors whose sha256 differs, or an artifacts/eval/metrics.json other than "
    "the one validate judged, is an error naming both sha256s, and nothing is written. "
    "`anonlab blur` and `anonlab serve` load these folders.",
    no_args,
    run,
)
