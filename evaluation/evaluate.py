"""The evaluate stage: every trained model (and the registry's champion), and the anonymizer
the models make together, over val and every reference set, with the runtime's tiling, scored
by `anonlab score`; metrics, plots, report.

Per model:
1. Val: the model predicts down to `evaluate.min_threshold`; per class, the operating threshold
   is the highest score whose recall (IoU) still reaches the class's target. When no score
   reaches it, the threshold is `min_threshold` (the most recall the model has) and the report
   says the target was not reached there: validate will then refuse the model.
2. Each reference set is scored at those thresholds: recall (IoU and coverage) per class and
   size bucket with bootstrap intervals, COCO AP, false positives per image, PR curves.
3. The champion (MLflow alias `champion` of the model's registered name), when there is one and
   it is not these very weights, goes through 1 and 2 the same way, with its own thresholds.

Then the anonymizer (`evaluation.anonymizer`): the models of train.models run as one, as the
runtime runs a composite artifact (each class from the model that supplies it, at that model's
operating threshold, plus the heads of the keypoint model's persons), from the detections each
model's detector gave in 1 and 2 (each ran once per image; a keypoint model's with keypoints);
the head threshold is chosen on val for the face target (`evaluation.head_threshold`). What it
hides is what is scored: its coverage is measured on the pixels the runtime hides fully.

And the peer baselines (`evaluation.peers`): each independent detector of evaluate.peers on
every set, scored the same way on the classes it finds, its thresholds chosen on val as a
model's are; shown beside our models, never gated.

Outputs under `artifacts/eval/`: `metrics.json` (per model the sha256 of the
weights it scored, which validate and export check the weights against; per set, recall and
coverage per class and bucket, thresholds, champion; and under `anonymizer` the anonymizer's
entry: members and their weights sha256, which model supplies which class, head geometry,
styles, thresholds with the head threshold, per set the same recall/coco/false positives as a
model's, and per reference set the faces only its heads hide; under `peer:<name>` each peer's
entry), `headline.json` (DVC metrics: the few numbers `evaluation.headline` picks),
`plots/pr/` and `plots/recall_by_size/` (`evaluation.plot_rows`, for `dvc plots`),
`predictions/<model>/<set>.json` (COCO results: `anonlab score` reads them), `report.html` (the
anonymizer beside its members first). The folder is replaced as a whole, so a failed run leaves
the previous outputs. Each model, and the anonymizer, also gets an MLflow run in the experiment
`anonlab/evaluate` (`evaluation.evaluate_runs`), each with the peers' numbers under `peer/`.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.atomic import staged_dir, write_json, write_text
from data.coco.files import load_ground_truth
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.retention import refuse_overdue_datasets
from data.stage_paths import EvalOutputs, StagePaths
from evaluation.anonymizer import (
    ANONYMIZER,
    AnonymizerResult,
    AnonymizerSetup,
    MemberRun,
    anonymizer_report,
    evaluate_anonymizer,
)
from evaluation.config import AnonymizerConfig, EvaluateConfig
from evaluation.evaluate_runs import flat_recall, peer_metrics, track_anonymizer, track_model
from evaluation.gallery import MissGallery, detections_at, miss_gallery
from evaluation.headline import evaluate_headline
from evaluation.operating import only_classes, operating_thresholds
from evaluation.peers import (
    PEER_PREFIX,
    PeerResult,
    PeerSet,
    evaluate_peer,
    load_peer,
    peer_key,
)
from evaluation.plot_rows import write_plots
from evaluation.predict import predict_set, torch_detector
from evaluation.registry import CHAMPION, RegisteredModel, Registry
from evaluation.report import (
    ModelReport,
    PeerReport,
    SetReport,
    render_report,
)
from evaluation.score import score
from evaluation.scoring.options import ScoreOptions
from evaluation.scoring.result import ScoreResult, sets_to_json
from serving.runtime.anonymize import Style
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import Member
from serving.runtime.detections import Detections
from serving.runtime.tiles import TilingSpec
from training.device import resolve_device

__all__ = [
    "EvalSetup",
    "category_id",
    "run_evaluate",
    "score_options",
    "tiling_spec",
]

log = logging.getLogger(__name__)
VAL = "val"


@dataclass(frozen=True)
class EvalSetup:
    """What the evaluate stage reads."""

    models: Sequence[str]  # train.models: each has artifacts/models/<name>/
    reference_sets: Sequence[str]
    evaluate: EvaluateConfig
    taxonomy: TaxonomyConfig
    seed: int
    artifacts: Path
    root: Path
    anonymizer: AnonymizerConfig
    styles: Mapping[str, Mapping[str, Any]]  # export.styles: class -> Style as a dict

    @classmethod
    def of(cls, params: Any, *, artifacts: Path, root: Path) -> EvalSetup:
        return cls(
            models=list(params.train.models),
            reference_sets=[r.name for r in params.prepare.reference_sets],
            evaluate=params.evaluate,
            taxonomy=params.taxonomy,
            seed=params.seed,
            artifacts=artifacts,
            root=root,
            anonymizer=params.anonymizer,
            styles={c: dict(style) for c, style in params.export.styles.items()},
        )


def tiling_spec(cfg: EvaluateConfig) -> TilingSpec:
    t = cfg.tiling
    return TilingSpec(
        tile=t.tile,
        overlap=t.overlap,
        scales=tuple(t.scales),
        panorama_aspect=t.panorama_aspect,
        merge_iou=t.merge_iou,
    )


def score_options(
    cfg: EvaluateConfig,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | float,
    *,
    seed: int,
    identifiable: Mapping[str, float],
    per_object: bool = False,
) -> ScoreOptions:
    """How evaluate scores a set at `thresholds`: its coverage, the targets of `classes` (the
    taxonomy's), its threshold floor and bootstrap, and the heights from which objects are
    identifiable (taxonomy.identifiable)."""
    return ScoreOptions(
        thresholds=thresholds,
        per_object=per_object,
        coverage=cfg.coverage,
        target_recall={c: cfg.target(c) for c in classes},
        min_threshold=cfg.min_threshold,
        n_boot=cfg.n_boot,
        seed=seed,
        min_identifiable=identifiable,
    )


def run_evaluate(setup: EvalSetup) -> dict[str, Any]:
    """Evaluate every model; the metrics.json content. Refuses before any work when a set holds
    an image past its `delete_after` (data.retention)."""
    paths = StagePaths(setup.artifacts)
    sets = {VAL: paths.prepared.val} | {
        name: paths.prepared.ref(name) for name in setup.reference_sets
    }
    for name, path in sets.items():
        if not path.is_file():
            raise AnonlabError(f"{path} (set {name!r}) does not exist; run prepare")
    refuse_overdue_datasets(list(sets.values()), command="anonlab evaluate")
    truths = {name: load_ground_truth(path) for name, path in sets.items()}
    registry = _registry(setup.root)
    device = resolve_device(setup.evaluate.device, key="evaluate.device")
    metrics: dict[str, Any] = {}
    reports: list[ModelReport] = []
    runs: list[MemberRun] = []
    peers = _peers(setup, sets, truths)
    peer_flat = peer_metrics(peers)
    with staged_dir(paths.eval.folder) as out:
        for name in setup.models:
            model = paths.model(name)
            weights, config = model.weights, model.config
            if not (weights.is_file() and config.is_file()):
                raise AnonlabError(f"{model.folder}: no {weights.name}/{config.name}; train {name}")
            evaluator = _ModelEvaluation(setup, sets, truths, device, out)
            mine = evaluator.run(name, config, weights, label=name, outputs=True)
            version = _version_of(registry, name, mine.weights_sha256)
            champion = None
            champ_ref = (
                _champion(registry, name, mine.weights_sha256) if setup.evaluate.champion else None
            )
            if champ_ref is not None:
                with tempfile.TemporaryDirectory(prefix="anonlab-champion-") as tmp:
                    c_config, c_weights = registry.download(champ_ref, Path(tmp))
                    label = f"{name} champion v{champ_ref.version}"
                    champion = evaluator.run(name, c_config, c_weights, label=label)
            entry = _metrics_entry(mine, champion, version, champ_ref)
            metrics[name] = entry
            reports.append(_model_report(name, mine, champion, version, champ_ref))
            flat = flat_recall(mine.scores, mine.thresholds)
            if champion is not None:
                flat.update(flat_recall(champion.scores, champion.thresholds, prefix="champion/"))
            flat.update(peer_flat)
            track_model(
                setup.root,
                setup.evaluate,
                name,
                mine.weights_sha256,
                flat,
                version=version.version if version else None,
                champion_version=champ_ref.version if champ_ref else None,
            )
            runs.append(
                MemberRun(
                    member=mine.member,
                    weights_sha256=mine.weights_sha256,
                    version=version.version if version else None,
                    thresholds=mine.thresholds,
                    scores=mine.scores,
                    detections=mine.detections,
                )
            )
        anonymizer = _anonymizer(setup, runs, sets, truths)
        metrics[ANONYMIZER] = anonymizer.entry()
        metrics.update({peer_key(p.name): p.entry() for p in peers})
        track_anonymizer(setup.root, setup.evaluate, setup.anonymizer, anonymizer, peer_flat)
        targets = {c: setup.evaluate.target(c) for c in setup.taxonomy.classes}
        write_json(EvalOutputs(out).metrics, metrics)
        entries, refs = [*setup.models, ANONYMIZER], list(setup.reference_sets)
        write_json(EvalOutputs(out).headline, evaluate_headline(metrics, entries, refs))
        html = render_report(
            reports,
            targets=targets,
            coverage=setup.evaluate.coverage,
            identifiable=setup.taxonomy.identifiable,
            generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            anonymizer=anonymizer_report(
                anonymizer,
                setup.anonymizer.name,
                {name: truths[name] for name in setup.reference_sets},
                {name: path.parent.parent for name, path in sets.items()},
                setup.evaluate.gallery,
            ),
            peers=[PeerReport(p.name, p.licence, p.thresholds, p.scores) for p in peers],
        )
        write_text(EvalOutputs(out).report, html)
    return metrics


def _anonymizer(
    setup: EvalSetup,
    runs: Sequence[MemberRun],
    sets: Mapping[str, Path],
    truths: Mapping[str, dict[str, Any]],
) -> AnonymizerResult:
    """The members run as one anonymizer, on every set (`evaluation.anonymizer`)."""
    cfg = setup.evaluate
    classes = setup.taxonomy.classes
    heads = setup.anonymizer.heads
    anonymizer_setup = AnonymizerSetup(
        heads=heads.spec() if heads.enabled else None,
        styles={c: Style.from_dict(style) for c, style in setup.styles.items()},
        spec=tiling_spec(cfg),
        options=score_options(
            cfg,
            classes,
            cfg.min_threshold,
            seed=setup.seed,
            identifiable=setup.taxonomy.identifiable,
        ),
        face_target=cfg.target("face") if "face" in classes else 1.0,
    )
    gts = {name: only_classes(truths[name], classes) for name in sets}
    return evaluate_anonymizer(runs, gts, anonymizer_setup)


def _peers(
    setup: EvalSetup, sets: Mapping[str, Path], truths: Mapping[str, dict[str, Any]]
) -> list[PeerResult]:
    """Each detector of evaluate.peers scored on every set (`evaluation.peers`)."""
    taken = [m for m in setup.models if m.startswith(PEER_PREFIX)]
    if taken:
        raise AnonlabError(
            f"models.{taken[0]}: names starting with {PEER_PREFIX!r} are the peer baselines' keys "
            "in artifacts/eval/metrics.json; rename the model"
        )
    cfg = setup.evaluate
    classes = setup.taxonomy.classes
    options = score_options(
        cfg, classes, cfg.min_threshold, seed=setup.seed, identifiable=setup.taxonomy.identifiable
    )
    peer_sets = {
        name: PeerSet(
            gt=only_classes(truths[name], classes),
            images_root=path.parent if name == VAL else path.parent.parent,
        )
        for name, path in sets.items()
    }
    spec = tiling_spec(cfg)
    return [
        evaluate_peer(load_peer(name, spec, cfg.min_threshold), peer_sets, options, classes)
        for name in cfg.peers
    ]


@dataclass
class _Result:
    """One model's evaluation: the sha256 of the weights scored, thresholds chosen on val,
    scores per set; for the evaluated weights (not a champion's) also the gallery of its misses
    per reference set, the model as an anonymizer member and its detections per set and image
    id."""

    weights_sha256: str
    thresholds: dict[str, dict[str, Any]]
    scores: dict[str, ScoreResult]
    misses: dict[str, MissGallery]
    member: Member
    detections: dict[str, dict[int, Detections]]


class _ModelEvaluation:
    def __init__(
        self,
        setup: EvalSetup,
        sets: Mapping[str, Path],
        truths: Mapping[str, dict[str, Any]],
        device: torch.device,
        out: Path,
    ) -> None:
        self.setup, self.sets, self.truths, self.device, self.out = (
            setup,
            sets,
            truths,
            device,
            out,
        )
        self.cfg = setup.evaluate
        self.spec = tiling_spec(self.cfg)

    def run(
        self, name: str, config: Path, weights: Path, *, label: str, outputs: bool = False
    ) -> _Result:
        """Thresholds on val, then every set scored; `outputs`: also write the predictions
        and plots of `name` and keep its detections (the evaluated model's, not the
        champion's: the anonymizer's member), a keypoint model's with their keypoints when
        the anonymizer hides heads (anonymizer.heads.enabled; the keypoint branch costs time
        per detection, and nothing else reads keypoints)."""
        # Hashed before and after loading, so the sha256 recorded is that of the bytes scored.
        weights_sha256 = file_sha256(weights)
        # The runtime's own detector, so the recall measured here is the recall it ships.
        detector, model_cfg = torch_detector(
            config,
            weights,
            score_threshold=self.cfg.min_threshold,
            tile=self.spec.tile,
            mask_threshold=self.cfg.mask_threshold,
            device=self.device,
            keypoints=outputs and self.setup.anonymizer.heads.enabled,
        )
        if file_sha256(weights) != weights_sha256:
            raise AnonlabError(
                f"{weights} changed while evaluate read it; run evaluate again once it is written"
            )
        classes = list(model_cfg["classes"])
        member = Member(
            name=name,
            classes=tuple(classes),
            kind=str(model_cfg["kind"]),
            keypoint_names=tuple(model_cfg.get("keypoint_names") or ()),
        )
        scores: dict[str, ScoreResult] = {}
        misses: dict[str, MissGallery] = {}
        thresholds: dict[str, dict[str, Any]] = {}
        detections: dict[str, dict[int, Detections]] = {}
        for set_name, path in self.sets.items():
            gt = only_classes(self.truths[set_name], classes)
            ids = [category_id(gt, c, path) for c in classes]
            results, per_image = predict_set(
                gt["images"],
                detector,
                self.spec,
                images_root=path.parent if set_name == VAL else path.parent.parent,
                category_ids=ids,
                desc=f"{label} on {set_name}",
            )
            if set_name == VAL:
                floor = self._options(self.cfg.min_threshold)
                thresholds = operating_thresholds(gt, results, classes, floor)
            chosen = {c: thresholds[c]["threshold"] for c in classes}
            options = self._options(chosen, per_object=set_name != VAL)
            scores[set_name] = score(gt, results, options)
            if set_name != VAL and outputs:  # the report shows the evaluated model's misses
                misses[set_name] = miss_gallery(
                    path.parent.parent,
                    gt,
                    scores[set_name].objects or [],
                    detections_at(results, gt, chosen),
                    self.cfg.gallery,
                )
            if outputs:
                write_json(EvalOutputs(self.out).predictions / name / f"{set_name}.json", results)
                write_plots(EvalOutputs(self.out), name, set_name, scores[set_name])
                detections[set_name] = per_image
        return _Result(weights_sha256, thresholds, scores, misses, member, detections)

    def _options(
        self, thresholds: Mapping[str, float] | float, *, per_object: bool = False
    ) -> ScoreOptions:
        classes = self.setup.taxonomy.classes
        seed = self.setup.seed
        return score_options(
            self.cfg,
            classes,
            thresholds,
            seed=seed,
            identifiable=self.setup.taxonomy.identifiable,
            per_object=per_object,
        )


def _metrics_entry(
    mine: _Result,
    champion: _Result | None,
    version: RegisteredModel | None,
    champ_ref: RegisteredModel | None,
) -> dict[str, Any]:
    def compact(result: _Result) -> dict[str, Any]:
        return {
            "weights_sha256": result.weights_sha256,
            "thresholds": result.thresholds,
            "sets": sets_to_json(result.scores),
        }

    entry = compact(mine)
    entry["version"] = version.version if version else None
    if champion is not None and champ_ref is not None:
        entry["champion"] = {"version": champ_ref.version, **compact(champion)}
    return entry


def _model_report(
    name: str,
    mine: _Result,
    champion: _Result | None,
    version: RegisteredModel | None,
    champ_ref: RegisteredModel | None,
) -> ModelReport:
    sets = [
        SetReport(
            name=set_name,
            metrics=metrics,
            champion=champion.scores.get(set_name) if champion else None,
            misses=mine.misses[set_name].crops if set_name in mine.misses else [],
            missed=mine.misses[set_name].by_class if set_name in mine.misses else {},
        )
        for set_name, metrics in mine.scores.items()
        if set_name != VAL
    ]
    return ModelReport(
        name=name,
        version=version.version if version else None,
        champion_version=champ_ref.version if champ_ref else None,
        thresholds=mine.thresholds,
        sets=sets,
    )


def category_id(gt: dict[str, Any], name: str, path: Path) -> int:
    """The id of category `name` in `gt` (read from `path`, for the error)."""
    for c in gt["categories"]:
        if c["name"] == name:
            return int(c["id"])
    raise AnonlabError(f"{path}: no category {name!r}; the model's classes must be in the taxonomy")


def _registry(root: Path) -> Registry | None:
    try:
        return Registry(root)
    except Exception as exc:  # evaluation does not need the registry to measure recall
        log.warning("MLflow registry unavailable (%s): no champion, no versions", exc)
        return None


def _version_of(
    registry: Registry | None, name: str, weights_sha256: str
) -> RegisteredModel | None:
    if registry is None:
        return None
    try:
        return registry.version_with_weights(name, weights_sha256)
    except Exception as exc:
        log.warning("cannot look up %s in the MLflow registry: %s", name, exc)
        return None


def _champion(registry: Registry | None, name: str, weights_sha256: str) -> RegisteredModel | None:
    if registry is None:
        return None
    try:
        champion = registry.by_alias(name, CHAMPION)
    except Exception as exc:
        log.warning("cannot look up the champion of %s: %s", name, exc)
        return None
    if champion is None or champion.weights_sha256 == weights_sha256:
        return None  # none yet, or the champion is this very model
    return champion
