"""Tiny exported artifacts for the runtime's tests: a small random-weight Mask R-CNN and
Keypoint R-CNN, exported by the real export code (ONNX traced and checked against PyTorch,
manifest with checksums), and the anonymizer they make (a composite artifact) from hand-built
evaluate and validate outputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
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
from serving.runtime.anonymize import DEFAULT_STYLES
from serving.runtime.artifact import manifest_digest
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import Member, default_supplies
from serving.runtime.heads import HeadSpec
from serving.runtime.release import GATE_BUCKETS, Gate, release_notice, release_problems
from tests.conftest import REPO
from tests.images import texture
from training.config import ModelConfig
from training.models import build_model, model_files_config, save_weights

NAME = "tiny"
CLASSES = ["face", "person", "license_plate", "vehicle"]
# The tiny keypoint member: persons with the head keypoints (taxonomy.keypoints).
KEYPOINT_NAME = "tiny_heads"
HEAD = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
TILE = 128
OVERRIDES = [
    f"evaluate.tiling.tile={TILE}",
    "evaluate.tiling.overlap=16",
    "export.parity.tiles=3",
    # A random-weight model's top scores all go to one class (face): the other classes are
    # never detected, as with a class a trained model finds nothing of on val.
    "export.parity.allow_absent=[person,license_plate,vehicle]",
    "export.parity.min_compared=10",
    # A random-weight keypoint head's heatmap logits stay under 1 (a trained one's do not): the
    # keypoints scoring 0 or more are compared.
    "export.parity.keypoint_score=0.0",
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
    return _save_model(root / "models" / NAME, "maskrcnn", CLASSES, [], seed)


def tiny_keypoint_dir(root: Path, seed: int = 0) -> Path:
    """config.yaml + weights.safetensors of a small random Keypoint R-CNN (persons with the
    head keypoints), as training writes them, in `root`/models/KEYPOINT_NAME."""
    return _save_model(root / "models" / KEYPOINT_NAME, "keypointrcnn", ["person"], HEAD, seed)


def _save_model(
    folder: Path, kind: str, classes: list[str], keypoint_names: list[str], seed: int
) -> Path:
    config = ModelConfig(
        kind=kind,
        backbone="mobilenet_v3_small",
        trainable_layers=0,
        fpn_channels=16,
        classes=classes,
        min_size=96,
        max_size=96,
        proposals_per_image=40,
        rois_per_image=16,
        detections_per_image=8,
    )
    torch.manual_seed(seed)
    model = build_model(config, keypoint_names=keypoint_names)
    folder.mkdir(parents=True)
    save_weights(model, folder / "weights.safetensors")
    (folder / "config.yaml").write_text(
        yaml.safe_dump(model_files_config(config, keypoint_names=keypoint_names)),
        encoding="utf-8",
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
    sha = _weights_sha(setup, NAME)
    entry = {**evaluate_entry(), "weights_sha256": sha}
    metrics = {NAME: entry, "anonymizer": anonymizer_entry({NAME: sha})}
    write_validated(setup, metrics, {NAME: version}, gate)
    return sha


def anonymizer_entry(shas: Mapping[str, str]) -> dict[str, Any]:
    """What evaluate writes for the anonymizer made of the tiny model and, when `shas` names
    it, the tiny keypoint model (`shas`: model -> the weights_sha256 it ran), by the contract
    of metrics.json's `anonymizer` (thresholds, styles and heads as the composite runs them;
    made-up recall)."""
    members = [
        Member(NAME, tuple(CLASSES), "maskrcnn"),
        Member(KEYPOINT_NAME, ("person",), "keypointrcnn", tuple(HEAD)),
    ]
    supplies = default_supplies([m for m in members if m.name in shas])
    heads = "head" in supplies
    thresholds = {
        c: {"threshold": THRESHOLDS.get(c, 0.2), "val_recall": 0.96, "reached": True, "model": m}
        for c, m in supplies.items()
    }
    bucket = {"iou": 0.9, "iou_ci": [0.8, 0.95], "coverage": 0.97, "coverage_ci": [0.9, 0.99]}
    recall = {c: {"all": {**bucket, "n": 30}, "small": {**bucket, "n": 12}} for c in CLASSES}
    result = {"recall": recall, "false_positives_per_image": dict.fromkeys(CLASSES, 0.5)}
    return {
        "members": {m: {"weights_sha256": sha, "version": None} for m, sha in shas.items()},
        "supplies": supplies,
        "heads": HeadSpec().to_dict() if heads else {},
        "styles": {
            **{c: DEFAULT_STYLES[c].to_dict() for c in CLASSES},
            **({"head": DEFAULT_STYLES["face"].to_dict()} if heads else {}),
        },
        "thresholds": thresholds,
        "sets": {"val": result, "holdout": result},
        "heads_only": {"holdout": 4} if heads else {},
    }


def write_composite_validation(
    setup: ExportSetup,
    versions: Mapping[str, str | None] | None = None,
    gate: Gate = RELEASE_GATE,
) -> dict[str, str]:
    """metrics.json (both tiny models and their anonymizer) and a passing verdict.json for the
    tiny model and the tiny keypoint model in `setup`'s artifacts (their registered
    `versions`, default 3 and 2, under `gate`); the sha256 of each one's weights."""
    versions = {NAME: "3", KEYPOINT_NAME: "2"} if versions is None else versions
    shas = {m: _weights_sha(setup, m) for m in (NAME, KEYPOINT_NAME)}
    person = {"threshold": 0.1, "reached": True, "val_recall": 0.9}
    keypoint = {"thresholds": {"person": person}, "sets": evaluate_entry()["sets"]}
    metrics = {
        NAME: {**evaluate_entry(), "weights_sha256": shas[NAME]},
        KEYPOINT_NAME: {**keypoint, "version": None, "weights_sha256": shas[KEYPOINT_NAME]},
        "anonymizer": anonymizer_entry(shas),
    }
    write_validated(setup, metrics, versions, gate)
    return shas


def composite_setup(root: Path) -> ExportSetup:
    """A project in `root` with the tiny model and the tiny keypoint model trained, evaluated
    and validated (`write_composite_validation`), ready for `run_export`."""
    setup = replace(export_setup(root), models=[NAME, KEYPOINT_NAME])
    tiny_model_dir(setup.artifacts)
    tiny_keypoint_dir(setup.artifacts, seed=1)
    write_composite_validation(setup)
    return setup


def _weights_sha(setup: ExportSetup, model: str) -> str:
    return file_sha256(setup.artifacts / "models" / model / "weights.safetensors")


def write_validated(
    setup: ExportSetup,
    metrics: Mapping[str, Any],
    versions: Mapping[str, str | None],
    gate: Gate,
) -> None:
    """`metrics` as artifacts/eval/metrics.json, and the verdict validate writes when it
    passes them under `gate` (each model's weights_sha256 and registered version)."""
    path = setup.artifacts / "eval" / "metrics.json"
    write_json(path, metrics)
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
        metrics_sha256=file_sha256(path),
        models={m: ValidatedModel(metrics[m]["weights_sha256"], v) for m, v in versions.items()},
        challengers=dict(versions),
    ).write(setup.artifacts / "validation" / "verdict.json")


def tiny_artifact(
    root: Path, gate: Gate = RELEASE_GATE, overrides: list[str] | None = None
) -> Path:
    """Export the tiny model from a fresh project in `root` (conf/ with `overrides`), as passed
    under `gate`; the artifact folder."""
    setup = export_setup(root, overrides)
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
