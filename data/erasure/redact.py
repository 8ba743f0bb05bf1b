"""Pure rewrites of derived files without some images: JSON lines and COCO datasets.

A row or image that belongs to an erased image is removed. A row of another image that merely
names an erased one (a near-duplicate's `duplicate_of`) keeps its place, with each string that
names the erased image replaced by `ERASED`, so counts elsewhere still add up.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from data.coco import layout

ERASED = "<erased>"


def holds(data: bytes, needles: Iterable[bytes]) -> bool:
    """Whether `data` contains one of `needles` (the cheap test before parsing a file)."""
    return any(n and n in data for n in needles)


def scrub(value: Any, needles: Collection[str]) -> tuple[Any, int]:
    """`value` with every string that contains a needle replaced by ERASED; how many were."""
    if isinstance(value, str):
        return (ERASED, 1) if any(n in value for n in needles) else (value, 0)
    if isinstance(value, list):
        pairs = [scrub(v, needles) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        items = {k: scrub(v, needles) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, sum(n for _, n in items.values())
    return value, 0


def rows(
    records: list[dict[str, Any]], shas: Collection[str], needles: Collection[str]
) -> tuple[list[dict[str, Any]], int]:
    """JSON-lines rows without those of `shas` (by `sha256`, or `input_sha256` in a blur ledger,
    or by a needle in `source_path`); the other rows scrubbed. The count of rows removed or
    changed."""
    kept, changed = [], 0
    for row in records:
        own = row.get("sha256") in shas or row.get("input_sha256") in shas
        if own or any(n == row.get("source_path") for n in needles):
            changed += 1
            continue
        clean, n = scrub(row, needles)
        changed += bool(n)
        kept.append(clean)
    return kept, changed


def image_ids(dataset: dict[str, Any], shas: Collection[str]) -> set[int]:
    """The ids of a COCO dataset's images of `shas` (by `sha256`, or a `file_name` naming one:
    a tile)."""
    return {
        img["id"]
        for img in dataset.get("images", [])
        if img.get("sha256") in shas or any(s in str(img.get("file_name", "")) for s in shas)
    }


def coco(dataset: dict[str, Any], shas: Collection[str]) -> tuple[dict[str, Any], set[int], int]:
    """A COCO dataset without the images of `shas` (image_ids) and their annotations; the
    removed image ids and the count of entries removed. What is left may still name an image
    elsewhere (a caller serialising it checks, and scrubs only then)."""
    gone = image_ids(dataset, shas)
    images = [i for i in dataset.get("images", []) if i["id"] not in gone]
    anns = [a for a in dataset.get("annotations", []) if a.get("image_id") not in gone]
    removed = len(gone) + len(dataset.get("annotations", [])) - len(anns)
    return {**dataset, "images": images, "annotations": anns}, gone, removed


def coco_lines(
    data: bytes, shas: Collection[str], needles: Collection[str]
) -> tuple[bytes, int] | None:
    """What `coco` does, on a COCO file written in data.coco.layout, by editing lines: the image
    lines that hold a needle are parsed, and the annotation lines whose `image_id` is one of
    theirs; the other bytes are kept as they are, and the file is never split into lines.
    Entries that only name an image are scrubbed. The new bytes and the count of entries removed
    or changed; None when the file is not in that layout, or names an image outside its lists'
    entries (the caller parses it whole)."""
    where = layout.sections(data)
    if where is None:
        return None
    holding = line_spans(data, [n.encode() for n in needles])
    if not all(any(a <= start < b for a, b in where.values()) for start, _ in holding):
        return None
    try:
        return _edit_lines(data, where, holding, shas, needles)
    except ValueError:  # a line that is not a whole entry: not this layout after all
        return None


def _edit_lines(
    data: bytes,
    where: dict[str, tuple[int, int]],
    holding: list[tuple[int, int]],
    shas: Collection[str],
    needles: Collection[str],
) -> tuple[bytes, int]:
    def entry(span: tuple[int, int]) -> Any:
        return json.loads(data[span[0] : span[1]].rstrip(b","))

    images, annotations = where.get("images", (0, 0)), where.get("annotations", (0, 0))
    edits: dict[tuple[int, int], bytes | None] = {}  # None: the line goes
    gone = set()
    for span in holding:
        image = entry(span) if images[0] <= span[0] < images[1] else None
        if isinstance(image, dict) and image_ids({"images": [image]}, shas):
            edits[span] = None
            gone.add(image["id"])
    marks = [b'"image_id": ' + json.dumps(g).encode() + end for g in gone for end in (b",", b"}")]
    for span in line_spans(data, marks):
        if annotations[0] <= span[0] < annotations[1] and entry(span).get("image_id") in gone:
            edits[span] = None
    changed = len(edits)
    for span in holding:
        if span not in edits:
            clean, n = scrub(entry(span), needles)
            comma = b"," if data[span[1] - 1 : span[1]] == b"," else b""
            edits[span] = json.dumps(clean, sort_keys=True).encode() + comma
            changed += bool(n)
    for start, close in where.values():  # the last entry left in a list takes no comma
        end = close - 1  # the newline after the list's last entry
        while end >= start:
            span = (data.rfind(b"\n", 0, end) + 1, end)
            if span in edits and edits[span] is None:
                end = span[0] - 1  # this entry goes: the one before may be the last now
                continue
            line = edits.get(span, data[span[0] : span[1]])
            if end != close - 1 and line.endswith(b","):
                edits[span] = line[:-1]
            break
    pieces, at = [], 0
    for (start, end), line in sorted(edits.items()):
        pieces.append(data[at:start])
        pieces.append(b"" if line is None else line + b"\n")
        at = end + 1
    pieces.append(data[at:])
    return b"".join(pieces), changed


def line_spans(data: bytes, needles: Iterable[bytes]) -> list[tuple[int, int]]:
    """Where the lines of `data` that hold a needle are: (start, end) byte offsets, the newline
    excluded, in order, each line once. Found with substring searches: a file of any size costs
    about one pass per needle, however few lines hold one."""
    spans = set()
    for needle in needles:
        at = data.find(needle) if needle else -1
        while at != -1:
            end = data.find(b"\n", at)
            end = len(data) if end == -1 else end
            spans.add((data.rfind(b"\n", 0, at) + 1, end))
            at = data.find(needle, end)
    return sorted(spans)


def without_spans(data: bytes, spans: Iterable[tuple[int, int]]) -> bytes:
    """`data` without the lines at `spans` (line_spans), their newlines included."""
    pieces, at = [], 0
    for start, end in spans:
        pieces.append(data[at:start])
        at = end + 1
    pieces.append(data[at:])
    return b"".join(pieces)
