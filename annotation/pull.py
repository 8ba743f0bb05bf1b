"""`anonlab annotate pull`: take the annotators' work back as an immutable snapshot and COCO.

The raw export (from the server, or a Label Studio JSON export file when
`annotation.source=export`) is kept byte for byte under `annotations/snapshots/`, named by time
and content hash; a snapshot is never overwritten, and pulling unchanged content reuses the
snapshot it already has. Erasure (`anonlab erase`, `anonlab retention`; annotation.erasure) is
the one exception: it may redact a snapshot, rewriting it without an erased image's tasks under
the same name (whose hash is then that of the export before) and read-only as before. The
export is then converted to `annotations/coco.json` (one entry per line: data.coco.layout) for
the images review kept, in the frame annotators drew in: the image upright (EXIF orientation
applied), whose size is the manifest's `width` and `height`. Everything that was not converted
as-is is listed in `annotations/pull_report.json` with task ids: skipped, cancelled or
conflicting tasks, degenerate geometry, keypoints that fit no person, tasks whose image review
rejected. A pull that fails (server gone mid-export, malformed export) writes nothing: the
previous snapshot and COCO file stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

from annotation.config import AnnotationConfig
from annotation.convert import ImageRef, to_coco
from annotation.convert.tasks import check_export
from data import atomic
from data.coco import layout as coco_layout
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.headline import annotate_headline
from data.manifest import read_reviewed
from data.stage_paths import PULL_REPORT, RELATIVE, SNAPSHOTS, StagePaths

log = logging.getLogger(__name__)


@dataclass
class PullReport:
    snapshot: Path
    new_snapshot: bool
    tasks: int
    images: int
    objects: dict[str, int]
    not_reviewed: list[int]  # task ids whose image review rejected (or never saw)
    issues: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"pull: {self.tasks} tasks -> {self.images} images in COCO "
            f"({', '.join(f'{n} {c}' for c, n in self.objects.items())})",
            f"  snapshot: {self.snapshot.name} ({'new' if self.new_snapshot else 'unchanged'})",
        ]
        if self.not_reviewed:
            lines.append(f"  left out, image not kept by review: {len(self.not_reviewed)} tasks")
        for kind, n in sorted(self.issues.items()):
            lines.append(f"  {kind}: {n}  (task ids in {PULL_REPORT})")
        return "\n".join(lines)


def run_pull(
    cfg: AnnotationConfig, taxonomy: TaxonomyConfig, artifacts: Path, root: Path
) -> PullReport:
    """Snapshot the export and convert it to COCO under `artifacts/annotations/`."""
    reviewed = read_reviewed(artifacts)
    raw, origin = _fetch(cfg, root)
    tasks = _parse(raw, origin)

    by_sha = {r.sha256: r for r in reviewed}
    kept_tasks, not_reviewed = [], []
    for task in tasks:
        sha = image_sha256(task)
        (kept_tasks if sha in by_sha else not_reviewed).append(task)

    def resolve(task: dict[str, Any]) -> ImageRef | None:
        rec = by_sha.get(image_sha256(task) or "")
        if rec is None:
            return None
        # The upright size: Label Studio shows the image as a viewer does.
        return ImageRef(
            (RELATIVE.raw.folder / rec.path).as_posix(), rec.width, rec.height, rec.sha256
        )

    conversion = to_coco(
        kept_tasks, classes=taxonomy.classes, keypoints=taxonomy.keypoints, resolve_image=resolve
    )

    out = StagePaths(artifacts).annotations
    snapshot, new = _snapshot(out.snapshots, raw)
    conversion.coco.setdefault("info", {})["snapshot"] = f"{SNAPSHOTS}/{snapshot.name}"
    issues = [vars(i) for i in conversion.issues]
    issues += [
        {"task_id": t.get("id"), "kind": "not_reviewed", "detail": "review did not keep its image"}
        for t in not_reviewed
    ]
    objects = Counter(
        c["name"]
        for a in conversion.coco["annotations"]
        for c in conversion.coco["categories"]
        if c["id"] == a["category_id"]
    )
    report = PullReport(
        snapshot=snapshot,
        new_snapshot=new,
        tasks=len(tasks),
        images=len(conversion.coco["images"]),
        objects={c: objects.get(c, 0) for c in taxonomy.classes},
        not_reviewed=[t.get("id") for t in not_reviewed],
        issues=dict(Counter(i["kind"] for i in issues)),
    )
    coco_layout.write(out.coco, conversion.coco)
    atomic.write_json(out.pull_report, {"source": origin, "issues": issues})
    metrics = {
        "tasks": report.tasks,
        "images": report.images,
        "objects": report.objects,
        "issues": report.issues,
        "conversion": conversion.counts,
    }
    atomic.write_json(out.metrics, metrics)
    atomic.write_json(out.headline, annotate_headline(metrics))
    if issues:
        log.warning("pull: %d issue(s), see %s", len(issues), out.pull_report)
    return report


def image_sha256(task: dict[str, Any]) -> str | None:
    """The store's content hash named by a task's image URL (`.../images/ab/<sha256>.jpg`)."""
    url = str((task.get("data") or {}).get("image", ""))
    parsed = urlparse(url)
    path = parse_qs(parsed.query).get("d", [parsed.path])[0]
    stem = PurePosixPath(path).stem
    return stem if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) else None


def _fetch(cfg: AnnotationConfig, root: Path) -> tuple[bytes, str]:
    """The export's raw bytes, and where they came from."""
    if cfg.source == "export":
        path = (root / cfg.export_file).resolve()
        if not path.is_file():
            raise AnonlabError(
                f"annotation.export_file: {path} not found. Export the project from Label Studio "
                "as JSON, or set annotation.source=server"
            )
        return path.read_bytes(), str(path)
    from annotation.client import connect

    client = connect(cfg)
    try:
        tasks = client.export_tasks(client.require_project(cfg.project_title))
    finally:
        client.close()
    return json.dumps(tasks, ensure_ascii=False, indent=1).encode("utf-8"), cfg.url


def _parse(raw: bytes, origin: str) -> list[dict[str, Any]]:
    try:
        tasks = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnonlabError(
            f"{origin}: not a Label Studio JSON export ({e}); nothing written"
        ) from None
    try:
        check_export(tasks)
    except AnonlabError as e:
        raise AnonlabError(f"{origin}: {e}; nothing written") from None
    return tasks


def _snapshot(folder: Path, raw: bytes) -> tuple[Path, bool]:
    """Keep `raw` as an immutable snapshot; reuse the existing one with the same content."""
    digest = hashlib.sha256(raw).hexdigest()[:16]
    existing = sorted(folder.glob(f"*-{digest}.json")) if folder.is_dir() else []
    if existing:
        return existing[-1], False
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{digest}.json"
    atomic.write_bytes(path, raw)
    path.chmod(0o444)  # a snapshot is a record of what annotators did: read-only
    return path, True
