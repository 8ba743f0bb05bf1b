"""The prepare stage: reviewed images + annotations -> the datasets training and evaluation read.

1. Reference sets are taken out first (by session, by tag, or an external COCO file). Whole
   capture sessions of a reference image leave the pool: a neighbouring frame in train would
   be a near-copy of the test image.
2. The remaining sessions are split into train and val (data.splits: by session, stratified
   by class and size bucket, seeded).
3. Leak check: no train image may equal (sha256) or nearly equal (pHash within
   `prepare.leak_hamming` bits) a reference image; a leak is an error that names the images.
4. Train and val images larger than `prepare.tiling.size` are cut into overlapping tiles
   (panoramas wrap around the seam, data.tiling), written as JPEGs under `tiles/`; tiles
   without objects are kept at `prepare.tiling.empty_ratio`. Smaller images are used whole,
   from the store. Reference sets stay whole images: evaluation runs tiled inference on them,
   as the runtime does.

Every image is upright (invariant 7): the annotations' sizes must be the manifest's upright
ones (else pull ran on an older manifest: an error), tiles are cut from the image as
`serving.runtime.imagefile.read_upright` decodes it (EXIF orientation applied) and written
without an orientation tag, and whole images keep their stored file, which training and
evaluation read through `read_upright` as well.

Retention (data.retention): prepare refuses to start when a reviewed image is past its
`delete_after`. Every image entry it writes carries its image's `delete_after` (a tile its source
image's), so that train and evaluate refuse overdue images without reading the manifest; a whole
image's entry also carries its capture `session`, which evaluate's gallery names. A
reference set made of collected images expires with them: when some expire within
`prepare.reference_expiry_warning_days`, prepare warns and stats.json's `ref-<name>.expiring`
says how many and the earliest date.

Outputs in `artifacts/prepared/` (replaced as a whole only on success): `train.json`,
`val.json`, `refs/<name>.json` (COCO, one entry per line: data.coco.layout; every `file_name`
is relative to `prepared/` itself; categories and keypoint names from the taxonomy), `tiles/`,
`stats.json` (images and objects per class and size bucket per split), `sizes.json` (the
same as rows, for `dvc plots`) and `headline.json` (images and objects per split: DVC metrics).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data import atomic, retention
from data.coco import categories as coco_categories
from data.coco import layout as coco_layout
from data.config import PrepareConfig, ReferenceSetConfig, TaxonomyConfig
from data.errors import AnonlabError
from data.headline import prepare_headline
from data.image_info import read_upright_sized
from data.leakage import find_leaks
from data.manifest import ManifestRecord, read_reviewed
from data.retention import refuse_overdue
from data.size_buckets import BUCKETS, size_bucket
from data.splits import split_sessions
from data.stage_paths import RELATIVE, TILES, Prepared, StagePaths
from data.tiling import crop, is_panorama, keep_empty_tiles, plan_tiles, tile_annotations
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_orientation
from serving.runtime.progress import progress

log = logging.getLogger(__name__)

# annotate's COCO file, relative to the artifacts root.
ANNOTATIONS = RELATIVE.annotations.coco


@dataclass
class PrepareReport:
    images: dict[str, int]  # per split: train, val, ref-<name>
    objects: dict[str, int]
    missing_in_val: list[tuple[str, str]]

    def summary(self) -> str:
        lines = ["prepare: " + ", ".join(f"{k} {n} images" for k, n in self.images.items())]
        lines += [f"  objects in {k}: {n}" for k, n in self.objects.items()]
        if self.missing_in_val:
            shown = ", ".join(f"{c}/{b}" for c, b in self.missing_in_val)
            lines.append(f"  not in val (found in one session only): {shown}")
        return "\n".join(lines)


def run_prepare(
    cfg: PrepareConfig, taxonomy: TaxonomyConfig, artifacts: Path, root: Path
) -> PrepareReport:
    """Write `artifacts/prepared/` from the reviewed manifest and the annotations; AnonlabError
    before any work when a reviewed image is past its `delete_after`."""
    artifacts = Path(artifacts)
    records = {r.sha256: r for r in read_reviewed(artifacts)}
    now = retention.now()
    refuse_overdue(
        {sha: r.delete_after for sha, r in records.items()},
        where=StagePaths(artifacts).reviewed.manifest,
        command="anonlab prepare",
        at=now,
    )
    coco = _read_annotations(artifacts)
    categories = coco_categories(taxonomy.classes, taxonomy.keypoints)
    _check_categories(coco, taxonomy)

    # Each entry carries its image's delete_after, so that train and evaluate can refuse
    # overdue images without the manifest (a tile inherits its source image's), and its
    # session, which evaluate's gallery names.
    images = [
        {
            **i,
            "delete_after": records[i["sha256"]].delete_after,
            "session": records[i["sha256"]].session,
        }
        for i in coco["images"]
        if i.get("sha256") in records
    ]
    _check_upright_sizes(images, records)
    anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in coco["annotations"]:
        anns_by_image[a["image_id"]].append(a)
    session_of = {i["id"]: records[i["sha256"]].session for i in images}

    # 1. Reference sets.
    refsets: dict[str, dict[str, Any]] = {}
    held_sessions: set[str] = set()
    ref_hashes: dict[str, dict[str, int]] = {}
    for i, ref in enumerate(cfg.reference_sets):
        where = f"prepare.reference_sets[{i}]"
        if ref.coco:
            # Hashed at review's working size, so they compare with the train images' hashes.
            work_size = next(iter(records.values())).extra["review"]["work_size"]
            refsets[ref.name], ref_hashes[ref.name] = _external(
                ref, where, root, artifacts, work_size
            )
            continue
        chosen = _select(ref, where, images, records)
        held_sessions |= {records[img["sha256"]].session for img in chosen}
        refsets[ref.name] = _coco(chosen, anns_by_image, categories, "../", coco.get("info"))
        ref_hashes[ref.name] = {img["sha256"]: _phash(records[img["sha256"]]) for img in chosen}

    # 2. Split the rest by session.
    pool = [img for img in images if session_of[img["id"]] not in held_sessions]
    strata: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    name_of = {c["id"]: c["name"] for c in categories}
    for img in pool:
        session = session_of[img["id"]]
        counts[session] += 1
        for a in anns_by_image[img["id"]]:
            strata[session][(name_of[a["category_id"]], size_bucket(a["area"]))] += 1
    split = split_sessions(strata, counts, val_ratio=cfg.val_ratio, seed=cfg.seed)
    in_val = set(split.val)

    splits = {
        "train": [img for img in pool if session_of[img["id"]] not in in_val],
        "val": [img for img in pool if session_of[img["id"]] in in_val],
    }

    # 3. Leaks.
    leaks = find_leaks(
        {img["sha256"]: _phash(records[img["sha256"]]) for img in splits["train"]},
        ref_hashes,
        max_hamming=cfg.leak_hamming,
    )
    if leaks:
        shown = "\n  ".join(
            f"{x.refset}: train {records[x.train_image].source_path} ~ reference "
            f"{_describe(x.reference_image, records)} ({x.kind}, {x.distance} bits)"
            for x in leaks[:20]
        )
        raise AnonlabError(
            f"{len(leaks)} train image(s) leak into reference sets:\n  {shown}\nTake their "
            "sessions out of train (prepare.reference_sets) or remove the duplicates; nothing "
            "written"
        )

    # 4. Tiles, and the outputs.
    out_dir = StagePaths(artifacts).prepared.folder
    rng = np.random.default_rng(cfg.seed)
    with atomic.staged_dir(out_dir) as stage:
        out = Prepared(stage)
        datasets = {
            name: _tiled(chosen, anns_by_image, categories, cfg, artifacts, stage, rng, name)
            for name, chosen in splits.items()
        }
        datasets.update({f"ref-{name}": ds for name, ds in refsets.items()})
        for name, ds in datasets.items():
            coco_layout.write(out.dataset(name), ds)
        stats = {name: _stats(ds, name_of) for name, ds in datasets.items()}
        horizon = timedelta(days=cfg.reference_expiry_warning_days)
        for name in refsets:
            stats[f"ref-{name}"]["expiring"] = _expiring(
                name, datasets[f"ref-{name}"], now, horizon
            )
        stats["val"]["missing_strata"] = [f"{c}/{b}" for c, b in split.missing_in_val]
        atomic.write_json(out.stats, stats)
        atomic.write_json(out.headline, prepare_headline(stats))
        atomic.write_json(out.sizes, sizes_rows(stats))
    if not datasets["train"]["images"]:
        log.warning("train is empty: every annotated image is in a reference set or in val")
    if split.missing_in_val:
        log.warning("val has no objects of %s", ", ".join(map("/".join, split.missing_in_val)))
    return PrepareReport(
        images={name: len(ds["images"]) for name, ds in datasets.items()},
        objects={name: len(ds["annotations"]) for name, ds in datasets.items()},
        missing_in_val=split.missing_in_val,
    )


def _expiring(name: str, ds: dict[str, Any], now: datetime, horizon: timedelta) -> dict[str, Any]:
    """stats.json's `expiring` of reference set `name`: how many of its images retention takes
    away within `horizon` (prepare.reference_expiry_warning_days), and the earliest date; a
    warning when any. External sets' images carry no delete_after: they never expire here."""
    found = retention.expiring(retention.coco_delete_afters(ds), now, horizon)
    if found is not None:
        log.warning(
            "reference set '%s': %d of its images expire within %d days (the earliest on %s), "
            "and `anonlab retention` will erase them: its recall will no longer compare with "
            "earlier runs. Re-collect the set, or use consented or synthetic reference data "
            "(prepare.reference_sets with `coco`)",
            name,
            found.count,
            horizon.days,
            found.earliest.date().isoformat(),
        )
    return {
        "within_days": horizon.days,
        "images": found.count if found else 0,
        "earliest": found.earliest.isoformat() if found else None,
    }


def _describe(image: str, records: dict[str, ManifestRecord]) -> str:
    """Where an image came from: its source path (store images), else its path."""
    return records[image].source_path if image in records else image


def _read_annotations(artifacts: Path) -> dict[str, Any]:
    path = artifacts / ANNOTATIONS
    if not path.is_file():
        raise AnonlabError(f"{path} not found: run `anonlab annotate pull` first")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        coco = None
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= coco.keys():
        raise AnonlabError(f"{path} is not a COCO file: run `anonlab annotate pull` again")
    return coco


def _check_categories(coco: dict[str, Any], taxonomy: TaxonomyConfig) -> None:
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    if names != list(taxonomy.classes):
        raise AnonlabError(
            f"the annotations' categories {names} differ from taxonomy.classes "
            f"{list(taxonomy.classes)}: run `anonlab annotate pull` again with this taxonomy"
        )


def _check_upright_sizes(images: list[dict[str, Any]], records: dict[str, ManifestRecord]) -> None:
    """Annotations drawn at another size than the image upright are in another frame (a COCO
    file converted from a manifest that recorded stored sizes): an error naming them."""
    wrong = [
        f"{records[i['sha256']].source_path}: {i['width']}x{i['height']} in the annotations, "
        f"{records[i['sha256']].width}x{records[i['sha256']].height} upright"
        for i in images
        if (i["width"], i["height"]) != (records[i["sha256"]].width, records[i["sha256"]].height)
    ]
    if wrong:
        shown = "\n  ".join(wrong[:20])
        raise AnonlabError(
            f"{ANNOTATIONS}: {len(wrong)} image(s) annotated at another size than the image "
            f"upright (EXIF orientation applied):\n  {shown}\nRun `anonlab annotate pull` "
            "again; nothing written"
        )


def _phash(record: ManifestRecord) -> int:
    return int(record.extra["review"]["phash"], 16)


def _select(
    ref: ReferenceSetConfig,
    where: str,
    images: list[dict[str, Any]],
    records: dict[str, ManifestRecord],
) -> list[dict[str, Any]]:
    """The annotated images a session/tag reference set selects; an error if any name is unknown."""
    sessions = {records[i["sha256"]].session for i in images}
    missing = sorted(set(ref.sessions) - sessions)
    if missing:
        raise AnonlabError(
            f"{where} ('{ref.name}'): no annotated images of session(s) {missing}; known "
            f"sessions: {sorted(sessions)[:20]}"
        )

    def tags(r: ManifestRecord) -> set[str]:
        return {r.source, *r.extra.get("tags", [])}

    known_tags = set().union(*(tags(records[i["sha256"]]) for i in images)) if images else set()
    missing = sorted(set(ref.tags) - known_tags)
    if missing:
        raise AnonlabError(f"{where} ('{ref.name}'): no annotated images tagged {missing}")
    return [
        img
        for img in images
        if records[img["sha256"]].session in ref.sessions
        or tags(records[img["sha256"]]) & set(ref.tags)
    ]


def _external(
    ref: ReferenceSetConfig, where: str, root: Path, artifacts: Path, work_size: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """An external reference set: its COCO with paths made relative to prepared/, and pHashes."""
    from data.image_scores import score_image

    path = (root / str(ref.coco)).resolve()
    if not path.is_file():
        raise AnonlabError(f"{where} ('{ref.name}'): coco file {path} not found")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnonlabError(f"{where} ('{ref.name}'): {path} is not JSON ({e})") from None
    folder = (root / ref.images).resolve() if ref.images else path.parent
    coco = copy.deepcopy(coco)
    hashes: dict[str, int] = {}
    for img in coco.get("images", []):
        file = folder / img["file_name"]
        if not file.is_file():
            raise AnonlabError(f"{where} ('{ref.name}'): image {file} not found")
        img["file_name"] = os.path.relpath(file, StagePaths(artifacts).prepared.folder)
        data = file.read_bytes()
        try:
            orientation = read_orientation(data)
        except ImageError as e:
            raise AnonlabError(f"{where} ('{ref.name}'): image {file}: {e}") from None
        # Upright, as review hashed the store's images.
        hashes[str(file)] = score_image(data, work_size, orientation).phash
    return coco, hashes


def _coco(
    images: Iterable[dict[str, Any]],
    anns_by_image: dict[int, list[dict[str, Any]]],
    categories: list[dict[str, Any]],
    prefix: str,
    info: dict[str, Any] | None,
) -> dict[str, Any]:
    """A COCO dataset of whole images from the store (`file_name` relative to prepared/)."""
    out_images, out_anns = [], []
    for img in images:
        out_images.append({**img, "file_name": prefix + img["file_name"]})
        out_anns.extend(anns_by_image[img["id"]])
    return {
        "info": info or {},
        "images": out_images,
        "annotations": out_anns,
        "categories": categories,
    }


def _tiled(
    images: list[dict[str, Any]],
    anns_by_image: dict[int, list[dict[str, Any]]],
    categories: list[dict[str, Any]],
    cfg: PrepareConfig,
    artifacts: Path,
    stage: Path,
    rng: np.random.Generator,
    split: str,
) -> dict[str, Any]:
    """The split's COCO: small images whole, larger ones as tiles written under tiles/."""
    t = cfg.tiling
    out_images: list[dict[str, Any]] = []
    out_anns: list[dict[str, Any]] = []
    for img in progress(images, total=len(images), desc=f"prepare {split}"):
        w, h, anns = img["width"], img["height"], anns_by_image[img["id"]]
        if w <= t.size and h <= t.size:
            new_id = len(out_images) + 1
            out_images.append({**img, "id": new_id, "file_name": "../" + img["file_name"]})
            out_anns.extend({**a, "image_id": new_id} for a in anns)
            continue
        pixels = read_upright_sized(
            artifacts / img["file_name"],
            w,
            h,
            said="annotated at",
            unreadable="; run `anonlab collect` again",
            other_size="run `anonlab annotate pull` again",
        )
        tiles = plan_tiles(w, h, size=t.size, overlap=t.overlap, panorama=is_panorama(w, h))
        per_tile = {
            tile: tile_annotations(
                anns, image_width=w, image_height=h, tile=tile, min_visible=t.min_visible
            )
            for tile in tiles
        }
        kept = keep_empty_tiles([(x, len(a)) for x, a in per_tile.items()], t.empty_ratio, rng)
        for tile in kept:
            new_id = len(out_images) + 1
            name = f"{TILES}/{img['sha256']}-{tile.x}-{tile.y}.jpg"
            atomic.write_bytes(stage / name, _jpeg(crop(pixels, tile), t.jpeg_quality))
            out_images.append(
                {
                    "id": new_id,
                    "file_name": name,
                    "width": tile.width,
                    "height": tile.height,
                    "sha256": img["sha256"],
                    "source_file_name": img["file_name"],
                    "tile": [tile.x, tile.y, tile.width, tile.height],
                    "delete_after": img["delete_after"],
                }
            )
            out_anns.extend({**a, "image_id": new_id} for a in per_tile[tile])
    for n, a in enumerate(out_anns, start=1):
        a["id"] = n
    return {"info": {}, "images": out_images, "annotations": out_anns, "categories": categories}


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    # Pillow writes no EXIF unless given one: the tile is upright and carries no orientation.
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def sizes_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """stats.json's objects as rows for `dvc plots` (sizes.json): one per split, class and size
    bucket."""
    return [
        {"split": name, "class": c, "bucket": b, "objects": n}
        for name, s in stats.items()
        for c, per_bucket in s["objects"].items()
        for b, n in per_bucket.items()
    ]


def _stats(ds: dict[str, Any], name_of: dict[int, str]) -> dict[str, Any]:
    objects = {name: dict.fromkeys(BUCKETS, 0) for name in name_of.values()}
    for a in ds["annotations"]:
        objects[name_of[a["category_id"]]][size_bucket(a["area"])] += 1
    return {"images": len(ds["images"]), "objects": objects}
