"""Peer baselines: independent detectors (`serving.runtime.independent`, detectors anonlab did not
train) scored on every set beside our models, so a user reads "our face recall 0.97, CenterFace
0.88" per set and size.

A peer predicts on the same images as our models (decoded upright by `evaluation.predict`;
CenterFace cut into windows by evaluate's tiling, `evaluate.tiling`; Haar on the whole image, as
it runs), and is scored by the same scorer with the same
coverage, targets, bootstrap and identifiable heights, on the classes it finds that the
taxonomy has (CenterFace finds faces only: it is not scored on persons, plates or vehicles).

Operating threshold: chosen on val as a model's is (`evaluation.operating`), the
highest score whose IoU recall still reaches the class's target, never below
`evaluate.min_threshold` (the peer predicts down to it). The peer is held to the same target at
the same kind of operating point as our models, so the comparison is like for like.

The entry it writes, `metrics.json["peer:<name>"]`: `peer` (its name), `licence` (its licence
and origin), `classes` (those scored), `thresholds` (per class threshold, val_recall, reached),
and `sets` (per set the same shape as a model's: recall, coco, false_positives_per_image).
Nothing reads it as a model: validate, export and the registry read the entries of
train.models and `anonymizer` by name, and evaluate refuses a model whose name starts `peer:`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import AnonlabError
from evaluation.operating import only_classes, operating_thresholds
from evaluation.predict import predict_images
from evaluation.score import score
from evaluation.scoring.options import ScoreOptions
from evaluation.scoring.result import ScoreResult, sets_to_json
from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.independent import IndependentDetector, load_detector
from serving.runtime.tiles import TilingSpec

__all__ = ["PEER_PREFIX", "PeerResult", "PeerSet", "evaluate_peer", "load_peer", "peer_key"]

# metrics.json keys of peers start with this (evaluate refuses a model name that does).
PEER_PREFIX = "peer:"
VAL = "val"
# CenterFace keeps heatmap cells above its threshold, which must be above 0.
LOWEST_SCORE = 1e-3


def peer_key(name: str) -> str:
    """The metrics.json key (and MLflow prefix name) of peer `name`."""
    return f"{PEER_PREFIX}{name}"


@dataclass(frozen=True)
class PeerSet:
    """One set as evaluate scores it: its ground truth (the taxonomy's classes) and the folder
    its image paths are relative to."""

    gt: dict[str, Any]
    images_root: Path


@dataclass(frozen=True)
class PeerResult:
    """A peer's evaluation: its name, licence, the classes scored, thresholds chosen on val and
    its scores per set (val first)."""

    name: str
    licence: str
    classes: tuple[str, ...]
    thresholds: dict[str, dict[str, Any]]
    scores: dict[str, ScoreResult]

    def entry(self) -> dict[str, Any]:
        """metrics.json["peer:<name>"] (module docstring)."""
        return {
            "peer": self.name,
            "licence": self.licence,
            "classes": list(self.classes),
            "thresholds": self.thresholds,
            "sets": sets_to_json(self.scores),
        }


def load_peer(name: str, spec: TilingSpec, min_threshold: float) -> IndependentDetector:
    """Peer `name` predicting down to `min_threshold` where it takes a threshold (CenterFace:
    down to LOWEST_SCORE when min_threshold is 0), tiled by `spec` where it tiles (CenterFace);
    an AnonlabError saying what to do when it cannot be loaded."""
    options: dict[str, Any] = {}
    if name == "centerface":
        options = {"threshold": max(min_threshold, LOWEST_SCORE), "tiling": spec}
    try:
        return load_detector(name, **options)
    except ServingError as e:
        raise AnonlabError(
            f"evaluate.peers: peer {name!r} cannot be loaded: {e}; or leave it out of "
            "evaluate.peers (evaluate.peers=[] scores no peer)"
        ) from None


def evaluate_peer(
    detector: IndependentDetector,
    sets: Mapping[str, PeerSet],
    options: ScoreOptions,
    taxonomy: Sequence[str],
) -> PeerResult:
    """`detector` on every set of `sets` (val first), scored with `options` (evaluate's, its
    thresholds set here, chosen on val as for a model) on the classes it finds that the
    taxonomy has (taxonomy.classes)."""
    classes = tuple(c for c in detector.classes if c in taxonomy)
    if not classes:
        raise AnonlabError(
            f"evaluate.peers: {detector.name} finds {list(detector.classes)}, none of them in "
            f"taxonomy.classes {list(taxonomy)}; leave it out of evaluate.peers"
        )
    scored_labels = [i + 1 for i, c in enumerate(detector.classes) if c in classes]

    def detect(rgb: np.ndarray) -> Detections:
        dets = detector.detect(rgb)
        return dets.select(np.isin(dets.labels, scored_labels))

    thresholds: dict[str, dict[str, Any]] = {}
    scores: dict[str, ScoreResult] = {}
    for set_name, one in sets.items():
        gt = only_classes(one.gt, classes)
        ids = {c["name"]: int(c["id"]) for c in gt["categories"]}
        # Labels of classes left out are dropped above; their id is never looked up.
        category_ids = [ids.get(c, -1) for c in detector.classes]
        results, _ = predict_images(
            gt["images"],
            detect,
            images_root=one.images_root,
            category_ids=category_ids,
            desc=f"peer {detector.name} on {set_name}",
        )
        if set_name == VAL:
            thresholds = operating_thresholds(gt, results, list(classes), options)
        chosen = {c: thresholds[c]["threshold"] for c in classes}
        scores[set_name] = score(gt, results, replace(options, thresholds=chosen))
    return PeerResult(detector.name, detector.licence, classes, thresholds, scores)
