"""Finding and erasing an image's traces in one derived file: JSON lines, a COCO dataset, an HTML
report, a file named by the image. Each reads the file's bytes once and parses it only when it
holds one of the images' needles, so files without them cost one read."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from data import atomic
from data.coco import layout
from data.erasure import redact
from data.erasure.stores import Held
from data.erasure.subjects import Subject
from data.report_figures import redact as redact_figures
from data.report_figures import unmarked


def shas(subjects: Sequence[Subject]) -> set[str]:
    return {s.sha256 for s in subjects}


def needles(subjects: Sequence[Subject]) -> list[str]:
    return [n.decode() for s in subjects for n in s.needles()]


def read_if_holding(path: Path, subjects: Sequence[Subject]) -> bytes | None:
    """The file's bytes when it exists and holds a needle of `subjects`, else None."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return data if redact.holds(data, (n.encode() for n in needles(subjects))) else None


def holding(path: Path, subjects: Sequence[Subject]) -> bool:
    """Whether the file exists and holds a needle of `subjects`."""
    return read_if_holding(path, subjects) is not None


def write_keeping_mode(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, keeping its permission bits (a read-only file
    stays read-only)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    # The mode is set on the temporary file, before it takes the name: no moment (a kill
    # included) leaves a read-only file writable.
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, mode)


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _lines_holding(
    path: Path, subjects: Sequence[Subject]
) -> tuple[bytes, list[tuple[int, int]]] | None:
    """A JSON-lines file's bytes and where its lines that hold a needle are; None when it does
    not exist or holds none."""
    data = read_if_holding(path, subjects)
    if data is None:
        return None
    return data, redact.line_spans(data, [n.encode() for n in needles(subjects)])


def rows_holding(path: Path, subjects: Sequence[Subject]) -> list[dict]:
    """The rows of a JSON-lines file that hold a needle of `subjects`, parsed."""
    found = _lines_holding(path, subjects)
    if found is None:
        return []
    data, spans = found
    return [json.loads(data[start:end]) for start, end in spans]


def jsonl_rows(
    path: Path, root: Path, subjects: Sequence[Subject], what: str, *, write: bool
) -> list[Held]:
    """Rows of a JSON-lines file that belong to or name the images. Only the lines that hold
    a needle are parsed; the others are kept byte for byte."""
    found = _lines_holding(path, subjects)
    if found is None:
        return []
    data, spans = found
    rows, n = redact.rows(
        [json.loads(data[start:end]) for start, end in spans], shas(subjects), needles(subjects)
    )
    if not n:
        return []
    if write:
        kept = redact.without_spans(data, spans)
        kept += b"\n" if kept and not kept.endswith(b"\n") else b""
        # Rows that only name an image (scrubbed) keep their place at the end: order in these
        # files carries no meaning.
        scrubbed = b"".join((json.dumps(r, sort_keys=True) + "\n").encode() for r in rows)
        write_keeping_mode(path, kept + scrubbed)
    return [Held(relative(path, root), what, n)]


def coco_file(path: Path, root: Path, subjects: Sequence[Subject], *, write: bool) -> list[Held]:
    """The images (and their annotations) of a COCO dataset. A file in data.coco.layout (what
    anonlab writes) is edited line by line (redact.coco_lines); another is parsed whole, written
    back in that layout, and scrubbed (redact.scrub) only when it still names an image."""
    data = read_if_holding(path, subjects)
    if data is None:
        return []
    edited = redact.coco_lines(data, shas(subjects), needles(subjects))
    if edited is None:
        new, _, n = redact.coco(json.loads(data), shas(subjects))
        out = layout.dumps(new)
        if redact.holds(out, (x.encode() for x in needles(subjects))):
            new, scrubbed = redact.scrub(new, needles(subjects))
            n += scrubbed
            out = layout.dumps(new)
    else:
        out, n = edited
    if not n:
        return []
    if write:
        write_keeping_mode(path, out)
    return [Held(relative(path, root), "COCO entries", n)]


def html_report(path: Path, root: Path, subjects: Sequence[Subject], *, write: bool) -> list[Held]:
    """The figures of an HTML report that show the images. A report that still names them
    after its figures are taken out, or whose figures are unmarked (written before figures
    were marked), is deleted whole: its stage writes it again."""
    data = read_if_holding(path, subjects)
    if data is None:
        return []
    text = data.decode("utf-8")
    kept, n = redact_figures(text, shas(subjects))
    whole = bool(unmarked(text)) or redact.holds(
        kept.encode("utf-8"), (x.encode() for x in needles(subjects))
    )
    if write:
        if whole:
            path.unlink(missing_ok=True)
        else:
            write_keeping_mode(path, kept.encode("utf-8"))
    if whole:
        return [Held(relative(path, root), "report (deleted whole: run its stage again)")]
    return [Held(relative(path, root), "figures", n)]


def named_files(paths: Sequence[Path], root: Path, what: str, *, write: bool) -> list[Held]:
    """Files that exist among `paths` (named by an image): deleted when `write`."""
    found = [p for p in paths if p.is_file() or p.is_symlink()]
    if write:
        for p in found:
            p.unlink(missing_ok=True)
    return [Held(relative(p, root), what) for p in found]
