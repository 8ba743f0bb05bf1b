"""What review's report.html shows, as sections for data.review_report: per rejection reason the
rejected images, nearest the threshold first; and the kept images near a threshold (`NEAR`), so a
person checks a threshold on the images it nearly decided.

How near a score is to a threshold is measured relative to the threshold's value (`gap`), so
that rules in different units (luminance, a share of pixels, a variance, pHash bits) compare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from data.config import ReviewConfig
from data.manifest import ManifestRecord
from data.review_report import Section, Tile
from data.stage_paths import REJECTED

if TYPE_CHECKING:
    from data.review import Decision

__all__ = ["NEAR", "gap", "near_band", "report_sections", "score_text", "short_name"]

# Reasons whose score is above its threshold when the image is rejected; the others are below.
ABOVE = frozenset({"overexposed"})
# Comparing how near kept images are to thresholds of different units needs a relative gap;
# these floors keep a threshold of 0 from dividing by zero.
GAP_FLOOR = {
    "too_small": 1.0,
    "too_dark": 0.01,
    "overexposed": 0.01,
    "blurry": 1.0,
    "near_duplicate": 1.0,
}

# A kept image is near a threshold when its score is within this share of the threshold's value
# from it (`near_band`): only those are worth a look when checking a threshold. Further out,
# the "nearest" images are merely the least far (0 % overexposed, against a threshold of 40 %).
NEAR = 0.5


def gap(reason: str, score: float, threshold: float) -> float:
    """How far `score` is past `threshold` on the rejected side, relative to the threshold.

    Negative for images the rule keeps; near zero where a person should check the threshold.
    """
    past = score - threshold if reason in ABOVE else threshold - score
    return past / max(abs(threshold), GAP_FLOOR[reason])


def near_band(reason: str, threshold: float) -> float:
    """The score at which a kept image stops being near `threshold` of rule `reason`: the
    threshold moved NEAR times its value (at least its gap floor) away from the rejected side."""
    step = NEAR * max(abs(threshold), GAP_FLOOR[reason])
    return threshold - step if reason in ABOVE else threshold + step


def score_text(reason: str, score: float | None) -> str:
    """A rule's score in words, for a caption."""
    if score is None:
        return ""
    return {
        "too_dark": f"mean luminance {score:.3f}",
        "overexposed": f"{100 * score:.1f} % of pixels >= 250",
        "blurry": f"Laplacian variance {score:.1f}",
        "near_duplicate": f"{score:.0f} bits from the kept image",
    }.get(reason, f"{score:g}")


def report_sections(
    cfg: ReviewConfig,
    records: list[ManifestRecord],
    decision: Decision,
    rules: Mapping[str, str],
    reasons: Sequence[str],
) -> tuple[list[Section], list[int]]:
    """The report's sections (one per reason of `reasons`, in that order, with its rule in
    words from `rules`; then the kept images near a threshold) and the indices of the images
    that need a thumbnail."""
    limit = cfg.report_thumbnails
    by_sha = {rec.sha256: i for i, rec in enumerate(records)}
    wanted: dict[int, None] = {}  # insertion-ordered set

    def tile(i: int, caption: str, label: str = "") -> Tile:
        wanted[i] = None
        rec = records[i]
        return Tile(
            rec.sha256, caption, title=f"{rec.source_path} (store: {rec.path})", label=label
        )

    sections = []
    for reason in reasons:
        rows = [(i, r) for i, r in sorted(decision.rejected.items()) if r.reason == reason]
        if reason not in ("duplicate", "unreadable"):
            rows.sort(key=lambda row: gap(reason, row[1].score or 0.0, row[1].threshold or 0.0))
        items = []
        for i, r in rows[:limit]:
            name = short_name(records[i])
            if r.duplicate_of is not None:
                keeper = by_sha[r.duplicate_of]
                # The image a duplicate repeats can itself fail a later rule (both are dark).
                fate = decision.rejected.get(keeper)
                label = f"original, {fate.reason}" if fate else "kept"
                shown = score_text(reason, r.score) or "same pixels"
                items.append(
                    (
                        tile(keeper, short_name(records[keeper]), label=label),
                        tile(i, f"{shown} · {name}", label="rejected"),
                    )
                )
            else:
                shown = r.detail if reason in ("unreadable", "too_small") else ""
                shown = shown or score_text(reason, r.score)
                caption = f"{shown} · {name}"
                items.append((tile(i, caption),))
        note = ""
        if len(rows) > len(items):
            note = f"showing {len(items)} of {len(rows)}; all are in {REJECTED}"
        if reason not in ("duplicate", "unreadable") and items:
            note = "nearest the threshold first. " + note
        sections.append(Section(reason, reason, len(rows), rules[reason], items, note.strip()))

    sections.append(_kept_section(cfg, records, decision, tile))
    return sections, list(wanted)


def _kept_section(
    cfg: ReviewConfig,
    records: list[ManifestRecord],
    decision: Decision,
    tile: Callable[..., Tile],
) -> Section:
    """Kept images near a threshold (`NEAR`), nearest first, each with the rule it came
    nearest to; a note says so when none is near."""
    near: list[tuple[float, int, str, float, int | None]] = []
    for i in decision.kept:
        s = decision.scores[i]
        candidates = [
            ("too_dark", s.mean, cfg.dark_threshold, None),
            ("overexposed", s.overexposed, cfg.overexposed_threshold, None),
            ("blurry", s.sharpness, cfg.blur_threshold, None),
        ]
        if i in decision.nearest_kept:
            distance, other = decision.nearest_kept[i]
            candidates.append(
                ("near_duplicate", float(distance), float(cfg.near_duplicate_hamming), other)
            )
        nearest, reason, score, other = max(
            (gap(reason, score, t), reason, score, other) for reason, score, t, other in candidates
        )
        if nearest >= -NEAR:
            near.append((-nearest, i, reason, score, other))
    near.sort()
    items = []
    shown_pairs: set[frozenset[int]] = set()
    for _, i, reason, score, other in near:
        if len(items) == cfg.report_thumbnails:
            break
        name = short_name(records[i])
        if reason == "near_duplicate" and other is not None:
            if frozenset((i, other)) in shown_pairs:  # each is the other's nearest: show once
                continue
            shown_pairs.add(frozenset((i, other)))
            caption = f"near_duplicate? {score:.0f} bits from the image beside it · {name}"
            other_name = short_name(records[other])
            items.append((tile(i, caption, label="kept"), tile(other, other_name, label="kept")))
        else:
            items.append((tile(i, f"{reason}? {score_text(reason, score)} · {name}"),))
    if not near:
        note = "no kept image is near a threshold: none shown"
    else:
        note = (
            f"{len(near)} of {len(decision.kept)} kept images are near a threshold; nearest "
            "first, the rule each one came nearest to named in its caption"
        )
    return Section(
        "kept",
        "kept, near a threshold",
        len(decision.kept),
        f"kept images whose score is within {NEAR:.0%} of a threshold's value from it: "
        + "; ".join(_near_rules(cfg)),
        items,
        note,
    )


def _near_rules(cfg: ReviewConfig) -> list[str]:
    """Where each rule's near band ends, in words."""
    band = {
        reason: near_band(reason, threshold)
        for reason, threshold in (
            ("too_dark", cfg.dark_threshold),
            ("overexposed", cfg.overexposed_threshold),
            ("blurry", cfg.blur_threshold),
            ("near_duplicate", cfg.near_duplicate_hamming),
        )
    }
    return [
        f"mean luminance {cfg.dark_threshold:g} to {band['too_dark']:.3g}",
        f"{100 * band['overexposed']:.3g} to {100 * cfg.overexposed_threshold:.3g} % of pixels "
        ">= 250",
        f"Laplacian variance {cfg.blur_threshold:g} to {band['blurry']:.3g}",
        f"{cfg.near_duplicate_hamming + 1} to {int(band['near_duplicate'])} pHash bits from "
        "another kept image",
    ]


def short_name(rec: ManifestRecord) -> str:
    """The last two parts of where the image was found (drive-07/frame-0012.jpg): the store's
    own name is a hash, which tells a person nothing."""
    return "/".join(PurePosixPath(rec.source_path).parts[-2:]) or rec.path
