"""The manifest formats: one JSON line per image, written by collect, filtered by review.

Paths in a manifest (`path`) are relative to the raw store folder (`artifacts/raw`), so a store
can be moved or synced as a whole.

Sizes: `width` and `height` are the image upright, as a viewer shows it (EXIF orientation
applied, `serving.runtime.imagefile.upright_size`): the frame annotators draw in and every
coordinate of every stage is in. `stored_width` and `stored_height` are the pixel columns and
rows as stored in the file, before the orientation is applied (what a decoder that ignores the
tag gives); they differ from the upright size only for orientations 5 to 8. Rows written before
the stored size was recorded hold Pillow's size in `width`/`height` (stored, but upright for
TIFF); `read_manifest` gives them both sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from data.atomic import read_jsonl, write_jsonl
from data.errors import AnonlabError
from data.stage_paths import StagePaths
from serving.runtime.imagefile import upright_size


class Record:
    """A JSON line of a manifest-like file."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ManifestRecord(Record):
    """One unique image (by content) in the raw store."""

    sha256: str
    path: str  # in the store, relative to artifacts/raw: images/<sha[:2]>/<sha>.<ext>
    source: str  # the source's name (config `name`, else its uri)
    source_path: str  # where it was found: a local path or a URL
    session: str  # capture session (a drive, a day)
    width: int  # upright, as a viewer shows the image (module docstring)
    height: int
    format: str  # JPEG, PNG, TIFF, WEBP
    bit_depth: int  # bits per channel
    channels: int
    size: int  # bytes
    source_version: str  # what identifies an unchanged source file (size + mtime, or ETag)
    collected_at: str  # ISO 8601, UTC
    delete_after: (
        str  # ISO 8601, UTC: capture time (else collected_at) + retention (data.retention)
    )
    orientation: int = 1  # EXIF orientation (1-8) that turns the stored pixels upright; 1: none
    stored_width: int | None = None  # as stored in the file, before the orientation
    stored_height: int | None = None
    captured_at: str | None = None  # EXIF DateTimeOriginal when present (camera local time)
    has_gps: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R")


def from_row(cls: type[R], row: dict[str, Any]) -> R:
    """Build record `cls` from a JSON row; keys the record does not know are ignored.

    A missing required key raises TypeError, which readers turn into a clear error.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row.items() if k in names})


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    return [manifest_record(row) for row in read_jsonl(path)]


def manifest_record(row: dict[str, Any]) -> ManifestRecord:
    """One manifest row (a parsed JSON line) as a record, with both sizes."""
    return from_row(ManifestRecord, _upright_row(row))


def _upright_row(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row with upright `width`/`height`. Rows written before `stored_width` was
    recorded hold the size Pillow reports there (and None for no orientation): the stored size,
    except for TIFF, whose reader in Pillow turns the size upright itself. Their other size is
    worked out (a quarter turn swaps the two, either way). Rows without a usable size are left
    for `from_row` to refuse."""
    if "stored_width" in row:
        return row
    width, height, orientation = row.get("width"), row.get("height"), row.get("orientation")
    orientation = 1 if orientation is None else orientation
    if not (isinstance(width, int) and isinstance(height, int) and orientation in range(1, 9)):
        return row
    other = upright_size(width, height, orientation)
    upright, stored = (
        ((width, height), other) if row.get("format") == "TIFF" else (other, (width, height))
    )
    return {
        **row,
        "width": upright[0],
        "height": upright[1],
        "orientation": orientation,
        "stored_width": stored[0],
        "stored_height": stored[1],
    }


def write_manifest(path: str | Path, records: list[ManifestRecord]) -> None:
    write_jsonl(path, (r.to_dict() for r in records))


@dataclass(frozen=True)
class DuplicateRecord(Record):
    """A file whose content is already in the store under another path (`duplicate_of`)."""

    sha256: str
    duplicate_of: str  # source_path of the manifest record that holds this content
    source: str
    source_path: str
    session: str
    size: int
    source_version: str


@dataclass(frozen=True)
class QuarantineRecord(Record):
    """A file that was not taken in, and why (`reason` is a stable name, `detail` explains)."""

    source: str
    source_path: str
    session: str
    size: int
    source_version: str
    reason: str
    detail: str
    quarantined_at: str


def read_reviewed(artifacts: str | Path) -> list[ManifestRecord]:
    """The images review kept (`artifacts/reviewed/manifest.jsonl`): what later stages use."""
    path = StagePaths(Path(artifacts)).reviewed.manifest
    if not path.is_file():
        raise AnonlabError(f"{path} not found: run `anonlab review` first")
    try:
        return read_manifest(path)
    except (TypeError, ValueError) as e:
        raise AnonlabError(
            f"{path} is not a manifest written by review ({e}): run `anonlab review` again"
        ) from None
