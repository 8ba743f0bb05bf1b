"""What an erasure erases: images by content (sha256), found from a request (sha256, session or
source path) or from retention (`delete_after` passed), with what identifies them elsewhere.

An image is its content: a request that names one copy (a source path, a session that holds a
duplicate) erases the content, and so every copy and every other path it was found under.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from data.erasure import redact
from data.manifest import DuplicateRecord, ManifestRecord, from_row, manifest_record
from data.retention import parse_time
from data.stage_paths import StagePaths


@dataclass(frozen=True)
class Subject:
    """One image to erase, and the identifiers derived files may hold of it."""

    sha256: str
    path: str | None = None  # in the raw store (images/<sha[:2]>/<sha>.<ext>), when recorded
    sessions: tuple[str, ...] = ()
    source_paths: tuple[str, ...] = ()

    def needles(self) -> tuple[bytes, ...]:
        """Byte strings that only a file holding something of this image contains: its sha256
        (which its store path holds too) and the paths it was found under. Sessions are shared
        by many images and are not a sign of this one. Each path also as JSON (ASCII-escaped)
        and HTML write it, since files hold it so."""
        forms = {
            form
            for p in self.source_paths
            for form in (p, json.dumps(p)[1:-1], html.escape(p, quote=True))
        }
        return (self.sha256.encode(), *(f.encode() for f in sorted(forms)))


class By(Enum):
    """How a request names images."""

    SHA256 = "sha256"
    SESSION = "session"
    SOURCE_PATH = "source_path"


@dataclass(frozen=True)
class Known:
    """What the raw store's files record of each image: the manifest and the duplicates."""

    records: dict[str, ManifestRecord]
    duplicates: list[DuplicateRecord]

    @classmethod
    def read(cls, artifacts: Path, naming: Sequence[str] | None = None) -> Known:
        """The raw store's manifest, and reviewed/'s as well (an image review kept stays there
        when collect no longer lists it), with the duplicates. With `naming` (a request's
        values), only the rows that hold one of them, and every row of the contents those
        name, are parsed: a request does not read the whole store."""
        paths = StagePaths(artifacts)
        manifests = [paths.reviewed.manifest, paths.raw.manifest, paths.raw.duplicates]
        data = [p.read_bytes() if p.is_file() else b"" for p in manifests]
        if naming is None:
            lines = [[x for x in d.splitlines() if x.strip()] for d in data]
        else:
            first = _holding(data, [json.dumps(v)[1:-1] for v in naming])
            shas = {json.loads(x)["sha256"] for part in first for x in part}
            lines = _holding(data, sorted(shas))
        records: dict[str, ManifestRecord] = {}
        for part in lines[:2]:
            records.update({r.sha256: r for r in (manifest_record(json.loads(x)) for x in part)})
        duplicates = [from_row(DuplicateRecord, json.loads(x)) for x in lines[2]]
        return cls(records, duplicates)

    def subject(self, sha256: str) -> Subject:
        """Everything recorded of one content."""
        record = self.records.get(sha256)
        copies = [d for d in self.duplicates if d.sha256 == sha256]
        sessions = {d.session for d in copies} | ({record.session} if record else set())
        paths = {d.source_path for d in copies} | ({record.source_path} if record else set())
        return Subject(
            sha256=sha256,
            path=record.path if record else None,
            sessions=tuple(sorted(sessions)),
            source_paths=tuple(sorted(paths)),
        )

    def matching(self, by: By, values: Iterable[str]) -> list[Subject]:
        """The images a request names, by content, sorted by sha256."""
        wanted = set(values)
        if by is By.SHA256:
            shas = {v.lower() for v in wanted}
        else:
            field = "session" if by is By.SESSION else "source_path"
            shas = {r.sha256 for r in self.records.values() if getattr(r, field) in wanted}
            shas |= {d.sha256 for d in self.duplicates if getattr(d, field) in wanted}
        return [self.subject(sha) for sha in sorted(shas)]

    def overdue(self, now: datetime) -> list[Subject]:
        """Every image whose `delete_after` is not after `now`, sorted by sha256."""
        return [
            self.subject(sha)
            for sha, record in sorted(self.records.items())
            if parse_time(record.delete_after, f"delete_after of {record.path}") <= now
        ]


def describe(subjects: Sequence[Subject]) -> str:
    """`3 images` for messages: the count, never the identifiers."""
    return f"{len(subjects)} image{'s' if len(subjects) != 1 else ''}"


def _holding(data: list[bytes], values: Sequence[str]) -> list[list[bytes]]:
    """The lines of each file's bytes that hold one of `values`."""
    marks = [v.encode() for v in values]
    return [[d[start:end] for start, end in redact.line_spans(d, marks)] for d in data]
