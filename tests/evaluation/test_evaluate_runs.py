"""evaluate's MLflow runs and the registered versions' descriptions, on a real MLflow (SQLite):
the links between an evaluate run, the version it scored and that version's training run, the
headline recall under short names, and validate's verdict on the version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from evaluation.config import EvaluateConfig
from evaluation.evaluate_runs import EXPERIMENT, track_model
from evaluation.registry import Registry
from evaluation.verdict import Verdict
from evaluation.version_notes import (
    EVALUATE_RUN_TAG,
    describe_verdicts,
    headline_from_entry,
    headline_from_metrics,
)
from tests.conftest import REPO
from tests.training.test_tracking_ui import view_state
from training.tracking import WEIGHTS_SHA256_TAG, Tracker
from training.tracking_ui import NOTE_TAG, VIEW_TAG

MODEL = "face_model"
SHA = "ab" * 32
# evaluate's metrics of one model: val (where thresholds are chosen) and a reference set.
METRICS = {
    "recall/val/face/all": 0.9,
    "coverage/val/face/all": 0.95,
    "recall/holdout/face/all": 0.5,
    "coverage/holdout/face/all": 0.75,
    "recall/holdout/face/tiny": 0.25,
    "recall/holdout/person/all": 0.8,
    "champion/recall/holdout/face/all": 0.4,
    "peer/centerface/recall/holdout/face/all": 0.3,
    "threshold/face": 0.5,
}
HEADLINE = {"holdout/face/coverage": 0.75, "holdout/face/iou": 0.5, "holdout/person/iou": 0.8}
# The same cells as eval/metrics.json holds them.
ENTRY = {
    "sets": {
        "val": {"recall": {"face": {"all": {"n": 4, "iou": 0.9, "coverage": 0.95}}}},
        "holdout": {
            "recall": {
                "face": {
                    "all": {"n": 8, "iou": 0.5, "coverage": 0.75},
                    "tiny": {"n": 4, "iou": 0.25, "coverage": None},
                },
                "person": {"all": {"n": 5, "iou": 0.8, "coverage": None}},
            }
        },
    }
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project root whose registry holds version 1 of MODEL, registered by a training run."""
    root = tmp_path_factory.mktemp("evaluate-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("DVC_ROOT", raising=False)
        mp.setenv("DVC_EXP_NAME", "exp-small-lr")
        with Tracker(
            root,
            experiment="anonlab/train",
            run_name=f"{MODEL} · exp-small-lr · train",
            params={},
            tags={},
            system_metrics=False,
        ) as tracker:
            pass
        client = Registry(root).client
        client.create_registered_model(MODEL)
        client.create_model_version(
            MODEL, f"runs:/{tracker.run_id}/model", run_id=tracker.run_id, tags={}
        )
        client.set_model_version_tag(MODEL, "1", WEIGHTS_SHA256_TAG, SHA)
        yield root


def _cfg() -> EvaluateConfig:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return EvaluateConfig.model_validate(params["evaluate"])


def test_headline_is_the_same_from_mlflow_metrics_and_metrics_json() -> None:
    assert headline_from_metrics(METRICS) == HEADLINE
    assert headline_from_entry(ENTRY) == HEADLINE


def test_evaluate_run_links_version_and_training_run(root: Path) -> None:
    track_model(root, _cfg(), MODEL, SHA, METRICS, version="1", champion_version=None)
    registry = Registry(root)
    client = registry.client
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    version = client.get_model_version(MODEL, "1")
    train = client.get_run(version.run_id)

    assert run.info.run_name == f"{MODEL} · exp-small-lr · evaluate"
    tags = run.data.tags
    assert tags["anonlab.registered_model"] == MODEL and tags["anonlab.model_version"] == "1"
    assert tags["anonlab.train_run_id"] == train.info.run_id
    note = tags[NOTE_TAG]
    assert f"[version 1](#/models/{MODEL}/versions/1?workflowType=machine_learning)" in note
    train_page = f"#/experiments/{train.info.experiment_id}/runs/{train.info.run_id}?"
    assert f"trained in run [{MODEL} · exp-small-lr · train]({train_page}" in note
    assert "| holdout | face | 0.500 | 0.750 |" in note
    for name, value in HEADLINE.items():
        assert run.data.metrics[name] == value
    assert "val/face/iou" not in run.data.metrics  # thresholds are chosen on val
    columns = view_state(experiment.tags[VIEW_TAG])["selectedColumns"]
    assert columns == ["tags.`anonlab.model_version`"] + [f"metrics.`{m}`" for m in HEADLINE]

    # The version links the run back, with its headline recall; the gate has not judged it.
    assert version.tags["anonlab.evaluate_run"] == f"{experiment.experiment_id}/{run.info.run_id}"
    assert f"(#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}?" in (
        version.description
    )
    assert "| holdout | person | 0.800 | n/a |" in version.description
    assert "Gate: not judged since" in version.description


def _verdict(passed: bool, *, release: bool = True) -> Verdict:
    return Verdict(
        notice="NOT A RELEASE: weaker targets" if not release else "RELEASE GATE: ...",
        release=release,
        gate=None,
        passed=passed,
        when="2026-12-07T08:00:00+00:00",
        failed=() if passed else ("anonymizer.holdout.target.iou", "face_model.weights"),
        warnings=(),
        checks=(),
        metrics_sha256=None,
        models={},
        challengers={MODEL: "1"} if passed else {},
    )


def test_validate_writes_its_verdict_on_the_version(root: Path) -> None:
    registry = Registry(root)
    registry.tag(registry.get(MODEL, "1"), EVALUATE_RUN_TAG, "7/0123abcd")  # as evaluate tags it
    version = registry.get(MODEL, "1")
    metrics = {MODEL: ENTRY}

    describe_verdicts(registry, {MODEL: version, "unregistered": None}, _verdict(False), metrics)
    text = registry.client.get_model_version(MODEL, "1").description
    assert text.startswith("**Gate: failed** (`anonlab validate`, 2026-12-07T08:00:00+00:00): 2")
    assert "`anonymizer.holdout.target.iou`, `face_model.weights`" in text
    assert "| holdout | face | 0.500 | 0.750 |" in text

    describe_verdicts(registry, {MODEL: version}, _verdict(True, release=False), metrics)
    text = registry.client.get_model_version(MODEL, "1").description
    assert text.startswith("**Gate: passed**") and "this version is the `challenger`" in text
    assert "NOT A RELEASE: weaker targets" in text
    assert "Measured by evaluate run [0123abcd](#/experiments/7/runs/0123abcd?" in text


def test_a_refused_description_is_a_warning(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(root)
    version = registry.get(MODEL, "1")
    gone = type(version)(MODEL, "99", None, None)  # a version the registry does not hold
    with caplog.at_level("WARNING", logger="evaluation.version_notes"):
        describe_verdicts(registry, {MODEL: gone}, _verdict(True), {MODEL: ENTRY})
    assert f"{MODEL} version 99: the verdict is not in its description" in caplog.text
    assert mlflow.MlflowClient(registry.uri).get_model_version(MODEL, "1").description
