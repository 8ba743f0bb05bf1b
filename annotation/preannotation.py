"""A pre-annotation of one image (`Prediction`: Label Studio regions, their uncertainty, the
faces a second opinion finds that they miss), the pre-annotator that runs the registry's
champions, and `Champions`: those models and why they are the ones (or why there are none, and
Haar cascades pre-annotate). How uncertainty, order and score are defined: `annotation.push`'s
docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotation.labeling_config import labels_by_control
from annotation.mining import Missed, queue_score
from annotation.predictions import ModelDetector, detection_regions
from data.config import TaxonomyConfig
from data.manifest import ManifestRecord
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright
from serving.runtime.tiles import detect_tiled

log = logging.getLogger(__name__)

NO_DETECTION_UNCERTAINTY = 0.5


@dataclass(frozen=True)
class Prediction:
    """The pre-annotation of one image: Label Studio regions and how uncertain they are."""

    result: list[dict[str, Any]]
    uncertainty: float
    model_version: str
    missed: Missed | None = None  # the second opinion's, when one ran

    @property
    def missed_faces(self) -> int:
        return self.missed.count if self.missed is not None else 0

    def as_task_prediction(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "score": round(queue_score(self.uncertainty, self.missed_faces), 6),
            "result": self.result,
        }

    def meta(self, width: int, height: int) -> dict[str, Any]:
        """The task's `meta`: why it is queued where it is (`annotation.push`'s docstring)."""
        queued = "missed faces" if self.missed_faces else "uncertain"
        out: dict[str, Any] = {"queued": queued, "uncertainty": round(self.uncertainty, 4)}
        if self.missed is not None:
            out.update(self.missed.meta(width, height))
        return out


@dataclass(frozen=True)
class Champions:
    """The models that pre-annotate (the registry's champions; none: Haar cascades) and why, in
    words push prints after the model version: where the champions were found, or why there is
    none and what would make one."""

    models: list[ModelDetector]
    why: str


def score_uncertainty(confidences: Sequence[float]) -> float:
    """The mean of 1 - |2c - 1| over the detections' confidences; 0.5 without detections."""
    if not confidences:
        return NO_DETECTION_UNCERTAINTY
    return sum(1.0 - abs(2.0 * c - 1.0) for c in confidences) / len(confidences)


class ChampionPreannotator:
    """Trained models (the registry's champions) on the upright image, tiled as the runtime
    tiles; their detections at or above `min_score` as regions (`annotation.predictions`)."""

    def __init__(self, models: Sequence[ModelDetector], min_score: float) -> None:
        self.models = list(models)
        self.min_score = min_score
        self.model_version = "+".join(m.model_version for m in self.models)

    def predict(
        self, record: ManifestRecord, raw_dir: Path, taxonomy: TaxonomyConfig
    ) -> Prediction:
        try:
            rgb = read_upright(raw_dir / record.path)
        except (OSError, ImageError) as e:
            # As for Haar: the annotator sees the broken image and can skip it.
            log.warning("%s: not readable for pre-annotation (%s)", record.path, e)
            return Prediction([], NO_DETECTION_UNCERTAINTY, self.model_version)
        height, width = rgb.shape[:2]
        offered = labels_by_control(taxonomy.classes, taxonomy.keypoints)
        result: list[dict[str, Any]] = []
        scores: list[float] = []
        for k, model in enumerate(self.models):
            dets = detect_tiled(rgb, model.detector, model.spec)
            known = [model.classes[int(label) - 1] in taxonomy.classes for label in dets.labels]
            dets = dets.select((dets.scores >= self.min_score) & np.array(known, bool))
            result += detection_regions(
                dets,
                classes=model.classes,
                keypoint_names=model.keypoint_names,
                offered=offered,
                width=width,
                height=height,
                prefix=f"m{k}-",
            )
            scores += dets.scores.tolist()
        return Prediction(result, score_uncertainty(scores), self.model_version)
