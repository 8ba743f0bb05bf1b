"""Training's validator, built from the release scorer: the model being trained, scored on val as
evaluate scores it, at the operating thresholds evaluate would choose there.

`anonlab train` builds it (`release_validator`) and hands it to the training loop, which knows
only the `training.validator.Validator` protocol: training never imports evaluation.

What `best` maximises, at each validation:
1. The model predicts on `val.json` (the prepared val tiles, as evaluate's val) with the
   runtime's detector and evaluate's tiling, down to `evaluate.min_threshold`.
2. Per class, the operating threshold is the one evaluate would choose on these predictions
   (`evaluation.operating.operating_thresholds`): the highest score whose IoU recall reaches
   `evaluate.target_recall`, never below `evaluate.min_threshold`.
3. At those thresholds, `evaluation.score.score` gives the IoU recall and pixel coverage per
   class and size bucket. The cells judged are the gate's: each class with objects on val, each
   metric of `validate.gate_metrics`, in bucket `all` and in each size bucket holding at least
   `validate.min_objects` objects on val. A cell's margin is its recall minus its class's
   target (point estimates: val picks a checkpoint, the reference sets prove it).
4. The score is the smallest margin (0 or more when every cell reaches its target on val);
   ties are broken by the other margins, smallest first: between two checkpoints whose worst
   cell is equally far from its target, the one whose next-worst cell is closer wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from data.coco.files import load_ground_truth
from data.errors import AnonlabError
from data.stage_paths import StagePaths
from evaluation.config import EvaluateConfig
from evaluation.evaluate import category_id, score_options, tiling_spec
from evaluation.operating import only_classes, operating_thresholds
from evaluation.predict import predict_set
from evaluation.score import score
from evaluation.scoring.recall import ALL, BELOW
from evaluation.scoring.result import RecallTable
from serving.runtime.architecture import DetectorCore
from serving.runtime.backends import InputSize, TorchDetector
from training.config import ModelConfig
from training.validator import Validation

__all__ = ["ReleaseValidator", "release_validator"]


class ReleaseValidator:
    """A `training.validator.Validator`: the release scorer on val at evaluate's operating
    thresholds (see the module doc)."""

    def __init__(
        self,
        val_file: Path,
        *,
        name: str,
        model: ModelConfig,
        evaluate: EvaluateConfig,
        gate_metrics: Sequence[str],
        min_objects: int,
        taxonomy_classes: Sequence[str],
        identifiable: Mapping[str, float],
        seed: int,
    ) -> None:
        if not val_file.is_file():
            raise AnonlabError(f"{val_file} does not exist; run prepare")
        self.val_file = val_file
        self.name = name
        self.classes = list(model.classes)
        self.gt = only_classes(load_ground_truth(val_file), self.classes)
        self.category_ids = [category_id(self.gt, c, val_file) for c in self.classes]
        self.evaluate = evaluate
        self.spec = tiling_spec(evaluate)
        self.size = InputSize.of(model.min_size, model.max_size, self.spec.tile)
        self.gate_metrics = list(gate_metrics)
        self.min_objects = min_objects
        self.options = score_options(
            evaluate,
            taxonomy_classes,
            evaluate.min_threshold,
            seed=seed,
            identifiable=identifiable,
        )

    def __call__(self, model: nn.Module, step: int) -> Validation:
        results = self._predict(model, step)
        thresholds = operating_thresholds(self.gt, results, self.classes, self.options)
        chosen = {c: thresholds[c]["threshold"] for c in self.classes}
        at = score(self.gt, results, replace(self.options, thresholds=chosen, n_boot=0))
        return self._validation(at.recall, thresholds)

    def _predict(self, model: nn.Module, step: int) -> list[dict[str, Any]]:
        """COCO results of `model` on val, as evaluate predicts; the model's settings that the
        runtime's detector changes (score floor, keypoint branch) are restored after."""
        heads = model.roi_heads
        kept = (heads.score_thresh, heads.keypoint_roi_pool)
        device = next(model.parameters()).device
        try:
            detector = TorchDetector(
                DetectorCore(model, score_threshold=self.evaluate.min_threshold, keypoints=False),
                size=self.size,
                mask_threshold=self.evaluate.mask_threshold,
                device=device,
            )
            results, _ = predict_set(
                self.gt["images"],
                detector,
                self.spec,
                images_root=self.val_file.parent,
                category_ids=self.category_ids,
                desc=f"validate {self.name} at step {step}",
            )
        finally:
            heads.score_thresh, heads.keypoint_roi_pool = kept
        return results

    def _validation(self, recall: RecallTable, thresholds: dict[str, dict[str, Any]]) -> Validation:
        metrics: dict[str, float] = {}
        margins: dict[str, float] = {}
        for name in self.classes:
            target = self.evaluate.target(name)
            metrics[f"threshold/{name}"] = float(thresholds[name]["threshold"])
            for bucket, cell in recall[name].items():
                if not cell.n:
                    continue
                metrics[f"recall/{name}/{bucket}"] = cell.iou
                metrics[f"coverage/{name}/{bucket}"] = cell.coverage
                if bucket == BELOW or (bucket != ALL and cell.n < self.min_objects):
                    continue  # too small to identify anyone, or too few to judge
                for metric in self.gate_metrics:
                    margins[f"{name}/{bucket}/{metric}"] = cell.value(metric) - target
        if not margins:
            raise AnonlabError(
                f"{self.val_file} has no objects of {', '.join(self.classes)} (the classes of "
                f"{self.name}): nothing to validate on; prepare a val split that holds them"
            )
        order = sorted(margins, key=lambda cell: (margins[cell], cell))
        worst = order[0]
        summary = {
            "worst_cell": worst,
            "margins": {cell: margins[cell] for cell in order},
            "thresholds": thresholds,
            "recall": {
                name: {"iou": recall[name][ALL].iou, "coverage": recall[name][ALL].coverage}
                for name in self.classes
            },
        }
        return Validation(
            score=margins[worst],
            tie_break=[margins[cell] for cell in order[1:]],
            metrics=metrics,
            summary=summary,
        )


def release_validator(params: Any, name: str, *, artifacts: Path) -> ReleaseValidator:
    """The validator `anonlab train` hands the loop for model `name`, from validated params
    (serving.params.Params) and the artifacts root (it reads `prepared/val.json`)."""
    return ReleaseValidator(
        StagePaths(artifacts).prepared.val,
        name=name,
        model=params.models[name],
        evaluate=params.evaluate,
        gate_metrics=params.validation.gate_metrics,
        min_objects=params.validation.min_objects,
        taxonomy_classes=params.taxonomy.classes,
        identifiable=params.taxonomy.identifiable,
        seed=params.seed,
    )
