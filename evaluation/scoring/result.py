"""The scorer's result as records: recall cells, operating points, curve points, per-object
outcomes and the whole `ScoreResult`, each written to and read from JSON in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from data.errors import AnonlabError

METRICS = ("iou", "coverage")  # the recalls of a cell, by the name the gate and reports use


def _check_keys(
    data: Any, record: str, required: Sequence[str], optional: Sequence[str] = ()
) -> None:
    """Fail, naming the key, when the JSON object `data` of a `record` lacks a required key or
    holds a key the record does not know."""
    if not isinstance(data, Mapping):
        raise AnonlabError(f"{record}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise AnonlabError(f"{record}: missing key {missing[0]!r}")
    known = {*required, *optional}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise AnonlabError(f"{record}: unknown key {unknown[0]!r}")


def _interval(value: Sequence[float] | None) -> tuple[float, float] | None:
    return None if value is None else (value[0], value[1])


def _listed(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else list(value)


@dataclass(frozen=True)
class RecallCell:
    """One class and bucket: n counted objects, IoU and coverage recall (None without objects)
    and their bootstrap 95% intervals (None without objects or without a bootstrap)."""

    n: int
    iou: float | None = None
    iou_ci: tuple[float, float] | None = None
    coverage: float | None = None
    coverage_ci: tuple[float, float] | None = None

    def value(self, metric: str) -> float | None:
        """The recall named `metric` ("iou" or "coverage")."""
        return getattr(self, _metric(metric))

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% interval of the recall named `metric`."""
        return getattr(self, f"{_metric(metric)}_ci")

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "iou": self.iou,
            "iou_ci": _listed(self.iou_ci),
            "coverage": self.coverage,
            "coverage_ci": _listed(self.coverage_ci),
        }

    @classmethod
    def from_json(cls, data: Any) -> RecallCell:
        # The intervals may be absent (read as None): the gate also judges cells written
        # without them.
        _check_keys(data, "recall cell", ("n", "iou", "coverage"), ("iou_ci", "coverage_ci"))
        return cls(
            n=data["n"],
            iou=data["iou"],
            iou_ci=_interval(data.get("iou_ci")),
            coverage=data["coverage"],
            coverage_ci=_interval(data.get("coverage_ci")),
        )


def _metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown recall metric {metric!r}; one of {', '.join(METRICS)}")
    return metric


RecallTable = dict[str, dict[str, RecallCell]]  # class -> bucket -> cell


def recall_to_json(recall: Mapping[str, Mapping[str, RecallCell]]) -> dict[str, Any]:
    """recall.<class>.<bucket> as JSON."""
    return {
        name: {b: cell.to_json() for b, cell in buckets.items()} for name, buckets in recall.items()
    }


def recall_from_json(data: Any) -> RecallTable:
    """recall.<class>.<bucket> read back from JSON."""
    if not isinstance(data, Mapping):
        raise AnonlabError(f"recall: expected a JSON object, got {type(data).__name__}")
    return {
        name: {b: RecallCell.from_json(cell) for b, cell in buckets.items()}
        for name, buckets in data.items()
    }


class FlatRecord:
    """A record of plain values whose JSON object holds its fields, in their order."""

    LABEL: ClassVar[str]  # what an error calls the record

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        names = [f.name for f in fields(cls)]
        _check_keys(data, cls.LABEL, names)
        return cls(**{name: data[name] for name in names})


@dataclass(frozen=True)
class OperatingPoint(FlatRecord):
    """The score threshold chosen for a class and the recall there; `reached`: whether that
    recall meets the class's target."""

    LABEL = "operating point"
    threshold: float
    recall: float
    reached: bool


@dataclass(frozen=True)
class CurvePoint(FlatRecord):
    """A point of a precision/recall curve: at scores from `score` up."""

    LABEL = "curve point"
    score: float
    precision: float
    recall: float


@dataclass(frozen=True)
class ObjectOutcome(FlatRecord):
    """One counted ground-truth object: found (IoU) and covered (pixels) at the operating
    thresholds, its covered share, and whether it is identifiable."""

    LABEL = "object outcome"
    id: int
    found: bool
    covered: bool
    coverage: float
    identifiable: bool


_SCORE_KEYS = (
    "images",
    "coco",
    "iou_type",
    "recall",
    "false_positives_per_image",
    "pr_curve",
    "operating_thresholds",
    "operating_points",
    "options",
    "notes",
)


@dataclass(frozen=True)
class ScoreResult:
    """Every number `score` computes (DESIGN.md names the JSON keys). `coco` holds pycocotools'
    12 named numbers per IoU type (None when not computed); `options` the settings scored with;
    `objects` each counted object's outcome, only when asked for (ScoreOptions.per_object)."""

    images: int
    coco: dict[str, dict[str, float] | None]
    iou_type: str
    recall: RecallTable
    false_positives_per_image: dict[str, float]
    pr_curve: dict[str, list[CurvePoint]]
    operating_points: dict[str, OperatingPoint | None]
    options: dict[str, Any]
    notes: list[str]
    objects: list[ObjectOutcome] | None = None

    @property
    def operating_thresholds(self) -> dict[str, float | None]:
        """Per class, the operating threshold when it reaches the target, else None."""
        return {
            name: point.threshold if point and point.reached else None
            for name, point in self.operating_points.items()
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "images": self.images,
            "coco": self.coco,
            "iou_type": self.iou_type,
            "recall": recall_to_json(self.recall),
            "false_positives_per_image": self.false_positives_per_image,
            "pr_curve": {
                name: [p.to_json() for p in curve] for name, curve in self.pr_curve.items()
            },
            "operating_thresholds": self.operating_thresholds,
            "operating_points": {
                name: None if point is None else point.to_json()
                for name, point in self.operating_points.items()
            },
            "options": self.options,
            "notes": self.notes,
        }
        if self.objects is not None:
            out["objects"] = [o.to_json() for o in self.objects]
        return out

    @classmethod
    def from_json(cls, data: Any) -> ScoreResult:
        _check_keys(data, "score result", _SCORE_KEYS, ("objects",))
        objects = data.get("objects")
        result = cls(
            images=data["images"],
            coco=data["coco"],
            iou_type=data["iou_type"],
            recall=recall_from_json(data["recall"]),
            false_positives_per_image=data["false_positives_per_image"],
            pr_curve={
                name: [CurvePoint.from_json(p) for p in curve]
                for name, curve in data["pr_curve"].items()
            },
            operating_points={
                name: None if point is None else OperatingPoint.from_json(point)
                for name, point in data["operating_points"].items()
            },
            options=data["options"],
            notes=list(data["notes"]),
            objects=None if objects is None else [ObjectOutcome.from_json(o) for o in objects],
        )
        if result.operating_thresholds != data["operating_thresholds"]:
            raise AnonlabError(
                "score result: operating_thresholds do not follow from operating_points"
            )
        return result


def sets_to_json(scores: Mapping[str, ScoreResult]) -> dict[str, Any]:
    """The `sets` of an evaluate entry in metrics.json (a model's, the anonymizer's, a peer's):
    per set its recall, COCO summary and false positives per image."""
    return {
        name: {
            "recall": recall_to_json(s.recall),
            "coco": s.coco,
            "false_positives_per_image": s.false_positives_per_image,
        }
        for name, s in scores.items()
    }
