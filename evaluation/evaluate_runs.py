"""The evaluate stage's MLflow runs, in the experiment `anonlab/evaluate`: one per model (named
after it, tagged `anonlab.weights_sha256`) and one for the anonymizer (named `anonymizer`,
tagged with each member's weights sha256), with `recall/<set>/<class>/<bucket>` (IoU),
`coverage/...`, `threshold/<class>`, and the anonymizer's `heads_only/<set>`. Each run also
carries the peer baselines (`evaluation.peers`) under the same names prefixed
`peer/<name>/` (`peer/centerface/coverage/holdout/face/all`), so a run shows ours and theirs
side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.anonymizer import ANONYMIZER, AnonymizerResult
from evaluation.config import AnonymizerConfig, EvaluateConfig
from evaluation.peers import PeerResult
from evaluation.scoring.result import ScoreResult
from training.tracking import WEIGHTS_SHA256_TAG, Tracker, run_tags

__all__ = ["flat_recall", "peer_metrics", "track_anonymizer", "track_model"]


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
    """A model's run (named after it), tagged with the sha256 of the weights scored, its
    registered version and its champion's."""
    tags = {
        **run_tags(root, stage="evaluate"),
        "anonlab.model": name,
        WEIGHTS_SHA256_TAG: weights_sha256,
    }
    if version:
        tags["anonlab.model_version"] = version
    if champion_version:
        tags["anonlab.champion_version"] = champion_version
    params = {"evaluate": cfg.model_dump(mode="json"), "model": name}
    _log_run(root, name, params, tags, metrics)


def track_anonymizer(
    root: Path,
    cfg: EvaluateConfig,
    config: AnonymizerConfig,
    anonymizer: AnonymizerResult,
    peers: Mapping[str, float],
) -> None:
    """The anonymizer's run (named `anonymizer`): a model's metric names, `heads_only/<set>`,
    the peers' metrics (`peer_metrics`), and each member's weights sha256 as tag
    `anonlab.member.<model>.weights_sha256`."""
    tags = {
        **run_tags(root, stage="evaluate"),
        "anonlab.anonymizer": config.name,
        **{
            f"anonlab.member.{r.member.name}.weights_sha256": r.weights_sha256
            for r in anonymizer.runs
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
    _log_run(root, ANONYMIZER, params, tags, metrics)


def _log_run(
    root: Path,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """One run named `name` in the experiment anonlab/evaluate, its metrics at step 0."""
    with Tracker(
        root,
        experiment="anonlab/evaluate",
        run_name=name,
        params=params,
        tags=tags,
        system_metrics=False,
    ) as tracker:
        tracker.log_metrics(dict(metrics), 0)
