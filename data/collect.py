"""The collect stage: gather images from every configured source into a content-addressed store.

Each file found ends up in exactly one of these places, and the counts add up:
- `manifest.jsonl`: the first file with a given content (sha256), stored once under
  `images/<sha256[:2]>/<sha256>.<ext>`;
- `duplicates.jsonl`: every further file with content already in the store;
- `quarantine.jsonl`: files that are not whole, supported images, with the reason, and folders
  that could not be listed (reason `unlisted`);
- counted only, with no row (a row would name erased or overdue data): `erased_skipped`, files
  whose content was erased (audit/tombstones.jsonl holds it: collect never takes erased
  content back in, even while a source still holds it), and `expired`, files new to the store
  that are already past their `delete_after` when found (captured more than `retention_days`
  ago). Both are read again on every run, since nothing records that they were seen.

The manifest mirrors the configured sources: content no longer found in any source leaves the
manifest and its stored copy is deleted (raw imagery is personal data; keep no more than the
sources hold). Only a complete listing shows that a file is gone: the records of a source whose
listing was empty or had folders it could not list (allowed by `allow_empty`,
`allow_unreadable`) are carried over unchanged (unless their content was erased), so
`seen + unlisted + carried_over = images + duplicates + quarantined + erased_skipped + expired`.
Re-runs are incremental: a file whose path and version (size + modification time, or ETag) are
unchanged is not read again; a file whose size changed between listing and reading is recorded
as read, with a version that makes the next run read it again.

Retention: every record carries `delete_after`, counted from its capture time when known, else
from `collected_at` (when its content first entered the store); data.retention has the rule and
the clock. It is recomputed for every record on each run, so a changed `retention_days` applies
to the whole store; a stored image now past it stays in the manifest (a warning and the count
`overdue`) until `anonlab retention` erases it everywhere; the later stages refuse to run
meanwhile.

What is not taken in, and when the audit key is needed: data.intake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image

from data import atomic, retention
from data.collect_report import CollectReport
from data.config import CollectConfig, TaxonomyConfig
from data.errors import AnonlabError
from data.headline import collect_headline
from data.image_info import STORE_EXTENSION, BadImage, ImageInfo, inspect_image
from data.intake import ERASED, EXPIRED, Intake
from data.manifest import (
    DuplicateRecord,
    ManifestRecord,
    QuarantineRecord,
    from_row,
    read_manifest,
    write_manifest,
)
from data.sources import SYNTHETIC, Unlisted, list_source
from data.stage_paths import (
    DUPLICATES,
    HEADLINE,
    IMAGES,
    MANIFEST,
    METRICS,
    QUARANTINE,
    RELATIVE,
    SYNTHETIC_EXPORT,
)
from serving.runtime.progress import bar

log = logging.getLogger(__name__)

# Label Studio serves local files under this URL, relative to its document root: the
# artifacts folder (see annotate serve).
LABEL_STUDIO_LOCAL_FILES = f"/data/local-files/?d={RELATIVE.raw.folder.as_posix()}/"
# Quarantine reason of a folder that could not be listed.
UNLISTED = "unlisted"
# The version of a file whose size changed while it was collected: no listing gives it, so the
# next run reads the file again.
CHANGED_WHILE_READ = "changed-while-read"


@dataclass
class _Candidate:
    """A file to examine: where it is, and how to read it when it must be read."""

    source: str
    url: str
    session: str
    size: int
    version: str
    read: Callable[[], bytes]
    extra: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] | None = None  # synthetic: its ground truth as a Label Studio task

    def origin(self, out: _Outcome) -> dict[str, Any]:
        """The fields every record of this file starts with: where it came from, and the size
        and version of what `out` read (the listed ones when it read nothing)."""
        return {
            "source": self.source,
            "source_path": self.url,
            "session": self.session,
            "size": self.size if out.size is None else out.size,
            "source_version": out.version or self.version,
        }


@dataclass
class _Outcome:
    sha256: str | None = None
    info: ImageInfo | None = None
    bad: BadImage | None = None
    reread: bool = True
    size: int | None = None  # bytes read; None: not read
    version: str | None = None  # set when what was read is not what was listed
    refused: str | None = None  # ERASED or EXPIRED: not stored, no row written


@dataclass
class _Sources:
    """What the listings of all sources gave."""

    candidates: list[_Candidate]
    incomplete: list[str]  # labels of the sources whose listing was empty or had errors
    unlisted: list[tuple[str, Unlisted]]  # (source label, folder)


def run_collect(
    cfg: CollectConfig, raw_dir: Path, *, taxonomy: TaxonomyConfig, root: Path
) -> CollectReport:
    """Collect every source of `cfg` into `raw_dir` (`<artifacts>/raw`: the tombstones are
    `<artifacts>/audit/tombstones.jsonl`); return the counts, also in metrics.json."""
    raw_dir = Path(raw_dir)
    now = retention.now().replace(microsecond=0)
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # Pillow's own bomb guard at our limit
    previous = _Previous.load(raw_dir)
    keep = timedelta(days=cfg.retention_days)
    intake = Intake.of(raw_dir.parent, previous.manifest.keys(), now, keep)
    report = CollectReport()

    listed = _candidates(cfg, taxonomy, root, report)
    candidates = listed.candidates

    def examine(c: _Candidate) -> _Outcome:
        cached = previous.outcome(c, raw_dir)
        if cached is None:
            return _examine(c, raw_dir, cfg.max_pixels, intake)
        if cached.sha256 is not None and intake.erased(cached.sha256):
            cached.refused = ERASED  # erased while the raw manifest still named it
        return cached

    manifest: dict[str, ManifestRecord] = {}
    duplicates: list[DuplicateRecord] = []
    quarantine: list[QuarantineRecord] = []
    tasks: list[dict[str, Any]] = []
    progress = bar(total=len(candidates), desc="collect", unit="file")
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for c, out in zip(candidates, pool.map(examine, candidates), strict=True):
            progress.update(1)
            report.seen += 1
            report.seen_by_source[c.source] = report.seen_by_source.get(c.source, 0) + 1
            report.unchanged += 0 if out.reread else 1
            if out.refused is not None:
                report.erased_skipped += out.refused == ERASED
                report.expired += out.refused == EXPIRED
            elif out.bad is not None:
                old = previous.quarantine.get((c.source, c.url))
                quarantine.append(
                    QuarantineRecord(
                        **c.origin(out),
                        reason=out.bad.reason,
                        detail=out.bad.detail,
                        quarantined_at=old.quarantined_at if old else now.isoformat(),
                    )
                )
            elif out.sha256 in manifest:
                duplicates.append(
                    DuplicateRecord(
                        sha256=out.sha256,
                        duplicate_of=manifest[out.sha256].source_path,
                        **c.origin(out),
                    )
                )
            else:
                assert out.sha256 is not None and out.info is not None
                first = previous.manifest.get(out.sha256)
                collected_at = datetime.fromisoformat(first.collected_at) if first else now
                manifest[out.sha256] = _record(c, out, collected_at, keep)
                report.new += first is None
                if c.task is not None:
                    tasks.append(c.task)
            progress.set_postfix(
                new=report.new,
                dup=len(duplicates),
                quarantined=len(quarantine),
                refresh=False,
            )
    progress.close()

    for label, folder in listed.unlisted:
        old = previous.quarantine.get((label, folder.url))
        quarantine.append(
            QuarantineRecord(
                source=label,
                source_path=folder.url,
                session=folder.session,
                size=0,
                source_version="",
                reason=UNLISTED,
                detail=f"the folder cannot be listed ({folder.error}); its files were not "
                "collected, and nothing this source stored before was removed",
                quarantined_at=old.quarantined_at if old else now.isoformat(),
            )
        )
    report.unlisted = len(listed.unlisted)
    seen = {(c.source, c.url) for c in candidates}
    for label in listed.incomplete:
        n, erased = _carry_over(previous, label, seen, manifest, duplicates, quarantine, intake)
        report.incomplete_sources[label] = n
        report.carried_over += n
        report.erased_skipped += erased
        if n:
            log.warning("%s: not listed completely; %d record(s) kept as they were", label, n)

    # Recomputed for every record: a changed retention_days applies to the whole store.
    manifest = {
        sha: dataclasses.replace(r, delete_after=retention.record_delete_after(r, keep))
        for sha, r in manifest.items()
    }
    due = retention.overdue({sha: r.delete_after for sha, r in manifest.items()}, now)
    report.overdue = due.count if due else 0
    report.images = len(manifest)
    report.duplicate = len(duplicates)
    report.quarantined = len(quarantine)
    report.quarantined_by_reason = dict(Counter(q.reason for q in quarantine))
    removed = [r for sha, r in previous.manifest.items() if sha not in manifest]
    report.removed = len(removed)
    assert report.seen + report.unlisted + report.carried_over == (
        report.images
        + report.duplicate
        + report.quarantined
        + report.erased_skipped
        + report.expired
    )

    write_manifest(raw_dir / MANIFEST, list(manifest.values()))
    atomic.write_jsonl(raw_dir / DUPLICATES, (d.to_dict() for d in duplicates))
    atomic.write_jsonl(raw_dir / QUARANTINE, (q.to_dict() for q in quarantine))
    # Written even when empty, so the file a pipeline declares is always there.
    atomic.write_json(raw_dir / SYNTHETIC_EXPORT, tasks)
    atomic.write_json(raw_dir / METRICS, report.to_dict())
    atomic.write_json(raw_dir / HEADLINE, collect_headline(report.to_dict()))
    for r in removed:  # only once the new manifest no longer names them
        (raw_dir / r.path).unlink(missing_ok=True)
    if quarantine:
        log.warning("%d file(s) quarantined, see %s", len(quarantine), raw_dir / QUARANTINE)
    if report.erased_skipped:
        log.warning("%d file(s) skipped: their content was erased", report.erased_skipped)
    if report.expired:
        log.warning(
            "%d file(s) not taken in: already past delete_after (captured more than %d days ago)",
            report.expired,
            cfg.retention_days,
        )
    if due:
        log.warning(
            "%d stored image(s) past delete_after (the earliest %s): run `%s`",
            due.count,
            due.earliest.isoformat(),
            retention.RETENTION_COMMAND,
        )
    return report


def _candidates(
    cfg: CollectConfig, taxonomy: TaxonomyConfig, root: Path, report: CollectReport
) -> _Sources:
    """Every file of every source, in config order then path order; a file listed twice under
    one source name counts once. Raises before anything is written when a source may not be
    collected (see `list_source`)."""
    candidates: dict[tuple[str, str], _Candidate] = {}
    incomplete: list[str] = []
    unlisted: list[tuple[str, Unlisted]] = []
    for i, src in enumerate(cfg.sources):
        if src.uri == SYNTHETIC:
            found = list(_synthetic_candidates(cfg, src.label, taxonomy))
        else:
            listing = list_source(src, f"collect.sources[{i}]", root)
            report.ignored += listing.ignored
            if not listing.complete and src.label not in incomplete:
                incomplete.append(src.label)
            unlisted += [(src.label, u) for u in listing.unlisted]
            found = [
                _Candidate(
                    source=src.label,
                    url=f.url,
                    session=f.session,
                    size=f.size,
                    version=f.version,
                    read=_reader(listing.fs, f.path),
                )
                for f in listing.files
            ]
        for c in found:
            candidates.setdefault((c.source, c.url), c)
    return _Sources(list(candidates.values()), incomplete, unlisted)


def _carry_over(
    previous: _Previous,
    label: str,
    seen: set[tuple[str, str]],
    manifest: dict[str, ManifestRecord],
    duplicates: list[DuplicateRecord],
    quarantine: list[QuarantineRecord],
    intake: Intake,
) -> tuple[int, int]:
    """Add the last run's records of source `label` that this run did not see, as they were;
    return how many there were, and how many of them were dropped as erased content. Content
    that another file now holds makes a record a duplicate, and a duplicate whose content no
    longer has a holder becomes the holder: either way the content stays in the store."""

    def unseen(r: ManifestRecord | DuplicateRecord | QuarantineRecord) -> bool:
        return r.source == label and (r.source, r.source_path) not in seen

    n = erased = 0
    for r in previous.manifest.values():
        if not unseen(r):
            continue
        n += 1
        if intake.erased(r.sha256):
            erased += 1
            continue
        holder = manifest.get(r.sha256)
        if holder is None:
            manifest[r.sha256] = r
        else:
            duplicates.append(
                DuplicateRecord(
                    sha256=r.sha256,
                    duplicate_of=holder.source_path,
                    source=r.source,
                    source_path=r.source_path,
                    session=r.session,
                    size=r.size,
                    source_version=r.source_version,
                )
            )
    for d in previous.duplicates:
        if not unseen(d):
            continue
        n += 1
        if intake.erased(d.sha256):
            erased += 1
            continue
        holder = manifest.get(d.sha256)
        first = previous.manifest.get(d.sha256)
        if holder is None and first is not None:
            manifest[d.sha256] = dataclasses.replace(
                first,
                source=d.source,
                source_path=d.source_path,
                session=d.session,
                size=d.size,
                source_version=d.source_version,
                extra={},
            )
        else:
            duplicate_of = holder.source_path if holder else d.duplicate_of
            duplicates.append(dataclasses.replace(d, duplicate_of=duplicate_of))
    for q in previous.quarantine.values():
        if unseen(q) and q.reason != UNLISTED:  # folders are listed again each run
            n += 1
            quarantine.append(q)
    return n, erased


def _reader(fs: Any, path: str) -> Callable[[], bytes]:
    return lambda: fs.cat_file(path)


def _examine(c: _Candidate, raw_dir: Path, max_pixels: int, intake: Intake) -> _Outcome:
    """Read, hash, verify and store one file (runs in a worker thread); erased or expired
    content (`intake`) is not stored."""
    try:
        data = c.read()
    except OSError as e:
        return _Outcome(bad=BadImage("unreadable", f"cannot read the file: {e}"))
    sha = hashlib.sha256(data).hexdigest()
    if intake.erased(sha):  # before anything is logged of it
        return _Outcome(sha256=sha, size=len(data), refused=ERASED)
    version = None
    if len(data) != c.size:
        version = CHANGED_WHILE_READ
        log.warning(
            "%s: %d bytes when listed, %d when read: it changed while being collected; "
            "recorded as read, and read again on the next run",
            c.url,
            c.size,
            len(data),
        )
    try:
        info = inspect_image(data, c.url, max_pixels)
    except BadImage as e:
        return _Outcome(bad=e, size=len(data), version=version)
    if intake.expired(sha, info.captured_at, c.extra):
        return _Outcome(sha256=sha, info=info, size=len(data), refused=EXPIRED)
    target = raw_dir / _store_path(sha, info.format)
    if not target.exists():
        atomic.write_bytes(target, data)
    return _Outcome(sha256=sha, info=info, size=len(data), version=version)


def _store_path(sha: str, fmt: str) -> str:
    return f"{IMAGES}/{sha[:2]}/{sha}{STORE_EXTENSION[fmt]}"


def _record(
    c: _Candidate, out: _Outcome, collected_at: datetime, keep: timedelta
) -> ManifestRecord:
    sha, info = out.sha256, out.info
    assert sha is not None and info is not None
    return ManifestRecord(
        sha256=sha,
        path=_store_path(sha, info.format),
        **c.origin(out),
        width=info.width,
        height=info.height,
        format=info.format,
        bit_depth=info.bit_depth,
        channels=info.channels,
        collected_at=collected_at.isoformat(),
        delete_after=retention.delete_after(
            collected_at, retention.capture_time(info.captured_at, c.extra), keep
        ).isoformat(),
        orientation=info.orientation,
        stored_width=info.stored_width,
        stored_height=info.stored_height,
        captured_at=info.captured_at,
        has_gps=info.has_gps,
        extra=c.extra,
    )


def _synthetic_candidates(
    cfg: CollectConfig, label: str, taxonomy: TaxonomyConfig
) -> Iterator[_Candidate]:
    """The synthetic source's images, generated now; each carries its ground-truth task."""
    from data.synthetic import generate, labelstudio_task

    unknown = {"face", "person", "license_plate", "vehicle"} - set(taxonomy.classes)
    if unknown:
        raise AnonlabError(
            f"the synthetic source draws {sorted(unknown)}, which taxonomy.classes lacks; "
            "add them or remove `synthetic` from collect.sources"
        )
    for img in generate(cfg.synthetic):
        data = img.encode()
        sha = hashlib.sha256(data).hexdigest()
        # The task is made now, so that the image and its masks are freed as we go.
        url = LABEL_STUDIO_LOCAL_FILES + _store_path(sha, "JPEG")
        yield _Candidate(
            source=label,
            url=f"synthetic://{cfg.synthetic.seed}/{img.name}",
            session=img.session,
            size=len(data),
            version=f"sha256:{sha}",
            read=lambda data=data: data,
            extra={"synthetic": {"index": img.index, "kind": img.kind}},
            task=labelstudio_task(img, url, img.index + 1),
        )


@dataclass
class _Previous:
    """What the last run recorded, to skip files that have not changed since."""

    manifest: dict[str, ManifestRecord]
    duplicates: list[DuplicateRecord]
    by_url: dict[tuple[str, str], tuple[str, str]]  # (source, url) -> (version, sha256)
    quarantine: dict[tuple[str, str], QuarantineRecord]

    @classmethod
    def load(cls, raw_dir: Path) -> _Previous:
        try:
            records = read_manifest(raw_dir / MANIFEST)
            dups = [from_row(DuplicateRecord, r) for r in atomic.read_jsonl(raw_dir / DUPLICATES)]
            quarantined = [
                from_row(QuarantineRecord, r) for r in atomic.read_jsonl(raw_dir / QUARANTINE)
            ]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise AnonlabError(
                f"the previous collect outputs in {raw_dir} are damaged ({e}); move the folder "
                "away and collect again"
            ) from None
        by_url = {(r.source, r.source_path): (r.source_version, r.sha256) for r in records}
        by_url.update({(d.source, d.source_path): (d.source_version, d.sha256) for d in dups})
        return cls(
            manifest={r.sha256: r for r in records},
            duplicates=dups,
            by_url=by_url,
            quarantine={(q.source, q.source_path): q for q in quarantined},
        )

    def outcome(self, c: _Candidate, raw_dir: Path) -> _Outcome | None:
        """The last run's verdict on `c` when `c` is unchanged and its stored copy is there."""
        key = (c.source, c.url)
        q = self.quarantine.get(key)
        # A read error may be passing (a network hiccup): such files are tried again.
        if q is not None and q.source_version == c.version and q.reason != "unreadable":
            return _Outcome(bad=BadImage(q.reason, q.detail), reread=False)
        version, sha = self.by_url.get(key, (None, None))
        record = self.manifest.get(sha) if sha else None
        if version != c.version or record is None or not (raw_dir / record.path).exists():
            return None
        if record.stored_width is None or record.stored_height is None:
            return None  # recorded by hand, without its stored size: inspected again
        info = ImageInfo(
            format=record.format,
            width=record.width,
            height=record.height,
            bit_depth=record.bit_depth,
            channels=record.channels,
            orientation=record.orientation,
            captured_at=record.captured_at,
            has_gps=record.has_gps,
            stored_width=record.stored_width,
            stored_height=record.stored_height,
        )
        return _Outcome(sha256=sha, info=info, reread=False)
