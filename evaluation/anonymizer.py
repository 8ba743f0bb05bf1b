"""The anonymizer evaluated as the runtime runs it: the trained models together, each class from
the model that supplies it, plus the heads of the keypoint model's persons
(`serving.runtime.composite.Composition`), scored on val and every reference set.

Per image of a set, the members' detections (each member's detector ran once on it, tiled as
the runtime tiles) go through `Composition.combine` at the suppliers' operating thresholds and
the head threshold; what the runtime then hides fully (`serving.runtime.anonymize.hidden_mask`
with `full=True`, the anonymizer's styles, the panorama seam wrapped where the runtime's tiling
says the image is one) is the hidden mask the scorer measures coverage against. Recall by IoU,
COCO AP and false positives come from combine's detections of the taxonomy's classes (the head
regions left out). Every class of the taxonomy is scored, so a class no member detects shows
(and is judged) as not found.

The head threshold is chosen on val by `evaluation.head_threshold` (its docstring has the rule).
`heads_only` counts, per reference set, the counted identifiable faces the anonymizer covers
and would not cover without its heads; report.html shows them.

The entry it writes (`metrics.json["anonymizer"]`, read by validate and export): `members`
(per model: weights_sha256, registered version or null), `supplies` (class -> model, `head`
when heads come from a keypoint model), `heads` (the `HeadSpec` as a dict, {} without heads),
`styles` (per class the anonymizer hides, `head` in the face's style), `thresholds` (per class
the supplier's own, copied, with `model`; `head` as chosen here), `sets` (per set the same
shape as a model's: recall, coco, false_positives_per_image) and `heads_only`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import AnonlabError
from evaluation.config import GalleryConfig
from evaluation.gallery import caption, crops
from evaluation.head_threshold import HeadChoice, choose_head_threshold, cover_scores
from evaluation.predict import to_results
from evaluation.report import AnonymizerReport, AnonymizerSetReport
from evaluation.score import score
from evaluation.scoring.coverage import hidden_rle, judged_shapes
from evaluation.scoring.options import ScoreOptions
from evaluation.scoring.result import ScoreResult, sets_to_json
from serving.runtime.anonymize import Style, hidden_mask
from serving.runtime.composite import Composition, Member, default_supplies
from serving.runtime.detections import Detections
from serving.runtime.heads import HEAD, HeadSpec
from serving.runtime.tiles import TilingSpec, is_panorama

__all__ = [
    "ANONYMIZER",
    "FACE",
    "PERSON",
    "AnonymizerResult",
    "AnonymizerSetup",
    "MemberRun",
    "anonymizer_report",
    "evaluate_anonymizer",
]

# The key of artifacts/eval/metrics.json holding the anonymizer (validate and export read it),
# and the name of its MLflow run.
ANONYMIZER = "anonymizer"
FACE = "face"
PERSON = "person"
VAL = "val"


@dataclass(frozen=True)
class MemberRun:
    """One member model as evaluate ran it: what it is (`Member`), the sha256 of the weights
    scored, its registered version, its operating thresholds (class -> threshold, val_recall,
    reached), and per set its scores and its detections per image id (its own labels, down to
    evaluate.min_threshold, keypoints included for a keypoint model)."""

    member: Member
    weights_sha256: str
    version: str | None
    thresholds: Mapping[str, Mapping[str, Any]]
    scores: Mapping[str, ScoreResult]
    detections: Mapping[str, Mapping[int, Detections]]


@dataclass(frozen=True)
class AnonymizerSetup:
    """How the anonymizer is put together and scored. heads: None without heads
    (anonymizer.heads.enabled false). styles: export.styles (the face style hides heads).
    spec: evaluate's tiling (which images are panoramas). options: how evaluate scores (its
    coverage, targets, floor, bootstrap, identifiable heights); thresholds are set here."""

    heads: HeadSpec | None
    styles: Mapping[str, Style]
    spec: TilingSpec
    options: ScoreOptions
    face_target: float


@dataclass(frozen=True)
class AnonymizerResult:
    """The anonymizer's evaluation: its composition, styles, thresholds (module docstring's
    entry), scores per set, and per reference set the faces only its heads cover, as
    (annotation id, cover score: `evaluation.head_threshold`)."""

    runs: Sequence[MemberRun]
    composition: Composition
    styles: Mapping[str, Style]
    thresholds: dict[str, dict[str, Any]]
    scores: dict[str, ScoreResult]
    heads_only: dict[str, list[tuple[int, float]]]

    def entry(self) -> dict[str, Any]:
        """metrics.json["anonymizer"] (module docstring)."""
        heads = self.composition.heads
        return {
            "members": {
                r.member.name: {"weights_sha256": r.weights_sha256, "version": r.version}
                for r in self.runs
            },
            "supplies": dict(self.composition.supplies),
            "heads": heads.to_dict() if heads is not None else {},
            "styles": {c: self.styles[c].to_dict() for c in self.composition.classes},
            "thresholds": self.thresholds,
            "sets": sets_to_json(self.scores),
            "heads_only": {name: len(faces) for name, faces in self.heads_only.items()},
        }


def evaluate_anonymizer(
    runs: Sequence[MemberRun],
    sets: Mapping[str, dict[str, Any]],
    setup: AnonymizerSetup,
) -> AnonymizerResult:
    """The anonymizer of the members `runs` (train.models order) on `sets` (set name -> ground
    truth of the taxonomy's classes; val first, then the reference sets)."""
    members = [r.member for r in runs]
    supplies = default_supplies(members, heads=setup.heads is not None)
    by_name = {r.member.name: r for r in runs}
    thresholds: dict[str, dict[str, Any]] = {}
    for cls, name in supplies.items():
        if cls != HEAD:
            thresholds[cls] = {**by_name[name].thresholds[cls], "model": name}
    styles = _styles(supplies, setup.styles)
    operating = {c: float(t["threshold"]) for c, t in thresholds.items()}
    if HEAD in supplies:
        # Every head the keypoint model gives (its detector stops at evaluate.min_threshold).
        operating[HEAD] = 0.0
    heads = setup.heads if HEAD in supplies else None  # no keypoint model: no heads
    every_head = Composition(tuple(members), supplies, operating, heads)
    covers = {}
    if HEAD in supplies:
        running = _Running(every_head, runs, styles, setup)
        covers = {name: running.cover_scores(name, gt) for name, gt in sets.items()}
        keypoint = supplies[HEAD]
        cap = float(by_name[keypoint].thresholds[PERSON]["threshold"])
        val = np.array([s for _, s in covers.get(VAL, [])], dtype=np.float64)
        choice = choose_head_threshold(
            val, target=setup.face_target, cap=cap, floor=setup.options.min_threshold
        )
        thresholds[HEAD] = _head_entry(choice, keypoint)
        operating[HEAD] = choice.threshold
    composition = every_head.with_thresholds(operating)
    running = _Running(composition, runs, styles, setup)
    scores = {name: running.score(name, gt) for name, gt in sets.items()}
    heads_only: dict[str, list[tuple[int, float]]] = {}
    for name in sets:
        if name == VAL:
            continue
        t = operating.get(HEAD, math.inf)
        heads_only[name] = [(i, s) for i, s in covers.get(name, []) if t <= s < math.inf]
    return AnonymizerResult(runs, composition, styles, thresholds, scores, heads_only)


def _styles(supplies: Mapping[str, str], styles: Mapping[str, Style]) -> dict[str, Style]:
    out = {}
    for cls in supplies:
        style = styles.get(FACE if cls == HEAD else cls)
        if style is None:
            raise AnonlabError(
                f"export.styles has no style for {FACE if cls == HEAD else cls!r}, which the "
                "anonymizer hides (heads in the face's style); add one to conf/export"
            )
        out[cls] = style
    return out


def _head_entry(choice: HeadChoice, model: str) -> dict[str, Any]:
    return {
        "threshold": choice.threshold,
        "val_recall": choice.val_recall,
        "reached": choice.reached,
        "model": model,
    }


@dataclass(frozen=True)
class _Running:
    """The members' detections run through one composition, set by set."""

    composition: Composition
    runs: Sequence[MemberRun]
    styles: Mapping[str, Style]
    setup: AnonymizerSetup

    def detections(self, set_name: str, image: Mapping[str, Any]) -> tuple[Detections, bool]:
        """combine's detections of one image (a COCO `images` entry), and whether the runtime
        treats it as a panorama."""
        found = [r.detections[set_name][image["id"]] for r in self.runs]
        panorama = is_panorama(image["width"], image["height"], self.setup.spec)
        return self.composition.combine(found), panorama

    def hidden(self, image: Mapping[str, Any], dets: Detections, panorama: bool) -> np.ndarray:
        """The pixels the runtime hides fully (`hidden_mask(..., full=True)`)."""
        return hidden_mask(
            image["width"],
            image["height"],
            dets,
            self.composition.classes,
            self.styles,
            panorama=panorama,
            full=True,
        )

    def cover_scores(self, set_name: str, gt: dict[str, Any]) -> list[tuple[int, float]]:
        """(annotation id, cover score) of every judged face of the set; the composition must
        give every head."""
        faces = judged_shapes(gt, FACE, self.setup.options.min_identifiable)
        images = {i["id"]: i for i in gt["images"]}
        head = self.composition.classes.index(HEAD) + 1
        out: list[tuple[int, float]] = []
        for image_id, shapes in faces.items():
            dets, panorama = self.detections(set_name, images[image_id])
            is_head = dets.labels == head
            cover = cover_scores(
                [shape for _, shape in shapes],
                self.hidden(images[image_id], dets.select(~is_head), panorama),
                dets.select(is_head),
                self.styles[HEAD],
                panorama=panorama,
                coverage=self.setup.options.coverage,
            )
            out += [(ann_id, float(s)) for (ann_id, _), s in zip(shapes, cover, strict=True)]
        return out

    def score(self, set_name: str, gt: dict[str, Any]) -> ScoreResult:
        """The anonymizer on one set: its detections of the taxonomy's classes for IoU recall,
        COCO and false positives, the pixels it hides fully for coverage."""
        names = {c["name"]: int(c["id"]) for c in gt["categories"]}
        body_classes = [c for c in self.composition.classes if c != HEAD]
        category_ids = [names[c] for c in body_classes]
        results: list[dict[str, Any]] = []
        hidden: dict[int, dict] = {}
        for image in gt["images"]:
            image_id, width, height = image["id"], image["width"], image["height"]
            dets, panorama = self.detections(set_name, image)
            mask = self.hidden(image, dets, panorama)
            hidden[image_id] = hidden_rle(mask, height, width, image_id)
            body = dets.select(dets.labels <= len(body_classes))  # `head` is the last class
            results += to_results(body, image_id, width, height, category_ids)
        thresholds = {c: self.composition.thresholds[c] for c in body_classes}
        options = replace(self.setup.options, thresholds=thresholds)
        return score(gt, results, options, hidden=hidden)


def anonymizer_report(
    anonymizer: AnonymizerResult,
    name: str,
    truths: Mapping[str, dict[str, Any]],
    images_roots: Mapping[str, Path],
    gallery: GalleryConfig,
) -> AnonymizerReport:
    """The anonymizer's section of report.html (named `name`): per reference set (`truths`:
    set name -> its ground truth, whose image paths are relative to `images_roots[set]`) its
    scores beside each member's, and crops of the faces only its heads cover, smallest
    first."""
    out = []
    for set_name, gt in truths.items():
        result = anonymizer.scores[set_name]
        area = {a["id"]: a["area"] for a in gt["annotations"]}
        faces = sorted(anonymizer.heads_only.get(set_name, []), key=lambda f: area[f[0]])
        chosen = [
            (i, caption(gt, i, True, f"covered with the heads of persons scoring {t:.2f} or more"))
            for i, t in faces[: gallery.max_per_set]
        ]
        out.append(
            AnonymizerSetReport(
                name=set_name,
                metrics=result,
                members={r.member.name: r.scores[set_name] for r in anonymizer.runs},
                heads_only=crops(images_roots[set_name], gt, chosen, gallery.context),
                heads_only_total=len(faces),
            )
        )
    return AnonymizerReport(
        name=name,
        supplies=dict(anonymizer.composition.supplies),
        thresholds=anonymizer.thresholds,
        sets=out,
    )
