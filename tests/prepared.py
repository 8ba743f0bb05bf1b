"""A project folder taken through the data stages (collect, review, annotate pull, prepare) on
the built-in synthetic source: what training, evaluation and validation tests start from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data.config import compose
from serving.params import Project, load_project
from tests.conftest import REPO


def prepared_project(root: Path, overrides: Sequence[str]) -> Project:
    """params.yaml composed from conf/ with `overrides` in `root`, and the data stages run."""
    from annotation.pull import run_pull
    from data.collect import run_collect
    from data.prepare import run_prepare
    from data.review import run_review

    (root / "params.yaml").write_text(compose(REPO / "conf", list(overrides)), encoding="utf-8")
    project = load_project(root / "params.yaml")
    p, artifacts = project.params, project.artifacts
    run_collect(p.collect, artifacts / "raw", taxonomy=p.taxonomy, root=project.root)
    run_review(p.review, artifacts / "raw", artifacts / "reviewed")
    run_pull(p.annotation, p.taxonomy, artifacts, project.root)
    run_prepare(p.prepare, p.taxonomy, artifacts, project.root)
    return project
