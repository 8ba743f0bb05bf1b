"""The registry's champions as the detectors `annotate push` pre-annotates with: the versions of
the trained models that hold the alias `champion`, their files downloaded (the weights checked
against the version's sha256 tag) and loaded into the runtime's torch detector, with evaluate's
tiling, the tiling export ships."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException

from annotation.config import redact_url
from annotation.predictions import ModelDetector
from data.errors import AnonlabError
from evaluation.config import EvaluateConfig
from evaluation.evaluate import tiling_spec
from evaluation.predict import torch_detector
from evaluation.registry import CHALLENGER, CHAMPION, RegisteredModel, Registry
from training.device import resolve_device
from training.tracking import sqlite_path, tracking_uri

log = logging.getLogger(__name__)

__all__ = ["load_champions"]


def load_champions(
    names: Sequence[str], *, root: Path, evaluate: EvaluateConfig, min_score: float
) -> list[ModelDetector]:
    """The champion of each registered model in `names` that has one, ready to detect down to
    `min_score`; empty when none has (or the registry cannot be read), after one log line that
    names the registry and what it found there. A champion that cannot be downloaded, or an
    altered registry (weights that do not match their sha256 tag, files anonlab did not log),
    is an error."""
    uri = tracking_uri(root)
    where = f"the MLflow registry at {redact_url(uri)}"
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        # Opening it would create it: push leaves no tracking database behind.
        log.info(
            "pre-annotations from Haar cascades: %s does not exist (no model was trained with "
            "tracking here)",
            where,
        )
        return []
    try:
        registry = Registry(root, uri)
        found = [(name, registry.by_alias(name, CHAMPION)) for name in names]
        champions = [model for _, model in found if model is not None]
        if not champions:
            seen = [_challenger(registry, name) for name in names]
    except Exception as exc:  # an unreadable registry must not stop annotation
        log.warning("pre-annotations from Haar cascades: %s cannot be read (%s)", where, exc)
        return []
    if not champions:
        log.info(
            "pre-annotations from Haar cascades: %s has no version with the alias %r for %s; "
            "`anonlab validate promote` makes a challenger the champion",
            where,
            CHAMPION,
            "; ".join(seen),
        )
        return []
    device = resolve_device(evaluate.device, key="evaluate.device")
    spec = tiling_spec(evaluate)
    out = []
    for model in champions:
        with tempfile.TemporaryDirectory(prefix="anonlab-champion-") as tmp:
            try:
                config, weights = registry.download(model, Path(tmp))
            except (MlflowException, OSError) as exc:
                raise AnonlabError(
                    f"the champion {model} of {where} cannot be downloaded ({exc}); check the "
                    "registry's artifact store, or remove the alias to pre-annotate with Haar"
                ) from None
            detector, model_cfg = torch_detector(
                config,
                weights,
                score_threshold=min_score,
                tile=spec.tile,
                mask_threshold=evaluate.mask_threshold,
                device=device,
                keypoints=True,
            )
        out.append(
            ModelDetector(
                detector=detector,
                spec=spec,
                classes=list(model_cfg["classes"]),
                keypoint_names=list(model_cfg.get("keypoint_names") or []),
                model_version=f"{model.name}:{model.version}",
            )
        )
        log.info("pre-annotations from the champion %s of %s", model, where)
    return out


def _challenger(registry: Registry, name: str) -> str:
    """What the registry holds of `name` when it has no champion, in words."""
    challenger: RegisteredModel | None = registry.by_alias(name, CHALLENGER)
    if challenger is not None:
        return f"{name}: only a {CHALLENGER} (version {challenger.version})"
    return f"{name}: neither a {CHAMPION} nor a {CHALLENGER}"
