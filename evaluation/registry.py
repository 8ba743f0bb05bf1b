"""The MLflow model registry as the release process sees it: which version a weights file is, the
`challenger` and `champion` aliases, and a registered model's files on disk.

A registered model is named after the model in conf/ (`maskrcnn_r50_fpn`); training registers a
version per run, tagged with the sha256 of its weights. `validate` sets `challenger` on a version
that passed the gate; `anonlab validate promote` moves `champion` to the challenger, explicitly,
and tags the version with who promoted it and when.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from data.errors import AnonlabError
from serving.runtime.checksum import file_sha256
from training.tracking import WEIGHTS_SHA256_TAG, global_tracking_uri, tracking_uri

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "RegisteredModel",
    "Registry",
]

CHALLENGER = "challenger"
CHAMPION = "champion"
PROMOTED_BY_TAG = "anonlab.promoted_by"
PROMOTED_AT_TAG = "anonlab.promoted_at"


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version."""

    name: str
    version: str
    run_id: str | None
    weights_sha256: str | None
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, mv: ModelVersion) -> RegisteredModel:
        return cls(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            weights_sha256=mv.tags.get(WEIGHTS_SHA256_TAG),
            aliases=tuple(mv.aliases or ()),
            tags=dict(mv.tags or {}),
        )

    def __str__(self) -> str:
        return f"{self.name} version {self.version}"


class Registry:
    """The registry of the project's MLflow tracking URI (see `training.tracking.tracking_uri`)."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri(root)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def version_with_weights(self, name: str, weights_sha256: str) -> RegisteredModel | None:
        """The newest version of `name` tagged with this sha256 of its weights; None if such
        weights were never registered (training without tracking, or tracking failed)."""
        versions = self._versions(name)
        found = [mv for mv in versions if mv.tags.get(WEIGHTS_SHA256_TAG) == weights_sha256]
        if not found:
            return None
        return RegisteredModel.of(max(found, key=lambda mv: int(mv.version)))

    def get(self, name: str, version: str) -> RegisteredModel | None:
        """Version `version` of `name`, or None when there is no such version."""
        try:
            return RegisteredModel.of(self.client.get_model_version(name, version))
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise

    def by_alias(self, name: str, alias: str) -> RegisteredModel | None:
        """The version that holds `alias`, or None (no such model, or no version has it)."""
        try:
            return RegisteredModel.of(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise

    def set_alias(self, model: RegisteredModel, alias: str) -> None:
        self.client.set_registered_model_alias(model.name, alias, model.version)

    def describe(self, model: RegisteredModel, text: str) -> None:
        """Set the version's description (markdown, shown on its page in the MLflow UI)."""
        self.client.update_model_version(model.name, model.version, description=text)

    def tag(self, model: RegisteredModel, key: str, value: str) -> None:
        self.client.set_model_version_tag(model.name, model.version, key, value)

    def promote(
        self, name: str, *, user: str | None = None
    ) -> tuple[RegisteredModel | None, RegisteredModel]:
        """Move `champion` of `name` to its `challenger`; (previous champion, new champion).

        The new champion is tagged with who (`user`, else $ANONLAB_USER, else the login name)
        and when (UTC, ISO 8601).
        """
        challenger = self.by_alias(name, CHALLENGER)
        if challenger is None:
            raise AnonlabError(
                f"{name}: no version has the alias {CHALLENGER!r}; run `anonlab validate` (a "
                "passing gate sets it) before promoting"
            )
        previous = self.by_alias(name, CHAMPION)
        who = user or os.environ.get("ANONLAB_USER") or getpass.getuser()
        when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.set_alias(challenger, CHAMPION)
        self.client.set_model_version_tag(name, challenger.version, PROMOTED_BY_TAG, who)
        self.client.set_model_version_tag(name, challenger.version, PROMOTED_AT_TAG, when)
        return previous, RegisteredModel.of(self.client.get_model_version(name, challenger.version))

    def download(self, model: RegisteredModel, dest: Path) -> tuple[Path, Path]:
        """The version's config.yaml and weights.safetensors, downloaded under `dest`.

        The weights are checked against the version's sha256 tag: a registry whose files were
        altered is an error, not a silently different model.
        """
        dest.mkdir(parents=True, exist_ok=True)
        # `models:/` URIs resolve through MLflow's global URIs (the registry's defaults to the
        # tracking one): set for the call, then put back exactly as they were.
        with global_tracking_uri(self.uri):
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{model.name}/{model.version}",
                    dst_path=str(dest),
                    tracking_uri=self.uri,
                )
            )
        config = folder / "artifacts" / "config.yaml"
        weights = folder / "artifacts" / "weights.safetensors"
        if not (config.is_file() and weights.is_file()):
            raise AnonlabError(
                f"{model}: the registered files lack artifacts/config.yaml or "
                "artifacts/weights.safetensors; it was not logged by anonlab train"
            )
        if model.weights_sha256 and file_sha256(weights) != model.weights_sha256:
            raise AnonlabError(
                f"{model}: the downloaded weights do not match the version's "
                f"{WEIGHTS_SHA256_TAG} tag; the registry's artifact store was altered"
            )
        return config, weights

    def _versions(self, name: str) -> list[ModelVersion]:
        try:
            return list(self.client.search_model_versions(f"name = '{name}'"))
        except MlflowException as exc:
            if _not_found(exc):
                return []
            raise


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
