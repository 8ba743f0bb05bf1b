"""Running collect on a test project, and checking that its counts add up."""

from __future__ import annotations

import json
from pathlib import Path

from data.atomic import read_jsonl
from data.collect import CollectReport, run_collect
from data.manifest import read_manifest
from serving.params import Project, load_project


def collect(params_file: Path, *overrides: str) -> tuple[Project, CollectReport]:
    project = load_project(params_file, overrides)
    p = project.params
    report = run_collect(
        p.collect, project.artifacts / "raw", taxonomy=p.taxonomy, root=project.root
    )
    return project, report


def folder(path: Path, **extra: str) -> str:
    items = ",".join(f"{k}:{v}" for k, v in {"uri": str(path), **extra}.items())
    return f"collect.sources=[{{{items}}}]"


def raw(project: Project) -> Path:
    return project.artifacts / "raw"


def check_counts_add_up(project: Project, report: CollectReport) -> None:
    manifest = read_manifest(raw(project) / "manifest.jsonl")
    dups = read_jsonl(raw(project) / "duplicates.jsonl")
    quarantine = read_jsonl(raw(project) / "quarantine.jsonl")
    assert report.seen + report.unlisted + report.carried_over == (
        len(manifest) + len(dups) + len(quarantine)
    )
    assert (report.images, report.duplicate, report.quarantined) == (
        len(manifest),
        len(dups),
        len(quarantine),
    )
    metrics = json.loads((raw(project) / "metrics.json").read_text())
    assert metrics["seen"] == report.seen and metrics["images"] == report.images
    assert (metrics["unlisted"], metrics["carried_over"]) == (report.unlisted, report.carried_over)
