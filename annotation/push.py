"""`anonlab annotate push`: reviewed images into Label Studio, pre-annotated, likely misses and
uncertain images first.

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
side of 800 pixels. Push's summary says which models pre-annotated and why (`Champions.why`):
where the champions were found, or why there is none (no registry; only a challenger, which
`anonlab validate promote` makes the champion; neither).

Import order, uncertain first. A champion's detection's confidence c is its score; an image's
uncertainty is U = mean over its detections of (1 - |2c - 1|). For Haar, a detection's
confidence is c = n / (n + 8), n being the number of overlapping raw detections the cascade
merged into it (more neighbours, surer), and an image's uncertainty is

    U = ( mean over detections of (1 - |2c - 1|)  +  D ) / 2

where D, the disagreement of two face cascades, is the share of faces found by only one of
`frontalface_default` and `frontalface_alt2` (matched at IoU >= 0.3) among the faces either
found. An image on which nothing is found gets U = 0.5, between the confident images
(U -> 0) and the contested ones (U -> 1).

Import order, missed faces first. The second opinion (`annotation.second_opinion`, CenterFace by
default; `none` turns it off; a taxonomy without faces needs none) runs on each image upright,
at full resolution, whichever pre-annotator ran; its faces scoring at least
`annotation.second_opinion_min_score` that the pre-annotation's faces do not cover (less than
half of the face's box inside them, `annotation.mining`) are the image's missed faces, n. Tasks
are imported by decreasing n, then by decreasing U (ties in manifest order), so Label Studio's
default sequential queue hands annotators the images where a face may be missing first, then
the least certain. Each prediction's `score` is (1 - U/2) / 2^n: in [0.5, 1] without missed
faces, halved by each one, so the project's "uncertainty sampling" (lowest score first) agrees.
Each task's `meta` says why it was queued where it is: `queued` ("missed faces" or
"uncertain"), `uncertainty` (U), and with a second opinion its name, `missed_faces` (n) and,
when n > 0, `missed_score` and `missed_boxes` (percent of the image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from annotation.client import LabelStudio, connect
from annotation.config import AnnotationConfig
from annotation.haar_preannotation import HaarDetector
from annotation.mining import FACE, Missed, SecondOpinion, queue_order
from annotation.preannotation import ChampionPreannotator, Champions, Prediction
from annotation.predictions import ModelDetector
from data import atomic
from data.collect import LABEL_STUDIO_LOCAL_FILES
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.manifest import ManifestRecord, read_reviewed
from data.retention import refuse_overdue
from data.stage_paths import RELATIVE, StagePaths
from serving.runtime.errors import ArtifactError, ImageError
from serving.runtime.imagefile import read_upright
from serving.runtime.progress import bar, progress

log = logging.getLogger(__name__)

# Where push records the Label Studio project, relative to the artifacts root.
STATE_FILE = RELATIVE.annotations.label_studio_state
STORAGE_TITLE = "anonlab raw store"


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
    preannotated_by: str | None = None  # which models pre-annotated and why (`Champions.why`)
    uncertainty: list[float] = field(default_factory=list)  # of the new tasks, import order
    missed_faces: list[int] = field(default_factory=list)  # of the new tasks, import order
    second_opinion: str | None = None  # the independent detector that looked for misses

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
            why = f": {self.preannotated_by}" if self.preannotated_by else ""
            lines.append(f"  pre-annotations: {self.model_version}{why}")
            early = [n for n in self.missed_faces if n]
            if self.second_opinion is None:
                lines.append("  no second opinion looked for missed faces")
            else:
                lines.append(
                    f"  queued first: {len(early)} images with {sum(early)} faces that "
                    f"{self.second_opinion} finds and the pre-annotations miss"
                )
            rest = self.uncertainty[len(early) :]
            if rest:
                lines.append(
                    f"  then {len(rest)} images, most uncertain first "
                    f"(uncertainty {rest[0]:.2f} .. {rest[-1]:.2f})"
                )
        return "\n".join(lines)


def image_url(record: ManifestRecord) -> str:
    """The task's `data.image`: the image in the store, through Label Studio's local files."""
    return LABEL_STUDIO_LOCAL_FILES + record.path


def run_push(
    cfg: AnnotationConfig,
    taxonomy: TaxonomyConfig,
    artifacts: Path,
    champions: Callable[[], Champions] | None = None,
) -> PushReport:
    """Create or update the project and import the reviewed images that are not tasks yet.

    `champions` gives the models that pre-annotate (the registry's champions) and why; it is
    called only when there are images to import. None, or no model: Haar cascades. Refuses
    before connecting when a reviewed image is past its `delete_after` (data.retention).
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
    # Loaded (its weights checked) before the server is touched: a missing detector stops push
    # before it creates or changes anything.
    opinion = second_opinion(cfg) if FACE in taxonomy.classes else None
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
        found = champions() if champions is not None and new else None
        predictions = preannotate(
            new,
            StagePaths(artifacts).raw.folder,
            taxonomy,
            found.models if found is not None else (),
            min_score=cfg.champion_min_score,
            second_opinion=opinion,
        )
        order = queue_order(
            [p.uncertainty for p in predictions], [p.missed_faces for p in predictions]
        )
        imported = 0
        with bar(total=len(new), desc="push", unit="task") as pbar:
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                tasks = [
                    {
                        "data": {"image": image_url(new[i])},
                        "predictions": [predictions[i].as_task_prediction()],
                        "meta": predictions[i].meta(new[i].width, new[i].height),
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
        preannotated_by=found.why if found is not None else None,
        uncertainty=[predictions[i].uncertainty for i in order],
        missed_faces=[predictions[i].missed_faces for i in order],
        second_opinion=opinion.name if opinion is not None else None,
    )


def second_opinion(cfg: AnnotationConfig) -> SecondOpinion | None:
    """The independent detector that looks for faces the pre-annotation misses, or None."""
    if cfg.second_opinion == "none":
        return None
    try:
        return SecondOpinion(cfg.second_opinion, cfg.second_opinion_min_score)
    except ArtifactError as e:
        raise AnonlabError(
            f"annotation.second_opinion: {cfg.second_opinion}: {e}; or run `anonlab annotate "
            "push annotation.second_opinion=none` to push without looking for missed faces"
        ) from None


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
    second_opinion: SecondOpinion | None = None,
) -> list[Prediction]:
    """One prediction per record: the `models`' (the champions) when there are any, else
    Haar's; with the faces `second_opinion` finds that it does not cover."""
    if not records:
        return []
    detector: ChampionPreannotator | HaarDetector = (
        ChampionPreannotator(models, min_score) if models else HaarDetector()
    )
    log.info(
        "pre-annotating %d images with %s%s",
        len(records),
        detector.model_version,
        f", missed faces by {second_opinion.name}" if second_opinion else "",
    )
    out = []
    for record in progress(records, total=len(records), desc="pre-annotate"):
        prediction = detector.predict(record, raw_dir, taxonomy)
        if second_opinion is not None:
            prediction = replace(
                prediction, missed=find_missed(second_opinion, record, raw_dir, prediction)
            )
        out.append(prediction)
    return out


def find_missed(
    opinion: SecondOpinion, record: ManifestRecord, raw_dir: Path, prediction: Prediction
) -> Missed | None:
    """The faces `opinion` finds on the upright image that `prediction` misses; None when the
    image cannot be read (the pre-annotator has logged why)."""
    try:
        rgb = read_upright(raw_dir / record.path)
    except (OSError, ImageError):
        return None
    return opinion.missed(rgb, prediction.result)


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
