"""The root schema of params.yaml, assembled from each stage's section, and loading it.

It lives at the top of the dependency chain because it names every stage's section; stage code
receives only the sections it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from annotation.config import AnnotationConfig
from data.config import (
    CollectConfig,
    PathsConfig,
    PrepareConfig,
    ReviewConfig,
    Section,
    TaxonomyConfig,
    apply_overrides,
    read_params,
    validate,
)
from data.stage_paths import StagePaths
from evaluation.config import AnonymizerConfig, EvaluateConfig, ValidateConfig
from serving.config import ExportConfig
from training.config import AugmentConfig, ModelConfig, TrainConfig


class Params(Section):
    seed: int
    paths: PathsConfig
    taxonomy: TaxonomyConfig
    collect: CollectConfig
    review: ReviewConfig
    annotation: AnnotationConfig
    prepare: PrepareConfig
    augment: AugmentConfig
    models: dict[str, ModelConfig]
    train: TrainConfig
    evaluate: EvaluateConfig
    # `validate` in params.yaml; the attribute name would shadow pydantic's BaseModel.validate.
    validation: ValidateConfig = Field(alias="validate")
    export: ExportConfig
    anonymizer: AnonymizerConfig

    @model_validator(mode="after")
    def _models_known(self) -> Params:
        for name in self.train.models:
            if name not in self.models:
                raise ValueError(
                    f"train.models = {self.train.models!r}: {name!r} is not defined; "
                    f"defined models (conf/model/, under models.<name>): {', '.join(self.models)}"
                )
        for name, model in self.models.items():
            unknown = [c for c in model.classes if c not in self.taxonomy.classes]
            if unknown:
                raise ValueError(
                    f"models.{name}.classes = {model.classes!r}: {unknown} not in "
                    f"taxonomy.classes {self.taxonomy.classes}"
                )
        if isinstance(self.evaluate.target_recall, dict):
            given, classes = set(self.evaluate.target_recall), set(self.taxonomy.classes)
            if given != classes:
                raise ValueError(
                    f"evaluate.target_recall names {sorted(given)}; give one per class of "
                    f"taxonomy.classes {self.taxonomy.classes}, or one number for all"
                )
        unknown = [c for c in self.taxonomy.identifiable if c not in self.taxonomy.classes]
        if unknown:
            raise ValueError(
                f"taxonomy.identifiable names {unknown}, not in taxonomy.classes "
                f"{self.taxonomy.classes}"
            )
        unknown = [c for c in self.export.parity.allow_absent if c not in self.taxonomy.classes]
        if unknown:
            raise ValueError(
                f"export.parity.allow_absent = {self.export.parity.allow_absent!r}: {unknown} "
                f"not in taxonomy.classes {self.taxonomy.classes}"
            )
        taken = sorted({"anonymizer", self.anonymizer.name} & set(self.models))
        if taken:
            raise ValueError(
                f"models.{taken[0]}: the anonymizer's key in artifacts/eval/metrics.json "
                f"(anonymizer) and its artifact's name (anonymizer.name = "
                f"{self.anonymizer.name!r}) are not model names; rename the model"
            )
        for name in self.train.models:
            unstyled = [c for c in self.models[name].classes if c not in self.export.styles]
            if unstyled:
                raise ValueError(
                    f"models.{name} detects {unstyled}, which export.styles does not say how "
                    "to anonymize (conf/export/)"
                )
        return self


@dataclass(frozen=True)
class Project:
    """A validated configuration and the project root its relative paths start from."""

    root: Path
    params: Params

    @property
    def artifacts(self) -> Path:
        return (self.root / self.params.paths.artifacts).resolve()

    @property
    def stage_paths(self) -> StagePaths:
        return StagePaths(self.artifacts)


def load_project(params_path: str | Path, overrides: Sequence[str] = ()) -> Project:
    """Read params.yaml, apply `key=value` overrides, validate; ConfigError on any problem."""
    params_path = Path(params_path).resolve()
    raw = apply_overrides(read_params(params_path), overrides)
    return Project(root=params_path.parent, params=validate(raw, Params))
