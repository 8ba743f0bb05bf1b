"""`check_dataset`: every data check of a prepared folder (the data half of `anonlab
validate`), in a fixed order, each reported as a `Check` with its numbers, failing or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.data_checks.checks import Check
from evaluation.data_checks.geometry import check_geometry
from evaluation.data_checks.keypoints import check_keypoints
from evaluation.data_checks.leakage import check_leakage
from evaluation.data_checks.loading import load_cocos
from evaluation.data_checks.shift import check_shift, count_objects

__all__ = ["check_dataset"]


def check_dataset(
    prepared: Path,
    reviewed: Path,
    *,
    leak_hamming: int,
    baseline_stats: dict[str, Any] | None,
    max_shift: float = 0.5,
    min_objects: int = 20,
) -> list[Check]:
    """Every data check of a prepared folder, in a fixed order, passing or not.

    Checks: `schema`; `geometry.boxes_inside`, `geometry.masks_non_empty`, `geometry.mask_area`,
    `geometry.mask_bbox`, `geometry.keypoints_in_image`, `geometry.keypoints_in_person`,
    `geometry.keypoints_count`; `leakage.hashes`, `leakage`; `shift.<split>` for each split of
    this version, then each split only the baseline has (`train`, `val`, `ref-<name>`).

    Decisions:
    - `file_name` is resolved against `prepared/` for every file, refs/ included: prepare writes
      them so (tiles `tiles/...`, store images `../raw/...`).
    - Geometry runs on the annotations schema found well-formed; a file that does not parse is
      reported by schema and skipped by the rest. A missing, null or empty `segmentation` is a
      box-only instance (as training and scoring read it), not an empty mask. A mask that does
      not decode (a compressed RLE that does not cover its image exactly, polygon vertices far
      outside the image) fails `geometry.masks_non_empty`.
    - Labelled keypoints (v > 0) must lie in their image (an error), and in their instance's box
      widened by 10% of its size and by at least 16 px. Label Studio keypoints carry no
      visibility, so an occluded person's hidden head lies away from the visible fragment its
      box holds (about 1% of synthetic persons): outside the box is a warning, and an error only
      for more than 5% of the instances (a coordinate bug moves them all).
    - Leakage compares train and val (tiles by their source's sha256) with every reference set.
      pHashes come from `reviewed/manifest.jsonl`; a reference image without `sha256` (an
      external reference set) is hashed from its file as prepare does. Any other image without
      a pHash fails `leakage.hashes`; without a readable manifest, `leakage` fails too.
    - Shift (warnings only) counts objects in the COCO files (not the stats.json beside them,
      which may be stale) and compares each class/bucket's share of its split, and each class's
      over all buckets (`all`), with `baseline_stats["<split>"]["objects"]`. A class that
      appears or disappears always warns; a split only the baseline has warns; a new split and
      a missing baseline pass with a note.
    """
    prepared, reviewed = Path(prepared), Path(reviewed)
    cocos, schema = load_cocos(prepared)
    current = {coco.split: count_objects(coco) for coco in cocos}
    return [
        schema,
        *check_geometry(cocos),
        *check_keypoints(cocos),
        *check_leakage(cocos, prepared, reviewed, leak_hamming),
        *check_shift(current, baseline_stats, max_shift=max_shift, min_objects=min_objects),
    ]
