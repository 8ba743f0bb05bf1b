"""`anonlab export`: each validated model as a runtime artifact folder, and the anonymizer
they make as one composite artifact folder."""

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
    "write each validated model as a runtime artifact (ONNX checked against PyTorch), and the "
    "anonymizer they make as one composite artifact",
    "After a passing `anonlab validate`, write artifacts/serving/<model>-<version>/ for each "
    "model of train.models: model.onnx (checked at export: on val tiles holding objects of "
    "each class first, onnxruntime and PyTorch must give the same detections, masks and "
    "keypoints within export.parity, and at least export.parity.min_compared detections "
    "must be compared, every class of the model among them but those in "
    "export.parity.allow_absent, or nothing is written), "
    "weights.safetensors, MODEL_CARD.md (recall per reference set and size bucket with "
    "intervals, known limits) and manifest.json (operating thresholds chosen on val, "
    "anonymization style per class from export.styles, input size and tiling, provenance, "
    "the sha256 of every file). Then the anonymizer, the models run as one as evaluate scored "
    "it and validate gated it (the `anonymizer` entry of artifacts/eval/metrics.json): "
    "artifacts/serving/<anonymizer.name>-<versions joined with +>/ holding composite.json "
    "(its members with their manifest sha256, which model supplies which class, the "
    "thresholds including the head threshold, styles, head geometry, recall), MODEL_CARD.md "
    "and a copy of each member's artifact under members/; it must load as the runtime loads "
    "it, or nothing is written. Only the weights the verdict names are exported: a "
    "weights.safetensors whose sha256 differs, an artifacts/eval/metrics.json other than "
    "the one validate judged, or one without the anonymizer or whose anonymizer ran other "
    "weights, is an error naming both sha256s, and nothing is written. "
    "`anonlab blur` and `anonlab serve` load these folders, the anonymizer's or a model's.",
    no_args,
    run,
)
