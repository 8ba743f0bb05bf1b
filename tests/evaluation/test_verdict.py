"""verdict.json as a record: written from it and read back to the same record; a file of another
shape is refused with the file and the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.errors import AnonlabError
from evaluation.data_checks.checks import ERROR, WARNING, Check
from evaluation.verdict import ValidatedModel, Verdict
from serving.runtime.release import Gate

GATE = Gate(
    targets={"face": 0.95, "license_plate": 0.95},
    metrics=("iou", "coverage"),
    buckets=("all", "small"),
    estimate="lower",
    min_objects=30,
    coverage=0.9,
    identifiable={"face": 6.0},
)


def verdict() -> Verdict:
    return Verdict(
        notice="RELEASE GATE: ...",
        release=True,
        gate=GATE,
        passed=False,
        when="2026-12-06T00:00:00+00:00",
        failed=("m.holdout.target.iou",),
        warnings=("shift.val",),
        checks=(
            Check("schema", True, ERROR, "3 files well-formed", {"files": 3}),
            Check("shift.val", False, WARNING, "val moved", {"first": [{"file": "val.json"}]}),
            Check("m.holdout.target.iou", False, ERROR, "face 0.90 < 0.95", {"cells": []}),
        ),
        metrics_sha256="a" * 64,
        models={"m": ValidatedModel("b" * 64, "3")},
        challengers={"m": "3"},
    )


def test_the_file_reads_back_as_the_record_it_was_written_from(tmp_path: Path) -> None:
    path = tmp_path / "verdict.json"
    written = verdict()
    written.write(path)
    assert path.read_text().startswith('{"notice": "RELEASE GATE: ...",')
    data = json.loads(path.read_text())
    assert set(data) == {
        "notice", "release", "gate", "passed", "when", "failed", "warnings", "checks",
        "metrics_sha256", "models", "challengers",
    }  # fmt: skip
    assert data["models"] == {"m": {"weights_sha256": "b" * 64, "version": "3"}}
    read = Verdict.read(path)
    assert read == written
    assert read.to_json() == data


def test_a_verdict_of_another_shape_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "verdict.json"
    data = verdict().to_json()
    data["checks"][0] = {"name": "schema", "passed": True}
    path.write_text(json.dumps(data))
    with pytest.raises(AnonlabError, match=r"verdict.json: a check must have exactly the keys"):
        Verdict.read(path)
    path.write_text(json.dumps({**verdict().to_json(), "failed": "schema"}))
    with pytest.raises(AnonlabError, match=r"verdict.json: 'failed' must be a list"):
        Verdict.read(path)
    path.write_text("[]")
    with pytest.raises(AnonlabError, match=r"verdict.json: not a verdict"):
        Verdict.read(path)
    with pytest.raises(AnonlabError, match=r"not found; run `anonlab validate` first"):
        Verdict.read(tmp_path / "none.json")


def test_an_older_verdict_without_gate_or_models_reads_with_them_absent() -> None:
    data = verdict().to_json()
    del data["gate"], data["models"]
    old = Verdict.from_json(data, "verdict.json")
    assert old.gate is None and old.gate_problem and old.models == {}
    assert old.passed is False and old.failed == ("m.holdout.target.iou",)
