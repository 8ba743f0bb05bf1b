"""The evaluate stage: every trained model (and the registry's champion) over val and every
reference set, with the runtime's tiling, scored by `anonlab score`; metrics, plots, report.

Per model:
1. Val: the model predicts down to `evaluate.min_threshold`; per class, the operating threshold
   is the highest score whose recall (IoU) still reaches the class's target. When no score
   reaches it, the threshold is `min_threshold` (the most recall the model has) and the report
   says the target was not reached there: validate will then refuse the model.
2. Each reference set is scored at those thresholds: recall (IoU and coverage) per class and
   size bucket with bootstrap intervals, COCO AP, false positives per image, PR curves.
3. The champion (MLflow alias `champion` of the model's registered name), when there is one and
   it is not these very weights, goes through 1 and 2 the same way, with its own thresholds.

Outputs under `artifacts/eval/`: `metrics.json` (DVC metrics: per model the sha256 of the
weights it scored, which validate and export check the weights against; per set, recall and
coverage per class and bucket, thresholds, champion), `plots/<model>/<set>/` (precision/recall
points and recall by size bucket, for `dvc plots`), `predictions/<model>/<set>.json` (COCO
results: `anonlab score` reads them), `report.html`. The folder is replaced as a whole, so a
failed run leaves the previous outputs. Each model also gets an MLflow run in the experiment
`anonlab/evaluate`, tagged `anonlab.weights_sha256`, with `recall/<set>/<class>/<bucket>` (IoU)
and `coverage/...`, and the champion's under `champion/...`.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data.atomic import staged_dir, write_json, write_text
from data.coco.files import load_ground_truth
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.size_buckets import size_bucket
from data.stage_paths import EvalOutputs, StagePaths
from evaluation.config import EvaluateConfig
from evaluation.predict import predict_set, torch_detector
from evaluation.registry import CHAMPION, RegisteredModel, Registry
from evaluation.report import Miss, ModelReport, SetReport, render_report
from evaluation.score import score
from evaluation.scoring.options import ScoreOptions
from evaluation.scoring.result import ObjectOutcome, ScoreResult, recall_to_json
from serving.runtime.checksum import file_sha256
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright
from serving.runtime.tiles import TilingSpec
from training.device import resolve_device
from training.tracking import WEIGHTS_SHA256_TAG, Tracker, run_tags

__all__ = [
    "EvalSetup",
    "category_id",
    "only_classes",
    "operating_thresholds",
    "run_evaluate",
    "score_options",
    "tiling_spec",
]

log = logging.getLogger(__name__)
VAL = "val"


@dataclass(frozen=True)
class EvalSetup:
    """What the evaluate stage reads."""

    models: Sequence[str]  # train.models: each has artifacts/models/<name>/
    reference_sets: Sequence[str]
    evaluate: EvaluateConfig
    taxonomy: TaxonomyConfig
    seed: int
    artifacts: Path
    root: Path

    @classmethod
    def of(cls, params: Any, *, artifacts: Path, root: Path) -> EvalSetup:
        return cls(
            models=list(params.train.models),
            reference_sets=[r.name for r in params.prepare.reference_sets],
            evaluate=params.evaluate,
            taxonomy=params.taxonomy,
            seed=params.seed,
            artifacts=artifacts,
            root=root,
        )


def tiling_spec(cfg: EvaluateConfig) -> TilingSpec:
    t = cfg.tiling
    return TilingSpec(
        tile=t.tile,
        overlap=t.overlap,
        scales=tuple(t.scales),
        panorama_aspect=t.panorama_aspect,
        merge_iou=t.merge_iou,
    )


def score_options(
    cfg: EvaluateConfig,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | float,
    *,
    seed: int,
    identifiable: Mapping[str, float],
    per_object: bool = False,
) -> ScoreOptions:
    """How evaluate scores a set at `thresholds`: its coverage, the targets of `classes` (the
    taxonomy's), its threshold floor and bootstrap, and the heights from which objects are
    identifiable (taxonomy.identifiable)."""
    return ScoreOptions(
        thresholds=thresholds,
        per_object=per_object,
        coverage=cfg.coverage,
        target_recall={c: cfg.target(c) for c in classes},
        min_threshold=cfg.min_threshold,
        n_boot=cfg.n_boot,
        seed=seed,
        min_identifiable=identifiable,
    )


def operating_thresholds(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    classes: Sequence[str],
    options: ScoreOptions,
) -> dict[str, dict[str, Any]]:
    """Per class of `classes`, the highest score threshold whose recall (IoU) on these results
    reaches the class's target (score's operating point, not below `options.min_threshold`):
    `threshold`, `val_recall` (the recall there) and `reached`."""
    floor = options.min_threshold
    points = score(gt, results, replace(options, thresholds=floor, n_boot=0)).operating_points
    chosen: dict[str, dict[str, Any]] = {}
    for name in classes:
        point = points.get(name)
        chosen[name] = {
            "threshold": point.threshold if point else floor,
            "val_recall": point.recall if point else None,
            "reached": point.reached if point else False,
        }
    return chosen


def run_evaluate(setup: EvalSetup) -> dict[str, Any]:
    """Evaluate every model; the metrics.json content."""
    paths = StagePaths(setup.artifacts)
    sets = {VAL: paths.prepared.val} | {
        name: paths.prepared.ref(name) for name in setup.reference_sets
    }
    for name, path in sets.items():
        if not path.is_file():
            raise AnonlabError(f"{path} (set {name!r}) does not exist; run prepare")
    truths = {name: load_ground_truth(path) for name, path in sets.items()}
    registry = _registry(setup.root)
    device = resolve_device(setup.evaluate.device, key="evaluate.device")
    metrics: dict[str, Any] = {}
    reports: list[ModelReport] = []
    with staged_dir(paths.eval.folder) as out:
        for name in setup.models:
            model = paths.model(name)
            weights, config = model.weights, model.config
            if not (weights.is_file() and config.is_file()):
                raise AnonlabError(f"{model.folder}: no {weights.name}/{config.name}; train {name}")
            evaluator = _ModelEvaluation(setup, sets, truths, device, out)
            mine = evaluator.run(name, config, weights, label=name, outputs=True)
            version = _version_of(registry, name, mine.weights_sha256)
            champion = None
            champ_ref = (
                _champion(registry, name, mine.weights_sha256) if setup.evaluate.champion else None
            )
            if champ_ref is not None:
                with tempfile.TemporaryDirectory(prefix="anonlab-champion-") as tmp:
                    c_config, c_weights = registry.download(champ_ref, Path(tmp))
                    label = f"{name} champion v{champ_ref.version}"
                    champion = evaluator.run(name, c_config, c_weights, label=label)
            entry = _metrics_entry(mine, champion, version, champ_ref)
            metrics[name] = entry
            reports.append(_model_report(name, mine, champion, version, champ_ref))
            _track(setup, name, version, mine, champion, champ_ref)
        targets = {c: setup.evaluate.target(c) for c in setup.taxonomy.classes}
        write_json(EvalOutputs(out).metrics, metrics)
        html = render_report(
            reports,
            targets=targets,
            coverage=setup.evaluate.coverage,
            identifiable=setup.taxonomy.identifiable,
            generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        write_text(EvalOutputs(out).report, html)
    return metrics


@dataclass
class _Result:
    """One model's evaluation: the sha256 of the weights scored, thresholds chosen on val,
    scores and misses per set."""

    weights_sha256: str
    thresholds: dict[str, dict[str, Any]]
    scores: dict[str, ScoreResult]
    misses: dict[str, tuple[list[Miss], int]]


class _ModelEvaluation:
    def __init__(
        self,
        setup: EvalSetup,
        sets: Mapping[str, Path],
        truths: Mapping[str, dict[str, Any]],
        device: torch.device,
        out: Path,
    ) -> None:
        self.setup, self.sets, self.truths, self.device, self.out = (
            setup,
            sets,
            truths,
            device,
            out,
        )
        self.cfg = setup.evaluate
        self.spec = tiling_spec(self.cfg)

    def run(
        self, name: str, config: Path, weights: Path, *, label: str, outputs: bool = False
    ) -> _Result:
        """Thresholds on val, then every set scored; `outputs`: also write the predictions
        and plots of `name` (the evaluated model's, not the champion's)."""
        # Hashed before and after loading, so the sha256 recorded is that of the bytes scored.
        weights_sha256 = file_sha256(weights)
        # The runtime's own detector, so the recall measured here is the recall it ships.
        detector, model_cfg = torch_detector(
            config,
            weights,
            score_threshold=self.cfg.min_threshold,
            tile=self.spec.tile,
            mask_threshold=self.cfg.mask_threshold,
            device=self.device,
            keypoints=False,
        )
        if file_sha256(weights) != weights_sha256:
            raise AnonlabError(
                f"{weights} changed while evaluate read it; run evaluate again once it is written"
            )
        classes = list(model_cfg["classes"])
        scores: dict[str, ScoreResult] = {}
        misses: dict[str, tuple[list[Miss], int]] = {}
        thresholds: dict[str, dict[str, Any]] = {}
        for set_name, path in self.sets.items():
            gt = only_classes(self.truths[set_name], classes)
            ids = [category_id(gt, c, path) for c in classes]
            results, _ = predict_set(
                gt["images"],
                detector,
                self.spec,
                images_root=path.parent if set_name == VAL else path.parent.parent,
                category_ids=ids,
                desc=f"{label} on {set_name}",
            )
            if set_name == VAL:
                floor = self._options(self.cfg.min_threshold)
                thresholds = operating_thresholds(gt, results, classes, floor)
            chosen = {c: thresholds[c]["threshold"] for c in classes}
            options = self._options(chosen, per_object=set_name != VAL)
            scores[set_name] = score(gt, results, options)
            if set_name != VAL:
                misses[set_name] = self._misses(path, gt, scores[set_name].objects or [])
            if outputs:
                write_json(EvalOutputs(self.out).predictions / name / f"{set_name}.json", results)
                _write_plots(EvalOutputs(self.out).plots / name / set_name, scores[set_name])
        return _Result(weights_sha256, thresholds, scores, misses)

    def _options(
        self, thresholds: Mapping[str, float] | float, *, per_object: bool = False
    ) -> ScoreOptions:
        classes = self.setup.taxonomy.classes
        seed = self.setup.seed
        return score_options(
            self.cfg,
            classes,
            thresholds,
            seed=seed,
            identifiable=self.setup.taxonomy.identifiable,
            per_object=per_object,
        )

    def _misses(
        self, path: Path, gt: dict[str, Any], outcomes: list[ObjectOutcome]
    ) -> tuple[list[Miss], int]:
        """Crops of the objects not covered, identifiable ones first (the legal incidents),
        each group smallest first, at most gallery.max_per_set."""
        missed = [o for o in outcomes if not o.covered]
        anns = {a["id"]: a for a in gt["annotations"]}
        images = {i["id"]: i for i in gt["images"]}
        names = {c["id"]: c["name"] for c in gt["categories"]}
        missed.sort(key=lambda o: (not o.identifiable, anns[o.id]["area"]))
        shown: list[Miss] = []
        cache: dict[int, np.ndarray | None] = {}
        for o in missed[: self.cfg.gallery.max_per_set]:
            ann = anns[o.id]
            image = images[ann["image_id"]]
            if ann["image_id"] not in cache:
                cache[ann["image_id"]] = _read_bgr(path.parent.parent / image["file_name"])
            bgr = cache[ann["image_id"]]
            if bgr is None:
                continue
            size = size_bucket(ann["area"]) if o.identifiable else "below identifiable"
            caption = (
                f"{names[ann['category_id']]} ({size}, "
                f"{ann['bbox'][2]:.0f}x{ann['bbox'][3]:.0f} px), "
                f"{o.coverage:.0%} covered; image {image['id']}"
            )
            shown.append(
                Miss(jpeg=_crop(bgr, ann["bbox"], self.cfg.gallery.context), caption=caption)
            )
        return shown, len(missed)


def _read_bgr(path: Path) -> np.ndarray | None:
    """The image upright (the frame of its boxes) in OpenCV's BGR; None when it cannot be read:
    the gallery then leaves its misses out."""
    try:
        return cv2.cvtColor(read_upright(path), cv2.COLOR_RGB2BGR)
    except (OSError, ImageError):
        return None


def _crop(bgr: np.ndarray, bbox: Sequence[float], context: float) -> bytes:
    """The object with `context` times its size around it (at least 24 px), its box in red,
    scaled to at most 160 px; JPEG bytes."""
    x, y, w, h = bbox
    pad_x, pad_y = max(w * context, 24), max(h * context, 24)
    height, width = bgr.shape[:2]
    x0, y0 = int(max(x - pad_x, 0)), int(max(y - pad_y, 0))
    x1, y1 = int(min(x + w + pad_x, width)), int(min(y + h + pad_y, height))
    crop = bgr[y0:y1, x0:x1].copy()
    cv2.rectangle(
        crop,
        (int(x - x0), int(y - y0)),
        (int(x + w - x0), int(y + h - y0)),
        (0, 0, 255),
        1,
    )
    scale = 160 / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    elif scale > 2:
        crop = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""


def _write_plots(folder: Path, metrics: ScoreResult) -> None:
    """Rows for `dvc plots`: precision/recall points per class, recall by size bucket."""
    pr = [
        {"class": name, "score": p.score, "recall": p.recall, "precision": p.precision}
        for name, curve in metrics.pr_curve.items()
        for p in curve
    ]
    sizes = [
        {"class": name, "bucket": bucket, "iou": cell.iou, "coverage": cell.coverage}
        for name, buckets in metrics.recall.items()
        for bucket, cell in buckets.items()
    ]
    write_json(folder / "pr.json", pr)
    write_json(folder / "recall_by_size.json", sizes)


def _metrics_entry(
    mine: _Result,
    champion: _Result | None,
    version: RegisteredModel | None,
    champ_ref: RegisteredModel | None,
) -> dict[str, Any]:
    def compact(result: _Result) -> dict[str, Any]:
        return {
            "weights_sha256": result.weights_sha256,
            "thresholds": result.thresholds,
            "sets": {
                name: {
                    "recall": recall_to_json(s.recall),
                    "coco": s.coco,
                    "false_positives_per_image": s.false_positives_per_image,
                }
                for name, s in result.scores.items()
            },
        }

    entry = compact(mine)
    entry["version"] = version.version if version else None
    if champion is not None and champ_ref is not None:
        entry["champion"] = {"version": champ_ref.version, **compact(champion)}
    return entry


def _model_report(
    name: str,
    mine: _Result,
    champion: _Result | None,
    version: RegisteredModel | None,
    champ_ref: RegisteredModel | None,
) -> ModelReport:
    sets = [
        SetReport(
            name=set_name,
            metrics=metrics,
            champion=champion.scores.get(set_name) if champion else None,
            misses=mine.misses.get(set_name, ([], 0))[0],
            missed_total=mine.misses.get(set_name, ([], 0))[1],
        )
        for set_name, metrics in mine.scores.items()
        if set_name != VAL
    ]
    return ModelReport(
        name=name,
        version=version.version if version else None,
        champion_version=champ_ref.version if champ_ref else None,
        thresholds=mine.thresholds,
        sets=sets,
    )


def flat_recall(result: _Result, prefix: str = "") -> dict[str, float]:
    """MLflow metrics: `recall/<set>/<class>/<bucket>` (IoU), `coverage/...`, thresholds."""
    out: dict[str, float] = {}
    for set_name, metrics in result.scores.items():
        for name, buckets in metrics.recall.items():
            for bucket, cell in buckets.items():
                for metric, key in (("iou", "recall"), ("coverage", "coverage")):
                    value = cell.value(metric)
                    if value is not None:
                        out[f"{prefix}{key}/{set_name}/{name}/{bucket}"] = value
    for name, t in result.thresholds.items():
        out[f"{prefix}threshold/{name}"] = t["threshold"]
    return out


def _track(
    setup: EvalSetup,
    name: str,
    version: RegisteredModel | None,
    mine: _Result,
    champion: _Result | None,
    champ_ref: RegisteredModel | None,
) -> None:
    tags = {
        **run_tags(setup.root, stage="evaluate"),
        "anonlab.model": name,
        WEIGHTS_SHA256_TAG: mine.weights_sha256,
    }
    if version:
        tags["anonlab.model_version"] = version.version
    if champ_ref:
        tags["anonlab.champion_version"] = champ_ref.version
    params = {"evaluate": setup.evaluate.model_dump(mode="json"), "model": name}
    with Tracker(
        setup.root,
        experiment="anonlab/evaluate",
        run_name=name,
        params=params,
        tags=tags,
        system_metrics=False,
    ) as tracker:
        metrics = flat_recall(mine)
        if champion is not None:
            metrics.update(flat_recall(champion, prefix="champion/"))
        tracker.log_metrics(metrics, 0)


def only_classes(gt: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """The ground truth of the classes a model detects (a keypoint model detects persons)."""
    keep = {c["id"] for c in gt["categories"] if c["name"] in classes}
    return {
        **gt,
        "categories": [c for c in gt["categories"] if c["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["category_id"] in keep],
    }


def category_id(gt: dict[str, Any], name: str, path: Path) -> int:
    """The id of category `name` in `gt` (read from `path`, for the error)."""
    for c in gt["categories"]:
        if c["name"] == name:
            return int(c["id"])
    raise AnonlabError(f"{path}: no category {name!r}; the model's classes must be in the taxonomy")


def _registry(root: Path) -> Registry | None:
    try:
        return Registry(root)
    except Exception as exc:  # evaluation does not need the registry to measure recall
        log.warning("MLflow registry unavailable (%s): no champion, no versions", exc)
        return None


def _version_of(
    registry: Registry | None, name: str, weights_sha256: str
) -> RegisteredModel | None:
    if registry is None:
        return None
    try:
        return registry.version_with_weights(name, weights_sha256)
    except Exception as exc:
        log.warning("cannot look up %s in the MLflow registry: %s", name, exc)
        return None


def _champion(registry: Registry | None, name: str, weights_sha256: str) -> RegisteredModel | None:
    if registry is None:
        return None
    try:
        champion = registry.by_alias(name, CHAMPION)
    except Exception as exc:
        log.warning("cannot look up the champion of %s: %s", name, exc)
        return None
    if champion is None or champion.weights_sha256 == weights_sha256:
        return None  # none yet, or the champion is this very model
    return champion
