"""`anonlab collect`: gather images from the configured sources into the raw store."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from data.collect import run_collect

    p = project.params
    report = run_collect(
        p.collect, project.stage_paths.raw.folder, taxonomy=p.taxonomy, root=project.root
    )
    print(report.summary())
    return 0


COMMAND = Command(
    "gather images from the configured sources into the content-addressed store",
    "Read every source in collect.sources (local folders and globs, fsspec URLs such as "
    "s3://, the built-in synthetic source), verify each image, store it once under "
    "artifacts/raw/images/<sha256[:2]>/<sha256>.<ext>, and write manifest.jsonl, "
    "duplicates.jsonl, quarantine.jsonl, metrics.json and headline.json (DVC's metrics). "
    "Re-runs are incremental: files "
    "seen before (same path, size and modification time) are not read again.",
    no_args,
    run,
)
