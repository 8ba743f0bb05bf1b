"""The counts collect reports, in metrics.json and as its summary: every file found ends up in
one place (data.collect's module docstring), and the counts add up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data.retention import RETENTION_COMMAND


@dataclass
class CollectReport:
    """What one collect run found, and where each file ended up."""

    seen: int = 0
    images: int = 0
    new: int = 0
    duplicate: int = 0
    quarantined: int = 0
    unchanged: int = 0
    removed: int = 0
    ignored: int = 0
    unlisted: int = 0  # folders that could not be listed (quarantined, reason `unlisted`)
    carried_over: int = 0  # records of incomplete sources kept from the last run, not seen now
    erased_skipped: int = 0  # files (and carried-over records) whose content was erased
    expired: int = 0  # files new to the store already past their delete_after when found
    overdue: int = 0  # stored images past their delete_after: `anonlab retention` erases them
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    seen_by_source: dict[str, int] = field(default_factory=dict)
    # Each source whose listing was empty or incomplete: how many records were carried over.
    incomplete_sources: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def summary(self) -> str:
        found = f"{self.seen} files seen"
        if self.incomplete_sources:
            found += (
                f" + {self.unlisted} folders not listed + {self.carried_over} records carried over"
            )
        ended = (
            f"{self.images} images stored + {self.duplicate} duplicates + "
            f"{self.quarantined} quarantined"
        )
        if self.erased_skipped or self.expired:
            ended += f" + {self.erased_skipped} erased (skipped) + {self.expired} expired"
        lines = [
            f"collect: {found} = {ended}",
            f"  new this run: {self.new}   unchanged (not re-read): {self.unchanged}   "
            f"removed (no longer in any source): {self.removed}   "
            f"ignored (not image files): {self.ignored}",
        ]
        for label, n in sorted(self.incomplete_sources.items()):
            lines.append(f"  not listed completely, {n} records kept as they were: {label}")
        for reason, n in sorted(self.quarantined_by_reason.items()):
            lines.append(f"  quarantined, {reason}: {n}")
        if self.erased_skipped:
            lines.append(
                f"  skipped, erased before (audit/tombstones.jsonl): {self.erased_skipped}"
            )
        if self.expired:
            lines.append(
                f"  not taken in, past delete_after when found (captured more than "
                f"retention_days ago): {self.expired}"
            )
        if self.overdue:
            lines.append(
                f"  stored images past delete_after: {self.overdue}; run `{RETENTION_COMMAND}`"
            )
        return "\n".join(lines)
