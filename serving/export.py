"""The export stage: each validated model as a runtime artifact, its ONNX graph checked, and
the anonymizer the models make together as one composite artifact.

For every model of `train.models`, after a passing `validate`, writes
`artifacts/serving/<model>-<version>/` (version: the registered MLflow version validate made the
challenger, else `sha-<12 hex of the weights>` for a model trained without a registry):

- `model.onnx`: the network as `architecture.DetectorCore` runs it, traced by torch's
  TorchScript-based ONNX exporter at the fixed input size and a fixed batch of `export.batch`
  windows (torchvision's detection models do not export with dynamic shapes: the tracer unrolls
  their loops over a batch's images; the manifest records the batch, and the runtime pads a
  short last batch). Before anything is written, onnxruntime (at that batch) and PyTorch (one
  window at a time) run the same val tiles and must agree within `export.parity` (every
  detection at or above the lowest operating threshold has a partner: boxes within `box_px`,
  scores within `score`, masks at IoU `mask_iou` or more, a keypoint model's keypoints scoring
  `keypoint_score` or more within `keypoint_px`), or the export fails and says by how much
  they differ;
- `weights.safetensors`: the trained weights, for the PyTorch backend;
- `MODEL_CARD.md`: intended use, data, recall per reference set and size bucket with 95%
  intervals, operating thresholds, known limits;
- `manifest.json` (see `serving.runtime.artifact`): the operating thresholds evaluate chose on
  val, the anonymization style per class (`export.styles`), the input size (the model's
  min_size: a whole tile is seen at the scale the model was trained at) and evaluate's tiling,
  the headline recall per reference set, where the model came from, and the sha256 of every file.

Both `manifest.json` and `MODEL_CARD.md` record the gate validate passed the model under
(`serving.runtime.release.Gate`) and open with its notice: `RELEASE GATE: ...`, or `NOT A
RELEASE: ...` with what the gate lacks (the demo's targets, say); the runtime refuses to load
the latter without --allow-demo.

Only what validate passed is exported: each model's `weights.safetensors` must have the sha256
the verdict names (the weights evaluate scored), and `artifacts/eval/metrics.json`, where the
thresholds and recall come from, the sha256 of the one validate judged; otherwise export fails,
naming both hashes, before anything is written. The manifest's `provenance.weights_sha256` is that
validated sha256 (checked again on the copy in the artifact).

After the models, the anonymizer (`serving.export_anonymizer`):
`artifacts/serving/<anonymizer.name>-<version>/` (version: its members' versions joined with
`+`) holding `composite.json`, its
`MODEL_CARD.md` and a copy of each member's artifact under `members/`, from metrics.json's
`anonymizer` entry (what validate gated); export refuses a metrics.json without that entry, or
whose anonymizer ran other weights than those validate passed, and an anonymizer the runtime's
`load_composite` would not load.

The folder `artifacts/serving/` is replaced as a whole, so a failed export leaves the previous
artifacts as they were.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import read_json, staged_dir, write_text
from data.errors import AnonlabError
from data.image_info import read_upright_sized
from data.stage_paths import ModelFolder, Prepared, StagePaths
from evaluation.config import EvaluateConfig
from evaluation.evaluate import tiling_spec
from evaluation.scoring.result import recall_from_json
from evaluation.verdict import Verdict
from serving.config import ExportConfig
from serving.export_anonymizer import anonymizer_entry, export_anonymizer
from serving.model_card import render_model_card
from serving.runtime.architecture import Architecture, DetectorCore
from serving.runtime.artifact import MANIFEST, Manifest, manifest_problems
from serving.runtime.backends import InputSize, OnnxDetector, TorchDetector, compare
from serving.runtime.checksum import file_sha256
from serving.runtime.release import Gate, headed_json, release_notice, release_problems
from serving.runtime.tiles import TilingSpec, Window, cut, plan_windows
from training.models import load_model_files, model_architecture
from training.tracking import run_tags

__all__ = [
    "ExportSetup",
    "ParitySample",
    "export_model",
    "export_onnx",
    "run_export",
    "sample_tiles",
]

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("model.onnx", "weights.safetensors", "MODEL_CARD.md")
ONNX_OUTPUTS = {
    "maskrcnn": ["boxes", "scores", "labels", "masks", "image"],
    "keypointrcnn": ["boxes", "scores", "labels", "keypoints", "image"],
}


@dataclass(frozen=True)
class ExportSetup:
    """What the export stage reads."""

    models: Sequence[str]
    export: ExportConfig
    evaluate: EvaluateConfig
    anonymizer: str  # the composite artifact's name (anonymizer.name)
    artifacts: Path
    root: Path

    @classmethod
    def of(cls, params: Any, *, artifacts: Path, root: Path) -> ExportSetup:
        return cls(
            models=list(params.train.models),
            export=params.export,
            evaluate=params.evaluate,
            anonymizer=params.anonymizer.name,
            artifacts=artifacts,
            root=root,
        )


def run_export(setup: ExportSetup) -> list[Path]:
    """Export every model of the setup, then the anonymizer they make (`export_anonymizer`);
    the artifact folders written, the anonymizer's last."""
    paths = StagePaths(setup.artifacts)
    verdict_path = paths.validation.verdict
    verdict = Verdict.read(verdict_path)
    if not verdict.passed:
        failed = ", ".join(verdict.failed) or "see the verdict"
        raise AnonlabError(
            f"{verdict_path}: validation did not pass ({failed}); only a model that passed the "
            "release gate is exported"
        )
    metrics_path = paths.eval.metrics
    metrics = read_json(metrics_path, missing="run `anonlab evaluate` first")
    validated = _validated_weights(setup, verdict, verdict_path, metrics_path)
    gate = _verdict_gate(verdict, verdict_path)
    anonymizer = anonymizer_entry(metrics, validated, metrics_path)
    tags = run_tags(setup.root, stage="export")
    provenance = {"validated": verdict.when, **tags}
    final = paths.serving
    folders = []
    with staged_dir(final) as stage:
        for name in setup.models:
            if name not in metrics:
                raise AnonlabError(
                    f"{name}: not in artifacts/eval/metrics.json; run `anonlab evaluate` again"
                )
            version = verdict.challengers.get(name)
            folder = export_model(
                name,
                paths.model(name).folder,
                metrics[name],
                setup,
                stage,
                version=str(version) if version else None,
                provenance=provenance,
                weights_sha256=validated[name],
                gate=gate,
            )
            folders.append(folder)
        members = [
            f
            for name, f in zip(setup.models, folders, strict=True)
            if name in anonymizer["members"]
        ]
        composite = export_anonymizer(
            setup.anonymizer,
            anonymizer,
            members,
            stage,
            recall=_headline(anonymizer),
            provenance={**provenance, "metrics_sha256": verdict.metrics_sha256},
            gate=gate,
        )
    return [final / f.name for f in [*folders, composite]]


def _verdict_gate(verdict: Verdict, verdict_path: Path) -> Gate:
    """The gate the verdict judged; AnonlabError when it records none (an older validate)."""
    gate = verdict.gate
    if gate is None:
        raise AnonlabError(
            f"{verdict_path}: records no gate it judged ({verdict.gate_problem}); "
            "run `anonlab validate` again"
        )
    problems = release_problems(gate)
    if problems:
        log.warning("%s", release_notice(problems))
    return gate


def _validated_weights(
    setup: ExportSetup, verdict: Verdict, verdict_path: Path, metrics_path: Path
) -> dict[str, str]:
    """Per model, the sha256 of the weights the verdict validated, once each model's weights
    file is found to have it and metrics.json to be the one validate judged; AnonlabError
    naming both hashes otherwise."""
    out: dict[str, str] = {}
    again = "run `anonlab evaluate` and `anonlab validate` again"
    for name in setup.models:
        model = verdict.models.get(name)
        if model is None or model.weights_sha256 is None:
            raise AnonlabError(
                f"{verdict_path} names no validated weights for {name} (a verdict of an older "
                f"validate, or train.models changed since); {again}. Nothing was exported"
            )
        weights = StagePaths(setup.artifacts).model(name).weights
        actual = file_sha256(weights) if weights.is_file() else None
        _check_weights(name, weights, actual, model.weights_sha256)
        out[name] = model.weights_sha256
    judged, actual = verdict.metrics_sha256, file_sha256(metrics_path)
    if judged != actual:
        raise AnonlabError(
            f"{metrics_path} has sha256 {actual}, but validate judged "
            + (f"the one with sha256 {judged}" if judged else "one it recorded no sha256 of")
            + f" ({verdict_path}): the thresholds and recall an artifact ships must be those "
            "the gate passed. Run `anonlab validate` again. Nothing was exported"
        )
    return out


def _check_weights(name: str, weights: Path, actual: str | None, validated: str) -> None:
    """AnonlabError unless `actual` (the sha256 of `weights`; None: no such file) is the
    sha256 of the weights validate passed."""
    if actual == validated:
        return
    found = f"has sha256 {actual}" if actual else "does not exist"
    raise AnonlabError(
        f"{name}: {weights} {found}, but the weights validate passed have sha256 {validated}; "
        "only validated weights are exported. Run `anonlab evaluate` and `anonlab validate` "
        "on these weights (or put the validated ones back). Nothing was exported"
    )


def export_model(
    name: str,
    model_dir: Path,
    entry: Mapping[str, Any],
    setup: ExportSetup,
    out: Path,
    *,
    version: str | None,
    provenance: Mapping[str, Any],
    weights_sha256: str,
    gate: Gate,
) -> Path:
    """Export one trained model (`model_dir`: config.yaml + weights.safetensors) with its
    evaluate `entry` into a new folder under `out`; that folder. `weights_sha256`: the sha256
    of the weights validate passed, which the weights file, and its copy in the artifact, must
    have (AnonlabError otherwise). `gate`: the gate validate passed it under, recorded in the
    manifest and the model card, both of which open with its notice."""
    files = ModelFolder(model_dir)
    weights = files.weights
    _check_weights(name, weights, file_sha256(weights), weights_sha256)
    arch = model_architecture(files.config)
    model, _ = load_model_files(files.config, weights)
    version = version or f"sha-{weights_sha256[:12]}"
    thresholds = _thresholds(name, entry, arch)
    styles = _styles(name, arch, setup.export)
    folder = out / f"{name}-{version}"
    folder.mkdir(parents=True)
    floor = setup.evaluate.min_threshold
    core = DetectorCore(model, score_threshold=floor)
    spec = tiling_spec(setup.evaluate)
    size = InputSize.of(arch.min_size, arch.max_size, spec.tile)
    batch = setup.export.batch
    export_onnx(core, size.canvas, folder / "model.onnx", opset=setup.export.opset, batch=batch)
    lowest = min(thresholds.values())
    parity = _check_parity(core, arch, size, folder / "model.onnx", spec, setup, lowest)
    shutil.copyfile(weights, folder / "weights.safetensors")
    # The copy too, not only the file read earlier: the bytes shipped are the bytes validated.
    _check_weights(name, weights, file_sha256(folder / "weights.safetensors"), weights_sha256)
    recall = _headline(entry)
    notice = release_notice(release_problems(gate))
    write_text(
        folder / "MODEL_CARD.md",
        render_model_card(
            name=name,
            version=version,
            arch=arch,
            entry=entry,
            thresholds=thresholds,
            styles=styles,
            gate=gate,
            tiling=spec,
            canvas=size.canvas,
            weights_sha256=weights_sha256,
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
        batch=batch,
        score_floor=floor,
        mask_threshold=setup.evaluate.mask_threshold,
        tiling=setup.evaluate.tiling.model_dump(),
        recall=recall,
        provenance={**provenance, "weights_sha256": weights_sha256},
        parity=parity,
        files={f: file_sha256(folder / f) for f in ARTIFACT_FILES},
        created=str(provenance.get("validated") or ""),
        gate=gate.to_dict(),
        notice=notice,
    )
    # The runtime refuses a manifest it cannot run safely: better to fail here than there.
    problems = manifest_problems(manifest)
    if problems:
        raise AnonlabError(
            f"{name}: the runtime would refuse this manifest: {'; '.join(problems)}. Check "
            "export.styles, evaluate's tiling and thresholds (artifacts/eval/metrics.json)"
        )
    write_text(folder / MANIFEST, headed_json(manifest.to_json(), "notice"))
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


def export_onnx(core: DetectorCore, canvas: int, path: Path, *, opset: int, batch: int) -> None:
    """Trace `core` into an ONNX graph at `path` taking (batch, 3, canvas, canvas) inputs, with
    the outputs `ONNX_OUTPUTS` names (the number of detections dynamic)."""
    sample = torch.zeros(batch, 3, canvas, canvas)
    names = ONNX_OUTPUTS[core.kind]
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
            input_names=["images"],
            output_names=names,
            dynamic_axes={n: {0: "detections"} for n in names},
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
    `export.parity`, or when too little was compared to tell (fewer than `min_compared`
    detections, a class of the model not among them, a keypoint model without keypoints
    compared); the measured numbers and the bounds."""
    bounds = setup.export.parity
    sample = sample_tiles(
        StagePaths(setup.artifacts).prepared.folder, spec, bounds.tiles, arch.classes
    )
    tiles = sample.tiles
    options = {
        "size": size,
        "mask_threshold": setup.evaluate.mask_threshold,
    }
    onnx_found = OnnxDetector(onnx_path, kind=arch.kind, batch=setup.export.batch, **options)(tiles)
    torch_found = TorchDetector(core, **options)(tiles)
    parity = compare(
        onnx_found,
        torch_found,
        floor=floor,
        cap=arch.detections_per_image,
        keypoint_score=bounds.keypoint_score,
    )
    by_class = {c: parity.by_label.get(i + 1, 0) for i, c in enumerate(arch.classes)}
    absent = [c for c, n in by_class.items() if n == 0]
    measured: dict[str, Any] = {
        "tiles": len(tiles),
        "floor": floor,
        "compared": parity.compared,
        "unmatched": parity.unmatched,
        "at_cap": parity.at_cap,
        "max_box_px": parity.max_box_px,
        "max_score": parity.max_score,
        "min_mask_iou": parity.min_mask_iou,
        # Per class: detections compared, and the val objects in the sample tiles / in val.
        "classes": {
            c: {
                "compared": by_class[c],
                "sampled_objects": sample.sampled[c],
                "val_objects": sample.objects[c],
            }
            for c in arch.classes
        },
        "unchecked": [c for c in absent if c in bounds.allow_absent],
        "bounds": bounds.model_dump(),
    }
    if arch.kind == "keypointrcnn":
        measured |= {"keypoints": parity.keypoints, "max_keypoint_px": parity.max_keypoint_px}
    where = f"on {len(tiles)} val tiles"
    if not parity.within(bounds.box_px, bounds.score, bounds.mask_iou, bounds.keypoint_px):
        raise AnonlabError(
            f"ONNX export of {arch.kind} on {arch.backbone}: onnxruntime and PyTorch disagree "
            f"{where}: {parity.describe()}; allowed: every detection matched, boxes within "
            f"{bounds.box_px} px, scores within {bounds.score}, mask IoU at least "
            f"{bounds.mask_iou}, keypoints (scoring {bounds.keypoint_score} or more) within "
            f"{bounds.keypoint_px} px (export.parity). Nothing was exported."
        )
    problems = []
    if parity.compared < bounds.min_compared:
        problems.append(
            f"only {parity.compared} detections at or above {floor:g} (the lowest operating "
            f"threshold) were compared {where}, fewer than export.parity.min_compared = "
            f"{bounds.min_compared}: raise export.parity.tiles, or check that the model detects "
            "anything on val (artifacts/eval/metrics.json)"
        )
    for c in absent:
        if c in bounds.allow_absent:
            continue
        if sample.objects[c]:
            why = (
                f"the sample tiles hold {sample.sampled[c]} of its {sample.objects[c]} val "
                f"objects and the model detected none of them at or above {floor:g}; check its "
                "recall on val (artifacts/eval/metrics.json) before shipping it"
            )
        else:
            why = (
                "val.json has no objects of it and the model detected none on the sample tiles; "
                "add annotated examples of it to val, or remove it from the model's classes "
                "(conf/model/) and train again"
            )
        problems.append(
            f"class {c} never appeared among the compared detections: {why}; or, to export "
            f"with its ONNX output unchecked, add it to export.parity.allow_absent"
        )
    if arch.kind == "keypointrcnn" and parity.compared and not parity.keypoints:
        problems.append(
            f"no keypoint of the compared detections scored {bounds.keypoint_score} or more "
            "(export.parity.keypoint_score) in either backend, so none was compared: lower "
            "export.parity.keypoint_score"
        )
    if problems:
        raise AnonlabError(
            f"ONNX export of {arch.kind} on {arch.backbone}: the check of onnxruntime against "
            f"PyTorch proves nothing {where} ({parity.describe()}): "
            + "; ".join(problems)
            + ". Nothing was exported."
        )
    log.info("ONNX parity %s: %s", where, parity.describe())
    return measured


@dataclass(frozen=True)
class ParitySample:
    """The tiles of the ONNX check (and the image file and window of each), and per class of
    the model its val objects: in val, and in the tiles (a box counts for a window holding its
    centre)."""

    tiles: list[np.ndarray]
    windows: list[tuple[str, Window]]
    objects: Counter[str]
    sampled: Counter[str]


def sample_tiles(
    prepared: Path, spec: TilingSpec, count: int, classes: Sequence[str]
) -> ParitySample:
    """Up to `count` windows of the val images, as the runtime cuts them. First windows holding
    objects of `classes` (val.json's annotations): each time for the class with the fewest
    objects in the windows taken so far, the window holding most of its objects not yet in
    them; then the rest, the first windows of each image round-robin."""
    val = read_json(Prepared(prepared).val, missing="run `anonlab prepare` first")
    names = {c.get("id"): c.get("name") for c in val.get("categories", [])}
    objects: list[tuple[Any, str, float, float]] = []  # image id, class, box centre
    for a in val.get("annotations", []):
        name = names.get(a.get("category_id"))
        if name in classes:
            x, y, w, h = a["bbox"]
            objects.append((a["image_id"], name, x + w / 2, y + h / 2))
    images = val.get("images", [])
    windows = [
        [w for w in plan_windows(int(im["width"]), int(im["height"]), spec) if w.scale == 1.0]
        for im in images
    ]
    # The objects (indices into `objects`) each window holds, by (image k, window j).
    row = {im["id"]: k for k, im in enumerate(images)}
    held: dict[tuple[int, int], set[int]] = {}
    for k, planned in enumerate(windows):
        for j in range(len(planned)):
            held[k, j] = set()
    for i, (image_id, _, x, y) in enumerate(objects):
        k = row.get(image_id)
        for j, w in enumerate(windows[k] if k is not None else []):
            if _holds(w, x, y, int(images[k]["width"])):
                held[k, j].add(i)
    chosen: list[tuple[int, int]] = []
    seen: set[int] = set()

    def new(key: tuple[int, int], cls: str) -> int:
        return sum(1 for i in held[key] - seen if objects[i][1] == cls)

    while len(chosen) < count:
        left = [key for key in held if key not in chosen and held[key] - seen]
        wanted = [c for c in classes if any(new(key, c) for key in left)]
        if not wanted:
            break
        sampled = Counter(objects[i][1] for i in seen)
        c = min(wanted, key=lambda c: (sampled[c], classes.index(c)))
        best = max(left, key=lambda key: (new(key, c), len(held[key] - seen)))
        chosen.append(best)
        seen |= held[best]
    for j in range(max(map(len, windows), default=0)):
        for k, planned in enumerate(windows):
            if len(chosen) < count and j < len(planned) and (k, j) not in chosen:
                chosen.append((k, j))
    if not chosen:
        raise AnonlabError(f"{prepared / 'val.json'}: no val images to check the ONNX export on")
    pixels = {k: _read_val_image(prepared, images[k]) for k in sorted({k for k, _ in chosen})}
    every = Counter(c for _, c, _, _ in objects)
    sampled = Counter(objects[i][1] for i in seen)
    return ParitySample(
        tiles=[cut(pixels[k], windows[k][j]) for k, j in chosen],
        windows=[(images[k]["file_name"], windows[k][j]) for k, j in chosen],
        objects=Counter({c: every[c] for c in classes}),
        sampled=Counter({c: sampled[c] for c in classes}),
    )


def _holds(window: Window, x: float, y: float, width: int) -> bool:
    """Whether the point (x, y) of an image `width` px wide lies in a scale-1 window."""
    dx = (x - window.x) % width if window.wrap else x - window.x
    return 0 <= dx < window.width and window.y <= y < window.y + window.height


def _read_val_image(prepared: Path, image: Mapping[str, Any]) -> np.ndarray:
    return read_upright_sized(
        prepared / image["file_name"],
        int(image["width"]),
        int(image["height"]),
        said="val.json says",
        unreadable="",
        other_size="run `anonlab prepare` again",
    )


def _headline(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Recall (IoU and coverage, bucket all) per set and class."""
    return {
        set_name: {
            cls: {"iou": cells["all"].iou, "coverage": cells["all"].coverage, "n": cells["all"].n}
            for cls, cells in recall_from_json(s.get("recall") or {}).items()
        }
        for set_name, s in (entry.get("sets") or {}).items()
    }
