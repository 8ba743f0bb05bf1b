"""validate's verdict (`validation/verdict.json`) as a record: validate builds it, `to_json` is
the one place its JSON is written from, and export reads it back through `Verdict.read`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.atomic import read_json, write_text
from data.errors import AnonlabError
from evaluation.data_checks.checks import Check
from serving.runtime.release import Gate, headed_json

__all__ = ["ValidatedModel", "Verdict"]


@dataclass(frozen=True)
class ValidatedModel:
    """What the verdict says of one model (`models.<name>`): the sha256 of the weights evaluate
    scored and validate found on disk (None when metrics.json records none), and the registered
    version tagged with it (None without a registry or a registration)."""

    weights_sha256: str | None
    version: str | None

    @staticmethod
    def from_json(found: Any) -> ValidatedModel | None:
        """One `models.<name>` entry; None when it is not an object."""
        if not isinstance(found, Mapping):
            return None
        sha, version = found.get("weights_sha256"), found.get("version")
        return ValidatedModel(
            sha if isinstance(sha, str) else None, None if version is None else str(version)
        )


@dataclass(frozen=True)
class Verdict:
    """Every check validate ran, and what passing them made of each model.

    `gate` is None when the file records no gate (a verdict of an older validate), and
    `gate_problem` then says why; `models` is empty in a verdict that names no weights."""

    notice: str  # NOT A RELEASE... or the release gate's line; the file's first line
    release: bool  # judged under the release gate
    gate: Gate | None
    passed: bool  # no error-level check failed
    when: str | None  # ISO time, UTC
    failed: tuple[str, ...]  # names of the failed error-level checks
    warnings: tuple[str, ...]  # names of the failed warning-level checks
    checks: tuple[Check, ...]
    metrics_sha256: str | None  # of the eval/metrics.json judged
    models: Mapping[str, ValidatedModel]
    challengers: Mapping[str, str | None]  # model -> registered version made challenger
    gate_problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        """verdict.json's object (the file writes `notice` first, then the keys sorted)."""
        return {
            "notice": self.notice,
            "release": self.release,
            "gate": self.gate.to_dict() if self.gate is not None else None,
            "passed": self.passed,
            "when": self.when,
            "failed": list(self.failed),
            "warnings": list(self.warnings),
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "metrics_sha256": self.metrics_sha256,
            "models": {m: dataclasses.asdict(v) for m, v in self.models.items()},
            "challengers": dict(self.challengers),
        }

    def write(self, path: Path) -> None:
        """verdict.json, its notice on the first line."""
        write_text(path, headed_json(self.to_json(), "notice"))

    @staticmethod
    def from_json(data: Any, where: str) -> Verdict:
        """The verdict in a parsed verdict.json; AnonlabError naming `where` and the key when
        its shape is not a verdict's."""
        if not isinstance(data, Mapping):
            raise AnonlabError(f"{where}: not a verdict (expected a JSON object)")

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise AnonlabError(f"{where}: '{key}' must be a list of check names")
            return tuple(value)

        gate, gate_problem = None, None
        try:
            gate = Gate.from_dict(data.get("gate"))  # type: ignore[arg-type]
        except ValueError as exc:
            gate_problem = str(exc)
        models = {}
        for name, found in (data.get("models") or {}).items():
            model = ValidatedModel.from_json(found)
            if model is not None:
                models[name] = model
        sha = data.get("metrics_sha256")
        return Verdict(
            notice=str(data.get("notice") or ""),
            release=bool(data.get("release")),
            gate=gate,
            passed=bool(data.get("passed")),
            when=data.get("when") if isinstance(data.get("when"), str) else None,
            failed=strings("failed"),
            warnings=strings("warnings"),
            checks=tuple(_check(c, where) for c in data.get("checks") or []),
            metrics_sha256=sha if isinstance(sha, str) else None,
            models=models,
            challengers={
                str(m): None if v is None else str(v)
                for m, v in (data.get("challengers") or {}).items()
            },
            gate_problem=gate_problem,
        )

    @staticmethod
    def read(path: Path) -> Verdict:
        """verdict.json at `path`; AnonlabError when it is missing or not a verdict."""
        return Verdict.from_json(read_json(path, missing="run `anonlab validate` first"), str(path))


def _check(data: Any, where: str) -> Check:
    fields = [f.name for f in dataclasses.fields(Check)]
    if not (isinstance(data, Mapping) and set(data) == set(fields)):
        raise AnonlabError(f"{where}: a check must have exactly the keys {', '.join(fields)}")
    return Check(**{f: data[f] for f in fields})
