"""The `evaluate` and `validate` sections of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data.config import Section
from serving.runtime.heads import HeadSpec
from serving.runtime.independent import NAMES as INDEPENDENT_DETECTORS

__all__ = [
    "AnonymizerConfig",
    "EvaluateConfig",
    "GalleryConfig",
    "HeadsConfig",
    "InferenceTiling",
    "ValidateConfig",
]


class InferenceTiling(Section):
    """How large images and panoramas are cut for detection: the runtime's tiling, which export
    writes into the artifact's manifest, so the recall measured is the recall shipped."""

    # Window side in pixels (per pass); images no larger are one window.
    tile: int = Field(ge=64)
    overlap: int = Field(ge=0)
    # Passes at these scales of the image; a second one above 1 finds small distant objects.
    scales: list[float] = Field(min_length=1)
    # width / height of equirectangular panoramas, whose left and right edges meet.
    panorama_aspect: float = Field(gt=0)
    # Same-class detections from different windows at this IoU or more are one object.
    merge_iou: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> InferenceTiling:
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile ({self.tile})")
        if any(s <= 0 for s in self.scales):
            raise ValueError(f"scales {self.scales}: each must be above 0")
        return self


class GalleryConfig(Section):
    # Missed objects shown per model and reference set in report.html (smallest first).
    max_per_set: int = Field(ge=0)
    # Context around a missed object: this many times its size on each side (at least 24 px).
    context: float = Field(ge=0)


class EvaluateConfig(Section):
    """Recall of each trained model on val and on every reference set."""

    # The recall every class must reach. Per class operating thresholds are chosen on val as the
    # highest score that still reaches it; validate holds every reference set to it.
    target_recall: float | dict[str, float]
    # Operating thresholds are not chosen below this score, even when the target is not reached
    # above it (the report says so): below it, detections are mostly noise.
    min_threshold: float = Field(ge=0, lt=1)
    # A ground-truth object counts as anonymized when this share of its pixels is covered.
    coverage: float = Field(gt=0, le=1)
    # Bootstrap resamples (of images) for the 95% intervals.
    n_boot: int = Field(ge=0)
    tiling: InferenceTiling
    # Score the registry's current champion on the same sets, when there is one.
    champion: bool
    device: str
    # Score threshold for the masks the model outputs (probabilities per pixel).
    mask_threshold: float = Field(gt=0, lt=1)
    gallery: GalleryConfig
    # Independent detectors (serving.runtime.independent) scored on every set beside our
    # models, as baselines (metrics.json `peer:<name>`); [] scores none.
    peers: list[str]

    @model_validator(mode="after")
    def _targets_in_range(self) -> EvaluateConfig:
        targets = (
            self.target_recall.values()
            if isinstance(self.target_recall, dict)
            else [self.target_recall]
        )
        if any(not 0 < t <= 1 for t in targets):
            raise ValueError(f"target_recall {self.target_recall}: each must be in (0, 1]")
        return self

    @field_validator("peers")
    @classmethod
    def _known_peers(cls, peers: list[str]) -> list[str]:
        unknown = [p for p in peers if p not in INDEPENDENT_DETECTORS]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: no such independent detector; use some of "
                f"{', '.join(INDEPENDENT_DETECTORS)}, or [] for none"
            )
        if len(set(peers)) != len(peers):
            raise ValueError("name each detector once")
        return peers

    def target(self, name: str) -> float:
        """The target recall of class `name`."""
        if isinstance(self.target_recall, dict):
            return self.target_recall[name]
        return self.target_recall


class ValidateConfig(Section):
    """The model gate and the checks of the prepared data. The gate is the release gate when
    `serving.runtime.release.release_problems` finds nothing in it (see that module)."""

    # Which recalls must reach evaluate.target_recall on every reference set.
    gate_metrics: list[Literal["iou", "coverage"]] = Field(min_length=1)
    # The size buckets judged, each from min_objects objects on; `all` (every size together) is
    # judged from one object.
    buckets: list[Literal["tiny", "small", "medium", "large", "all"]] = Field(min_length=1)
    # The number held to the target: `lower`, the lower bound of the cell's 95% bootstrap
    # interval (a pass says the recall is at least the target with 95% confidence); `point`,
    # the recall measured.
    estimate: Literal["lower", "point"]
    # No class and size bucket may be worse than the champion's by more than this.
    tolerance: float = Field(ge=0, le=1)
    # Size buckets with fewer ground-truth objects are reported but neither judged against the
    # target nor held to the champion (their recall moves by 1/n per object).
    min_objects: int = Field(ge=1)
    # Data: warn when a class/bucket's share of the objects moves by more than this (relative)
    # from the previous dataset version, for buckets with at least data_min_objects objects.
    max_shift: float = Field(gt=0)
    data_min_objects: int = Field(ge=1)


class HeadsConfig(Section):
    """Head regions from the keypoint model's persons (`serving.runtime.heads`)."""

    enabled: bool
    keypoints: list[str] = Field(min_length=1)
    keypoint_threshold: float
    spread: float = Field(ge=0, le=10)
    box_share: float = Field(ge=0, le=2)
    aspect: float = Field(ge=0.25, le=4)
    min_px: float = Field(ge=0, le=1000)

    def spec(self) -> HeadSpec:
        return HeadSpec(
            keypoints=tuple(self.keypoints),
            keypoint_threshold=self.keypoint_threshold,
            spread=self.spread,
            box_share=self.box_share,
            aspect=self.aspect,
            min_px=self.min_px,
        )


class AnonymizerConfig(Section):
    """The trained models run as one anonymizer (`serving.runtime.composite`)."""

    # The composite artifact's name (artifacts/serving/<name>-<version>/).
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    heads: HeadsConfig
