"""Erase images from every store, verify, and record it: the one procedure behind `anonlab erase`
and `anonlab retention`.

The order makes an erasure crash-safe and repeatable:
1. the request is written to `audit/pending/<id>.json` (the only file that names the images in
   clear, and only until the erasure is complete);
2. tombstones are added (data.erasure.tombstones): from here on collect never takes the images
   back in, even if the process dies now;
3. each store erases what it holds (idempotent);
4. each store is scanned again (`find`): anything left fails the erasure and names the store and
   the place;
5. one line is appended to the audit log (data.erasure.audit_log), and the pending file removed.

A command killed anywhere in 1-5 leaves the pending file; every later `erase` or `retention`
first completes the pending erasures it finds (`resume_pending`). Erasing the same images again
finds nothing left and reports "already erased".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from data import atomic
from data.erasure import audit_log
from data.erasure.keys import AuditKey
from data.erasure.stores import Held, Store, total
from data.erasure.subjects import By, Subject
from data.erasure.tombstones import Tombstones
from data.errors import AnonlabError
from data.stage_paths import AuditFolder
from serving.runtime.progress import bar

log = logging.getLogger(__name__)

ERASED = "erased"
ALREADY_ERASED = "already erased"
NOT_HELD = "not held"  # no store held it; tombstoned so that it is never taken in
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class Request:
    """What to erase and why: `trigger` is `request` (anonlab erase) or `retention`; `named`
    the request's values by kind (empty for retention)."""

    trigger: str
    reason: str
    subjects: tuple[Subject, ...]
    named: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "reason": self.reason,
            "subjects": [dataclasses.asdict(s) for s in self.subjects],
            "named": {k: list(v) for k, v in self.named.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Request:
        subjects = tuple(
            Subject(
                sha256=s["sha256"],
                path=s.get("path"),
                sessions=tuple(s.get("sessions", ())),
                source_paths=tuple(s.get("source_paths", ())),
            )
            for s in d["subjects"]
        )
        named = {k: tuple(v) for k, v in d.get("named", {}).items()}
        return cls(d["trigger"], d["reason"], subjects, named)


@dataclass(frozen=True)
class Outcome:
    """What one erasure did: per store what was erased and what the scan found left."""

    status: str
    images: int
    erased: dict[str, list[Held]]
    left: dict[str, list[Held]]
    entry: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not any(self.left.values())


def plan(subjects: Sequence[Subject], stores: Sequence[Store]) -> dict[str, list[Held]]:
    """What each store holds of `subjects` (what `--dry-run` lists)."""
    return {s.name: s.find(subjects) for s in bar(stores, desc="scanning stores", unit="store")}


def check_reason(reason: str, request: Request) -> None:
    """The reason goes into the audit log as written: it must not name what the log hides."""
    if not reason.strip():
        raise AnonlabError("--reason is empty: say why (a ticket number, `retention`), not who")
    named = [v for values in request.named.values() for v in values]
    identifiers = [*named, *(s.sha256 for s in request.subjects)]
    if any(v and v in reason for v in identifiers):
        raise AnonlabError(
            "--reason contains a value the request names (an image hash, a session or a path): "
            "the audit log keeps those only as keyed hashes. Give a ticket number instead"
        )


def erase(
    request: Request,
    stores: Sequence[Store],
    audit: AuditFolder,
    key: AuditKey,
    now: datetime,
) -> Outcome:
    """Erase `request`'s images from `stores` (steps 1-5 of the module docstring)."""
    check_reason(request.reason, request)
    pending = audit.pending / f"{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    atomic.write_json(pending, request.to_dict())
    return _complete(request, pending, stores, audit, key, now)


def resume_pending(
    stores: Sequence[Store], audit: AuditFolder, key: AuditKey, now: datetime
) -> list[Outcome]:
    """Complete every erasure a killed command left pending, oldest first."""
    outcomes = []
    for pending in sorted(audit.pending.glob("*.json")) if audit.pending.is_dir() else []:
        try:
            request = Request.from_dict(json.loads(pending.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AnonlabError(
                f"{pending}: a pending erasure that cannot be read ({e}); it names the images "
                "to erase: repair it or erase them again by sha256, then remove it"
            ) from None
        log.warning("completing an interrupted erasure (%s)", pending.name)
        outcomes.append(_complete(request, pending, stores, audit, key, now))
    return outcomes


def _complete(
    request: Request,
    pending: Path,
    stores: Sequence[Store],
    audit: AuditFolder,
    key: AuditKey,
    now: datetime,
) -> Outcome:
    tombstones = Tombstones.read(audit.tombstones, key)
    shas = [s.sha256 for s in request.subjects]
    were_erased = tombstones.erased_content(shas) == set(shas)
    tombstones.add(request.subjects, now)
    erased = {s.name: s.erase(request.subjects) for s in bar(stores, desc="erasing", unit="store")}
    left = {s.name: s.find(request.subjects) for s in bar(stores, desc="verifying", unit="store")}
    removed = sum(total(h) for h in erased.values())
    if any(left.values()):
        status = INCOMPLETE
    elif removed:
        status = ERASED
    else:
        status = ALREADY_ERASED if were_erased else NOT_HELD
    entry = audit_log.append(audit.erasure_log, _entry(request, key, now, status, erased, left))
    outcome = Outcome(status, len(request.subjects), erased, left, entry)
    if outcome.passed:
        pending.unlink(missing_ok=True)
    return outcome


def _entry(
    request: Request,
    key: AuditKey,
    now: datetime,
    status: str,
    erased: dict[str, list[Held]],
    left: dict[str, list[Held]],
) -> dict[str, Any]:
    return {
        "time": now.isoformat(),
        "trigger": request.trigger,
        "reason": request.reason,
        "status": status,
        "images": len(request.subjects),
        "request": {
            kind: sorted(key.hash(kind, v) for v in values)
            for kind, values in request.named.items()
        },
        "image_hashes": sorted(key.hash(By.SHA256.value, s.sha256) for s in request.subjects),
        "erased": {name: total(held) for name, held in erased.items()},
        "verification": {
            "passed": not any(left.values()),
            "left": {name: total(held) for name, held in left.items() if held},
        },
        "tool": f"anonlab {_version()}",
    }


def _version() -> str:
    try:
        return version("anonlab")
    except PackageNotFoundError:
        return "unknown"
