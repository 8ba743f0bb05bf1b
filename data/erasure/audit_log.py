"""The erasure audit trail, `audit/erasure.jsonl`: one line per erasure, chained.

Each line records when and why images were erased, how many, what each store erased, whether the
scan after erasing found anything left, and the tool's version. It names no image: the request's
values and the images' sha256 appear only as keyed hashes (data.erasure.keys), which let whoever
holds the key check that a given request was carried out. Each line carries `previous`, the
sha256 of the line before it (64 zeros on the first line), so a line deleted or edited later
breaks the chain at the next line, which `check_chain` reports.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import AnonlabError

GENESIS = "0" * 64


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    """Where the chain does not hold: the 1-based line whose `previous` does not match."""

    line: int
    detail: str


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_chain(path: Path) -> ChainBreak | None:
    """The first place where a line was removed, edited or inserted; None when the chain holds."""
    previous = GENESIS
    for number, line in enumerate(read_lines(path), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return ChainBreak(number, "not a JSON line")
        if entry.get("previous") != previous:
            return ChainBreak(
                number,
                "its `previous` is not the hash of the line before it (a line was "
                "removed, edited or inserted)",
            )
        previous = line_hash(line)
    return None


def append(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append `entry` (with `previous` set) and return it as written. Refuses to extend a chain
    that is already broken: the log must be restored (from backup) first."""
    broken = check_chain(path)
    if broken:
        raise AnonlabError(
            f"{path}: line {broken.line}: {broken.detail}. The audit log no longer proves "
            "what was erased; restore it from a backup before erasing more"
        )
    lines = read_lines(path)
    written = {**entry, "previous": line_hash(lines[-1]) if lines else GENESIS}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Appending (not rewriting) keeps every earlier line byte for byte; fsync so that an
    # erasure reported as done is on disk.
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(written, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return written
