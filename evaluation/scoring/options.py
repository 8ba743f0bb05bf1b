"""How the scorer thresholds, matches and summarizes (`ScoreOptions`): the command line's
thresholds and heights parsed, and the options resolved per class and checked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from data.coco.schema import is_finite_number, is_int
from data.errors import AnonlabError

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ScoreOptions:
    """How predictions are thresholded, matched and summarized."""

    thresholds: Mapping[str, float] | float = DEFAULT_THRESHOLD  # per class name, or one for all
    coverage: float = 0.9  # share of an object's pixels that must be covered
    # For choosing operating thresholds: one target for all classes, or one per class name.
    target_recall: Mapping[str, float] | float = 0.95
    # Operating thresholds are not chosen below this score (where the target is out of reach,
    # the operating point is this floor and says so).
    min_threshold: float = 0.0
    iou: float = 0.5
    max_dets: int = 100  # per image and class, as COCO
    n_boot: int = 1000  # bootstrap resamples of images; 0: no intervals
    seed: int = 0
    # Also return `objects`: per counted ground-truth object, found (IoU), covered and
    # identifiable (the evaluate stage's gallery of misses).
    per_object: bool = False
    # Per class name, the box height in pixels from which an object can identify someone
    # (taxonomy.identifiable); a class not named, or None: every object.
    min_identifiable: Mapping[str, float] | None = None


def parse_thresholds(text: str, classes: Sequence[str]) -> dict[str, float] | float:
    """Thresholds from the command line: "0.5" (all classes), "face=0.6,license_plate=0.4"
    (others at 0.5), or "0.3,face=0.6" (others at 0.3)."""
    default: float | None = None
    per_class: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, equals, value = part.rpartition("=")
        name = name.strip()
        if not part or (equals and not name):
            raise AnonlabError(f"thresholds {text!r}: an empty entry; write face=0.6,plate=0.4")
        if not equals:
            if default is not None:
                raise AnonlabError(f"thresholds {text!r}: two thresholds for all classes")
            default = _threshold_value(text, value)
            continue
        if name not in classes:
            raise AnonlabError(
                f"thresholds {text!r}: unknown class {name!r}; the classes are {', '.join(classes)}"
            )
        if name in per_class:
            raise AnonlabError(f"thresholds {text!r}: class {name!r} is given twice")
        per_class[name] = _threshold_value(text, value)
    if not per_class:
        return DEFAULT_THRESHOLD if default is None else default
    rest = DEFAULT_THRESHOLD if default is None else default
    return {name: per_class.get(name, rest) for name in classes}


def parse_heights(text: str, classes: Sequence[str]) -> dict[str, float]:
    """Minimum identifiable heights from the command line: "face=6,license_plate=5" (box
    heights in pixels; classes not named: every object); "" names none."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or name not in classes:
            raise AnonlabError(
                f"identifiable {text!r}: {part!r} is not <class>=<pixels> with one of the "
                f"classes {', '.join(classes)}"
            )
        try:
            height = float(value)
        except ValueError:
            height = math.nan
        if not 0 <= height < math.inf:
            raise AnonlabError(f"identifiable {text!r}: {value!r} is not a height in pixels >= 0")
        out[name] = height
    return out


def _threshold_value(text: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise AnonlabError(f"thresholds {text!r}: {value.strip()!r} is not a number") from None
    if not math.isfinite(number):
        raise AnonlabError(f"thresholds {text!r}: {value.strip()!r} is not a finite number")
    return number


def resolve_thresholds(thresholds: Mapping[str, float] | float, classes: list[str]) -> dict:
    """Per class name, its operating threshold (classes not named: 0.5); checked."""
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(classes))
        if unknown:
            raise AnonlabError(
                f"thresholds name unknown classes {', '.join(map(repr, unknown))}; the classes "
                f"are {', '.join(classes)}"
            )
        resolved = {name: thresholds.get(name, DEFAULT_THRESHOLD) for name in classes}
    else:
        resolved = dict.fromkeys(classes, thresholds)
    for name, value in resolved.items():
        if not is_finite_number(value):
            raise AnonlabError(f"threshold of {name!r} must be a finite number, found {value!r}")
    return {name: float(value) for name, value in resolved.items()}


def resolve_targets(targets: Mapping[str, float] | float, classes: list[str]) -> dict:
    """Per class name, the recall its operating threshold must reach; checked."""
    if isinstance(targets, Mapping):
        missing = [name for name in classes if name not in targets]
        if missing:
            raise AnonlabError(f"target_recall has no value for {', '.join(map(repr, missing))}")
        resolved = {name: targets[name] for name in classes}
    else:
        resolved = dict.fromkeys(classes, targets)
    for name, value in resolved.items():
        if not (is_finite_number(value) and 0 < value <= 1):
            raise AnonlabError(f"target_recall of {name!r} must be in (0, 1], found {value!r}")
    return {name: float(value) for name, value in resolved.items()}


def check_options(options: ScoreOptions) -> None:
    """Raise AnonlabError naming the first option out of its range."""
    for name in ("coverage", "iou"):
        value = getattr(options, name)
        if not (is_finite_number(value) and 0 < value <= 1):
            raise AnonlabError(f"{name} must be in (0, 1], found {value!r}")
    if not (is_finite_number(options.min_threshold) and 0 <= options.min_threshold <= 1):
        raise AnonlabError(f"min_threshold must be in [0, 1], found {options.min_threshold!r}")
    if not (is_int(options.max_dets) and options.max_dets >= 1):
        raise AnonlabError(f"max_dets must be an integer >= 1, found {options.max_dets!r}")
    if not (is_int(options.n_boot) and options.n_boot >= 0):
        raise AnonlabError(f"n_boot must be an integer >= 0, found {options.n_boot!r}")
    for name, height in (options.min_identifiable or {}).items():
        if not (is_finite_number(height) and 0 <= height < math.inf):
            raise AnonlabError(
                f"min_identifiable of {name!r} must be a height in pixels >= 0, found {height!r}"
            )
