"""Config sections read by training: the augmentation pipeline (more come with the trainer)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from data.config import Section


class AugmentConfig(Section):
    """The training-time augmentation, applied on the fly by the dataset (training/augment.py).

    Each transform is `{name: <albumentations class or NightDarkening>, <argument>: value}`.
    Names and arguments are checked when the pipeline is built, before any training step.
    """

    transforms: list[dict[str, Any]]
    # An instance cropped to less than this share of its box is dropped, mask and keypoints too.
    min_visibility: float = Field(ge=0, le=1)

    @field_validator("transforms")
    @classmethod
    def _named(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not isinstance(entry.get("name"), str):
                raise ValueError(f"transforms[{i}] needs a `name` (an albumentations transform)")
        return value
