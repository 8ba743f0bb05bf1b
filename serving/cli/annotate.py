"""`anonlab annotate serve|push|status|pull`: Label Studio, fed images and read back."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args

# The group's one-line help and description.
GROUP = (
    "Label Studio: serve, push images with pre-annotations, pull annotations, status",
    "Annotators work in Label Studio; these commands feed it images and take their work "
    "back as training data. Credentials come from the environment: ANONLAB_LS_TOKEN (API "
    "token), ANONLAB_LS_USERNAME and ANONLAB_LS_PASSWORD (the admin user of `serve`).",
)


def handle_serve(args: argparse.Namespace) -> int:
    project = load(args)
    from annotation.server import serve

    return serve(project.params.annotation, project.root, project.artifacts)


def handle_push(args: argparse.Namespace) -> int:
    project = load(args)
    from annotation.preannotation import Champions
    from annotation.push import run_push

    p = project.params

    def champions() -> Champions:
        from evaluation.champion import load_champions  # mlflow and torch: only when needed

        return load_champions(
            p.train.models,
            root=project.root,
            evaluate=p.evaluate,
            min_score=p.annotation.champion_min_score,
        )

    print(run_push(p.annotation, p.taxonomy, project.artifacts, champions).summary())
    return 0


def handle_status(args: argparse.Namespace) -> int:
    project = load(args)
    from annotation.status import run_status

    print(run_status(project.params.annotation, project.artifacts).summary())
    return 0


def handle_pull(args: argparse.Namespace) -> int:
    project = load(args)
    from annotation.pull import run_pull

    p = project.params
    report = run_pull(p.annotation, p.taxonomy, project.artifacts, project.root)
    print(report.summary())
    return 0


SERVE = Command(
    "run a local Label Studio on loopback (foreground; Ctrl-C stops it)",
    "Start Label Studio headless at annotation.serve.host:port with its data in "
    "annotation.serve.data_dir, serving the images of artifacts/ as local files (no "
    "copies are uploaded). The admin user and API token come from ANONLAB_LS_USERNAME, "
    "ANONLAB_LS_PASSWORD and ANONLAB_LS_TOKEN; they are never printed or logged.",
    no_args,
    handle_serve,
)

PUSH = Command(
    "import reviewed images as tasks, with pre-annotations; likely misses first, then the "
    "least certain",
    "Create the Label Studio project (annotation.project_title) once, keep its labeling "
    "interface in step with the taxonomy, and import the reviewed images that are not yet "
    "tasks, in batches of annotation.batch_size. Each task carries predictions: when a "
    "model of train.models has a version with the MLflow alias champion, that version's "
    "detections (run with the runtime's detector and evaluate.tiling on the upright image, "
    "score at least annotation.champion_min_score; faces as ellipses, plates as rectangles, "
    "masks as brushes, keypoints), model_version <name>:<version>; otherwise OpenCV's Haar "
    "face and plate cascades, and the summary says which pre-annotated and why (what the "
    "registry held). Images where "
    "annotation.second_opinion (CenterFace; none turns it off) finds a face the "
    "pre-annotations do not cover are imported first, the most such faces first; then the "
    "least certain (by the champion's scores, or Haar's). Each task's meta says why it was "
    "queued where it is. Re-running never duplicates a task.",
    no_args,
    handle_push,
)

STATUS = Command(
    "tasks total, annotated, skipped, by annotator; reviewed images not yet in Label Studio",
    "Summarise the Label Studio project: tasks total, annotated, skipped or cancelled, "
    "annotations per annotator, and how many reviewed images are not yet tasks.",
    no_args,
    handle_status,
)

PULL = Command(
    "take annotations back: an immutable snapshot of the export, converted to COCO",
    "Export every task from Label Studio (annotation.source=server) or read a Label "
    "Studio JSON export file (annotation.source=export, annotation.export_file=FILE), keep "
    "it byte for byte under artifacts/annotations/snapshots/ (never overwritten), and "
    "convert it to artifacts/annotations/coco.json for the images review kept. Skipped, "
    "cancelled and conflicting tasks, degenerate geometry and keypoints that fit no person "
    "are listed with task ids in artifacts/annotations/pull_report.json. A failed pull "
    "writes nothing.",
    no_args,
    handle_pull,
)
