"""The export stage: each validated model as a runtime artifact, its ONNX graph checked.

For every model of `train.models`, after a passing `validate`, writes
`artifacts/serving/<model>-<version>/` (version: the registered MLflow version validate made the
challenger, else `sha-<12 hex of the weights>` for a model trained without a registry):

- `model.onnx`: the network as `architecture.DetectorCore` runs it, traced by torch's
  TorchScript-based ONNX exporter at the fixed input size (torchvision's detection models do not
  export with dynamic shapes). Before anything is written, onnxruntime and PyTorch run the
  same val tiles and must agree within `export.parity` (every detection at or above the lowest
  operating threshold has a partner: boxes within `box_px`, scores within `score`, masks at
  IoU `mask_iou` or more), or the export fails and says by how much they differ;
- `weights.safetensors`: the trained weights, for the PyTorch backend;
- `MODEL_CARD.md`: intended use, data, recall per reference set and size bucket with 95%
  intervals, operating thresholds, known limits;
- `manifest.json` (see `serving.runtime.artifact`): the operating thresholds evaluate chose on
  val, the anonymization style per class (`export.styles`), the input size (the model's
  min_size: a whole tile is seen at the scale the model was trained at) and evaluate's tiling,
  the headline recall per reference set, where the model came from, and the sha256 of every file.

The folder `artifacts/serving/` is replaced as a whole, so a failed export leaves the previous
artifacts as they were.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data.atomic import read_json, staged_dir, write_json, write_text
from data.errors import AnonlabError
from evaluation.config import EvaluateConfig
from evaluation.evaluate import tiling_spec
from serving.config import ExportConfig
from serving.model_card import render_model_card
from serving.runtime.architecture import Architecture, DetectorCore
from serving.runtime.artifact import MANIFEST, Manifest, manifest_problems
from serving.runtime.backends import InputSize, OnnxDetector, TorchDetector, compare
from serving.runtime.checksum import file_sha256
from serving.runtime.tiles import TilingSpec, cut, plan_windows
from training.models import load_model_files, model_architecture
from training.tracking import run_tags

__all__ = ["ExportSetup", "export_model", "run_export"]

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("model.onnx", "weights.safetensors", "MODEL_CARD.md")
ONNX_OUTPUTS = {
    "maskrcnn": ["boxes", "scores", "labels", "masks"],
    "keypointrcnn": ["boxes", "scores", "labels", "keypoints"],
}


@dataclass(frozen=True)
class ExportSetup:
    """What the export stage reads."""

    models: Sequence[str]
    export: ExportConfig
    evaluate: EvaluateConfig
    artifacts: Path
    root: Path

    @classmethod
    def of(cls, params: Any, *, artifacts: Path, root: Path) -> ExportSetup:
        return cls(
            models=list(params.train.models),
            export=params.export,
            evaluate=params.evaluate,
            artifacts=artifacts,
            root=root,
        )


def run_export(setup: ExportSetup) -> list[Path]:
    """Export every model of the setup; the artifact folders written."""
    verdict_path = setup.artifacts / "validation" / "verdict.json"
    verdict = read_json(verdict_path, missing="run `anonlab validate` first")
    if not verdict.get("passed"):
        failed = ", ".join(verdict.get("failed") or []) or "see the verdict"
        raise AnonlabError(
            f"{verdict_path}: validation did not pass ({failed}); only a model that passed the "
            "release gate is exported"
        )
    metrics = read_json(
        setup.artifacts / "eval" / "metrics.json", missing="run `anonlab evaluate` first"
    )
    tags = run_tags(setup.root, stage="export")
    final = setup.artifacts / "serving"
    written = []
    with staged_dir(final) as stage:
        for name in setup.models:
            if name not in metrics:
                raise AnonlabError(
                    f"{name}: not in artifacts/eval/metrics.json; run `anonlab evaluate` again"
                )
            version = (verdict.get("challengers") or {}).get(name)
            folder = export_model(
                name,
                setup.artifacts / "models" / name,
                metrics[name],
                setup,
                stage,
                version=str(version) if version else None,
                provenance={"validated": verdict.get("when"), **tags},
            )
            written.append(final / folder.name)
    return written


def export_model(
    name: str,
    model_dir: Path,
    entry: Mapping[str, Any],
    setup: ExportSetup,
    out: Path,
    *,
    version: str | None,
    provenance: Mapping[str, Any],
) -> Path:
    """Export one trained model (`model_dir`: config.yaml + weights.safetensors) with its
    evaluate `entry` into a new folder under `out`; that folder."""
    weights = model_dir / "weights.safetensors"
    arch = model_architecture(model_dir / "config.yaml")
    model, _ = load_model_files(model_dir / "config.yaml", weights)
    weights_sha = file_sha256(weights)
    version = version or f"sha-{weights_sha[:12]}"
    thresholds = _thresholds(name, entry, arch)
    styles = _styles(name, arch, setup.export)
    folder = out / f"{name}-{version}"
    folder.mkdir(parents=True)
    floor = setup.evaluate.min_threshold
    core = DetectorCore(model, score_threshold=floor)
    spec = tiling_spec(setup.evaluate)
    size = InputSize.of(arch.min_size, arch.max_size, spec.tile)
    _export_onnx(core, size.canvas, arch.kind, folder / "model.onnx", setup.export.opset)
    lowest = min(thresholds.values())
    parity = _check_parity(core, arch, size, folder / "model.onnx", spec, setup, lowest)
    shutil.copyfile(weights, folder / "weights.safetensors")
    recall = _headline(entry)
    write_text(
        folder / "MODEL_CARD.md",
        render_model_card(
            name=name,
            version=version,
            arch=arch,
            entry=entry,
            thresholds=thresholds,
            styles=styles,
            targets={c: setup.evaluate.target(c) for c in arch.classes},
            tiling=spec,
            canvas=size.canvas,
        ),
    )
    manifest = Manifest(
        name=name,
        version=version,
        architecture=arch.to_dict(),
        classes=list(arch.classes),
        thresholds=thresholds,
        styles=styles,
        input_size=size.canvas,
        score_floor=floor,
        mask_threshold=setup.evaluate.mask_threshold,
        tiling=setup.evaluate.tiling.model_dump(),
        recall=recall,
        provenance={**provenance, "weights_sha256": weights_sha},
        parity=parity,
        files={f: file_sha256(folder / f) for f in ARTIFACT_FILES},
        created=str(provenance.get("validated") or ""),
    )
    # The runtime refuses a manifest it cannot run safely: better to fail here than there.
    problems = manifest_problems(manifest)
    if problems:
        raise AnonlabError(
            f"{name}: the runtime would refuse this manifest: {'; '.join(problems)}. Check "
            "export.styles, evaluate's tiling and thresholds (artifacts/eval/metrics.json)"
        )
    write_json(folder / MANIFEST, manifest.to_json())
    log.info("%s: exported version %s as %s", name, version, folder.name)
    return folder


def _thresholds(name: str, entry: Mapping[str, Any], arch: Architecture) -> dict[str, float]:
    chosen = entry.get("thresholds") or {}
    missing = [c for c in arch.classes if c not in chosen]
    if missing:
        raise AnonlabError(
            f"{name}: artifacts/eval/metrics.json has no operating threshold for {missing}; "
            "run `anonlab evaluate` again"
        )
    return {c: float(chosen[c]["threshold"]) for c in arch.classes}


def _styles(name: str, arch: Architecture, export: ExportConfig) -> dict[str, dict[str, Any]]:
    missing = [c for c in arch.classes if c not in export.styles]
    if missing:
        raise AnonlabError(
            f"{name} detects {missing}, which export.styles does not say how to anonymize; add "
            "them to conf/export/ (shape, method, margin, feather)"
        )
    return {c: dict(export.styles[c]) for c in arch.classes}


def _export_onnx(core: DetectorCore, canvas: int, kind: str, path: Path, opset: int) -> None:
    sample = torch.zeros(3, canvas, canvas)
    with warnings.catch_warnings():
        # The tracer warns about every Python-side shape computation of torchvision's detectors;
        # they are constants at the fixed input size, which the parity check then confirms.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            core,
            (sample,),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["image"],
            output_names=ONNX_OUTPUTS[kind],
            dynamic_axes={n: {0: "detections"} for n in ONNX_OUTPUTS[kind]},
        )


def _check_parity(
    core: DetectorCore,
    arch: Architecture,
    size: InputSize,
    onnx_path: Path,
    spec: TilingSpec,
    setup: ExportSetup,
    floor: float,
) -> dict[str, Any]:
    """Run onnxruntime and PyTorch on val tiles; AnonlabError when they differ beyond
    `export.parity`; the measured numbers and the bounds."""
    bounds = setup.export.parity
    tiles = _sample_tiles(setup.artifacts / "prepared", spec, bounds.tiles)
    options = {
        "size": size,
        "mask_threshold": setup.evaluate.mask_threshold,
    }
    onnx_found = OnnxDetector(onnx_path, kind=arch.kind, **options)(tiles)
    torch_found = TorchDetector(core, **options)(tiles)
    parity = compare(onnx_found, torch_found, floor=floor, cap=arch.detections_per_image)
    measured = {
        "tiles": len(tiles),
        "floor": floor,
        "compared": parity.compared,
        "unmatched": parity.unmatched,
        "at_cap": parity.at_cap,
        "max_box_px": parity.max_box_px,
        "max_score": parity.max_score,
        "min_mask_iou": parity.min_mask_iou,
        "bounds": bounds.model_dump(),
    }
    if not parity.within(bounds.box_px, bounds.score, bounds.mask_iou):
        raise AnonlabError(
            f"ONNX export of {arch.kind} on {arch.backbone}: onnxruntime and PyTorch disagree "
            f"on {len(tiles)} val tiles: {parity.describe()}; allowed: every detection matched, "
            f"boxes within {bounds.box_px} px, scores within {bounds.score}, mask IoU at least "
            f"{bounds.mask_iou} (export.parity). Nothing was exported."
        )
    log.info("ONNX parity on %d tiles: %s", len(tiles), parity.describe())
    return measured


def _sample_tiles(prepared: Path, spec: TilingSpec, count: int) -> list[np.ndarray]:
    """Up to `count` windows of the val images, as the runtime cuts them, one image after
    another (the first windows of each image, round-robin)."""
    val = read_json(prepared / "val.json", missing="run `anonlab prepare` first")
    per_image: list[list[np.ndarray]] = []
    for image in val.get("images", [])[:count]:
        rgb = cv2.imread(str(prepared / image["file_name"]), cv2.IMREAD_COLOR_RGB)
        if rgb is None:
            raise AnonlabError(f"{prepared / image['file_name']}: cannot be read")
        windows = plan_windows(rgb.shape[1], rgb.shape[0], spec)
        per_image.append([cut(rgb, w) for w in windows if w.scale == 1.0][:count])
    tiles: list[np.ndarray] = []
    for depth in range(count):
        tiles += [windows[depth] for windows in per_image if depth < len(windows)]
    if not tiles:
        raise AnonlabError(f"{prepared / 'val.json'}: no val images to check the ONNX export on")
    return tiles[:count]


def _headline(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Recall (IoU and coverage, bucket all) per set and class."""
    return {
        set_name: {
            cls: {k: buckets["all"].get(k) for k in ("iou", "coverage", "n")}
            for cls, buckets in (s.get("recall") or {}).items()
        }
        for set_name, s in (entry.get("sets") or {}).items()
    }
