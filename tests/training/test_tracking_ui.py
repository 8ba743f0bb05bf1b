"""How runs read in the MLflow UI: run names, the experiment kind, the saved view, links."""

from __future__ import annotations

import json

from training.tracking_ui import (
    VIEW_NAME,
    VIEW_TAG,
    run_name,
    run_path,
    saved_view,
    ui_url,
    version_path,
)

COMMIT = "37531ffa0c1e2d3b4a5968778695a4b3c2d1e0f9"


def test_run_name_says_model_experiment_and_stage() -> None:
    tags = {"mlflow.source.git.commit": COMMIT, "anonlab.git.dirty": "false"}
    assert run_name("face", "train", tags) == "face · 37531ff · train"
    assert run_name("face", "train", {**tags, "anonlab.git.dirty": "true"}) == (
        "face · 37531ff-dirty · train"
    )
    named = {**tags, "anonlab.dvc.experiment": "exp-1a2b3"}
    assert run_name("anonymizer", "evaluate", named) == "anonymizer · exp-1a2b3 · evaluate"
    assert run_name("face", "evaluate", {}) == "face · evaluate"  # no git, no DVC


def view_state(value: str) -> dict:
    """The runs-table state a saved view's tag value holds."""
    envelope = json.loads(value)
    assert envelope["name"] == VIEW_NAME and envelope["createdAt"] > 0
    return json.loads(envelope["state"])


def test_saved_view_keeps_the_columns_of_other_models() -> None:
    key, first = saved_view(["holdout/person/iou"], tags=["anonlab.model_version"])
    assert key == VIEW_TAG == "mlflow.sharedViewState.anonlab-recall"
    _, second = saved_view(["holdout/face/iou", "holdout/face/coverage"], previous=first)
    state = view_state(second)
    assert state["selectedColumns"] == [
        "metrics.`holdout/face/coverage`",
        "metrics.`holdout/face/iou`",
        "metrics.`holdout/person/iou`",
    ]
    widths = state["columnWidths"]
    assert widths["metrics.`holdout/face/coverage`"] > widths["metrics.`holdout/face/iou`"]
    assert widths["attributes.`Run Name`"] >= 300  # names carry model, experiment and stage
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]
    # Anything else in the tag (edited by hand, another MLflow's format) is replaced.
    _, fresh = saved_view(["a"], previous="not json")
    assert view_state(fresh)["selectedColumns"] == ["metrics.`a`"]


def test_links_open_the_model_training_workflow() -> None:
    assert run_path("2", "abc") == "#/experiments/2/runs/abc?workflowType=machine_learning"
    assert version_path("face model", "3") == (
        "#/models/face%20model/versions/3?workflowType=machine_learning"
    )
    assert ui_url("http://127.0.0.1:5000/", "#/x") == "http://127.0.0.1:5000/#/x"
    assert ui_url("sqlite:///tmp/mlflow.db", "#/x") is None
