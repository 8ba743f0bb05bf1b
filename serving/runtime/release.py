"""What a release is: the rule a gate must meet for the models it passes to be shipped, and the
line that opens every verdict and manifest saying which kind of gate it was.

A gate (`Gate`: targets, metrics, buckets, estimate, min_objects, coverage) is the release gate
when `release_problems` finds nothing: every class's target recall is at least 0.95; recall is
judged by IoU and by pixel coverage; every size bucket (tiny, small, medium, large) is judged
from at most 10 objects on, besides all sizes together; the number judged is the lower bound of
the 95% interval; an object counts as covered from 90% of its pixels; and every object counts
as identifiable from at most the release's minimum heights (`RELEASE_IDENTIFIABLE`: faces from
6 px, plates from 5 px, every person and vehicle). validate records the
gate it judged in the verdict, export copies it into each artifact's manifest, and the runtime
refuses an artifact whose gate is not the release gate unless told otherwise. This module is
the one place the rule is written; it imports nothing of the platform, so the runtime reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ESTIMATES",
    "GATE_BUCKETS",
    "GATE_METRICS",
    "RELEASE_IDENTIFIABLE",
    "RELEASE_TARGET",
    "Gate",
    "headed_json",
    "release_notice",
    "release_problems",
    "target_problems",
]

# The recalls a gate can judge, and the size buckets (data.size_buckets.BUCKETS, and `all`:
# spelled here because the runtime imports nothing of the platform; a test holds them equal).
GATE_METRICS = ("iou", "coverage")
GATE_BUCKETS = ("tiny", "small", "medium", "large", "all")
# lower: the lower bound of the cell's 95% bootstrap interval; point: the recall measured.
ESTIMATES = ("lower", "point")


@dataclass(frozen=True)
class Gate:
    """What a model gate holds recall to. targets: per class, the recall every judged cell
    must reach. metrics: the recalls judged (`GATE_METRICS`). buckets: the size buckets judged
    (`GATE_BUCKETS`; `all` is every size together). estimate: the number judged (`ESTIMATES`).
    min_objects: a size bucket with fewer objects is reported, not judged (`all` is judged from
    one object). coverage: the share of an object's pixels that must be hidden for it to count
    as covered. identifiable: per class, the box height in pixels from which an object counts
    (smaller ones are reported, not judged); a class not named: every object."""

    targets: dict[str, float]
    metrics: tuple[str, ...]
    buckets: tuple[str, ...]
    estimate: str
    min_objects: int
    coverage: float
    identifiable: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as verdicts and manifests hold it."""
        out = asdict(self)
        return {**out, "metrics": list(self.metrics), "buckets": list(self.buckets)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Gate:
        """The gate `to_dict` wrote; ValueError naming the first key that is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("must be a JSON object")
        keys = (
            "targets",
            "metrics",
            "buckets",
            "estimate",
            "min_objects",
            "coverage",
            "identifiable",
        )
        missing = [k for k in keys if k not in data]
        unknown = sorted(set(data) - set(keys))
        if missing or unknown:
            raise ValueError(f"missing keys {missing}, unknown keys {unknown}; its keys: {keys}")
        targets = data["targets"]
        if not (
            isinstance(targets, Mapping)
            and all(isinstance(c, str) and _is_number(t) and 0 < t <= 1 for c, t in targets.items())
        ):
            raise ValueError(f"targets {targets!r}: must map class names to numbers in (0, 1]")
        for key, allowed in (("metrics", GATE_METRICS), ("buckets", GATE_BUCKETS)):
            value = data[key]
            if not (isinstance(value, list) and all(v in allowed for v in value)):
                raise ValueError(f"{key} {value!r}: must be a list of {', '.join(allowed)}")
        if data["estimate"] not in ESTIMATES:
            raise ValueError(f"estimate {data['estimate']!r}: must be one of {ESTIMATES}")
        if not (isinstance(data["min_objects"], int) and data["min_objects"] >= 1):
            raise ValueError(f"min_objects {data['min_objects']!r}: must be a whole number >= 1")
        if not (_is_number(data["coverage"]) and 0 < data["coverage"] <= 1):
            raise ValueError(f"coverage {data['coverage']!r}: must be a number in (0, 1]")
        identifiable = data["identifiable"]
        if not (
            isinstance(identifiable, Mapping)
            and all(
                isinstance(c, str) and _is_number(h) and 0 <= h < math.inf
                for c, h in identifiable.items()
            )
        ):
            raise ValueError(
                f"identifiable {identifiable!r}: must map class names to heights in pixels >= 0"
            )
        return Gate(
            targets={c: float(t) for c, t in targets.items()},
            metrics=tuple(data["metrics"]),
            buckets=tuple(data["buckets"]),
            estimate=str(data["estimate"]),
            min_objects=int(data["min_objects"]),
            coverage=float(data["coverage"]),
            identifiable={c: float(h) for c, h in identifiable.items()},
        )


# The release gate: what a gate must hold to, at least.
RELEASE_TARGET = 0.95  # every class's target recall
RELEASE_METRICS = GATE_METRICS
RELEASE_BUCKETS = GATE_BUCKETS
RELEASE_ESTIMATE = "lower"
RELEASE_MIN_OBJECTS = 10  # size buckets judged from this many objects or fewer
RELEASE_COVERAGE = 0.9  # an object is covered from this share of its pixels or more
# The highest minimum heights (box height in pixels) from which objects may count as
# identifiable; a class not named here: every object (0). Conservative, see taxonomy.identifiable.
RELEASE_IDENTIFIABLE = {"face": 6.0, "license_plate": 5.0}


def target_problems(targets: Mapping[str, float], coverage: float) -> list[str]:
    """What keeps these targets (per class) and this coverage share from the release gate's;
    empty when nothing. The part of the rule evaluate knows (it chooses thresholds for them)."""
    out = []
    low = {c: t for c, t in targets.items() if t < RELEASE_TARGET}
    if not targets:
        out.append("no class has a target recall")
    elif low:
        listed = ", ".join(f"{c} {t:g}" for c, t in low.items())
        out.append(f"target recall {listed} (release: {RELEASE_TARGET:g} for every class)")
    if coverage < RELEASE_COVERAGE:
        out.append(
            f"an object counts as covered from {coverage:.0%} of its pixels (release: "
            f"{RELEASE_COVERAGE:.0%})"
        )
    return out


def release_problems(gate: Gate) -> list[str]:
    """What keeps `gate` from being the release gate, each saying what the release gate holds;
    empty when `gate` is the release gate (or stricter)."""
    out = target_problems(gate.targets, gate.coverage)
    missing = [m for m in RELEASE_METRICS if m not in gate.metrics]
    if missing:
        out.append(
            f"recall judged by {_names(gate.metrics) or 'nothing'} only, not by "
            f"{_names(missing)} (release: {_names(RELEASE_METRICS)})"
        )
    skipped = [b for b in RELEASE_BUCKETS if b not in gate.buckets]
    if skipped:
        out.append(
            f"size buckets {_names(skipped)} not judged (release: {_names(RELEASE_BUCKETS)})"
        )
    if gate.estimate != RELEASE_ESTIMATE:
        out.append(
            f"the {gate.estimate} estimate judged (release: the lower bound of the 95% interval)"
        )
    raised = {c: h for c, h in gate.identifiable.items() if h > RELEASE_IDENTIFIABLE.get(c, 0.0)}
    if raised:
        listed = ", ".join(
            f"{c} from {h:g} px (release: {_from(RELEASE_IDENTIFIABLE.get(c, 0.0))})"
            for c, h in raised.items()
        )
        out.append(f"objects counted as identifiable only {listed}")
    if gate.min_objects > RELEASE_MIN_OBJECTS:
        out.append(
            f"size buckets judged from {gate.min_objects} objects (release: from "
            f"{RELEASE_MIN_OBJECTS})"
        )
    return out


def release_notice(problems: Sequence[str]) -> str:
    """The first line of a file made under a gate with these `release_problems`."""
    if problems:
        return "NOT A RELEASE: judged under a gate weaker than the release gate: " + "; ".join(
            problems
        )
    return (
        f"RELEASE GATE: recall of every class at least {RELEASE_TARGET:g}, by IoU and by "
        f"coverage ({RELEASE_COVERAGE:.0%} of an object's pixels), over all sizes and in each "
        f"size bucket of {RELEASE_MIN_OBJECTS} objects or more, judged on the lower bound of "
        "the 95% interval, counting objects as identifiable from "
        + ", ".join(f"{c} {h:g} px" for c, h in RELEASE_IDENTIFIABLE.items())
        + " tall or less (every object of the other classes)"
    )


def headed_json(obj: Mapping[str, Any], key: str) -> str:
    """`obj` as JSON text, indented with sorted keys, except that `key` comes first, on the
    first line beside the opening brace: `head -1` of the file shows it."""
    head = "{" + json.dumps(key) + ": " + json.dumps(obj[key])
    rest = {k: v for k, v in obj.items() if k != key}
    if not rest:
        return head + "}\n"
    body = json.dumps(rest, indent=2, sort_keys=True)
    return head + ",\n" + body[2:] + "\n"


def _from(height: float) -> str:
    return f"from {height:g} px" if height else "every one"


def _names(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
