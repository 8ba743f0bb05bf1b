"""The leakage checks: every image has a pHash (`leakage.hashes`), and no train or val image is
identical or near-identical to a reference image (`leakage`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from data.errors import AnonlabError
from data.image_scores import score_image
from data.leakage import find_leaks
from data.manifest import read_manifest
from data.stage_paths import MANIFEST
from evaluation.data_checks.checks import ERROR, Check, Offenders, check_result
from evaluation.data_checks.loading import Coco

__all__ = ["SPLITS", "check_leakage"]

SPLITS = ("train", "val")


def check_leakage(
    cocos: Sequence[Coco], prepared: Path, reviewed: Path, leak_hamming: int
) -> list[Check]:
    """`leakage.hashes` and `leakage`: train and val images against every reference set, by
    pHash within `leak_hamming` bits."""
    missing = Offenders()
    try:
        hashes, work_size = _reviewed_hashes(reviewed)
    except AnonlabError as e:
        return [
            Check("leakage.hashes", False, ERROR, f"leakage.hashes: {e}", {"count": None}),
            Check("leakage", False, ERROR, "leakage: not judged without pHashes", {"count": None}),
        ]

    pools: dict[str, dict[str, int]] = {}  # train / val / ref-<name> -> sha256 -> pHash
    first_image: dict[tuple[str, str], tuple[str, int, str]] = {}  # (split, sha) -> where
    hashed_from_files = 0
    for coco in cocos:
        pool = pools.setdefault(coco.split, {})
        for image_id, image in coco.images.items():
            sha = image.get("sha256")
            if not sha and coco.split.startswith("ref-") and work_size is not None:
                # An external reference set's image: never reviewed, so hash it as prepare did.
                path = prepared / image["file_name"]
                if not path.is_file():
                    continue  # schema reports it
                try:
                    sha, phash = _hash_file(path, work_size)
                except (OSError, ValueError) as e:
                    missing.add(
                        coco.file, f"cannot hash {image['file_name']}: {e}", image_id=image_id
                    )
                    continue
                hashes.setdefault(sha, phash)
                hashed_from_files += 1
            if (coco.split, sha) in first_image:
                continue  # another tile of the same source image
            first_image[(coco.split, sha)] = (coco.file, image_id, image["file_name"])
            if not sha:
                missing.add(coco.file, "no sha256", image_id=image_id)
            elif hashes.get(sha) is None:
                missing.add(
                    coco.file,
                    f"sha256 {sha[:12]}... has no pHash in {reviewed / MANIFEST}",
                    image_id=image_id,
                )
            else:
                pool[sha] = hashes[sha]

    references = {split: pool for split, pool in pools.items() if split.startswith("ref-")}
    leaks = Offenders()
    for split in SPLITS:
        for leak in find_leaks(pools.get(split, {}), references, max_hamming=leak_hamming):
            file, image_id, _ = first_image[(split, leak.train_image)]
            ref_file, ref_id, ref_name = first_image[(leak.refset, leak.reference_image)]
            leaks.add(
                file,
                f"{leak.kind.replace('_', '-')} ({leak.distance} bits) to {ref_file} image "
                f"{ref_id} ({ref_name})",
                image_id=image_id,
                refset=leak.refset,
                reference_image_id=ref_id,
                kind=leak.kind,
                distance=leak.distance,
            )
    images = {split: len(pool) for split, pool in pools.items()}
    return [
        check_result(
            "leakage.hashes",
            ERROR,
            missing,
            ok=f"every image has a pHash ({hashed_from_files} hashed from external files)",
            bad="image(s) without a pHash",
            todo="Run `anonlab review` and `anonlab prepare` again",
            hashed_from_files=hashed_from_files,
        ),
        check_result(
            "leakage",
            ERROR,
            leaks,
            ok=f"no train or val image within {leak_hamming} pHash bits of a reference image",
            bad="train/val image(s) identical or near-identical to a reference image",
            todo="Take their sessions out of train/val (prepare.reference_sets) or remove the "
            "duplicates, then run `anonlab prepare` again",
            max_hamming=leak_hamming,
            images=images,
        ),
    ]


def _reviewed_hashes(reviewed: Path) -> tuple[dict[str, int | None], int | None]:
    """sha256 -> pHash (None where review wrote none) of the kept images, and review's work size."""
    path = reviewed / MANIFEST
    if not path.is_file():
        raise AnonlabError(f"{path} not found: run `anonlab review` first")
    try:
        records = read_manifest(path)
    except (TypeError, ValueError) as e:
        raise AnonlabError(f"{path} is not a manifest written by review ({e})") from None
    hashes: dict[str, int | None] = {}
    work_size = None
    for r in records:
        review = r.extra.get("review") or {}
        try:
            hashes[r.sha256] = int(review["phash"], 16)
        except (KeyError, TypeError, ValueError):
            hashes[r.sha256] = None
        work_size = review.get("work_size", work_size)
    return hashes, work_size


def _hash_file(path: Path, work_size: int) -> tuple[str, int]:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return sha, score_image(path, work_size=work_size).phash
