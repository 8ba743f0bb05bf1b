"""Inputs of `anonlab blur --engine ray` given as fsspec URLs or an inventory file, sorted before
any image is read: taken, failed or skipped, as serving.runtime.inputs sorts local files.

- A URL with a wildcard (`s3://bucket/drive-*/**/*.jpg`) is matched by the filesystem's glob,
  and its outputs keep their keys below the pattern's fixed part; a URL that is a prefix
  (`s3://bucket/drive-7/`) is listed whole, and its outputs keep their keys below it; a URL of
  one object keeps its name.
- An inventory file (`--inventory FILE`) lists one path or URL per line (blank lines and lines
  starting with `#` aside), each taken as named; outputs keep their keys below the longest
  common folder of the lines.

Objects are sorted by their names alone: reading each one's first bytes, as a local walk does,
would cost a request per object. Taken: an image extension (`imagefile.IMAGE_EXTENSIONS`), or
any object named by itself or in an inventory. Failed at `find`: an extension of a format the
runtime cannot anonymize (`inputs.UNSUPPORTED_EXTENSIONS`). Skipped: hidden names (a part of
the key below the base starting with '.'), and, in a listing, other extensions. A key found
twice is taken once.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serving.runtime.errors import ServingError
from serving.runtime.imagefile import IMAGE_EXTENSIONS
from serving.runtime.inputs import UNSUPPORTED_EXTENSIONS, Inputs, fixed_prefix
from serving.runtime.storage import filesystem, is_url

__all__ = ["Found", "find_inventory", "find_urls", "from_local", "merge"]


@dataclass
class Found:
    """Keys taken (key, relative output path), failed (key, relative output path or None,
    step, error) and skipped (key, reason)."""

    taken: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def sort(self, key: str, relative: str, *, named: bool) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        ext = posixpath.splitext(relative)[1].lower()
        if any(part.startswith(".") for part in relative.split("/")):
            self.skipped.append((key, "hidden: a part of its name starts with '.'"))
        elif ext in UNSUPPORTED_EXTENSIONS:
            fmt = UNSUPPORTED_EXTENSIONS[ext]
            error = f"a {fmt} image by its extension; convert it to JPEG or PNG"
            self.failed.append((key, relative, "find", error))
        elif named or ext in IMAGE_EXTENSIONS:
            self.taken.append((key, relative))
        else:
            self.skipped.append((key, f"not an image by its extension ({ext or 'none'})"))


def from_local(inputs: Inputs) -> Found:
    """Local files as `find_inputs` sorted them, as keys (absolute paths)."""
    found = Found()
    found.taken = [(os.path.abspath(j.source), j.relative.as_posix()) for j in inputs.jobs]
    found.failed = [
        (os.path.abspath(r.source), r.relative and r.relative.as_posix(), r.step, r.error)
        for r in inputs.refused
    ]
    found.skipped = [(os.path.abspath(s.input), s.reason) for s in inputs.skipped]
    found.seen = {key for key, *_ in (*found.taken, *found.failed, *found.skipped)}
    return found


def merge(parts: Sequence[Found]) -> Found:
    """Several sortings as one (a key found by two is taken once, as first found)."""
    merged = Found()
    for part in parts:
        for key, relative in part.taken:
            if key not in merged.seen:
                merged.seen.add(key)
                merged.taken.append((key, relative))
        for failed in part.failed:
            if failed[0] not in merged.seen:
                merged.seen.add(failed[0])
                merged.failed.append(failed)
        for skipped in part.skipped:
            if skipped[0] not in merged.seen:
                merged.seen.add(skipped[0])
                merged.skipped.append(skipped)
    return merged


def find_urls(urls: Sequence[str], found: Found | None = None) -> Found:
    """Sort the objects the URLs name (see the module docstring)."""
    found = found or Found()
    for url in urls:
        protocol = url.split("://", 1)[0]
        fs, path = filesystem(url)
        try:
            if glob.has_magic(path):
                base = fixed_prefix(path)
                keys, named = sorted(fs.glob(path)), False
            elif fs.isdir(path):
                base, keys, named = path.rstrip("/"), sorted(fs.find(path)), False
            elif fs.exists(path):
                base, keys, named = posixpath.dirname(path), [path], True
            else:
                raise ServingError(f"{url}: no such object or prefix")
        except OSError as exc:
            raise ServingError(f"{url}: cannot list it ({exc})") from None
        for key in keys:
            relative = key[len(base) :].lstrip("/") if base else key
            found.sort(f"{protocol}://{key}", relative, named=named)
    return found


def find_inventory(inventory: Path) -> Found:
    """Sort the paths and URLs an inventory file lists, one per line."""
    try:
        lines = inventory.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingError(f"--inventory {inventory}: cannot read it ({exc})") from None
    keys = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
    if not keys:
        raise ServingError(f"--inventory {inventory}: it lists no path or URL")
    full = [k if is_url(k) else os.path.abspath(k) for k in keys]
    names = [k.split("://", 1)[-1] for k in full]
    base = posixpath.commonpath([posixpath.dirname(n) for n in names])
    found = Found()
    for key, name in zip(full, names, strict=True):
        found.sort(key, name[len(base) :].lstrip("/"), named=True)
    return found
