"""`anonlab annotate status`: how far annotation has come, from the Label Studio project.

Counts tasks, annotated tasks (at least one submitted annotation), skipped tasks (annotations,
all cancelled), untouched tasks, submitted annotations per annotator (`completed_by`), and the
reviewed images that are not tasks yet (push them with `anonlab annotate push`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from annotation.client import TaskCounts, connect
from annotation.config import AnnotationConfig
from annotation.push import image_url
from data.manifest import read_reviewed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """Task and annotation counts of a project."""

    tasks: int
    annotated: int  # tasks with at least one submitted annotation
    skipped: int  # tasks whose annotations were all cancelled
    annotations: int  # submitted annotations
    by_annotator: dict[str, int] = field(default_factory=dict)  # e-mail -> annotations

    @property
    def untouched(self) -> int:
        return self.tasks - self.annotated - self.skipped


@dataclass
class StatusReport:
    url: str
    project_id: int
    progress: Progress
    reviewed: int
    not_pushed: int  # reviewed images that are not tasks

    def summary(self) -> str:
        p = self.progress
        lines = [
            f"status: Label Studio project {self.project_id} at {self.url}",
            f"  tasks: {p.tasks}  annotated: {p.annotated}  skipped: {p.skipped}  "
            f"not started: {p.untouched}",
            f"  annotations: {p.annotations}",
        ]
        for who, n in sorted(p.by_annotator.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {who}: {n}")
        lines.append(
            f"  reviewed images: {self.reviewed}, not yet in Label Studio: {self.not_pushed}"
            + ("  (run `anonlab annotate push`)" if self.not_pushed else "")
        )
        return "\n".join(lines)


def count_tasks(tasks: list[TaskCounts], users: dict[int, str]) -> Progress:
    """Totals of `tasks`; annotators named by e-mail when `users` knows them."""
    by_annotator: Counter[str] = Counter()
    for t in tasks:
        for user_id in t.annotators:
            by_annotator[users.get(user_id, f"user {user_id}")] += 1
    return Progress(
        tasks=len(tasks),
        annotated=sum(1 for t in tasks if t.annotated),
        skipped=sum(1 for t in tasks if not t.annotated and t.cancelled),
        annotations=sum(t.annotated for t in tasks),
        by_annotator=dict(by_annotator),
    )


def run_status(cfg: AnnotationConfig, artifacts: Path) -> StatusReport:
    """The project's progress, and how many reviewed images are still to push."""
    records = read_reviewed(Path(artifacts).resolve())
    client = connect(cfg)
    try:
        project_id = client.require_project(cfg.project_title)
        tasks = client.task_counts(project_id)
        users = client.users()
    finally:
        client.close()
    pushed = {t.image for t in tasks}
    return StatusReport(
        url=cfg.url,
        project_id=project_id,
        progress=count_tasks(tasks, users),
        reviewed=len(records),
        not_pushed=sum(1 for r in records if image_url(r) not in pushed),
    )
