"""Where `anonlab blur` reads inputs and writes outputs: local paths, or fsspec URLs
(`s3://bucket/key`, `gs://...`: any filesystem fsspec has a package for, with that package
installed; credentials as that package reads them, for S3 the usual AWS environment variables,
`AWS_ENDPOINT_URL` for MinIO and the like).

Writes are all-or-nothing per image: `write_together` writes an image and its companions
(sidecar, mask) so that none appears under its final name unless all were written. Locally:
temporary names beside the targets, renamed at the end. On an object store, where an object
appears whole or not at all: the companions first, the image last, and on any error the ones
already written are deleted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serving.runtime.errors import ServingError

__all__ = ["filesystem", "is_url", "join", "read_bytes", "remove", "write_together"]


def is_url(location: str) -> bool:
    """Whether `location` names a filesystem by protocol (`s3://...`, `gs://...`)."""
    return "://" in location and not location.startswith("file://")


def join(base: str, relative: str) -> str:
    """`relative` (a POSIX path) below `base` (a folder or a URL prefix)."""
    if is_url(base):
        return f"{base.rstrip('/')}/{relative}"
    return str(Path(base.removeprefix("file://")) / relative)


@functools.lru_cache(maxsize=16)
def _fs(protocol_and_host: str) -> Any:
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise ServingError(
            f"{protocol_and_host}: URLs need fsspec and the filesystem's package (s3fs for "
            "s3://): pip install 'anonlab[ray]'"
        ) from None
    try:
        return url_to_fs(protocol_and_host)[0]
    except (ImportError, ValueError) as exc:
        raise ServingError(f"{protocol_and_host}: cannot open it ({exc})") from None


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URL (one per protocol and bucket, reused), and the URL's path
    on it."""
    protocol, _, rest = url.partition("://")
    fs = _fs(f"{protocol}://{rest.split('/', 1)[0]}")
    return fs, fs._strip_protocol(url)


def read_bytes(key: str) -> bytes:
    """The bytes of a local file or an object (OSError, FileNotFoundError included, on failure)."""
    if not is_url(key):
        return Path(key.removeprefix("file://")).read_bytes()
    fs, path = filesystem(key)
    return fs.cat_file(path)


def remove(key: str) -> None:
    """Delete a file or an object if it is there (a local folder in its place is left alone)."""
    if not is_url(key):
        path = Path(key.removeprefix("file://"))
        if path.is_file() or path.is_symlink():
            path.unlink()
        return
    fs, path = filesystem(key)
    if fs.exists(path):
        fs.rm_file(path)


def write_together(files: Sequence[tuple[str, Callable[[], bytes]]]) -> None:
    """Write each (key, content) so that none appears unless all do (see the module
    docstring). The first file is the image; the others are its companions."""
    if not files:
        return
    if all(not is_url(key) for key, _ in files):
        _write_local([(Path(key.removeprefix("file://")), content) for key, content in files])
        return
    written: list[str] = []
    try:
        for key, content in [*files[1:], files[0]]:  # the image last: it appears complete
            data = content()
            if is_url(key):
                fs, path = filesystem(key)
                fs.pipe_file(path, data)
            else:
                _write_local([(Path(key), lambda data=data: data)])
            written.append(key)
    except BaseException:
        for key in written:
            with contextlib.suppress(OSError):  # the error being raised is the one to tell
                remove(key)
        raise


def _write_local(files: Sequence[tuple[Path, Callable[[], bytes]]]) -> None:
    """Write every file under a temporary name beside its target, then rename them all; on any
    error remove the temporaries (nothing appears under a final name)."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for target, content in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            temporaries.append((Path(name), target))
            with os.fdopen(fd, "wb") as f:
                f.write(content())
        for tmp, target in temporaries:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temporaries:
            tmp.unlink(missing_ok=True)
