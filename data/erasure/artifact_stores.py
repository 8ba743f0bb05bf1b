"""The stores under the artifacts folder: the raw store and the outputs of the data stages, the
blurred copies, and files an interrupted command left behind. (Label Studio's files, evaluate's
outputs, the DVC cache and MLflow have their own stores beside their owners.)

What each looks at, so that erasing one image reads no more than the files that can name it:
- `raw`: `images/<sha[:2]>/<sha>.*`; the rows of `manifest.jsonl`, `duplicates.jsonl` and
  `quarantine.jsonl` that belong to the image (or name one of its source paths).
- `reviewed`: the rows of `manifest.jsonl` and `rejected.jsonl`; the figures of `report.html`
  that show the image (data.report_figures).
- `annotations`: the image and its objects in `coco.json`.
- `prepared`: the image and its objects (or its tiles and theirs) in `train.json`, `val.json`
  and `refs/*.json`; the tile files `tiles/<sha>-*`.
- `blurred`: files under `blurred/` whose name holds the sha256; sidecars (JSON) and blur ledger
  rows (JSON lines) naming it, and the copies they describe.
- `temp`: leftovers of interrupted writes (`.<name>.*.tmp`, `.<name>.*.staging/`,
  `.<name>.old/`) in the stage folders and the image's shard of the raw store, that are named by
  the image or hold one of its needles.

Aggregates (`metrics.json`, `stats.json`, `sizes.json`) count images but name none: they are
left as their stage computed them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.erasure import files
from data.erasure.stores import Held, Scanned, Store
from data.erasure.subjects import Subject
from data.stage_paths import StagePaths

_LEFTOVER = re.compile(r"\..+\.(tmp|staging|old)")


@dataclass(frozen=True)
class RawStore(Scanned):
    artifacts: Path
    name: str = "raw"

    def _images(self, subjects: Sequence[Subject]) -> list[Path]:
        folder = StagePaths(self.artifacts).raw.images
        found: list[Path] = []
        for s in subjects:
            shard = folder / s.sha256[:2]
            found += sorted(shard.glob(f"{s.sha256}.*")) if shard.is_dir() else []
        return found

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        raw = StagePaths(self.artifacts).raw
        held = files.named_files(self._images(subjects), self.artifacts, "image", write=write)
        for path, what in (
            (raw.manifest, "manifest rows"),
            (raw.duplicates, "duplicate rows"),
            (raw.quarantine, "quarantine rows"),
        ):
            held += files.jsonl_rows(path, self.artifacts, subjects, what, write=write)
        return held


@dataclass(frozen=True)
class ReviewedStore(Scanned):
    artifacts: Path
    name: str = "reviewed"

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        reviewed = StagePaths(self.artifacts).reviewed
        root = self.artifacts
        return [
            *files.jsonl_rows(reviewed.manifest, root, subjects, "manifest rows", write=write),
            *files.jsonl_rows(reviewed.rejected, root, subjects, "rejection rows", write=write),
            *files.html_report(reviewed.report, root, subjects, write=write),
        ]


@dataclass(frozen=True)
class AnnotationsStore(Scanned):
    artifacts: Path
    name: str = "annotations"

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        coco = StagePaths(self.artifacts).annotations.coco
        return files.coco_file(coco, self.artifacts, subjects, write=write)


@dataclass(frozen=True)
class PreparedStore(Scanned):
    artifacts: Path
    name: str = "prepared"

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        prepared = StagePaths(self.artifacts).prepared
        held: list[Held] = []
        for split in prepared.splits():
            held += files.coco_file(prepared.dataset(split), self.artifacts, subjects, write=write)
        held += files.named_files(
            _tiles(prepared.tiles, subjects), self.artifacts, "tiles", write=write
        )
        return held


def _tiles(folder: Path, subjects: Sequence[Subject]) -> list[Path]:
    """The tile files of the images (`<sha256>-<x>-<y>.<ext>`), in one listing of the folder."""
    if not folder.is_dir():
        return []
    prefixes = tuple(f"{s.sha256}-" for s in subjects)
    return sorted(Path(e.path) for e in os.scandir(folder) if e.name.startswith(prefixes))


@dataclass(frozen=True)
class BlurredStore(Scanned):
    """`blurred/`: where the demo writes `anonlab blur` outputs. An anonymized copy still holds
    what the models missed, and its metadata (GPS) is kept as the original's. An image's copy is
    found by its name (the sha256), by its sidecar (`<name>.json`, naming the input), or by its
    row in a blur ledger (`*.jsonl`: the input, its sha256 and the output); the copy goes with
    its sidecar and mask (`<name>.mask.png`), and the ledger rows after them."""

    artifacts: Path
    name: str = "blurred"

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        root = StagePaths(self.artifacts).blurred
        if not root.is_dir():
            return []
        shas = files.shas(subjects)
        named: list[Path] = []
        ledgers: list[Path] = []
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if any(s in name for s in shas):
                    named.append(path)
                elif name.endswith(".json") and files.holding(path, subjects):
                    named += _copy(path.with_name(name.removesuffix(".json")))
                elif name.endswith(".jsonl") and (rows := files.rows_holding(path, subjects)):
                    ledgers.append(path)
                    outputs = [r.get("output") for r in rows]
                    named += [
                        x for o in outputs if o for x in _copy(Path(o)) if x.is_relative_to(root)
                    ]
        unique = sorted(set(named))
        held = files.named_files(unique, self.artifacts, "anonymized copy or sidecar", write=write)
        for ledger in ledgers:  # after the copies its rows point to
            held += files.jsonl_rows(ledger, self.artifacts, subjects, "ledger rows", write=write)
        return held


def _copy(image: Path) -> list[Path]:
    """An anonymized copy and what `anonlab blur` writes beside it: its sidecar and mask."""
    return [image, image.with_name(image.name + ".json"), image.with_name(image.name + ".mask.png")]


@dataclass(frozen=True)
class TempStore(Scanned):
    """Leftovers of interrupted atomic writes (data.atomic): a temp file beside its final name,
    a staging or old copy of a stage's folder. Only those that hold something of the images
    are erased: the next run of their stage removes the others."""

    artifacts: Path
    name: str = "temp"

    def _folders(self, subjects: Sequence[Subject]) -> list[Path]:
        """Where an interrupted write leaves debris: every folder under artifacts except the
        large content folders (the raw store's shards, the tiles, blurred/: the `raw` and
        `blurred` stores see those by name), plus the images' own shards."""
        paths = StagePaths(self.artifacts)
        content = {paths.raw.images, paths.prepared.tiles, paths.blurred}
        folders = []
        for folder, dirs, _ in os.walk(self.artifacts):
            dirs[:] = [
                d for d in dirs if Path(folder, d) not in content and not _LEFTOVER.fullmatch(d)
            ]
            folders.append(Path(folder))
        folders += [paths.raw.images / s.sha256[:2] for s in subjects]
        return [f for f in folders if f.is_dir()]

    def _debris(self, subjects: Sequence[Subject]) -> list[Path]:
        shas = files.shas(subjects)
        found: list[Path] = []
        for folder in self._folders(subjects):
            for entry in os.scandir(folder):
                if not _LEFTOVER.fullmatch(entry.name):
                    continue
                paths = (
                    [Path(d, n) for d, _, ns in os.walk(entry.path) for n in ns]
                    if entry.is_dir(follow_symlinks=False)
                    else [Path(entry.path)]
                )
                found += [
                    p
                    for p in paths
                    if any(s in p.name for s in shas) or files.read_if_holding(p, subjects)
                ]
        return found

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        return files.named_files(self._debris(subjects), self.artifacts, "leftover", write=write)


def artifact_stores(artifacts: Path) -> list[Store]:
    """The stores of the artifacts folder, downstream first (a derived file goes before what it
    was derived from: a re-run after a crash still finds every trace)."""
    return [
        PreparedStore(artifacts),
        AnnotationsStore(artifacts),
        ReviewedStore(artifacts),
        RawStore(artifacts),
        BlurredStore(artifacts),
        TempStore(artifacts),
    ]
