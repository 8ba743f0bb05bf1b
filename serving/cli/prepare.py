"""`anonlab prepare`: the train, val and reference datasets from the reviewed images."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from data.prepare import run_prepare

    p = project.params
    print(run_prepare(p.prepare, p.taxonomy, project.artifacts, project.root).summary())
    return 0


COMMAND = Command(
    "build train/val/reference datasets: session splits, leak check, tiles",
    "Take the reference sets out (prepare.reference_sets: by session, tag or an external "
    "COCO file), split the remaining capture sessions into train and val (stratified by "
    "class and object size), refuse any train image that equals or nearly equals a "
    "reference image, and cut large images and panoramas into overlapping tiles (the "
    "seam wraps). Writes artifacts/prepared/: train.json, val.json, refs/<name>.json, "
    "tiles/, stats.json, sizes.json, headline.json (DVC's metrics).",
    no_args,
    run,
)
