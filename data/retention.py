"""Retention: when a raw image must be gone (`delete_after`), the clock every stage reads it by,
and the one check a stage makes before it uses images (`refuse_overdue`).

`delete_after = start + collect.retention_days`, where `start` is the capture time (the
manifest's `captured_at`, EXIF DateTimeOriginal) when it is known and not after `collected_at`,
else `collected_at`. EXIF times are the camera's local time without a zone: they are read at
UTC+14, the earliest instant they can denote, so that no image is kept past its limit because of
a time zone (at worst it leaves 26 hours early). The synthetic source's images are made at
collection (their EXIF date is part of the fiction): they count from `collected_at`.

The clock is the real time (UTC), or ANONLAB_NOW when it is set (an ISO 8601 time; without a
zone, UTC): tests and demos set it to see what a later day does. collect stamps `collected_at`
with it, and the stages judge `delete_after` by it.

An image is overdue when its `delete_after` is not after now (the rule of
data.erasure.subjects.Known.overdue, by which retention erases):
review, `annotate push`, prepare, train and evaluate then stop before any work and say what to
run. Entries without a `delete_after` (an external reference set's images, which are not in the
store) are not judged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from data.errors import AnonlabError
from data.manifest import ManifestRecord

CLOCK_VARIABLE = "ANONLAB_NOW"
RETENTION_COMMAND = "anonlab retention"
# The easternmost zone: a camera's local time read there is its earliest instant (docstring).
_EARLIEST_ZONE = timezone(timedelta(hours=14))


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone); AnonlabError naming
    `what` (where the text came from) when it is not one."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AnonlabError(
            f"{what}: {text!r} is not an ISO 8601 time (e.g. 2027-01-31 or "
            "2027-01-31T12:00:00+00:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def now(environ: Mapping[str, str] | None = None) -> datetime:
    """The time retention is judged at, in UTC: ANONLAB_NOW when set, else the real time."""
    value = (os.environ if environ is None else environ).get(CLOCK_VARIABLE, "").strip()
    if not value:
        return datetime.now(UTC)
    return parse_time(value, CLOCK_VARIABLE).astimezone(UTC)


def capture_instant(captured_at: str | None) -> datetime | None:
    """The earliest instant a manifest's `captured_at` can denote: a time with a zone as it is,
    a camera's local time (no zone, data.image_info) read at UTC+14; None when unknown or not a
    time."""
    if not captured_at:
        return None
    try:
        value = datetime.fromisoformat(captured_at)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=_EARLIEST_ZONE)


def delete_after(collected_at: datetime, captured_at: str | None, retention: timedelta) -> datetime:
    """`(capture time if known and not after collected_at, else collected_at) + retention`, in
    UTC. A capture time after the collection is a wrong camera clock: it is not trusted."""
    captured = capture_instant(captured_at)
    start = captured if captured is not None and captured <= collected_at else collected_at
    return (start + retention).astimezone(UTC)


def capture_time(captured_at: str | None, extra: dict[str, Any]) -> str | None:
    """The capture time retention counts from, of an image with this `captured_at` and manifest
    `extra`: none for the synthetic source's (made at collection)."""
    return None if "synthetic" in extra else captured_at


def record_delete_after(record: ManifestRecord, retention: timedelta) -> str:
    """A manifest record's delete_after under `retention` (collect.retention_days), ISO 8601."""
    collected = parse_time(record.collected_at, f"collected_at of {record.path}")
    captured = capture_time(record.captured_at, record.extra)
    return delete_after(collected, captured, retention).isoformat()


@dataclass(frozen=True)
class Overdue:
    """The images past their `delete_after` among those a stage reads."""

    count: int
    earliest: datetime


def overdue(delete_afters: Mapping[str, str | None], at: datetime) -> Overdue | None:
    """Which of `delete_afters` (image -> its delete_after; None: not under retention) are not
    after `at`; None when none is."""
    due = [
        when
        for image, text in delete_afters.items()
        if text is not None and (when := parse_time(text, f"delete_after of {image}")) <= at
    ]
    return Overdue(len(due), min(due)) if due else None


def refuse_overdue(
    delete_afters: Mapping[str, str | None],
    *,
    where: str | Path,
    command: str,
    at: datetime | None = None,
) -> None:
    """Stop `command` (e.g. `anonlab review`) before any work when an image it reads from `where`
    is past its `delete_after` (judged at `at`, default `now()`): AnonlabError with how many,
    the earliest date and the command that erases them."""
    at = now() if at is None else at
    found = overdue(delete_afters, at)
    if found is None:
        return
    images = f"{found.count} image{'s' if found.count != 1 else ''}"
    raise AnonlabError(
        f"{images} in {where} {'are' if found.count != 1 else 'is'} past delete_after (the "
        f"earliest {found.earliest.isoformat()}; now {at.isoformat(timespec='seconds')}): "
        f"overdue images must be erased before any stage uses them, so `{command}` stopped "
        f"and wrote nothing. Run `{RETENTION_COMMAND}` (`{RETENTION_COMMAND} --dry-run` lists "
        f"what it erases), then `{command}` again"
    )


def coco_delete_afters(*datasets: dict[str, Any]) -> dict[str, str | None]:
    """Image -> delete_after of prepared COCO datasets (prepare writes it into each image entry;
    a tile has its source image's); entries without one are left out. An image is its sha256
    (its tiles count once, at the earliest date any of them gives), else its file name."""
    found: dict[str, str | None] = {}
    for ds in datasets:
        for img in ds.get("images", []):
            date = img.get("delete_after")
            if date is None:
                continue
            image = str(img.get("sha256") or img.get("file_name"))
            seen = found.get(image)
            if seen is None or parse_time(date, image) < parse_time(seen, image):
                found[image] = date
    return found


def refuse_overdue_datasets(
    paths: Sequence[Path], *, command: str, at: datetime | None = None
) -> None:
    """`refuse_overdue` for the prepared COCO files at `paths` (train and evaluate's inputs; one
    that is not there is left to the stage to report), naming the files that hold overdue
    images."""
    at = now() if at is None else at
    datasets: list[dict[str, Any]] = []
    holding: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            datasets.append(json.loads(path.read_text(encoding="utf-8")))
            if overdue(coco_delete_afters(datasets[-1]), at) is not None:
                holding.append(str(path))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise AnonlabError(
                f"{path} is not a COCO file ({e}): run `anonlab prepare` again"
            ) from None
    merged = coco_delete_afters(*datasets)  # an image in two files counts once
    refuse_overdue(merged, where=", ".join(holding), command=command, at=at)


def expiring(
    delete_afters: Mapping[str, str | None], at: datetime, within: timedelta
) -> Overdue | None:
    """The images whose `delete_after` falls by `at + within`: what retention will take away
    before that horizon; None when none does."""
    return overdue(delete_afters, at + within)
