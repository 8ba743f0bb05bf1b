"""Tombstones: the keyed hashes of every erased image, so that no stage takes it in again (collect
skips content whose hash is here even when a source still holds it).

`audit/tombstones.jsonl` holds one row per erased content: the keyed hashes (data.erasure.keys)
of its sha256, its sessions and its source paths, and the day it was erased; never an
identifier in clear. A tombstone is written before anything is erased, so an erasure killed
midway is still one collect will not undo.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from data import atomic
from data.erasure.keys import AuditKey
from data.erasure.subjects import By, Subject


@dataclass
class Tombstones:
    """The tombstones file of an artifacts root, read once; its hashes are indexed by kind, so
    a lookup costs one keyed hash whatever the number of erased images."""

    path: Path
    key: AuditKey
    rows: list[dict[str, object]] = field(default_factory=list)
    _index: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for row in self.rows:
            self._note(row)

    def _note(self, row: dict[str, object]) -> None:
        for by in By:
            value = row.get(by.value)
            values = value if isinstance(value, list) else [value]
            self._index.setdefault(by.value, set()).update(str(v) for v in values if v)

    @classmethod
    def read(cls, path: Path, key: AuditKey) -> Tombstones:
        return cls(path, key, atomic.read_jsonl(path))

    def holds(self, sha256: str) -> bool:
        """Whether this content was erased."""
        return self.names(By.SHA256, sha256)

    def erased_content(self, shas: Iterable[str]) -> set[str]:
        """The contents among `shas` that were erased."""
        return {s for s in shas if self.holds(s)}

    def names(self, by: By, value: str) -> bool:
        """Whether an erased image had this sha256, session or source path."""
        return self.key.hash(by.value, value) in self._index.get(by.value, set())

    def add(self, subjects: Iterable[Subject], now: datetime) -> int:
        """Record `subjects` as erased (those not recorded yet); the number added."""
        new = []
        for s in subjects:
            if self.holds(s.sha256):
                continue
            row = {
                By.SHA256.value: self.key.hash(By.SHA256.value, s.sha256),
                By.SESSION.value: sorted(self.key.hash(By.SESSION.value, x) for x in s.sessions),
                By.SOURCE_PATH.value: sorted(
                    self.key.hash(By.SOURCE_PATH.value, p) for p in s.source_paths
                ),
                "erased_on": now.date().isoformat(),
            }
            self._note(row)
            new.append(row)
        if new:
            self.rows.extend(new)
            atomic.write_jsonl(self.path, self.rows)
        return len(new)
