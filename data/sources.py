"""List the image files of one configured source: a local folder or glob, or any fsspec URL.

Listing reads metadata only (path, size, modification time or ETag), so that collect can tell
unchanged files from new ones without reading them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from data.config import SourceConfig
from data.errors import AnonlabError
from serving.runtime.imagefile import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem names it (no protocol for local files)
    url: str  # what the manifest records: the local path, or the URL with its protocol
    session: str
    size: int
    version: str  # changes when the file changes: ETag, else size + modification time


@dataclass(frozen=True)
class Listing:
    fs: fsspec.AbstractFileSystem
    files: list[SourceFile]
    ignored: int  # files that are not images by their extension (README.txt, .DS_Store, ...)


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
    at `root`, the project root. A source that does not exist, matches nothing, or cannot be
    read is an AnonlabError.
    """
    uri = src.uri
    is_local = "://" not in uri
    if is_local and not Path(uri).is_absolute():
        uri = str(root / uri)
    try:
        fs, path = url_to_fs(uri, **src.storage_options)
    except (ImportError, ValueError) as e:
        raise AnonlabError(f"{where}: cannot open '{src.uri}': {e}") from None

    fs.invalidate_cache()  # instances are cached by fsspec; a listing must be fresh
    try:
        if _is_glob(path):
            infos = fs.glob(path, detail=True)
            if not infos:
                raise AnonlabError(
                    f"{where}: '{src.uri}' matches no files; check the pattern and the folder"
                )
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
        else:
            raise AnonlabError(
                f"{where}: '{src.uri}' does not exist (or is not readable with the "
                "credentials in the environment); fix the uri in conf/collect/"
            )
    except PermissionError as e:
        raise AnonlabError(f"{where}: no permission to read '{src.uri}': {e}") from None
    except (FileNotFoundError, OSError) as e:
        raise AnonlabError(f"{where}: cannot list '{src.uri}': {e}") from None

    files, ignored = [], 0
    for name, info in sorted(infos.items()):
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
                url=name if is_local else fs.unstrip_protocol(name),
                session=src.session or pure.parent.name or src.label,
                size=int(info.get("size") or 0),
                version=_version(info),
            )
        )
    if not files:
        log.warning("%s: '%s' holds no image files", where, src.uri)
    return Listing(fs=fs, files=files, ignored=ignored)
