"""The DVC cache and its remotes as erasure stores: `dvc-cache` (the local cache, wherever
`cache.dir` points) and `dvc-remote:<name>` for each configured remote (a local path, S3, any
remote DVC can reach, through DVC's own filesystems and credentials).

What is searched: every version of an output that DVC can restore. That is the outputs of the
workspace (`dvc.yaml` + `dvc.lock`, `.dvc` files, through DVC's API), the `dvc.lock` and `.dvc`
files of every git commit reachable from any ref (branches, tags, `refs/exps/*` experiments,
merges included), and the run cache (`runs/`) of the store itself. Of each version:

- a directory output's `.dir` listing is read (relpath + md5 of each file); an entry whose
  relpath holds one of `Subject.needles()` (a tile `<sha256>-<x>-<y>.jpg`, an image
  `<sha256>.jpg`) is held, and so is the `.dir` object, since its listing names the image;
- a file, or a directory's entry, whose name ends in a text suffix (`.json`, `.jsonl`, `.html`,
  `.csv`, ...: manifests, COCO files, snapshots, reports) is read and held when its bytes
  contain one of `Subject.needles()`;
- nothing else is read: an image's pixels are found by its name, and model weights, ONNX files
  and other binary objects hold no identifier of an image. This is what keeps an erasure
  targeted (benchmarks/erase_speed.py).

Erasing deletes the held objects, the files of a directory first and its `.dir` listing last
(a listing deleted first would leave its files unfindable if the erasure were killed). The other
files of that directory stay in the cache, unchanged; that version of the directory can no longer
be checked out whole. Another file with the same bytes as a removed one shares its object and
loses it too. The local store also removes the rows of DVC's state databases in its site cache
dir (file hashes, links and the data index, keyed by workspace path) whose path names the image.

What is not searched: objects that no version above references (left by `dvc add` or a run
whose outputs were never committed to git). Run `dvc gc --workspace --all-branches --all-tags
--all-experiments --all-commits` (with `--cloud` for the remote) first to remove them, or build
the stores with `full_scan=True`, which reads every object and parses every `.dir` listing
(slow: what an erasure costs without knowing where the image is).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from data.erasure.stores import Held
from data.erasure.subjects import Subject
from data.errors import AnonlabError

log = logging.getLogger(__name__)

# Files whose bytes can name an image (manifests, COCO, snapshots, reports, predictions).
TEXT_SUFFIXES = frozenset(
    {".json", ".jsonl", ".html", ".htm", ".csv", ".tsv", ".txt", ".yaml", ".yml", ".xml", ".md"}
)
_TEXT_ENDINGS = tuple(TEXT_SUFFIXES)
LEGACY_HASH = "md5-dos2unix"  # DVC 2's hashes: objects in the cache's old layout (<xx>/<rest>)
_LOCK_PATHSPECS = (":(glob)**/dvc.lock", ":(glob)**/*.dvc")
_NO_BLOB = "0" * 40


@dataclass(frozen=True)
class Output:
    """One version of an output, as recorded: its path (for messages) and its object id."""

    path: str
    oid: str  # md5; a directory's ends in `.dir`
    legacy: bool = False  # recorded with DVC 2's hash: its object is in the old layout

    @property
    def is_dir(self) -> bool:
        return self.oid.endswith(".dir")


def lock_outputs(text: str, base: str = "") -> list[Output]:
    """The outputs a `dvc.lock`, a `.dvc` file or a run-cache entry records, with their paths
    joined to `base` (the folder of the file that records them)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(doc, dict):
        return []
    entries = [doc] if "outs" in doc else list((doc.get("stages") or {}).values())
    found = []
    for entry in entries:
        outs = entry.get("outs") if isinstance(entry, dict) else None
        for out in outs if isinstance(outs, list) else []:
            md5 = out.get("md5") if isinstance(out, dict) else None
            if isinstance(md5, str) and md5:
                path = os.path.join(base, str(out.get("path", "")))
                found.append(Output(path, md5, legacy=out.get("hash") != "md5"))
    return found


class Needles:
    """The byte strings that mark something of the subjects (each searched with a plain
    substring search, much faster on large files than one alternation of them all)."""

    def __init__(self, subjects: Sequence[Subject]) -> None:
        self.marks = sorted({n for s in subjects for n in s.needles() if n})
        self.ascii = all(n.isascii() for n in self.marks)  # as JSON writes them, unescaped

    def in_bytes(self, data: bytes) -> bool:
        return any(n in data for n in self.marks)

    def in_name(self, name: str) -> bool:
        return self.in_bytes(name.encode())


class Versions:
    """Every output version DVC can restore from a repository's workspace and git history, read
    once (an erasure does not change them)."""

    def __init__(self, repo: Any, root: Path) -> None:
        self.repo = repo
        self.root = root

    @cached_property
    def outputs(self) -> list[Output]:
        found = {*self._workspace(), *self._history()}
        log.debug("%d output versions recorded in %s", len(found), self.root)
        return sorted(found, key=lambda o: (o.path, o.oid))

    def _workspace(self) -> Iterator[Output]:
        try:
            outs = list(self.repo.index.outs)
        except Exception as e:  # DVC raises many kinds for a broken dvc.yaml
            raise AnonlabError(
                f"{self.root}: DVC cannot read the pipeline ({e}); fix dvc.yaml / dvc.lock "
                "(`dvc status` shows the error) and erase again"
            ) from None
        for out in outs:
            info = out.hash_info
            if out.use_cache and info and info.value:
                path = os.path.relpath(out.fs_path, self.root)
                yield Output(path, info.value, legacy=info.name == LEGACY_HASH)

    def _history(self) -> Iterator[Output]:
        if not (self.root / ".git").exists():
            return
        changes = _git(
            self.root,
            "log", "--all", "--full-history", "--diff-merges=separate", "--no-renames",
            "--raw", "--no-abbrev", "--format=", "--", *_LOCK_PATHSPECS,
        )  # fmt: skip
        blobs: dict[str, str] = {}
        for line in changes.splitlines():
            meta, _, path = line.partition("\t")
            fields = meta.split()
            if len(fields) >= 4 and fields[3] != _NO_BLOB:
                blobs[fields[3]] = os.path.dirname(path)
        for blob, text in _cat_blobs(self.root, list(blobs)):
            yield from lock_outputs(text, blobs[blob])


class DvcObjects:
    """One place DVC keeps objects (the local cache or a remote) as an erasure store."""

    def __init__(
        self, name: str, odb: Any, legacy_odb: Any, versions: Versions, full_scan: bool = False
    ) -> None:
        self._name = name
        self.odb = odb  # files/md5/<xx>/<rest>
        self.legacy_odb = legacy_odb  # the root: DVC 2's <xx>/<rest>, and runs/
        self.versions = versions
        self.full_scan = full_scan

    @property
    def name(self) -> str:
        return self._name

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        return [held for held, _ in self._held(subjects)]

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        removed = []
        # files before the listings that name them: a killed erasure leaves nothing unfindable
        for held, path in sorted(self._held(subjects), key=lambda h: h[0].what == LISTING):
            try:
                self.odb.fs.rm(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise AnonlabError(
                    f"{self.name}: cannot delete {path} ({e}); check its permissions or the "
                    "remote's credentials and erase again"
                ) from None
            removed.append(held)
        if removed:
            log.info("%s: deleted %d objects", self.name, len(removed))
        return removed

    def _held(self, subjects: Sequence[Subject]) -> list[tuple[Held, str]]:
        needles = Needles(subjects)
        try:
            if self.full_scan:
                return list(self._scan_all(needles))
            return list(self._scan_versions(needles))
        except AnonlabError:
            raise
        except Exception as e:  # a remote's filesystem raises its own errors (botocore, ...)
            raise AnonlabError(
                f"{self.name} ({self.legacy_odb.path}): cannot read it ({type(e).__name__}: {e});"
                " check that it is reachable and its credentials (the environment, `dvc remote "
                "modify`), then erase again"
            ) from None

    def _scan_versions(self, needles: Needles) -> Iterator[tuple[Held, str]]:
        outputs = [*self.versions.outputs, *self._run_cache()]
        read: dict[tuple[str, bool], bool] = {}  # object -> holds a needle (each read once)
        named: set[str] = set()
        for out in outputs:
            odb = self.legacy_odb if out.legacy else self.odb
            if out.is_dir:
                listing = self._read(odb.oid_to_path(out.oid))
                if listing is None:
                    continue
                names_it = False
                # a needle that is not ASCII is escaped in the listing: every entry is read
                marks = needles.marks if needles.ascii else None
                for relpath, md5 in _entries_around(listing, marks):
                    if needles.in_name(relpath):
                        names_it = True
                        named.add(odb.oid_to_path(md5))
                        read[(md5, out.legacy)] = True
                for relpath, md5 in _entries_around(listing, _TEXT_ENDS, fold_case=True):
                    if _is_text(relpath) and not needles.in_name(relpath):
                        entry = Output(f"{out.path}/{relpath}", md5, out.legacy)
                        yield from self._check(entry, needles, read)
                if names_it:
                    named.add(odb.oid_to_path(out.oid))
            elif needles.in_name(out.path):
                named.add(odb.oid_to_path(out.oid))
            elif _is_text(out.path):
                yield from self._check(out, needles, read)
        for path in sorted(named):
            if self.odb.fs.exists(path):
                yield self._held_at(path), path

    def _check(
        self, out: Output, needles: Needles, read: dict[tuple[str, bool], bool]
    ) -> Iterator[tuple[Held, str]]:
        key = (out.oid, out.legacy)
        if key in read:
            return
        path = (self.legacy_odb if out.legacy else self.odb).oid_to_path(out.oid)
        data = self._read(path)
        read[key] = data is not None and needles.in_bytes(data)
        if read[key]:
            yield self._held_at(path), path

    def _scan_all(self, needles: Needles) -> Iterator[tuple[Held, str]]:
        fs, root = self.legacy_odb.fs, self.legacy_odb.path
        paths = fs.find(root) if fs.exists(root) else []
        named = set()
        for path in paths:
            data = self._read(path)
            if data is None:
                continue
            if needles.in_bytes(data):
                named.add(path)
            if path.endswith(".dir"):
                odb = self.odb if path.startswith(self.odb.path) else self.legacy_odb
                entries = _entries(data)
                named.update(odb.oid_to_path(m) for r, m in entries if needles.in_name(r))
        for path in sorted(named):
            if fs.exists(path):
                yield self._held_at(path), path

    def _run_cache(self) -> list[Output]:
        fs = self.legacy_odb.fs
        root = fs.join(self.legacy_odb.path, "runs")
        if not fs.exists(root):
            return []
        found = []
        for path in fs.find(root):
            data = self._read(path)
            if data is not None:
                found.extend(lock_outputs(data.decode("utf-8", "replace")))
        return found

    def _read(self, path: str) -> bytes | None:
        try:
            return self.odb.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _held_at(self, path: str) -> Held:
        """Where: the object's path inside the cache or remote (files/md5/<xx>/<rest>)."""
        where = path.removeprefix(self.legacy_odb.path).lstrip("/\\")
        return Held(where, LISTING if path.endswith(".dir") else OBJECT)


OBJECT = "cache object"
LISTING = "directory listing (.dir)"


class LocalCache(DvcObjects):
    """`dvc-cache`: the repository's local cache, and DVC's state databases in its site cache
    dir (file hashes, links and the data index, keyed by workspace path)."""

    def __init__(self, repo: Any, versions: Versions, full_scan: bool = False) -> None:
        super().__init__("dvc-cache", repo.cache.local, repo.cache.legacy, versions, full_scan)
        self.site_cache_dir = Path(repo.site_cache_dir)

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        return [*super().find(subjects), *self._state_rows(subjects, delete=False)]

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        return [*super().erase(subjects), *self._state_rows(subjects, delete=True)]

    def _state_rows(self, subjects: Sequence[Subject], delete: bool) -> list[Held]:
        needles = sorted({n.decode() for s in subjects for n in s.needles() if n})
        if not needles or not self.site_cache_dir.is_dir():
            return []
        held = []
        for db in sorted(self.site_cache_dir.rglob("*.db")):
            count = _matching_rows(db, needles, delete)
            if count:
                held.append(Held(str(db.relative_to(self.site_cache_dir)), "state row", count))
        return held


# DVC's databases in its site cache dir, and the column that holds a workspace path: diskcache's
# (file hashes, links) and the data index's tree of names.
STATE_COLUMNS = {"Cache": "key", "nodes": "name"}


def _matching_rows(db: Path, needles: Sequence[str], delete: bool) -> int:
    """Rows of one of DVC's state databases whose path contains a needle; deleted when `delete`,
    their bytes overwritten (secure_delete: no free page keeps them, without rewriting the whole
    file as VACUUM would) and the write-ahead log emptied. One pass over each table either way
    (a path is matched inside, which no index serves)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA secure_delete = ON")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        count = 0
        for table, column in STATE_COLUMNS.items():
            for start in range(0, len(needles) if table in tables else 0, 500):  # SQLite's limit
                chunk = needles[start : start + 500]
                where = " OR ".join(f"instr({column}, ?) > 0" for _ in chunk)
                if delete:
                    count += conn.execute(f"DELETE FROM {table} WHERE {where}", chunk).rowcount
                else:
                    found = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", chunk)
                    count += found.fetchone()[0]
        if count and delete:
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return count
    except sqlite3.DatabaseError:
        return 0  # not one of DVC's databases
    finally:
        conn.close()


def dvc_stores(repo_root: Path, full_scan: bool = False) -> list[DvcObjects]:
    """The local cache and one store per configured remote; [] when `repo_root` is not a DVC
    repository."""
    if not (repo_root / ".dvc").is_dir():
        return []
    from dvc.repo import Repo

    repo = Repo(str(repo_root))
    versions = Versions(repo, repo_root)
    stores: list[DvcObjects] = [LocalCache(repo, versions, full_scan)]
    for name in sorted(repo.config.get("remote", {})):
        try:
            remote = repo.cloud.get_remote(name)
        except Exception as e:  # a remote DVC cannot configure (a missing plugin, a bad URL)
            raise AnonlabError(
                f"{repo_root / '.dvc' / 'config'}: DVC remote {name!r} cannot be opened ({e}); "
                "install its plugin, fix its URL, or remove it with `dvc remote remove` if it no "
                "longer holds data"
            ) from None
        stores.append(
            DvcObjects(f"dvc-remote:{name}", remote.odb, remote.legacy_odb, versions, full_scan)
        )
    return stores


def _entries(listing: bytes) -> Iterable[tuple[str, str]]:
    """(relpath, md5) of each file a `.dir` object lists."""
    try:
        rows = json.loads(listing)
    except ValueError:
        return []
    return [
        (str(r["relpath"]), str(r["md5"]))
        for r in rows if isinstance(r, dict) and r.get("relpath") and r.get("md5")
    ]  # fmt: skip


# How a `.dir` entry's relpath that ends in a text suffix ends in the listing (lowercase).
_TEXT_ENDS = [f'{suffix}"'.encode() for suffix in sorted(TEXT_SUFFIXES)]


def _entries_around(
    listing: bytes, marks: Sequence[bytes] | None, *, fold_case: bool = False
) -> list[tuple[str, str]]:
    """(relpath, md5) of the entries of a `.dir` listing whose bytes hold one of `marks` (in
    lowercase when `fold_case`; every entry when `marks` is None). DVC writes each entry as a
    flat JSON object, so only the objects around the marks are cut out and parsed, not the
    listing of every file of the directory; when one cannot be cut out so (a relpath holding a
    brace), the whole listing is parsed."""
    if marks is None:
        return list(_entries(listing))
    haystack = listing.lower() if fold_case else listing
    found: dict[int, tuple[str, str]] = {}
    for mark in marks:
        at = haystack.find(mark)
        while at != -1:
            start, end = listing.rfind(b"{", 0, at), listing.find(b"}", at + len(mark))
            try:
                row = json.loads(listing[start : end + 1]) if 0 <= start < end else None
            except ValueError:
                row = None
            relpath = row.get("relpath") if isinstance(row, dict) else None
            written = json.dumps(relpath).encode()  # as the listing holds it, quoted
            if not (isinstance(relpath, str) and row.get("md5")) or mark not in (
                written.lower() if fold_case else written
            ):
                return list(_entries(listing))
            found[start] = (relpath, str(row["md5"]))
            at = haystack.find(mark, end)
    return list(found.values())


def _is_text(path: str) -> bool:
    return path.lower().endswith(_TEXT_ENDINGS)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True)
    if done.returncode:
        raise AnonlabError(
            f"{root}: `git {args[0]}` failed ({done.stderr.decode(errors='replace').strip()}); "
            "the DVC cache is searched through every commit's dvc.lock: repair the repository"
        )
    return done.stdout.decode("utf-8", "replace")


def _cat_blobs(root: Path, blobs: list[str]) -> Iterator[tuple[str, str]]:
    """The text of each git blob, in one `git cat-file --batch`."""
    if not blobs:
        return
    done = subprocess.run(
        ["git", "-C", str(root), "cat-file", "--batch"],
        input="".join(f"{b}\n" for b in blobs).encode(),
        capture_output=True,
        check=True,
    )
    out, pos = done.stdout, 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        blob, kind, *size = out[pos:header_end].decode().split()
        if kind == "missing":
            pos = header_end + 1
            continue
        length = int(size[0])
        yield blob, out[header_end + 1 : header_end + 1 + length].decode("utf-8", "replace")
        pos = header_end + 1 + length + 1
