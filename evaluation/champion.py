"""The registry's champions as the detectors `annotate push` pre-annotates with: the versions of
the trained models that hold the alias `champion`, their files downloaded (the weights checked
against the version's sha256 tag) and loaded into the runtime's torch detector, with evaluate's
tiling, the tiling export ships. Without one, what the registry holds instead (no registry, only a
challenger, nothing) is the reason push gives for pre-annotating with Haar cascades."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException

from annotation.config import redact_url
from annotation.preannotation import Champions
from annotation.predictions import ModelDetector
from data.errors import AnonlabError
from evaluation.config import EvaluateConfig
from evaluation.evaluate import tiling_spec
from evaluation.predict import torch_detector
from evaluation.registry import CHALLENGER, CHAMPION, Registry
from training.device import resolve_device
from training.tracking import sqlite_path, tracking_uri

log = logging.getLogger(__name__)

__all__ = ["load_champions"]


def load_champions(
    names: Sequence[str], *, root: Path, evaluate: EvaluateConfig, min_score: float
) -> Champions:
    """The champion of each registered model in `names` that has one, ready to detect down to
    `min_score`, and where they were found; no model when none has (or the registry cannot be
    read), with what the registry holds instead, also logged. A champion that cannot be
    downloaded, or an altered registry (weights that do not match their sha256 tag, files
    anonlab did not log), is an error."""
    uri = tracking_uri(root)
    where = f"the MLflow registry at {redact_url(uri)}"
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        # Opening it would create it: push leaves no tracking database behind.
        return _haar(f"{where} does not exist (no model was trained with tracking here)")
    try:
        registry = Registry(root, uri)
        found = [(name, registry.by_alias(name, CHAMPION)) for name in names]
        champions = [model for _, model in found if model is not None]
        challengers = {} if champions else {n: registry.by_alias(n, CHALLENGER) for n in names}
    except Exception as exc:  # an unreadable registry must not stop annotation
        log.warning("pre-annotations from Haar cascades: %s cannot be read (%s)", where, exc)
        return Champions([], f"Haar cascades, because {where} cannot be read ({exc})")
    if not champions:
        seen = "; ".join(
            f"{name}: only a {CHALLENGER} (version {model.version})"
            if model is not None
            else f"{name}: neither a {CHAMPION} nor a {CHALLENGER}"
            for name, model in challengers.items()
        )
        todo = (
            "promote with `anonlab validate promote`"
            if any(challengers.values())
            else f"`anonlab validate` makes a model that passes the gate the {CHALLENGER}"
        )
        return _haar(f"{where} has no {CHAMPION} ({seen}); {todo}")
    device = resolve_device(evaluate.device, key="evaluate.device")
    spec = tiling_spec(evaluate)
    out: list[ModelDetector] = []
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
    named = ", ".join(str(model) for model in champions)
    plural = "s" if len(champions) > 1 else ""
    return Champions(out, f"the {CHAMPION}{plural} {named} of {where}")


def _haar(why: str) -> Champions:
    log.info("pre-annotations from Haar cascades: %s", why)
    return Champions([], f"Haar cascades, because {why}")
