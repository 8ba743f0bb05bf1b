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
    """The tombstones file of an artifacts root, read once."""

    path: Path
    key: AuditKey
    rows: list[dict[str, object]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, key: AuditKey) -> Tombstones:
        return cls(path, key, atomic.read_jsonl(path))

    def _hashes(self, field_name: str) -> set[str]:
        found: set[str] = set()
        for row in self.rows:
            value = row.get(field_name)
            found.update(value if isinstance(value, list) else [value])  # type: ignore[arg-type]
        return found

    def holds(self, sha256: str) -> bool:
        """Whether this content was erased."""
        return self.key.hash(By.SHA256.value, sha256) in self._hashes(By.SHA256.value)

    def erased_content(self, shas: Iterable[str]) -> set[str]:
        """The contents among `shas` that were erased (one pass over the file)."""
        erased = self._hashes(By.SHA256.value)
        return {s for s in shas if self.key.hash(By.SHA256.value, s) in erased}

    def names(self, by: By, value: str) -> bool:
        """Whether an erased image had this sha256, session or source path."""
        return self.key.hash(by.value, value) in self._hashes(by.value)

    def add(self, subjects: Iterable[Subject], now: datetime) -> int:
        """Record `subjects` as erased (those not recorded yet); the number added."""
        known = self._hashes(By.SHA256.value)
        new = []
        for s in subjects:
            content = self.key.hash(By.SHA256.value, s.sha256)
            if content in known:
                continue
            known.add(content)
            new.append(
                {
                    By.SHA256.value: content,
                    By.SESSION.value: sorted(
                        self.key.hash(By.SESSION.value, x) for x in s.sessions
                    ),
                    By.SOURCE_PATH.value: sorted(
                        self.key.hash(By.SOURCE_PATH.value, p) for p in s.source_paths
                    ),
                    "erased_on": now.date().isoformat(),
                }
            )
        if new:
            self.rows.extend(new)
            atomic.write_jsonl(self.path, self.rows)
        return len(new)
