"""List the image files of one configured source: a local folder or glob, or any fsspec URL.

Listing reads metadata only (path, size, modification time or ETag), so that collect can tell
unchanged files from new ones without reading them. A listing says whether it is complete:
folders that cannot be listed are reported with their error, never skipped silently (fsspec's
own `find` and `glob` leave them out), because collect must not take a partial listing for
files that were deleted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.core import url_to_fs
from fsspec.utils import glob_translate

from data.config import SourceConfig
from data.errors import AnonlabError
from serving.runtime.imagefile import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
# Folders named in an error message; the rest are counted.
_SHOWN_FOLDERS = 3


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem names it (no protocol for local files)
    url: str  # what the manifest records: the local path, or the URL with its protocol
    session: str
    size: int
    version: str  # changes when the file changes: ETag, else size + modification time


@dataclass(frozen=True)
class Unlisted:
    """A folder of a source (or the source itself) that could not be listed."""

    url: str  # the local path, or the URL with its protocol
    session: str
    error: str


@dataclass(frozen=True)
class Listing:
    fs: fsspec.AbstractFileSystem
    files: list[SourceFile]
    ignored: int  # files that are not images by their extension (README.txt, .DS_Store, ...)
    unlisted: list[Unlisted]  # empty unless the source allows unreadable folders

    @property
    def complete(self) -> bool:
        """True when every folder was listed and the source holds images: only such a listing
        tells which files are gone from the source."""
        return bool(self.files) and not self.unlisted


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _version(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    modified = info.get("mtime") or info.get("LastModified") or info.get("updated") or ""
    return f"{info.get('size')}:{modified}"


def list_source(src: SourceConfig, where: str, root: Path) -> Listing:
    """List `src`'s image files, sorted by path.

    `where` names the source in errors (e.g. `collect.sources[1]`); relative local paths start
    at `root`, the project root. A source that does not exist, matches nothing or holds no
    image files is an AnonlabError unless `src.allow_empty`; a source with folders that cannot
    be listed (or that cannot be listed at all) is one unless `src.allow_unreadable`, and then
    those folders are in `Listing.unlisted`.
    """
    uri = src.uri
    is_local = "://" not in uri
    if is_local and not Path(uri).is_absolute():
        uri = str(root / uri)
    try:
        fs, path = url_to_fs(uri, **src.storage_options)
    except (ImportError, ValueError) as e:
        raise AnonlabError(f"{where}: cannot open '{src.uri}': {e}") from None

    def url_of(name: str) -> str:
        return name if is_local else fs.unstrip_protocol(name)

    unlisted: list[Unlisted] = []

    def failed(name: str, error: OSError) -> None:
        session = src.session or PurePosixPath(name).name or src.label
        unlisted.append(Unlisted(url_of(name), session, error.strerror or str(error)))

    fs.invalidate_cache()  # instances are cached by fsspec; a listing must be fresh
    try:
        if _is_glob(path):
            infos = _glob(fs, path, failed)
        elif fs.isdir(path):
            infos = _find(fs, path, failed)
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
        else:
            infos = None
    except OSError as e:  # the source as a whole: no permission, no connection
        failed(path, e)
        infos = {}

    files, ignored = [], 0
    for name, info in sorted((infos or {}).items()):
        if info.get("type") == "directory":
            continue
        pure = PurePosixPath(name)
        if pure.suffix.lower() not in IMAGE_EXTENSIONS or pure.name.startswith("."):
            ignored += 1
            log.debug("not an image by its name, ignored: %s", name)
            continue
        files.append(
            SourceFile(
                path=name,
                url=url_of(name),
                session=src.session or pure.parent.name or src.label,
                size=int(info.get("size") or 0),
                version=_version(info),
            )
        )

    if unlisted:
        shown = "; ".join(f"'{u.url}' ({u.error})" for u in unlisted[:_SHOWN_FOLDERS])
        more = len(unlisted) - _SHOWN_FOLDERS
        shown += f"; and {more} more" if more > 0 else ""
        if not src.allow_unreadable:
            raise AnonlabError(
                f"{where}: {len(unlisted)} folder(s) of '{src.uri}' cannot be listed: {shown}. "
                "Nothing was collected or changed. Fix the permissions, the mount or the "
                f"connection, or set {where}.allow_unreadable=true to collect what can be listed "
                "(the folders are then recorded in quarantine.jsonl as `unlisted`, and nothing "
                "this source stored before is removed)"
            )
        log.warning(
            "%s: %d folder(s) of '%s' cannot be listed (%s); collecting what can be listed "
            "(allow_unreadable), and keeping everything this source stored before",
            where,
            len(unlisted),
            src.uri,
            shown,
        )
    elif not files:
        if infos is None:
            problem = (
                "does not exist (or is not readable with the credentials in the environment); "
                "fix the uri in conf/collect/"
            )
        elif _is_glob(path):
            problem = "matches no files; check the pattern and the folder"
        else:
            problem = "holds no image files (an unmounted share?); check the uri and the mount"
        if not src.allow_empty:
            raise AnonlabError(
                f"{where}: '{src.uri}' {problem}. Nothing was collected or changed. If the "
                f"source may be empty or absent, set {where}.allow_empty=true: collect then "
                "goes on and keeps what this source stored before as it is"
            )
        log.warning(
            "%s: '%s' %s; allowed (allow_empty): keeping what this source stored before",
            where,
            src.uri,
            problem.partition(";")[0],
        )
    return Listing(fs=fs, files=files, ignored=ignored, unlisted=unlisted)


def _flat(fs: fsspec.AbstractFileSystem) -> bool:
    """True when `fs` lists a whole tree in one request (object stores: S3, GCS, Azure), which
    fails as a whole, instead of walking folder by folder and skipping those it cannot read."""
    if isinstance(fs, AsyncFileSystem):
        return type(fs)._find is not AsyncFileSystem._find
    return type(fs).find is not fsspec.AbstractFileSystem.find


def _find(
    fs: fsspec.AbstractFileSystem, path: str, failed: Callable[[str, OSError], None]
) -> dict[str, dict[str, Any]]:
    """Every entry below the folder `path`, by name."""
    if _flat(fs):
        return fs.find(path, detail=True)
    return _walk(fs, path, lambda folder: True, failed)


def _glob(
    fs: fsspec.AbstractFileSystem, pattern: str, failed: Callable[[str, OSError], None]
) -> dict[str, dict[str, Any]]:
    """The files matching `pattern` (fsspec's glob syntax), by name."""
    if _flat(fs):
        return fs.glob(pattern, detail=True)
    magic = min(i for i in (pattern.find(ch) for ch in "*?[") if i >= 0)
    base = pattern[: pattern.rfind("/", 0, magic) + 1]
    parts = pattern[len(base) :].split("/")

    def may_hold_matches(folder: str) -> bool:
        # Only folders the pattern can reach are listed: an unreadable folder elsewhere under
        # the base (lost+found) is no part of the source.
        rel = folder[len(base) :].split("/")
        for name, part in zip(rel, parts, strict=False):
            if part == "**":
                return True
            if not fnmatchcase(name, part):
                return False
        return len(rel) < len(parts)  # its entries are at the depth of the pattern's last part

    matches = re.compile(glob_translate(pattern)).match
    found = _walk(fs, base.rstrip("/") or "/", may_hold_matches, failed)
    return {name: info for name, info in found.items() if matches(name)}


def _walk(
    fs: fsspec.AbstractFileSystem,
    top: str,
    descend: Callable[[str], bool],
    failed: Callable[[str, OSError], None],
) -> dict[str, dict[str, Any]]:
    """Every file below `top`, by name, entering the folders `descend` accepts; each folder
    that cannot be listed goes to `failed` with its error."""
    files: dict[str, dict[str, Any]] = {}
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            entries = fs.ls(folder, detail=True)
        except OSError as e:
            failed(folder, e)
            continue
        for info in entries:
            name = info["name"].rstrip("/")
            if info.get("type") != "directory":
                files[name] = info
            elif name != folder.rstrip("/") and descend(name):
                pending.append(name)
    return files
