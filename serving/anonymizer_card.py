"""MODEL_CARD.md of a composite artifact: the anonymizer that ships (its member models run as
one), what each member hides, the thresholds it runs at, and the recall evaluate measured of
it as the runtime runs it, which is what the release gate judged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serving.model_card import card_head, gate_lines, known_limits, names, recall_tables
from serving.runtime.heads import HEAD
from serving.runtime.release import Gate, release_problems

__all__ = ["CardMember", "render_anonymizer_card"]

CardMember = tuple[str, str, str, str]  # name, version, kind, folder (relative)


def render_anonymizer_card(
    *,
    name: str,
    version: str,
    members: Sequence[CardMember],
    entry: Mapping[str, Any],
    gate: Gate,
) -> str:
    """The model card of the anonymizer `name` at `version`; `members` in the order it runs
    them, `entry` its evaluate entry (metrics.json's `anonymizer`), `gate` the gate validate
    passed it under, whose notice is the card's first line."""
    problems = release_problems(gate)
    supplies: Mapping[str, str] = entry.get("supplies") or {}
    thresholds: Mapping[str, Any] = entry.get("thresholds") or {}
    styles: Mapping[str, Any] = entry.get("styles") or {}
    sets = entry.get("sets") or {}
    lines = [
        *card_head(problems, name, version),
        "The anonymizer the anonlab blurring runtime ships: its member models run as one on "
        "street-level and mobile-mapping imagery (panoramas included), each class taken from "
        "the one member that supplies it, so that faces, persons, license plates and vehicles "
        "are hidden before images are kept or published. `anonlab blur --model` and `anonlab "
        "serve --model` take this folder as they take a single model's.",
        "",
        "Recall is what counts: a missed face or plate is a legal incident, an extra blur a "
        "cosmetic one. Not for identifying, tracking or counting people.",
        "",
        "## Members",
        "",
        "| member | version | kind | hides | folder |",
        "|---|---|---|---|---|",
    ]
    for member, member_version, kind, folder in members:
        hidden = [c for c, m in supplies.items() if m == member and c != HEAD]
        if supplies.get(HEAD) == member:
            hidden.append("head regions (from its persons' head keypoints, hidden as faces)")
        shown = names(hidden) if hidden else "nothing (its classes come from other members)"
        lines.append(f"| {member} | {member_version} | {kind} | {shown} | `{folder}` |")
    lines += ["", *_heads_lines(entry, supplies)]
    lines += [
        "",
        "## Operating thresholds",
        "",
        "Each class at its supplier's operating threshold, chosen on val as the highest score "
        "that still reaches the class's target recall; the head threshold is the score of the "
        "keypoint model's person from which its head is hidden, chosen on val for the face "
        "target (its recall on val is the anonymizer's face coverage recall).",
        "",
        "| class | from | threshold | target recall | recall on val | reached on val | "
        "anonymized as |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls, chosen in thresholds.items():
        target = gate.targets.get("face" if cls == HEAD else cls)
        style = styles.get(cls) or {}
        lines.append(
            f"| {cls} | {chosen.get('model') or supplies.get(cls, '?')} | "
            f"{float(chosen['threshold']):.3f} | {_num(target, 2)} | "
            f"{_num(chosen.get('val_recall'), 3)} | {'yes' if chosen.get('reached') else 'no'} | "
            f"{style.get('shape', '?')}, {style.get('method', '?')} |"
        )
    lines += ["", "## Release gate", "", *gate_lines(gate, problems, "anonymizer")]
    lines += ["", "## Data and recall", ""]
    lines.append(
        "The anonymizer's recall, measured by evaluate running the members as the runtime runs "
        "them: an object counts as covered when the union of what the runtime hides (faces, "
        "heads, persons, plates, vehicles, each in its style) covers it."
    )
    lines.append("")
    targets = {c: t for c, t in gate.targets.items() if c in supplies}
    tables, limits = recall_tables(sets, targets)
    lines += tables
    heads_only = entry.get("heads_only") or {}
    if heads_only:
        lines += [
            "",
            "### Faces only the heads hid",
            "",
            "Counted identifiable faces the anonymizer covers that it would leave visible without "
            "the head regions:",
            "",
            *[f"- {set_name}: {int(n)}" for set_name, n in heads_only.items()],
        ]
    not_reached = [c for c, t in thresholds.items() if not t.get("reached")]
    lines += known_limits(limits, not_reached)
    return "\n".join(lines) + "\n"


def _heads_lines(entry: Mapping[str, Any], supplies: Mapping[str, str]) -> list[str]:
    heads = entry.get("heads") or {}
    if HEAD not in supplies or not heads:
        return ["No head regions: the anonymizer hides faces by the face class alone."]
    keypoints = ", ".join(str(k).replace("_", " ") for k in heads.get("keypoints") or [])
    return [
        f"Head regions: for each person {supplies[HEAD]} finds at or above the head threshold, "
        f"a head box centred on the mean of its visible head keypoints ({keypoints}; visible "
        f"from a keypoint score of {heads.get('keypoint_threshold')}), as wide as the largest of "
        f"{heads.get('spread')} x their widest spread, {heads.get('box_share')} x the shorter "
        f"side of the person's box and {heads.get('min_px')} px, and {heads.get('aspect')} x as "
        "tall; with no visible head keypoint, at the top of the person's box. It is hidden in "
        "the face's style.",
    ]


def _num(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"
