"""The evaluate stage's MLflow runs, in the experiment `anonlab/evaluate`: one per model and one
for the anonymizer, named `<model> · <DVC experiment or git commit> · evaluate`
(`training.tracking_ui.run_name`), with `recall/<set>/<class>/<bucket>` (IoU), `coverage/...`,
`threshold/<class>`, the anonymizer's `heads_only/<set>`, and the headline recall again under
short names (`<set>/<class>/iou`, `<set>/<class>/coverage`: `evaluation.version_notes`), which
the experiment's saved view "anonlab: recall" shows as columns. Each run also carries the peer
baselines (`evaluation.peers`) under the same names prefixed `peer/<name>/`
(`peer/centerface/coverage/holdout/face/all`), so a run shows ours and theirs side by side.

A model's run is tagged with the weights' sha256, the registered model and version it scored
and that version's training run (`anonlab.registered_model`, `anonlab.model_version`,
`anonlab.train_run_id`), and its description links the version's and the training run's pages;
the version gets the tag `anonlab.evaluate_run` and a description with its headline recall.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.anonymizer import ANONYMIZER, AnonymizerResult
from evaluation.config import AnonymizerConfig, EvaluateConfig
from evaluation.peers import PeerResult
from evaluation.registry import RegisteredModel, Registry
from evaluation.scoring.result import ScoreResult
from evaluation.version_notes import (
    EVALUATE_RUN_TAG,
    evaluated_description,
    headline_from_metrics,
    headline_markdown,
)
from training.tracking import WEIGHTS_SHA256_TAG, Tracker, run_tags
from training.tracking_ui import NOTE_TAG, run_name, run_path, version_path

__all__ = ["EXPERIMENT", "flat_recall", "peer_metrics", "track_anonymizer", "track_model"]

log = logging.getLogger(__name__)

EXPERIMENT = "anonlab/evaluate"
# Tag columns of the saved view, before the headline metrics.
_VIEW_TAGS = ("anonlab.model_version",)


def flat_recall(
    scores: Mapping[str, ScoreResult],
    thresholds: Mapping[str, Mapping[str, Any]],
    prefix: str = "",
) -> dict[str, float]:
    """MLflow metrics: `recall/<set>/<class>/<bucket>` (IoU), `coverage/...`, thresholds."""
    out: dict[str, float] = {}
    for set_name, metrics in scores.items():
        for name, buckets in metrics.recall.items():
            for bucket, cell in buckets.items():
                for metric, key in (("iou", "recall"), ("coverage", "coverage")):
                    value = cell.value(metric)
                    if value is not None:
                        out[f"{prefix}{key}/{set_name}/{name}/{bucket}"] = value
    for name, t in thresholds.items():
        out[f"{prefix}threshold/{name}"] = t["threshold"]
    return out


def peer_metrics(peers: Sequence[PeerResult]) -> dict[str, float]:
    """The peers' MLflow metrics: `flat_recall`'s names prefixed `peer/<name>/`."""
    out: dict[str, float] = {}
    for peer in peers:
        out.update(flat_recall(peer.scores, peer.thresholds, prefix=f"peer/{peer.name}/"))
    return out


def track_model(
    root: Path,
    cfg: EvaluateConfig,
    name: str,
    weights_sha256: str,
    metrics: Mapping[str, float],
    *,
    version: str | None,
    champion_version: str | None,
) -> None:
    """A model's run, tagged with the sha256 of the weights scored, its registered version
    (and that version's training run) and its champion's; its description links their pages.
    The registered version, when there is one, gets the tag `anonlab.evaluate_run` and
    evaluate's description (`version_notes.evaluated_description`)."""
    tags = {
        **run_tags(root, stage="evaluate"),
        "anonlab.model": name,
        WEIGHTS_SHA256_TAG: weights_sha256,
    }
    registry = _registry(root)
    registered = _version(registry, name, version)
    if version:
        tags["anonlab.registered_model"] = name
        tags["anonlab.model_version"] = version
    if registered is not None and registered.run_id:
        tags["anonlab.train_run_id"] = registered.run_id
    if champion_version:
        tags["anonlab.champion_version"] = champion_version
    headline = headline_from_metrics(metrics)
    tags[NOTE_TAG] = _model_note(registry, name, weights_sha256, registered, champion_version)
    tags[NOTE_TAG] += f"\n\n{headline_markdown(headline)}"
    params = {"evaluate": cfg.model_dump(mode="json"), "model": name}
    run = _log_run(root, name, params, tags, {**metrics, **headline})
    if registry is None or registered is None or run is None:
        return
    try:
        registry.tag(registered, EVALUATE_RUN_TAG, f"{run[0]}/{run[1]}")
        registry.describe(registered, evaluated_description(headline, run=run))
    except Exception as exc:
        log.warning("%s: its evaluation is not in its description (%s)", registered, exc)


def track_anonymizer(
    root: Path,
    cfg: EvaluateConfig,
    config: AnonymizerConfig,
    anonymizer: AnonymizerResult,
    peers: Mapping[str, float],
) -> None:
    """The anonymizer's run: a model's metric names, `heads_only/<set>`, the peers' metrics
    (`peer_metrics`), and each member's weights sha256 as tag
    `anonlab.member.<model>.weights_sha256` (and its version, when evaluate found one, as
    `anonlab.member.<model>.version`)."""
    tags = {
        **run_tags(root, stage="evaluate"),
        "anonlab.anonymizer": config.name,
        **{
            f"anonlab.member.{r.member.name}.weights_sha256": r.weights_sha256
            for r in anonymizer.runs
        },
        **{
            f"anonlab.member.{r.member.name}.version": r.version
            for r in anonymizer.runs
            if r.version
        },
    }
    params = {
        "evaluate": cfg.model_dump(mode="json"),
        "anonymizer": config.model_dump(mode="json"),
        "supplies": dict(anonymizer.composition.supplies),
    }
    metrics = flat_recall(anonymizer.scores, anonymizer.thresholds)
    metrics.update({f"heads_only/{s}": len(f) for s, f in anonymizer.heads_only.items()})
    metrics.update(peers)
    headline = headline_from_metrics(metrics)
    members = ", ".join(f"`{r.member.name}`" for r in anonymizer.runs)
    tags[NOTE_TAG] = (
        f"The anonymizer `{config.name}`: the models {members} run as one, as export ships them; "
        f"what `anonlab validate` gates.\n\n{headline_markdown(headline)}"
    )
    _log_run(root, ANONYMIZER, params, tags, {**metrics, **headline})


def _log_run(
    root: Path,
    subject: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> tuple[str, str, str] | None:
    """One run about `subject` in the experiment anonlab/evaluate, its metrics at step 0; the
    saved view shows its headline columns. (experiment id, run id, run name); None when the
    run was not recorded."""
    name = run_name(subject, "evaluate", tags)
    with Tracker(
        root,
        experiment=EXPERIMENT,
        run_name=name,
        params=params,
        tags=tags,
        system_metrics=False,
    ) as tracker:
        tracker.log_metrics(dict(metrics), 0)
        tracker.save_view(list(headline_from_metrics(metrics)), tags=_VIEW_TAGS)
    if tracker.experiment_id is None or tracker.run_id is None:
        return None
    return tracker.experiment_id, tracker.run_id, name


def _model_note(
    registry: Registry | None,
    name: str,
    weights_sha256: str,
    registered: RegisteredModel | None,
    champion_version: str | None,
) -> str:
    """The description of a model's run: what it scored, with links."""
    if registered is None:
        scored = f"Scored **{name}**, weights sha256 `{weights_sha256[:12]}`, not registered"
    else:
        page = version_path(name, registered.version)
        scored = (
            f"Scored **{name}** [version {registered.version}]({page}), weights sha256 "
            f"`{weights_sha256[:12]}`"
        )
        train = _train_run(registry, registered.run_id)
        if train is not None:
            scored += f", trained in run [{train[2]}]({run_path(train[0], train[1])})"
    if champion_version:
        page = version_path(name, champion_version)
        scored += f"; compared with the champion [version {champion_version}]({page})"
    return scored + "."


def _registry(root: Path) -> Registry | None:
    try:
        return Registry(root)
    except Exception as exc:  # the run is recorded all the same, without links
        log.warning("MLflow registry unavailable (%s): evaluate runs carry no version links", exc)
        return None


def _version(registry: Registry | None, name: str, version: str | None) -> RegisteredModel | None:
    if registry is None or not version:
        return None
    try:
        return registry.get(name, version)
    except Exception as exc:
        log.warning("cannot read %s version %s from the MLflow registry: %s", name, version, exc)
        return None


def _train_run(registry: Registry | None, run_id: str | None) -> tuple[str, str, str] | None:
    """(experiment id, run id, run name) of a training run; None when it cannot be read."""
    if registry is None or not run_id:
        return None
    try:
        run = registry.client.get_run(run_id)
    except Exception:
        return None  # deleted, or another database: the note names no training run
    return run.info.experiment_id, run_id, run.info.run_name or run_id
