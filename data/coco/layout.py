"""How anonlab writes a COCO dataset: valid JSON with one entry per line.

    {
    "annotations": [
    {"area": 720.0, "bbox": [40.0, 30.0, 24.0, 30.0], "category_id": 1, "id": 1, ...},
    {"area": 64.0, ...}
    ],
    "categories": [
    ...
    ],
    "images": [
    ...
    ],
    "info": {}
    }

Top-level keys are sorted, each on its own line; a non-empty list (images, annotations,
categories) opens on its key's line and holds one entry per line, each written with
`json.dumps(entry, sort_keys=True)` (ASCII; a comma after every entry but the last). Any JSON
reader reads it as it would any COCO file; it is smaller than an indented file and a diff of two
versions shows the entries that changed. Its purpose here: one image's entries can be taken out
of a dataset of any size by editing lines (data.erasure.redact.coco_lines), without parsing and
writing the whole dataset again.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from data import atomic

_SECTION = re.compile(rb'"((?:[^"\\]|\\.)*)": \[')
_CLOSES = (b"]", b"],")


def dumps(dataset: dict[str, Any]) -> bytes:
    """The dataset in the layout above (ends with a newline)."""
    members = []
    for key in sorted(dataset):
        value, name = dataset[key], json.dumps(key)
        if isinstance(value, list) and value:
            entries = ",\n".join(json.dumps(v, sort_keys=True) for v in value)
            members.append(f"{name}: [\n{entries}\n]")
        else:
            members.append(f"{name}: {json.dumps(value, sort_keys=True)}")
    return ("{\n" + ",\n".join(members) + "\n}\n").encode("ascii")


def write(path: str | os.PathLike[str], dataset: dict[str, Any]) -> None:
    """Write the dataset to `path` atomically, in the layout above."""
    atomic.write_bytes(path, dumps(dataset))


def sections(data: bytes) -> dict[str, tuple[int, int]] | None:
    """Where each list's entries are in a file of this layout: key -> (offset of its first entry
    line, offset of its closing `]` line); the entries are the newline-ended lines between.
    Found without splitting the file into lines. None when `data` is not in this layout (another
    writer's file, an indented one): the caller parses it whole."""
    if not (data.startswith(b"{\n") and data.endswith(b"\n}\n")):
        return None
    found: dict[str, tuple[int, int]] = {}
    at, stop = 2, len(data) - 2  # the first member's line; the closing brace's
    while at < stop:
        eol = data.find(b"\n", at)
        line = data[at:eol]
        if not line.startswith(b'"'):
            return None  # an entry outside a list, or a member spread over lines
        header = _SECTION.fullmatch(line)
        if header is None:  # a member on one line
            at = eol + 1
            continue
        close = data.find(b"\n]", eol) + 1  # entries never start with `]`
        after = data.find(b"\n", close)
        if close == 0 or close > stop or data[close:after] not in _CLOSES:
            return None
        found[json.loads(b'"' + header.group(1) + b'"')] = (eol + 1, close)
        at = after + 1
    return found
