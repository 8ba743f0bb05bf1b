"""`anonlab annotate push`: reviewed images into Label Studio, pre-annotated, uncertain first.

The project (found by `annotation.project_title`, created once) gets the labeling interface of
the taxonomy, updated when the taxonomy changes, and a local-files storage on `artifacts/raw`
so that Label Studio serves the images from the store. Every reviewed image that is not yet a
task (compared by `data.image`, the local-files URL) becomes one, in batches of
`annotation.batch_size`: pushing again never duplicates a task. The project id is kept in
`annotations/project.json`.

Pre-annotations are Label Studio predictions. The command line hands push the MLflow
registry's `champion` models (`evaluation.champion`): each is run with the runtime's torch
detector and evaluate's tiling (`evaluate.tiling`, the tiling export ships) on the image upright
(EXIF orientation applied, as Label Studio shows it to annotators), and its detections scoring at
least `annotation.champion_min_score` become regions (`annotation.predictions`: faces as
ellipses, plates as rectangles, masks as brush RLE, keypoints linked to their person), in percent
of the upright image, `original_width`/`_height` its size. The prediction's `model_version` is
`<registered name>:<version>` (several champions: joined by `+`). Without a champion, OpenCV's
bundled Haar cascades pre-annotate: faces (`haarcascade_frontalface_default`) as ellipses, plates
(`haarcascade_russian_plate_number`) as rectangles, found on the upright image reduced to a long
side of 800 pixels.

Import order, uncertain first. A champion's detection's confidence c is its score; an image's
uncertainty is U = mean over its detections of (1 - |2c - 1|). For Haar, a detection's
confidence is c = n / (n + 8), n being the number of overlapping raw detections the cascade
merged into it (more neighbours, surer), and an image's uncertainty is

    U = ( mean over detections of (1 - |2c - 1|)  +  D ) / 2

where D, the disagreement of two face cascades, is the share of faces found by only one of
`frontalface_default` and `frontalface_alt2` (matched at IoU >= 0.3) among the faces either
found. An image on which nothing is found gets U = 0.5, between the confident images
(U -> 0) and the contested ones (U -> 1). Tasks are imported by decreasing U, so Label Studio's
default sequential queue hands annotators the least certain images first. Each prediction's
`score` is 1 - U, so the project's "uncertainty sampling" (lowest score first) agrees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotation.client import LabelStudio, connect
from annotation.config import AnnotationConfig
from annotation.labeling_config import labels_by_control
from annotation.predictions import ModelDetector, detection_regions, percent
from data import atomic
from data.collect import LABEL_STUDIO_LOCAL_FILES
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.manifest import ManifestRecord, read_reviewed
from data.retention import refuse_overdue
from data.stage_paths import RELATIVE, StagePaths
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright
from serving.runtime.independent.haar import confidence
from serving.runtime.progress import bar, progress
from serving.runtime.tiles import detect_tiled

log = logging.getLogger(__name__)

# Where push records the Label Studio project, relative to the artifacts root.
STATE_FILE = RELATIVE.annotations.label_studio_state
STORAGE_TITLE = "anonlab raw store"

WORK_SIZE = 800  # long side of the image the cascades look at
MATCH_IOU = 0.3
NO_DETECTION_UNCERTAINTY = 0.5
# A Haar face box spans brows to mouth; the face to blur reaches from forehead to chin.
FACE_HEIGHT_FACTOR = 1.25

FACE = "face"
PLATE = "license_plate"


@dataclass(frozen=True)
class Detection:
    """A box found on the working image (pixels), with a confidence in [0, 1]."""

    label: str
    x: float
    y: float
    w: float
    h: float
    confidence: float


@dataclass(frozen=True)
class Prediction:
    """The pre-annotation of one image: Label Studio regions and how uncertain they are."""

    result: list[dict[str, Any]]
    uncertainty: float
    model_version: str

    def as_task_prediction(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "score": round(1.0 - self.uncertainty, 4),
            "result": self.result,
        }


@dataclass
class PushReport:
    url: str
    project_id: int
    project_created: bool
    config_updated: bool
    reviewed: int
    already: int  # reviewed images that were tasks before this push
    imported: int
    model_version: str | None  # of the new tasks' predictions
    uncertainty: list[float] = field(default_factory=list)  # of the new tasks, import order

    def summary(self) -> str:
        state = "created" if self.project_created else "found"
        lines = [
            f"push: {self.imported} new tasks in Label Studio project {self.project_id} "
            f"({state}) at {self.url}",
            f"  reviewed images: {self.reviewed}, already tasks: {self.already}",
        ]
        if self.config_updated:
            lines.append("  labeling interface updated from the taxonomy")
        if self.imported:
            lines.append(
                f"  pre-annotations: {self.model_version}, most uncertain first "
                f"(uncertainty {self.uncertainty[0]:.2f} .. {self.uncertainty[-1]:.2f})"
            )
        return "\n".join(lines)


def image_url(record: ManifestRecord) -> str:
    """The task's `data.image`: the image in the store, through Label Studio's local files."""
    return LABEL_STUDIO_LOCAL_FILES + record.path


def run_push(
    cfg: AnnotationConfig,
    taxonomy: TaxonomyConfig,
    artifacts: Path,
    champions: Callable[[], Sequence[ModelDetector]] | None = None,
) -> PushReport:
    """Create or update the project and import the reviewed images that are not tasks yet.

    `champions` gives the models that pre-annotate (the registry's champions); it is called
    only when there are images to import. None, or no model: Haar cascades. Refuses before
    connecting when a reviewed image is past its `delete_after` (data.retention).
    """
    artifacts = Path(artifacts).resolve()
    records = read_reviewed(artifacts)
    refuse_overdue(
        {r.sha256: r.delete_after for r in records},
        where=StagePaths(artifacts).reviewed.manifest,
        command="anonlab annotate push",
    )
    from annotation.labeling_config import labeling_config

    xml = labeling_config(taxonomy.classes, taxonomy.keypoints)
    client = connect(cfg)
    try:
        project_id, created, updated = ensure_project(client, cfg.project_title, xml, artifacts)
        ensure_local_storage(client, project_id, StagePaths(artifacts).raw.folder)
        existing = client.task_image_urls(project_id)
        new = [r for r in records if image_url(r) not in existing]
        log.info(
            "%d reviewed images, %d already tasks, %d to import",
            len(records),
            len(records) - len(new),
            len(new),
        )
        models = champions() if champions is not None and new else ()
        predictions = preannotate(
            new,
            StagePaths(artifacts).raw.folder,
            taxonomy,
            models,
            min_score=cfg.champion_min_score,
        )
        order = uncertain_first([p.uncertainty for p in predictions])
        imported = 0
        with bar(total=len(new), desc="push", unit="task") as pbar:
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                tasks = [
                    {
                        "data": {"image": image_url(new[i])},
                        "predictions": [predictions[i].as_task_prediction()],
                    }
                    for i in batch
                ]
                imported += _import(client, project_id, tasks, imported, len(new))
                pbar.update(len(batch))
        versions = {p.model_version for p in predictions}
        model_version = predictions[order[0]].model_version if predictions else None
        if model_version is not None and len(versions) == 1:
            # Label Studio shows annotators the predictions of the project's model version only.
            project = client.get_project(project_id) or {}
            if project.get("model_version") != model_version:
                client.set_model_version(project_id, model_version)
    finally:
        client.close()
    return PushReport(
        url=cfg.url,
        project_id=project_id,
        project_created=created,
        config_updated=updated,
        reviewed=len(records),
        already=len(records) - len(new),
        imported=imported,
        model_version=model_version,
        uncertainty=[predictions[i].uncertainty for i in order],
    )


def ensure_project(
    client: LabelStudio, title: str, xml: str, artifacts: Path
) -> tuple[int, bool, bool]:
    """The project's id, whether it was created, and whether its labeling config was updated.

    The id in the state file is used when the server still has that project under that
    title; otherwise the project is looked up by title, and created when there is none.
    """
    state_path = artifacts / STATE_FILE
    state = _read_state(state_path)
    project = None
    if state.get("url") == client.url and isinstance(state.get("project_id"), int):
        project = client.get_project(state["project_id"])
        if project is not None and project.get("title") != title:
            project = None
    if project is None:
        found = client.find_project(title)
        project = client.get_project(found) if found is not None else None
    created = updated = False
    if project is None:
        project_id = client.create_project(title, xml)
        created = True
    else:
        project_id = int(project["id"])
        if _normalize_xml(project.get("label_config", "")) != _normalize_xml(xml):
            log.info("taxonomy changed: updating the labeling interface of project %d", project_id)
            try:
                client.update_label_config(project_id, xml)
            except AnonlabError as e:
                raise AnonlabError(
                    f"{e}. Label Studio keeps a label that existing annotations use: restore "
                    "it in taxonomy, or relabel those annotations first"
                ) from None
            updated = True
    atomic.write_json(state_path, {"url": client.url, "project_id": project_id, "title": title})
    return project_id, created, updated


def ensure_local_storage(client: LabelStudio, project_id: int, raw_dir: Path) -> None:
    """Register `raw_dir` as the project's local-files storage unless one already covers it.

    Label Studio serves `/data/local-files/` only for files under a storage of the project;
    the server must run with the artifacts folder as its document root (as `annotate serve`
    does).
    """
    raw = str(raw_dir)
    for path in client.local_storage_paths(project_id):
        if raw == path or raw.startswith(path.rstrip("/") + "/"):
            return
    try:
        client.add_local_storage(project_id, raw, STORAGE_TITLE)
    except AnonlabError as e:
        raise AnonlabError(
            f"Label Studio cannot serve the images in {raw} ({e}). Start it with `anonlab "
            "annotate serve`, or run it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
            f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={raw_dir.parent}"
        ) from None


def preannotate(
    records: Sequence[ManifestRecord],
    raw_dir: Path,
    taxonomy: TaxonomyConfig,
    models: Sequence[ModelDetector] = (),
    *,
    min_score: float = 0.0,
) -> list[Prediction]:
    """One prediction per record: the `models`' (the champions) when there are any, else
    Haar's."""
    if not records:
        return []
    detector: ChampionPreannotator | HaarDetector = (
        ChampionPreannotator(models, min_score) if models else HaarDetector()
    )
    log.info("pre-annotating %d images with %s", len(records), detector.model_version)
    return [
        detector.predict(r, raw_dir, taxonomy)
        for r in progress(records, total=len(records), desc="pre-annotate")
    ]


class ChampionPreannotator:
    """Trained models (the registry's champions) on the upright image, tiled as the runtime
    tiles; their detections at or above `min_score` as regions (`annotation.predictions`)."""

    def __init__(self, models: Sequence[ModelDetector], min_score: float) -> None:
        self.models = list(models)
        self.min_score = min_score
        self.model_version = "+".join(m.model_version for m in self.models)

    def predict(
        self, record: ManifestRecord, raw_dir: Path, taxonomy: TaxonomyConfig
    ) -> Prediction:
        try:
            rgb = read_upright(raw_dir / record.path)
        except (OSError, ImageError) as e:
            # As for Haar: the annotator sees the broken image and can skip it.
            log.warning("%s: not readable for pre-annotation (%s)", record.path, e)
            return Prediction([], NO_DETECTION_UNCERTAINTY, self.model_version)
        height, width = rgb.shape[:2]
        offered = labels_by_control(taxonomy.classes, taxonomy.keypoints)
        result: list[dict[str, Any]] = []
        scores: list[float] = []
        for k, model in enumerate(self.models):
            dets = detect_tiled(rgb, model.detector, model.spec)
            known = [model.classes[int(label) - 1] in taxonomy.classes for label in dets.labels]
            dets = dets.select((dets.scores >= self.min_score) & np.array(known, bool))
            result += detection_regions(
                dets,
                classes=model.classes,
                keypoint_names=model.keypoint_names,
                offered=offered,
                width=width,
                height=height,
                prefix=f"m{k}-",
            )
            scores += dets.scores.tolist()
        return Prediction(result, score_uncertainty(scores), self.model_version)


class HaarDetector:
    """OpenCV's bundled Haar cascades: faces (two cascades, for disagreement) and plates."""

    def __init__(self) -> None:
        import cv2

        from serving.runtime.independent.haar import cascade as load

        self.model_version = f"haar-opencv-{cv2.__version__}"
        self._face = load("haarcascade_frontalface_default.xml")
        self._face_alt = load("haarcascade_frontalface_alt2.xml")
        self._plate = load("haarcascade_russian_plate_number.xml")

    def predict(
        self, record: ManifestRecord, raw_dir: Path, taxonomy: TaxonomyConfig
    ) -> Prediction:
        from data.image_scores import decode_working

        try:
            work = decode_working(raw_dir / record.path, WORK_SIZE, record.orientation)
        except (OSError, ValueError) as e:
            # Review read this image; a file that broke since gets no pre-annotation, not a
            # failed push: the annotator sees the broken image and can skip it.
            log.warning("%s: not readable for pre-annotation (%s)", record.path, e)
            return Prediction([], NO_DETECTION_UNCERTAINTY, self.model_version)
        faces, faces_alt, plates = self.detect(work.luma)
        if FACE not in taxonomy.classes:
            faces, faces_alt = [], []
        if PLATE not in taxonomy.classes:
            plates = []
        height, width = work.luma.shape[:2]
        detections = faces + plates
        return Prediction(
            result=to_regions(detections, width, height, record.width, record.height),
            uncertainty=image_uncertainty(detections, faces, faces_alt),
            model_version=self.model_version,
        )

    def detect(self, luma: Any) -> tuple[list[Detection], list[Detection], list[Detection]]:
        """Faces by the default cascade, faces by the second cascade, plates."""
        import cv2

        luma = cv2.equalizeHist(luma)
        side = max(luma.shape[:2])
        min_face = max(12, side // 100)
        return (
            _run(self._face, luma, FACE, 1.1, 3, (min_face, min_face)),
            _run(self._face_alt, luma, FACE, 1.1, 3, (min_face, min_face)),
            _run(self._plate, luma, PLATE, 1.1, 3, (24, 8)),
        )


def _run(
    cascade: Any, luma: Any, label: str, scale: float, neighbours: int, min_size: tuple[int, int]
) -> list[Detection]:
    boxes, counts = cascade.detectMultiScale2(
        luma, scaleFactor=scale, minNeighbors=neighbours, minSize=min_size
    )
    return [
        Detection(label, float(x), float(y), float(w), float(h), confidence(int(n)))
        for (x, y, w, h), n in zip(boxes, counts, strict=True)
    ]


def image_uncertainty(
    detections: Sequence[Detection],
    faces: Sequence[Detection],
    faces_other: Sequence[Detection],
) -> float:
    """U of the module docstring: confidence ambiguity and face-cascade disagreement, in [0, 1].

    `detections` are what the image is pre-annotated with; `faces` and `faces_other` are the
    faces of the two cascades that are compared.
    """
    if not detections and not faces_other:
        return NO_DETECTION_UNCERTAINTY
    ambiguity = score_uncertainty([d.confidence for d in detections])
    return (ambiguity + disagreement(faces, faces_other)) / 2.0


def score_uncertainty(confidences: Sequence[float]) -> float:
    """The mean of 1 - |2c - 1| over the detections' confidences; 0.5 without detections."""
    if not confidences:
        return NO_DETECTION_UNCERTAINTY
    return sum(1.0 - abs(2.0 * c - 1.0) for c in confidences) / len(confidences)


def disagreement(a: Sequence[Detection], b: Sequence[Detection]) -> float:
    """The share of objects found by only one of `a` and `b` (greedy IoU matching)."""
    if not a and not b:
        return 0.0
    unmatched_b = list(b)
    matched = 0
    for det in sorted(a, key=lambda d: -d.confidence):
        best = max(unmatched_b, key=lambda o: iou(det, o), default=None)
        if best is not None and iou(det, best) >= MATCH_IOU:
            unmatched_b.remove(best)
            matched += 1
    union = len(a) + len(b) - matched
    return (union - matched) / union


def iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def uncertain_first(uncertainties: Sequence[float]) -> list[int]:
    """Indices by decreasing uncertainty; ties keep their order (the manifest's)."""
    return sorted(range(len(uncertainties)), key=lambda i: -uncertainties[i])


def to_regions(
    detections: Sequence[Detection], width: int, height: int, full_w: int, full_h: int
) -> list[dict[str, Any]]:
    """Label Studio regions, in percent of the image: faces as ellipses, plates as rectangles.

    `width`, `height`: the image the boxes were found on; `full_w`, `full_h`: the image as the
    annotator sees it (upright, full resolution), recorded as `original_width/height`.
    """
    out = []
    for i, d in enumerate(detections):
        common = {
            "id": f"pre{i}",
            "to_name": "image",
            "original_width": full_w,
            "original_height": full_h,
            "image_rotation": 0,
            "score": round(d.confidence, 4),
        }
        if d.label == FACE:
            value = {
                "x": percent(d.x + d.w / 2, width),
                "y": percent(d.y + d.h / 2, height),
                "radiusX": percent(d.w / 2, width),
                "radiusY": percent(d.h / 2 * FACE_HEIGHT_FACTOR, height),
                "rotation": 0,
                "ellipselabels": [FACE],
            }
            out.append({**common, "from_name": "ellipse", "type": "ellipselabels", "value": value})
        else:
            value = {
                "x": percent(d.x, width),
                "y": percent(d.y, height),
                "width": percent(d.w, width),
                "height": percent(d.h, height),
                "rotation": 0,
                "rectanglelabels": [d.label],
            }
            out.append(
                {**common, "from_name": "rectangle", "type": "rectanglelabels", "value": value}
            )
    return out


def _import(
    client: LabelStudio, project_id: int, tasks: list[dict[str, Any]], done: int, total: int
) -> int:
    try:
        return client.import_tasks(project_id, tasks)
    except AnonlabError as e:
        raise AnonlabError(
            f"{e}. {done} of {total} new tasks were imported before this; run `anonlab annotate "
            "push` again to import the rest (tasks already there are not imported twice)"
        ) from None


def _read_state(path: Path) -> dict[str, Any]:
    import json

    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _normalize_xml(xml: str) -> str:
    return "".join(xml.split())
