"""What the Label Studio server tests set up: the taxonomy, the annotation config of a project on
the server, and the reviewed manifest that push reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from annotation.config import AnnotationConfig
from data.config import TaxonomyConfig
from data.manifest import ManifestRecord, write_manifest
from tests.conftest import REPO

TAXONOMY = TaxonomyConfig(
    classes=["face", "person", "license_plate", "vehicle"],
    keypoints=["nose", "left_eye", "right_eye"],
)


def annotation_cfg(url: str, title: str, **overrides: object) -> AnnotationConfig:
    raw = yaml.safe_load((REPO / "conf/annotation/default.yaml").read_text(encoding="utf-8"))
    raw.update(source="server", url=url, project_title=title, **overrides)
    return AnnotationConfig.model_validate(raw)


def review(artifacts: Path, records: list[ManifestRecord]) -> None:
    write_manifest(artifacts / "reviewed" / "manifest.jsonl", records)
