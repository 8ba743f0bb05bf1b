"""Atomic file writes: a file appears complete under its final name, or not at all; a folder
of outputs is swapped in as a whole."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from data.errors import AnonlabError

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
# What renameat2 answers where it, or the exchange flag on this filesystem, is not supported.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, else removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str], *, missing: str = "") -> Any:
    """The JSON value in a file; AnonlabError naming the file when it is missing (then saying
    `missing`, what to do) or not readable JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnonlabError(f"{p}: not found; {missing or 'check the path'}") from None
    except (OSError, ValueError) as exc:
        raise AnonlabError(f"{p}: not readable JSON ({exc})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a missing file has none."""
    p = Path(path)
    if not p.exists():
        return []
    with p.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `final` as a whole when the block succeeds.

    A stage that writes a folder of outputs writes them here; if it fails, the previous outputs
    stay as they were and the staging folder is removed.

    The swap is one atomic exchange of the two folders (Linux `renameat2` with
    RENAME_EXCHANGE), so `final` holds the old or the new outputs at every moment, even when
    the process is killed. Where the exchange is not supported (another OS, a filesystem
    without it) it is two renames, `final` -> `.final.old` and stage -> `final`; a kill between
    them leaves `final` missing, and the next `staged_dir(final)` renames `.final.old` back.

    Decision: one writer per output folder at a time (DVC runs a stage once; two commands
    writing the same folder at once are not supported). So, on entry, every staging folder of
    `final` (`.final.<id>.staging`) and a leftover `.final.old` are debris of an interrupted
    run: they are removed, after an interrupted swap is undone.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_staged(final)
    stage = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.staging")
    stage.mkdir()
    try:
        yield stage
        swap_into_place(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def recover_staged(final: str | os.PathLike[str]) -> None:
    """Undo what an interrupted `staged_dir(final)` left: a swap cut between its two renames
    (`final` missing, `.final.old` present: renamed back), stale staging folders, a stale
    `.final.old`."""
    final = Path(final)
    old = _old(final)
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        log.warning("%s: restored the previous outputs after an interrupted run", final)
    shutil.rmtree(old, ignore_errors=True)
    # The id has no dot, so the staging folders of an output named `<final>.x` never match.
    staging = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-z_]+\.staging")
    if final.parent.is_dir():
        for entry in final.parent.iterdir():
            if staging.fullmatch(entry.name):
                log.debug("removing %s, left by an interrupted run", entry)
                shutil.rmtree(entry, ignore_errors=True)


def swap_into_place(stage: Path, final: Path) -> None:
    """Make `stage` the folder `final`; the previous `final` ends up at `stage` (or is gone)."""
    if not final.exists():
        os.replace(stage, final)
        return
    try:
        exchange(stage, final)
    except OSError as e:
        if e.errno not in _NO_EXCHANGE:
            raise
        old = _old(final)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap the paths `a` and `b` in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    OSError with the call's errno on failure; ENOSYS where the C library lacks the call.
    """
    call = _renameat2()
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a))
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, TypeError, AttributeError):  # not Linux, or glibc older than 2.28
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")
