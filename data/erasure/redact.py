"""Pure rewrites of derived files without some images: JSON lines and COCO datasets.

A row or image that belongs to an erased image is removed. A row of another image that merely
names an erased one (a near-duplicate's `duplicate_of`) keeps its place, with each string that
names the erased image replaced by `ERASED`, so counts elsewhere still add up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

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
    """JSON-lines rows without those of `shas` (by `sha256`, or by a needle in `source_path`);
    the other rows scrubbed. The count of rows removed or changed."""
    kept, changed = [], 0
    for row in records:
        if row.get("sha256") in shas or any(n == row.get("source_path") for n in needles):
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
