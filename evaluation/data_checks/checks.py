"""The `Check` record of every data check, and how a check's offenders (how many, the first
few with where and what) become its result and one-line message."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluation.data_checks.loading import Coco

__all__ = ["ERROR", "FIRST", "SHOWN", "WARNING", "Check", "Offenders", "check_result", "rounded"]

ERROR = "error"
WARNING = "warning"

FIRST = 20  # offenders kept in a check's details
SHOWN = 3  # offenders named in its message


@dataclass(frozen=True)
class Check:
    """One check's outcome: a failing `error` fails the gate, a failing `warning` is reported."""

    name: str  # "schema", "geometry.boxes_inside", "leakage", "shift.val", ...
    passed: bool
    severity: str  # ERROR or WARNING
    message: str  # one line: what, where (file + first offending ids), what to do
    details: dict[str, Any]  # JSON-serialisable: counts, first offenders (<= 20), tables


@dataclass
class Offenders:
    """How many items a check found wrong, and the first FIRST of them (where + what)."""

    count: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: str, problem: str, **ids: Any) -> None:
        self.count += 1
        if len(self.first) < FIRST:
            self.first.append({"file": file, **ids, "problem": problem})

    def add_annotations(
        self, coco: Coco, rows: Sequence[int], problem: Callable[[int], str]
    ) -> None:
        """Count annotations `rows` of `coco`; describe (`problem(k)` for `rows[k]`) only those
        that still fit in `first`, so a million offenders cost no more than twenty."""
        room = max(FIRST - len(self.first), 0)
        for k in range(min(room, len(rows))):
            ann = coco.annotations[int(rows[k])]
            where = {"annotation_id": ann["id"], "image_id": ann["image_id"]}
            self.first.append({"file": coco.file, **where, "problem": problem(k)})
        self.count += len(rows)


def _where(offender: Mapping[str, Any]) -> str:
    parts = [str(offender["file"])]
    if "annotation_id" in offender:
        parts.append(f"annotation {offender['annotation_id']}")
        if "image_id" in offender:
            parts.append(f"(image {offender['image_id']})")
    elif "image_id" in offender:
        parts.append(f"image {offender['image_id']}")
    return " ".join(parts)


def check_result(
    name: str,
    severity: str,
    found: Offenders,
    *,
    ok: str,
    bad: str,
    todo: str,
    **details: Any,
) -> Check:
    """The check `name` of `found` offenders: passing with `ok`, or failing with the count, what
    was `bad`, the first SHOWN offenders and what to do (`todo`); `details` plus count, first."""
    details = {**details, "count": found.count, "first": found.first}
    if not found.count:
        return Check(name, True, severity, f"{name}: {ok}", details)
    shown = "; ".join(f"{_where(o)}: {o['problem']}" for o in found.first[:SHOWN])
    more = f" (and {found.count - SHOWN} more)" if found.count > SHOWN else ""
    return Check(
        name, False, severity, f"{name}: {found.count} {bad}: {shown}{more}. {todo}", details
    )


def rounded(values: Iterable[float]) -> list[float]:
    """Numbers as an offender's problem shows them (a box, a mask's extent)."""
    return [round(float(v), 2) for v in values]
