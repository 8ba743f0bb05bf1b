"""The conversion's records: the image a task resolves to, the issues found (their kinds),
the result, and the error a region that cannot be converted raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Issue kinds: stable names, what they mean and what was done.
ISSUE_KINDS = {
    "unannotated": "the task has no submitted annotation; left out (counted)",
    "skipped": "every annotation of the task was cancelled (skipped); left out",
    "cancelled": "a cancelled annotation was ignored; another one was converted",
    "conflict": "several submitted annotations; the rule picked one (named in the detail)",
    "unknown_image": "resolve_image found no image for the task; left out",
    "size_mismatch": "regions drawn at another image size; scaled to the image's size",
    "unknown_label": "a region's label is not in the taxonomy (or it has none); left out",
    "ambiguous_label": "a region carries several labels; left out",
    "malformed_region": "a region's value is missing or not numbers; left out",
    "unsupported": "a result type, relation or rotated view the config does not offer; ignored",
    "dangling_relation": "a relation names a region the annotation does not have; ignored",
    "degenerate": "a shape that covers nothing (too few points, zero size, NaN); left out",
    "self_intersecting": "a polygon whose edges cross; reported, its filled mask kept",
    "outside_image": "a shape or keypoint entirely outside the image; left out",
    "mixed_labels": "regions of several classes linked as one object; one object per class",
    "orphan_keypoint": "a keypoint that fits no person; left out",
    "duplicate_keypoint": "a person has that keypoint already; left out",
}


@dataclass(frozen=True)
class ImageRef:
    file_name: str  # path as COCO should record it (relative), e.g. "raw/images/ab/ab12....jpg"
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class Issue:
    task_id: int
    kind: str  # a key of ISSUE_KINDS
    detail: str  # which region or annotation, what is wrong, what was done


@dataclass
class Conversion:
    coco: dict[str, Any]  # images, annotations, categories, info
    issues: list[Issue]
    counts: dict[str, int]  # tasks.<outcome>, objects.<class>, issues.<kind>, ...


class RegionError(ValueError):
    """A region that cannot be converted: `kind` is an Issue kind, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Reporter:
    def __init__(self, task_id: int, issues: list[Issue]) -> None:
        self.task_id = task_id
        self.issues = issues

    def __call__(self, kind: str, detail: str) -> None:
        self.issues.append(Issue(self.task_id, kind, detail))
