"""MODEL_CARD.md of an exported artifact: what the model is for, what it was measured on, and
where it falls short, in the words and numbers an operator or auditor needs. Its sections
(head, release gate, recall tables, known limits) are also those of the anonymizer's card
(`serving.anonymizer_card`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data.size_buckets import BUCKETS
from evaluation.scoring.result import RecallCell, recall_from_json
from serving.runtime.architecture import Architecture
from serving.runtime.release import Gate, release_notice, release_problems
from serving.runtime.tiles import TilingSpec

__all__ = ["card_head", "gate_lines", "known_limits", "names", "recall_tables", "render_model_card"]

# Buckets with fewer ground-truth objects than this are flagged: one object moves recall by more
# than 10 points there.
_FEW = 10


def render_model_card(
    *,
    name: str,
    version: str,
    arch: Architecture,
    entry: Mapping[str, Any],
    thresholds: Mapping[str, float],
    styles: Mapping[str, Mapping[str, Any]],
    gate: Gate,
    tiling: TilingSpec,
    canvas: int,
    weights_sha256: str,
) -> str:
    """The model card of one exported model; `entry` is its evaluate metrics entry and
    `weights_sha256` the sha256 of the weights evaluate scored and validate passed; `gate` the
    gate validate passed it under, whose notice is the card's first line."""
    sets = entry.get("sets") or {}
    targets = {c: gate.targets[c] for c in arch.classes if c in gate.targets}
    problems = release_problems(gate)
    lines = [
        *card_head(problems, name, version),
        f"Finds {names(arch.classes)} in street-level and mobile-mapping imagery (panoramas "
        "included) so that the anonlab blurring runtime hides them before images are kept or "
        "published. It is a "
        + (
            "Keypoint R-CNN: persons with head keypoints."
            if arch.kind == "keypointrcnn"
            else "Mask R-CNN: boxes and outlines."
        ),
        "",
        "Recall is what counts: a missed face or plate is a legal incident, an extra blur a "
        "cosmetic one. The operating thresholds below were chosen on val as the highest score "
        "that still reaches each class's target recall. Not for identifying, tracking or "
        "counting people.",
        "",
        "## Model",
        "",
        f"- {arch.kind} on a {arch.backbone} FPN ({arch.fpn_channels} channels); each tile is "
        f"resized to a short side of {arch.min_size} px (long side at most {arch.max_size}) on "
        f"a {canvas} px input",
        f"- tiling: {tiling.tile} px windows, {tiling.overlap} px overlap, scales "
        f"{', '.join(str(s) for s in tiling.scales)}; panoramas (aspect {tiling.panorama_aspect}) "
        "wrap around the seam",
        f"- weights: `weights.safetensors`, sha256 `{weights_sha256}`: the bytes evaluate "
        "scored and validate passed (export refuses any other)",
        "",
        "| class | operating threshold | target recall | reached on val | anonymized as |",
        "|---|---|---|---|---|",
    ]
    chosen = entry.get("thresholds") or {}
    for cls in arch.classes:
        style = styles.get(cls, {})
        reached = "yes" if (chosen.get(cls) or {}).get("reached") else "no"
        hidden = f"{style.get('shape', '?')}, {style.get('method', '?')}"
        lines.append(
            f"| {cls} | {thresholds[cls]:.3f} | {targets[cls]:.2f} | {reached} | {hidden} |"
        )
    lines += ["", "## Release gate", "", *gate_lines(gate, problems)]
    lines += ["", "## Data and recall", ""]
    tables, limits = recall_tables(sets, targets)
    lines += tables
    not_reached = [c for c in arch.classes if not (chosen.get(c) or {}).get("reached")]
    lines += known_limits(limits, not_reached)
    return "\n".join(lines) + "\n"


def card_head(problems: list[str], name: str, version: str) -> list[str]:
    """A card's first lines: the notice of a gate with these `release_problems`, the title, and
    the heading of its intended use."""
    return [release_notice(problems), "", f"# {name}, version {version}", "", "## Intended use", ""]


def known_limits(limits: list[str], not_reached: list[str]) -> list[str]:
    """The card's known limits section: the classes whose target recall was `not_reached` on
    val, then `limits` (from `recall_tables`), then what the reference sets leave unmeasured."""
    out = list(limits)
    if not_reached:
        out.insert(
            0,
            f"the target recall was not reached on val for {names(not_reached)}: their "
            "threshold is the lowest allowed (evaluate.min_threshold)",
        )
    out.append(
        "recall is measured on the reference sets above; imagery unlike them (other cameras, "
        "night, weather, countries' plates) needs its own reference set before use"
    )
    return ["", "## Known limits", ""] + [f"- {limit}" for limit in out]


def recall_tables(
    sets: Mapping[str, Any], targets: Mapping[str, float]
) -> tuple[list[str], list[str]]:
    """The card's recall section of an evaluate entry's `sets` (per set, class and size bucket,
    with intervals, and false positives per image), and the known limits it shows: size buckets
    of few objects, classes whose coverage recall is below their `targets`."""
    lines = [
        "Recall by IoU (a detection overlaps the object at IoU >= 0.5) and by pixel coverage "
        "(at least the evaluated share of the object's pixels is inside hidden regions), at the "
        "operating thresholds, with bootstrap 95% intervals; n: ground-truth objects."
    ]
    limits = []
    for set_name, result in sets.items():
        lines += ["", f"### {set_name}", ""]
        lines += [
            "| class | size | n | recall (IoU) | recall (coverage) |",
            "|---|---|---|---|---|",
        ]
        for cls, buckets in recall_from_json(result.get("recall") or {}).items():
            for bucket in ("all", *BUCKETS, "below_identifiable"):
                cell = buckets.get(bucket)
                if cell is None or not cell.n:
                    continue
                n = int(cell.n)
                shown = bucket.replace("_", " ")
                lines.append(
                    f"| {cls} | {shown} | {n} | {_ci(cell, 'iou')} | {_ci(cell, 'coverage')} |"
                )
                if bucket in BUCKETS and n < _FEW:
                    limits.append(f"{set_name}: {cls} {bucket} has only {n} objects")
            overall = buckets["all"].coverage if "all" in buckets else None
            if cls in targets and overall is not None and overall < targets[cls]:
                limits.append(
                    f"{set_name}: {cls} coverage recall {overall:.3f} is below the target "
                    f"{targets[cls]:.2f}"
                )
        fpi = result.get("false_positives_per_image") or {}
        if fpi:
            lines += [
                "",
                "False positives per image: "
                + ", ".join(f"{c} {v:.1f}" for c, v in sorted(fpi.items())),
            ]
    return lines, limits


def gate_lines(gate: Gate, problems: list[str], subject: str = "model") -> list[str]:
    """The card's release gate section: what validate held the `subject` (model, anonymizer)
    to, and, under a gate weaker than the release gate (`problems`), what it lacks."""
    sizes = [b for b in gate.buckets if b != "all"]
    judged = (
        "the lower bound of its 95% bootstrap interval"
        if gate.estimate == "lower"
        else "the recall measured (not its interval)"
    )
    out = [
        f"validate passed this {subject} when, on every reference set, each class's recall by "
        + " and by ".join(gate.metrics)
        + f" (an object covered from {gate.coverage:.0%} of its pixels) reached its target"
        + (" over all sizes" if "all" in gate.buckets else "")
        + (
            f"{' and' if 'all' in gate.buckets else ''} in each size bucket "
            f"({', '.join(sizes)}) of {gate.min_objects} objects or more"
            if sizes
            else ""
        )
        + f", judged on {judged}.",
        "",
        "The target is recall of identifiable objects: "
        + _identifiable(gate)
        + ". Smaller objects are scored in the `below identifiable` rows, not judged, and hiding "
        "them never counts as a false positive.",
    ]
    if problems:
        out += ["", "This is weaker than the release gate:", ""]
        out += [f"- {p}" for p in problems]
        out += [
            "",
            "The anonlab runtime refuses to load this artifact unless told `--allow-demo`.",
        ]
    return out


def _identifiable(gate: Gate) -> str:
    minimum = {c: h for c, h in gate.identifiable.items() if h > 0}
    if not minimum:
        return "every object of every class counts"
    heights = ", ".join(
        f"{c.replace('_', ' ')}s from a box {h:g} px tall" for c, h in minimum.items()
    )
    return f"{heights}; every object of the other classes"


def _ci(cell: RecallCell, metric: str) -> str:
    value, interval = cell.value(metric), cell.interval(metric)
    if value is None:
        return "n/a"
    if not interval:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def names(classes: Any) -> str:
    """Class names for a sentence: `a, b and c`."""
    names = [str(c).replace("_", " ") for c in classes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
