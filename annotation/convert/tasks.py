"""A Label Studio export's tasks: the check of the export's structure, and which annotation
of a task is converted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from annotation.convert.records import Issue
from data.errors import AnonlabError


def check_export(tasks: Any) -> None:
    """Raise AnonlabError when the export's structure is not that of a Label Studio JSON export."""
    fix = "export the project again as JSON (Label Studio: Export -> JSON)"
    if not isinstance(tasks, (list, tuple)):
        raise AnonlabError(
            f"a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}; {fix}"
        )
    seen: set[int] = set()
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise AnonlabError(
                f"task #{index} of the export is {type(task).__name__}, not an object"
            )
        task_id = task.get("id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise AnonlabError(f"task #{index} of the export has no integer 'id' ({task_id!r})")
        where = f"task #{index} (id {task_id})"
        if task_id in seen:
            raise AnonlabError(f"{where}: id {task_id} appears twice in the export; {fix}")
        seen.add(task_id)
        if not isinstance(task.get("data"), dict):
            raise AnonlabError(f"{where} has no 'data' object (where its image is); {fix}")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise AnonlabError(f"{where}: 'annotations' is not a list; {fix}")
        for k, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise AnonlabError(f"{where}: annotation #{k} is not an object; {fix}")
            result = annotation.get("result")
            if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
                raise AnonlabError(
                    f"{where}: annotation #{k} (id {annotation.get('id')}) has no 'result' "
                    f"list of regions; {fix}"
                )


def choose_annotation(task: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    """The task's winning annotation (None: nothing to convert) and the issues the choice
    raised: "unannotated", "skipped", "cancelled" for ignored cancelled ones, "conflict"."""
    task_id = task["id"]
    annotations = task.get("annotations") or []
    cancelled = [a for a in annotations if a.get("was_cancelled")]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if cancelled:
            ids = _ids(cancelled)
            return None, [
                Issue(task_id, "skipped", f"only cancelled annotations ({ids}); left out")
            ]
        extra = [f"{len(task.get(k) or [])} {k}" for k in ("drafts", "predictions")]
        detail = f"no submitted annotation ({', '.join(extra)} are not ground truth)"
        return None, [Issue(task_id, "unannotated", detail)]
    winner = max(submitted, key=_rank)
    issues = [
        Issue(task_id, "cancelled", f"cancelled annotation {a.get('id')} ignored")
        for a in cancelled
    ]
    if len(submitted) > 1:
        why = (
            "marked ground truth"
            if winner.get("ground_truth")
            and sum(bool(a.get("ground_truth")) for a in submitted) == 1
            else "ground truth first, then most recently updated, then highest id"
        )
        issues.append(
            Issue(
                task_id,
                "conflict",
                f"{len(submitted)} submitted annotations ({_ids(submitted)}); "
                f"converted {winner.get('id')} ({why})",
            )
        )
    return winner, issues


def _rank(annotation: dict[str, Any]) -> tuple[bool, datetime, int]:
    when = _time(annotation.get("updated_at")) or _time(annotation.get("created_at"))
    ident = annotation.get("id")
    return (
        bool(annotation.get("ground_truth")),
        when or datetime.min.replace(tzinfo=UTC),
        ident if isinstance(ident, int) else -1,
    )


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    # Label Studio writes UTC, with or without the "Z".
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ids(annotations: list[dict[str, Any]]) -> str:
    return ", ".join(str(a.get("id")) for a in annotations)
