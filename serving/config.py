"""The `export` section of params.yaml: how a validated model becomes a runtime artifact."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from data.config import Section

__all__ = ["ExportConfig", "ParityConfig"]


class ParityConfig(Section):
    """The ONNX check: on `tiles` windows of val images (those holding objects of each of the
    model's classes first), every detection at or above the lowest operating threshold in one
    backend has a partner in the other within these bounds; at least `min_compared` detections
    are compared, and among them every class of the model (but those in `allow_absent`)."""

    tiles: int = Field(ge=1)
    min_compared: int = Field(ge=1)
    box_px: float = Field(gt=0)
    score: float = Field(gt=0, lt=1)
    mask_iou: float = Field(gt=0, le=1)
    # Keypoints scoring at least keypoint_score (the keypoint head's heatmap logit) in either
    # backend must lie within keypoint_px of each other.
    keypoint_px: float = Field(gt=0)
    keypoint_score: float
    # Classes that may have no compared detection (the model detects none on val); the
    # manifest's parity entry lists them as unchecked.
    allow_absent: list[str] = Field(default_factory=list)


class ExportConfig(Section):
    """Per-class anonymization styles written into each artifact, and the ONNX export."""

    # class -> {shape: ellipse|mask|box, method: blur|pixelate|fill, margin, feather}; every
    # class a model detects needs one (serving/runtime/anonymize.py says what each key means).
    styles: dict[str, dict[str, Any]]
    # ONNX opset of the exported graph (torchvision's detection models: 11 or later).
    opset: int = Field(ge=11)
    # Windows per call of the exported ONNX graph (its batch is fixed at export).
    batch: int = Field(default=1, ge=1, le=64)
    parity: ParityConfig

    @field_validator("styles")
    @classmethod
    def _styles_valid(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from serving.runtime.anonymize import Style

        for name, style in value.items():
            try:
                Style.from_dict(style)
            except ValueError as exc:
                raise ValueError(f"styles.{name}: {exc}") from None
        return value
