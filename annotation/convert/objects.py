"""Regions -> objects: regions linked by `same_object` form one object per class, and
keypoints go to their person."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation.convert.records import ImageRef, Reporter
from annotation.convert.regions import Patch, Region, read_regions
from data.coco import KEYPOINT_CLASS


@dataclass
class ConvertedObject:
    label: str
    patch: Patch
    region_ids: list[str]
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)


def build_objects(
    result: list[dict[str, Any]],
    ref: ImageRef,
    classes: Sequence[str],
    keypoints: Sequence[str],
    report: Reporter,
    counts: Counter[str],
) -> list[ConvertedObject]:
    regions, links = read_regions(result, ref, classes, keypoints, report, counts)
    objects: list[ConvertedObject] = []
    loose: list[Region] = []  # keypoints not linked to a person
    for group in _groups(list(regions), links):
        members = [regions[rid] for rid in group]
        by_class: dict[str, list[Region]] = {}
        for region in members:
            if region.patch is not None:
                by_class.setdefault(region.label, []).append(region)
        if len(by_class) > 1:
            parts = "; ".join(f"{c}: {', '.join(r.id for r in rs)}" for c, rs in by_class.items())
            report(
                "mixed_labels",
                f"regions linked as one object have several classes ({parts}); "
                "converted one object per class",
            )
        person: ConvertedObject | None = None
        for label, shapes in by_class.items():
            patch = Patch.union([r.patch for r in shapes if r.patch is not None])
            obj = ConvertedObject(label, patch, [r.id for r in shapes])
            objects.append(obj)
            if label == KEYPOINT_CLASS:
                person = obj
        for region in members:
            if region.point is None:
                continue
            if person is None:
                loose.append(region)
            else:
                _place(person, region, report)
    persons = [o for o in objects if o.label == KEYPOINT_CLASS]
    for region in loose:
        owner = _owner(persons, region, ref)
        if owner is None:
            x, y = region.point  # type: ignore[misc]
            report(
                "orphan_keypoint",
                f"keypoint region {region.id} '{region.label}' at ({x:.1f}, {y:.1f}) px is "
                "linked to no person, lies in no person's mask and near no person's box that "
                "lacks it; left out",
            )
        else:
            _place(owner, region, report)
    return objects


def _place(person: ConvertedObject, region: Region, report: Reporter) -> None:
    if region.label in person.keypoints:
        report(
            "duplicate_keypoint",
            f"keypoint region {region.id} '{region.label}': the person of regions "
            f"{', '.join(person.region_ids)} has one already; left out",
        )
        return
    assert region.point is not None
    person.keypoints[region.label] = region.point
    person.region_ids.append(region.id)


def _owner(persons: list[ConvertedObject], region: Region, ref: ImageRef) -> ConvertedObject | None:
    """The person an unlinked keypoint belongs to: one whose mask holds it, else the nearest
    box within a margin (ears and noses lie on a silhouette's edge), among those lacking it."""
    assert region.point is not None
    x, y = region.point
    free = [p for p in persons if region.label not in p.keypoints]
    col, row = min(int(x), ref.width - 1), min(int(y), ref.height - 1)
    for person in free:
        if person.patch.holds(row, col):
            return person
    best, best_gap = None, math.inf
    for person in free:
        p = person.patch  # its box is the mask's: patches are cropped tight
        x0, x1, y0, y1 = p.left, p.right, p.top, p.bottom
        gap = math.hypot(max(x0 - x, 0, x - x1), max(y0 - y, 0, y - y1))
        margin = max(3.0, 0.1 * max(x1 - x0, y1 - y0))
        if gap <= margin and gap < best_gap:
            best, best_gap = person, gap
    return best


def _groups(ids: list[str], links: list[tuple[str, str]]) -> list[list[str]]:
    """Connected groups of region ids (union-find), ordered by their first region."""
    parent = {rid: rid for rid in ids}

    def root(rid: str) -> str:
        while parent[rid] != rid:
            parent[rid] = parent[parent[rid]]
            rid = parent[rid]
        return rid

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            # The earlier region stays the root, so groups come out in drawing order.
            first, second = (ra, rb) if ids.index(ra) < ids.index(rb) else (rb, ra)
            parent[second] = first
    out: dict[str, list[str]] = {}
    for rid in ids:
        out.setdefault(root(rid), []).append(rid)
    return list(out.values())
