"""The review stage: keep the images worth annotating, reject the rest with one reason each.

Rules, in the order they are applied (an image gets the first reason that fits):

1. `too_small`: width < min_width or height < min_height, from the manifest's upright size
   (no decode).
2. `unreadable`: the image cannot be decoded now (missing, truncated, corrupt).
3. `duplicate`: the same decoded pixels as an earlier image in the manifest (re-encoded
   losslessly, other metadata); the first one in manifest order is kept. Images with identical
   working images are candidates, and a full decode of those candidates only confirms them.
   (A JPEG and a PNG of the same pixels have different working images, as only the JPEG is
   DCT-scaled; they are caught as near-duplicates at distance 0 instead.)
4. `too_dark`: mean luminance < dark_threshold.
5. `overexposed`: share of pixels >= 250/255 > overexposed_threshold.
6. `blurry`: variance of the Laplacian < blur_threshold.
7. `near_duplicate`: among the images that passed 1-6, 64-bit pHashes at most
   near_duplicate_hamming bits apart are linked, clusters are closed transitively (union-find),
   and the sharpest image of each cluster is kept. With near_duplicate_scope `session` (the
   default) only images of the same capture session are compared: consecutive frames of a
   drive are where near-duplicates come from, and across a large store chance matches between
   unrelated drives would otherwise chain into ever larger clusters.

Quality rules come before clustering so that a cluster keeps a good image: a sharp frame is never
dropped in favour of a dark or blurry near-copy. Scores 4-7 are measured on the working image
(long side `work_size` px, see data.image_scores), so those thresholds are in that scale.

Outputs (artifacts/reviewed/, replaced as a whole only when the stage succeeds): manifest.jsonl
(kept records, unchanged, in input order, with their scores under `extra["review"]`),
rejected.jsonl, report.html and metrics.json. Every input image is kept or rejected once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from data import review_report
from data.atomic import staged_dir, write_json, write_jsonl, write_text
from data.config import ReviewConfig
from data.errors import AnonlabError
from data.hamming import nearest_other
from data.headline import review_headline
from data.image_scores import ImageScores, pixel_digest, score_image, thumbnail_jpeg
from data.manifest import ManifestRecord, read_manifest, write_manifest
from data.near_duplicates import near_duplicate_rejections
from data.retention import refuse_overdue
from data.review_sections import NEAR, report_sections
from data.stage_paths import HEADLINE, MANIFEST, METRICS, REJECTED, REVIEW_REPORT
from serving.runtime.progress import progress

log = logging.getLogger(__name__)

# Rejection reasons in the order the rules are applied.
REASONS = (
    "too_small",
    "unreadable",
    "duplicate",
    "too_dark",
    "overexposed",
    "blurry",
    "near_duplicate",
)
T = TypeVar("T")


@dataclass(frozen=True)
class Rejection:
    """One rejected image: the reason, the score against the threshold, what it duplicates."""

    sha256: str
    path: str
    reason: str
    score: float | None  # the rule's measure; None for unreadable and (exact) duplicate
    threshold: float | None
    duplicate_of: str | None = None  # sha256 of the kept image (duplicate, near_duplicate)
    detail: str = ""  # in words: the size, the decoder's error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReviewReport:
    """The counts of one review run; `summary()` is what `anonlab review` prints."""

    input: int
    kept: int
    by_reason: dict[str, int]  # every reason of REASONS, in rule order
    rules: dict[str, str]  # each reason's rule, in words, with its threshold
    thresholds: dict[str, float]
    out_dir: Path
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.by_reason.values())

    def overview(self) -> list[tuple[str, str, str]]:
        rows = [(r, str(self.by_reason[r]), self.rules[r]) for r in REASONS]
        return [*rows, ("kept", str(self.kept), "")]

    def summary(self) -> str:
        lines = [
            f"review: {self.input} images, {self.kept} kept, {self.rejected} rejected "
            f"({self.seconds:.1f} s)",
            f"  {'reason':<15} {'images':>7}  rule",
        ]
        for name, count, rule in self.overview():
            lines.append(f"  {name:<15} {count:>7}  {rule}".rstrip())
        lines.append(f"wrote {self.out_dir}/ ({MANIFEST}, {REJECTED}, {REVIEW_REPORT}, {METRICS})")
        return "\n".join(lines)

    def metrics(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.by_reason),
            "thresholds": dict(self.thresholds),
        }


def run_review(cfg: ReviewConfig, raw_dir: Path, out_dir: Path) -> ReviewReport:
    """Review the raw store at `raw_dir` and write the reviewed outputs to `out_dir`.

    Raises AnonlabError when there is no valid raw manifest, or when an image in it is past its
    `delete_after` (data.retention: nothing is read or written then); an image that cannot be
    read is rejected as `unreadable`, it never stops the run. A failed run leaves `out_dir` as
    it was.
    """
    started = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    # Every stored image passed collect's own pixel limit (collect.max_pixels, which may be
    # above Pillow's default guard); review must not reject those as unreadable.
    Image.MAX_IMAGE_PIXELS = None
    records = _read_raw_manifest(raw_dir)
    refuse_overdue(
        {r.sha256: r.delete_after for r in records},
        where=raw_dir / MANIFEST,
        command="anonlab review",
    )
    log.info("review: %d images from %s", len(records), raw_dir)

    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="review") as pool:

        def run(fn: Callable[[int], T], indices: Sequence[int], desc: str | None = None) -> list[T]:
            results = pool.map(fn, indices)
            if desc:
                results = progress(results, total=len(indices), desc=desc)
            return list(results)

        decision = _decide(cfg, raw_dir, records, run)
        sections, wanted = report_sections(cfg, records, decision, _rules(cfg), REASONS)
        thumbs = run(lambda i: _thumbnail(raw_dir, records[i]), wanted)

    report = ReviewReport(
        input=len(records),
        kept=len(decision.kept),
        by_reason={r: sum(x.reason == r for x in decision.rejected.values()) for r in REASONS},
        rules=_rules(cfg),
        thresholds=_thresholds(cfg),
        out_dir=out_dir,
        seconds=time.perf_counter() - started,
    )
    if report.input != report.kept + report.rejected:  # invariant 1 of DESIGN.md
        raise RuntimeError(f"review lost track of images: {report}")

    html = review_report.render_report(
        title="anonlab review",
        intro=(
            f"{report.input} images reviewed: {report.kept} kept, {report.rejected} rejected. "
            f"Scores are measured at {cfg.work_size} px on the long side. Each section shows "
            f"up to {cfg.report_thumbnails} images, nearest the threshold first: check those "
            "to see whether a threshold is right. The kept images shown are only those near a "
            f"threshold: a score within {NEAR:.0%} of the threshold's value from it."
        ),
        overview=report.overview(),
        sections=sections,
        thumbnails={records[i].sha256: t for i, t in zip(wanted, thumbs, strict=True)},
    )
    kept_rows = [_with_scores(records[i], decision.scores[i], cfg) for i in decision.kept]
    rejected_rows = [decision.rejected[i].to_dict() for i in sorted(decision.rejected)]
    with staged_dir(out_dir) as stage:
        write_manifest(stage / MANIFEST, kept_rows)
        write_jsonl(stage / REJECTED, rejected_rows)
        write_text(stage / REVIEW_REPORT, html)
        write_json(stage / METRICS, report.metrics())
        write_json(stage / HEADLINE, review_headline(report.metrics()))

    if decision.unreadable:
        log.warning(
            "review: %d images could not be read (reason `unreadable` in %s), e.g. %s",
            decision.unreadable,
            out_dir / REJECTED,
            next(r.path for r in decision.rejected.values() if r.reason == "unreadable"),
        )
    log.info("review: %d kept, %d rejected in %.1f s", report.kept, report.rejected, report.seconds)
    return report


# ---------------------------------------------------------------------------------------------
# The rules


@dataclass
class Decision:
    """Where every input image (by index in the manifest) ended up."""

    kept: list[int]  # in input order
    rejected: dict[int, Rejection]
    scores: dict[int, ImageScores]  # every image that could be decoded
    # For kept images after clustering: (distance, index) of the nearest other kept image.
    nearest_kept: dict[int, tuple[int, int]]

    @property
    def unreadable(self) -> int:
        return sum(r.reason == "unreadable" for r in self.rejected.values())


@dataclass(frozen=True)
class _Failure:
    """An image operation that raised; the message goes into rejected.jsonl."""

    message: str


def _attempt(fn: Callable[..., T], *args: Any) -> T | _Failure:
    try:
        return fn(*args)
    except Exception as e:  # any decoder error rejects that one image; it never stops the stage
        return _Failure(f"{type(e).__name__}: {e}")


def _decide(
    cfg: ReviewConfig,
    raw_dir: Path,
    records: list[ManifestRecord],
    run: Callable[..., list[Any]],
) -> Decision:
    rejected: dict[int, Rejection] = {}

    def reject(i: int, reason: str, score: float | None, threshold: float | None, **kw: Any):
        rec = records[i]
        # Six significant digits read well in rejected.jsonl; rules compare unrounded scores.
        score = None if score is None else float(f"{score:.6g}")
        rejected[i] = Rejection(rec.sha256, rec.path, reason, score, threshold, **kw)

    def unreadable(i: int, failure: _Failure) -> None:
        # Paths relative to the store, as everywhere in the manifests: outputs do not depend on
        # where the store is mounted.
        reject(i, "unreadable", None, None, detail=failure.message.replace(f"{raw_dir}/", ""))
        log.debug("review: cannot read %s: %s", records[i].path, failure.message)

    # 1. too_small, from the manifest's header sizes.
    for i, rec in enumerate(records):
        small = too_small(rec.width, rec.height, cfg.min_width, cfg.min_height)
        if small:
            reject(i, "too_small", *small, detail=f"{rec.width}x{rec.height} px")

    # 2. Score every other image on its reduced decode; failures are unreadable.
    todo = [i for i in range(len(records)) if i not in rejected]
    results = run(
        lambda i: _attempt(
            score_image, raw_dir / records[i].path, cfg.work_size, records[i].orientation
        ),
        todo,
        "review",
    )
    scores: dict[int, ImageScores] = {}
    for i, result in zip(todo, results, strict=True):
        if isinstance(result, _Failure):
            unreadable(i, result)
        else:
            scores[i] = result

    # 3. Exact duplicates: equal working images are candidates; a full decode confirms them.
    candidates = exact_duplicate_candidates(
        {i: (s.width, s.height, s.digest) for i, s in scores.items()}
    )
    if candidates:
        flat = [i for group in candidates for i in group]
        digests = dict(
            zip(
                flat,
                run(lambda i: _attempt(pixel_digest, raw_dir / records[i].path), flat),
                strict=True,
            )
        )
        for group in candidates:
            first: dict[str, int] = {}
            for i in group:
                digest = digests[i]
                if isinstance(digest, _Failure):
                    unreadable(i, digest)
                elif digest in first:
                    reject(i, "duplicate", None, None, duplicate_of=records[first[digest]].sha256)
                else:
                    first[digest] = i

    # 4-6. Quality rules.
    for i, s in scores.items():
        if i not in rejected and (bad := quality_rejection(s, cfg)):
            reason, score, threshold = bad
            reject(i, reason, score, threshold)

    # 7. Near-duplicates among the survivors, within each capture session unless configured
    # otherwise; the sharpest of each cluster stays.
    groups: dict[str, list[int]] = defaultdict(list)
    for i in sorted(scores):
        if i not in rejected:
            groups[records[i].session if cfg.near_duplicate_scope == "session" else ""].append(i)
    for survivors in groups.values():
        hashes = np.array([scores[i].phash for i in survivors], dtype=np.uint64)
        sharpness = np.array([scores[i].sharpness for i in survivors], dtype=np.float64)
        for member, keeper, distance in near_duplicate_rejections(
            hashes, sharpness, cfg.near_duplicate_hamming
        ):
            reject(
                survivors[member],
                "near_duplicate",
                float(distance),
                float(cfg.near_duplicate_hamming),
                duplicate_of=records[survivors[keeper]].sha256,
            )

    kept = [i for i in range(len(records)) if i not in rejected]
    nearest: dict[int, tuple[int, int]] = {}
    if cfg.report_thumbnails:  # only the report uses it, and it is another pass over all pairs
        kept_hashes = np.array([scores[i].phash for i in kept], dtype=np.uint64)
        distance, other = nearest_other(kept_hashes)
        nearest = {
            i: (int(d), kept[int(j)])
            for i, d, j in zip(kept, distance, other, strict=True)
            if j >= 0
        }
    return Decision(kept, rejected, scores, nearest)


def too_small(
    width: int, height: int, min_width: int, min_height: int
) -> tuple[float, float] | None:
    """(size, minimum) of the side furthest below its minimum, relatively; None if big enough."""
    ratios = [(width / min_width, width, min_width), (height / min_height, height, min_height)]
    ratio, size, minimum = min(ratios)
    return (float(size), float(minimum)) if ratio < 1 else None


def quality_rejection(s: ImageScores, cfg: ReviewConfig) -> tuple[str, float, float] | None:
    """(reason, score, threshold) of the first quality rule `s` fails, in rule order; or None."""
    if s.mean < cfg.dark_threshold:
        return "too_dark", s.mean, cfg.dark_threshold
    if s.overexposed > cfg.overexposed_threshold:
        return "overexposed", s.overexposed, cfg.overexposed_threshold
    if s.sharpness < cfg.blur_threshold:
        return "blurry", s.sharpness, cfg.blur_threshold
    return None


def exact_duplicate_candidates(keys: dict[int, tuple[Any, ...]]) -> list[list[int]]:
    """Groups (of two or more, indices ascending) of images with equal keys."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i in sorted(keys):
        groups[keys[i]].append(i)
    return [g for g in groups.values() if len(g) > 1]


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def _read_raw_manifest(raw_dir: Path) -> list[ManifestRecord]:
    path = raw_dir / MANIFEST
    if not path.is_file():
        raise AnonlabError(
            f"{path} not found: there is no collected data to review. Run `anonlab collect` "
            "first (it writes the raw store that review reads)."
        )
    try:
        return read_manifest(path)
    except (ValueError, TypeError, AttributeError) as e:
        raise AnonlabError(
            f"{path} is not a valid manifest ({e}). Run `anonlab collect` again to rewrite it."
        ) from None


def _with_scores(rec: ManifestRecord, s: ImageScores, cfg: ReviewConfig) -> ManifestRecord:
    review = {
        "mean": round(s.mean, 4),
        "overexposed": round(s.overexposed, 4),
        "sharpness": round(s.sharpness, 2),
        "phash": f"{s.phash:016x}",
        "work_size": cfg.work_size,
    }
    return dataclasses.replace(rec, extra={**rec.extra, "review": review})


def _thresholds(cfg: ReviewConfig) -> dict[str, float]:
    return {
        "min_width": cfg.min_width,
        "min_height": cfg.min_height,
        "dark_threshold": cfg.dark_threshold,
        "overexposed_threshold": cfg.overexposed_threshold,
        "blur_threshold": cfg.blur_threshold,
        "near_duplicate_hamming": cfg.near_duplicate_hamming,
        "work_size": cfg.work_size,
    }


def _rules(cfg: ReviewConfig) -> dict[str, str]:
    return {
        "too_small": f"width < {cfg.min_width} or height < {cfg.min_height} px",
        "unreadable": "cannot be decoded",
        "duplicate": "same decoded pixels as a kept image",
        "too_dark": f"mean luminance < {cfg.dark_threshold}",
        "overexposed": f"share of pixels >= 250/255 > {cfg.overexposed_threshold}",
        "blurry": f"Laplacian variance < {cfg.blur_threshold} (at {cfg.work_size} px)",
        "near_duplicate": (
            f"pHash <= {cfg.near_duplicate_hamming} bits from another image"
            + (" of the same session" if cfg.near_duplicate_scope == "session" else "")
            + " (the sharpest of each cluster is kept)"
        ),
    }


def _thumbnail(raw_dir: Path, rec: ManifestRecord) -> bytes | None:
    result = _attempt(thumbnail_jpeg, raw_dir / rec.path, 160, rec.orientation)
    return None if isinstance(result, _Failure) else result
