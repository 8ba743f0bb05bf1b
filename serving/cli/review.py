"""`anonlab review`: drop low-value images from the raw store."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from data.review import run_review

    report = run_review(
        project.params.review, project.stage_paths.raw.folder, project.stage_paths.reviewed.folder
    )
    print(report.summary())
    return 0


COMMAND = Command(
    "drop low-value images (duplicates, dark, over-exposed, blurry, too small)",
    "Score every collected image on a reduced-resolution decode and reject exact and "
    "near-duplicates (keeping the sharpest of each cluster), too dark, over-exposed, blurry "
    "and too small images. Writes artifacts/reviewed/: manifest.jsonl (kept), "
    "rejected.jsonl (reason and score each), report.html (thumbnails per reason, nearest "
    "the threshold first), metrics.json and headline.json (DVC's metrics).",
    no_args,
    run,
)
