"""A tiny exported artifact for the runtime's tests: a small random-weight Mask R-CNN, exported
by the real export code (ONNX traced and checked against PyTorch, manifest with checksums)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import torch
import yaml

from data.atomic import write_json
from data.config import compose
from evaluation.verdict import ValidatedModel, Verdict
from serving.export import ExportSetup, export_model
from serving.params import load_project
from serving.runtime.artifact import manifest_digest
from serving.runtime.checksum import file_sha256
from serving.runtime.release import GATE_BUCKETS, Gate, release_notice, release_problems
from tests.conftest import REPO
from tests.images import texture
from training.config import ModelConfig
from training.models import build_model, model_files_config, save_weights

NAME = "tiny"
CLASSES = ["face", "person", "license_plate", "vehicle"]
TILE = 128
OVERRIDES = [
    f"evaluate.tiling.tile={TILE}",
    "evaluate.tiling.overlap=16",
    "export.parity.tiles=3",
    # A random-weight model's top scores all go to one class (face): the other classes are
    # never detected, as with a class a trained model finds nothing of on val.
    "export.parity.allow_absent=[person,license_plate,vehicle]",
    "export.parity.min_compared=10",
]
# Operating thresholds: a random-weight model scores about 1 / (classes + 1) everywhere.
THRESHOLDS = {"face": 0.1, "person": 0.1, "license_plate": 0.1, "vehicle": 0.1}
# The gates a verdict may record: the release gate, and the demo's (conf/*/demo.yaml).
RELEASE_GATE = Gate(
    targets=dict.fromkeys(CLASSES, 0.95),
    metrics=("iou", "coverage"),
    buckets=GATE_BUCKETS,
    estimate="lower",
    min_objects=10,
    coverage=0.9,
    identifiable={"face": 6.0, "license_plate": 5.0},
)
DEMO_GATE = Gate(
    targets={"face": 0.25, "person": 0.2, "license_plate": 0.4, "vehicle": 0.4},
    metrics=("coverage",),
    buckets=("all",),
    estimate="point",
    min_objects=10,
    coverage=0.9,
    identifiable={"face": 6.0, "license_plate": 5.0},
)


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    """config.yaml + weights.safetensors of a small random Mask R-CNN, as training writes them."""
    config = ModelConfig(
        kind="maskrcnn",
        backbone="mobilenet_v3_small",
        trainable_layers=0,
        fpn_channels=16,
        classes=CLASSES,
        min_size=96,
        max_size=96,
        proposals_per_image=40,
        rois_per_image=16,
        detections_per_image=8,
    )
    torch.manual_seed(seed)
    model = build_model(config, keypoint_names=[])
    folder = root / "models" / NAME
    folder.mkdir(parents=True)
    save_weights(model, folder / "weights.safetensors")
    (folder / "config.yaml").write_text(
        yaml.safe_dump(model_files_config(config, keypoint_names=[])), encoding="utf-8"
    )
    return folder


def evaluate_entry() -> dict[str, Any]:
    """What evaluate writes for a model: thresholds chosen on val and recall per set."""
    bucket = {"iou": 0.5, "iou_ci": [0.3, 0.7], "coverage": 0.8, "coverage_ci": [0.6, 0.9]}
    return {
        "version": None,
        "thresholds": {
            c: {"threshold": t, "reached": c != "license_plate", "val_recall": 0.9}
            for c, t in THRESHOLDS.items()
        },
        "sets": {
            "holdout": {
                "recall": {
                    c: {"all": {**bucket, "n": 12}, "tiny": {**bucket, "n": 4}} for c in CLASSES
                },
                "false_positives_per_image": dict.fromkeys(CLASSES, 1.5),
            }
        },
    }


def export_setup(root: Path, overrides: list[str] | None = None) -> ExportSetup:
    """The export setup of a project in `root` composed from conf/ (plus OVERRIDES), with two
    val images in artifacts/prepared."""
    (root / "params.yaml").write_text(
        compose(REPO / "conf", [*OVERRIDES, *(overrides or [])]), encoding="utf-8"
    )
    project = load_project(root / "params.yaml")
    prepared = project.artifacts / "prepared"
    images = []
    for i, (w, h) in enumerate([(200, 150), (256, 128)]):
        name = f"images/val-{i}.png"
        (prepared / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(prepared / name), texture(w, h, seed=i))
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    write_json(prepared / "val.json", {"images": images, "annotations": [], "categories": []})
    return ExportSetup.of(project.params, artifacts=project.artifacts, root=root)


def write_validation(
    setup: ExportSetup, version: str | None = "3", gate: Gate = RELEASE_GATE
) -> str:
    """artifacts/eval/metrics.json and a passing artifacts/validation/verdict.json for the tiny
    model in `setup`'s artifacts, as evaluate and validate write them (its registered
    `version`, under `gate`); the sha256 of its weights, which the verdict names."""
    sha = file_sha256(setup.artifacts / "models" / NAME / "weights.safetensors")
    metrics = setup.artifacts / "eval" / "metrics.json"
    write_json(metrics, {NAME: {**evaluate_entry(), "weights_sha256": sha}})
    problems = release_problems(gate)
    Verdict(
        notice=release_notice(problems),
        release=not problems,
        gate=gate,
        passed=True,
        when="2026-11-22T00:00:00+00:00",
        failed=(),
        warnings=(),
        checks=(),
        metrics_sha256=file_sha256(metrics),
        models={NAME: ValidatedModel(sha, version)},
        challengers={NAME: version},
    ).write(setup.artifacts / "validation" / "verdict.json")
    return sha


def tiny_artifact(root: Path, gate: Gate = RELEASE_GATE) -> Path:
    """Export the tiny model from a fresh project in `root`, as passed under `gate`; the
    artifact folder."""
    setup = export_setup(root)
    model_dir = tiny_model_dir(setup.artifacts)
    return export_model(
        NAME,
        model_dir,
        evaluate_entry(),
        setup,
        setup.artifacts / "serving",
        version="1",
        provenance={"validated": "2026-11-22T00:00:00+00:00"},
        weights_sha256=file_sha256(model_dir / "weights.safetensors"),
        gate=gate,
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Change `folder`'s manifest.json with `edit` and recompute its manifest_sha256, as someone
    who knows the format would: the checksums hold, so only the values themselves can be
    refused."""
    m = read_manifest(folder)
    edit(m)
    m["manifest_sha256"] = manifest_digest(m)
    (folder / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
