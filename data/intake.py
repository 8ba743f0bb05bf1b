"""What collect must not take in, under the personal-data rules: content that was erased (a
tombstone holds it, even while a source still holds it) and content new to the store that is
already past its `delete_after` when found (data.retention).

The audit key (ANONLAB_AUDIT_KEY) is needed only when `audit/tombstones.jsonl` holds tombstones:
without the key erased content could not be recognised, so collect stops.
"""

from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from data import atomic, retention
from data.erasure.keys import audit_key
from data.erasure.tombstones import Tombstones
from data.errors import AnonlabError
from data.stage_paths import StagePaths

# Why a file was not taken in; such a file gets no row anywhere (a row would name it).
ERASED = "erased"
EXPIRED = "expired"


@dataclass(frozen=True)
class Intake:
    """The rules of one collect run; read-only, so worker threads may ask it."""

    tombstones: Tombstones | None  # None: nothing was ever erased
    stored: Set[str]  # the contents the last run stored: they keep their collected_at
    now: datetime
    retention: timedelta

    @classmethod
    def of(cls, artifacts: Path, stored: Set[str], now: datetime, retention: timedelta) -> Intake:
        """The rules for the artifacts root `artifacts`: its tombstones, read with the audit key
        when there are any."""
        path = StagePaths(artifacts).audit.tombstones
        try:
            rows = atomic.read_jsonl(path)
        except json.JSONDecodeError as e:
            raise AnonlabError(
                f"{path} is damaged ({e}): restore it from your backup; without it collect "
                "would take erased images back in"
            ) from None
        tombstones = Tombstones(path, audit_key(), rows) if rows else None
        return cls(tombstones, stored, now, retention)

    def erased(self, sha256: str) -> bool:
        return self.tombstones is not None and self.tombstones.holds(sha256)

    def expired(self, sha256: str, captured_at: str | None, extra: dict[str, Any]) -> bool:
        """Whether content new to the store is past its delete_after already. Stored content
        never is: past it or not, it stays until `anonlab retention` erases it everywhere."""
        if sha256 in self.stored:
            return False
        captured = retention.capture_time(captured_at, extra)
        return retention.delete_after(self.now, captured, self.retention) <= self.now
