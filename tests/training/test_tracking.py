"""MLflow tracking against real backends: a SQLite file and an `mlflow server` on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from data.errors import AnonlabError
from tests.training.test_tracking_ui import view_state
from tests.training.tiny_models import TINY, save_tiny_model
from training.tracking import TRUNCATED, Tracker, flatten, run_tags, tracking_uri
from training.tracking_ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE_TAG, VIEW_TAG

SERVER_START_TIMEOUT = 180  # seconds; mlflow imports twice (CLI, then uvicorn) before it answers


# -- tracking_uri ------------------------------------------------------------------------------


def test_tracking_uri_env_then_dvc_root_then_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(Path("proj")) == f"sqlite:///{tmp_path.resolve() / 'proj' / 'mlflow.db'}"

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking_uri(tmp_path / "proj") == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path / "proj") == "http://127.0.0.1:5000"


# -- run_tags ----------------------------------------------------------------------------------

LOCK = """\
schema: '2.0'
stages:
  collect:
    cmd: anonlab collect
    outs:
    - path: artifacts/raw/images
      hash: md5
      md5: 185d1ac962afaef231208518070539d9.dir
  prepare:
    cmd: anonlab prepare
    outs:
    - path: artifacts/prepared
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
      size: 10
    - path: artifacts/prepared/stats.json
      hash: md5
      md5: fedcba9876543210fedcba9876543210
"""


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_run_tags_from_git_and_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "untracked.txt").write_text("not part of the commit's meaning\n")

    tags = run_tags(tmp_path, stage="train")
    assert tags == {
        "anonlab.stage": "train",
        "mlflow.source.git.commit": _git(tmp_path, "rev-parse", "HEAD"),
        "anonlab.git.dirty": "false",
    }

    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "dvc.lock").write_text(LOCK)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1a2b3")
    tags = run_tags(tmp_path, stage="train")
    assert tags["anonlab.git.dirty"] == "true"
    assert tags["anonlab.dvc.experiment"] == "exp-1a2b3"
    data = {k: v for k, v in tags.items() if k.startswith("anonlab.data.")}
    assert data == {
        "anonlab.data.prepare.artifacts/prepared": "0123456789abcdef0123456789abcdef.dir",
        "anonlab.data.prepare.artifacts/prepared/stats.json": "fedcba9876543210fedcba9876543210",
    }
    both = run_tags(tmp_path, stage="evaluate", data_stages=("collect", "prepare"))
    assert both["anonlab.data.collect.artifacts/raw/images"] == (
        "185d1ac962afaef231208518070539d9.dir"
    )


def test_run_tags_without_git_or_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    # Stops git from finding a repository above the temp folder.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "plain").mkdir()
    assert run_tags(tmp_path / "plain", stage="evaluate") == {"anonlab.stage": "evaluate"}
    (tmp_path / "plain" / "dvc.lock").write_text("stages: [not, a, mapping\n")
    assert run_tags(tmp_path / "plain", stage="evaluate") == {"anonlab.stage": "evaluate"}
    assert run_tags(tmp_path / "missing", stage="evaluate") == {"anonlab.stage": "evaluate"}


# -- flatten -----------------------------------------------------------------------------------


def test_flatten_nested_config_without_secrets() -> None:
    config = {
        "seed": 0,
        "train": {"optimizer": {"name": "sgd", "lr": 0.01}, "clip_grad_norm": None},
        "taxonomy": {"classes": ["face", "person"]},
        "augment": {"transforms": [{"name": "HorizontalFlip", "p": 0.5}]},
        "collect": {
            "sources": [{"uri": "s3://b/x", "storage_options": {"secret_access_key": "S3CR3T"}}],
            "storage_options": {"endpoint_url": "http://minio", "token": "T0KEN", "key": "K3Y"},
        },
        "empty": {},
    }
    params = flatten(config)
    assert params == {
        "seed": "0",
        "train.optimizer.name": "sgd",
        "train.optimizer.lr": "0.01",
        "train.clip_grad_norm": "None",
        "taxonomy.classes": '["face", "person"]',
        "augment.transforms": '[{"name": "HorizontalFlip", "p": 0.5}]',
        "collect.sources": '[{"storage_options": {}, "uri": "s3://b/x"}]',
        "collect.storage_options.endpoint_url": "http://minio",
        "empty": "{}",
    }
    text = repr(params)
    for secret in ("S3CR3T", "T0KEN", "K3Y", "secret_access_key", "token"):
        assert secret not in text
    assert flatten(params) == params  # already flat: unchanged
    assert flatten({"lr": 0.1}, prefix="train.") == {"train.lr": "0.1"}


def test_flatten_truncates_long_values() -> None:
    params = flatten({"notes": "x" * (MAX_PARAM_VAL_LENGTH + 10), "short": "y" * 10})
    assert len(params["notes"]) == MAX_PARAM_VAL_LENGTH
    assert params["notes"].endswith(TRUNCATED)
    assert params["short"] == "y" * 10


# -- Tracker -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project folder for the SQLite tests: creating a database costs seconds."""
    return tmp_path_factory.mktemp("sqlite-project")


@pytest.fixture(scope="module", autouse=True)
def _server_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path] | None]:
    """Start `mlflow server` when the module's first test runs, if any selected test needs it.

    Starting takes tens of seconds, so it boots while the SQLite tests run; `mlflow_server`
    waits for it. It runs in its own process group, which teardown ends.
    """
    wanted = any(
        getattr(item, "module", None) is request.module
        and getattr(getattr(item, "callspec", None), "params", {}).get("backend") == "server"
        for item in request.session.items
    )
    if not wanted:
        yield None
        return
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No background job runner: one process fewer to import mlflow while the tests wait.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder / 'srv.db'}",
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def mlflow_server(_server_process: tuple[subprocess.Popen[bytes], str, Path] | None) -> str:
    """The server's URL once `/health` answers."""
    assert _server_process is not None
    proc, url, log = _server_process
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not up after {SERVER_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def backend(
    request: pytest.FixtureRequest,
    sqlite_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """The project root of a test; MLFLOW_TRACKING_URI points at the server for `server`."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if request.param == "server":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("mlflow_server"))
        return tmp_path
    return sqlite_root


BACKENDS = ["sqlite", pytest.param("server", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """A random tiny Mask R-CNN in eval mode, saved as weights.safetensors + config.yaml."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_disabled_tracker_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Any
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    _, weights, config = tiny_model
    with Tracker(
        tmp_path, experiment="off", run_name="rank1", params={"a": 1}, tags={}, enabled=False
    ) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifact(config)
        assert tracker.log_model(weights=weights, config=config, registered_name="off") is None
        assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_tracking_errors_are_warnings(
    sqlite_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with Tracker(
        sqlite_root, experiment="blink", run_name="r", params={}, tags={}, system_metrics=False
    ) as tracker:
        client = mlflow.MlflowClient(tracker.uri)
        client.delete_run(tracker.run_id)  # every later write to the run fails
        with caplog.at_level(logging.WARNING, logger="training.tracking"):
            for step in range(3):
                tracker.log_metrics({"loss": 1.0}, step)
    warnings = [r for r in caplog.records if "metrics logging failed" in r.getMessage()]
    assert len(warnings) == 1


def test_resumed_run_continues(sqlite_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    first = {"train": {"resume": False, "max_steps": 4}}
    with Tracker(
        sqlite_root, experiment="resume", run_name="r", params=first, tags={}, system_metrics=False
    ) as tracker:
        tracker.log_metrics({"loss": 4.0}, 0)
        tracker.log_metrics({"loss": 3.0}, 1)
    run_id = tracker.run_id
    again = {"train": {"resume": True, "max_steps": 4}, "extra": 1}
    with Tracker(
        sqlite_root,
        experiment="resume",
        run_name="r",
        params=again,
        tags={"anonlab.resumed": "true"},
        system_metrics=False,
        resume_run_id=run_id,
    ) as resumed:
        assert resumed.run_id == run_id
        client = mlflow.MlflowClient(resumed.uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        resumed.log_metrics({"loss": 2.0}, 2)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (0, 4.0),
        (1, 3.0),
        (2, 2.0),
    ]
    assert run.data.params["train.resume"] == "False"  # params are immutable: the first value
    assert run.data.params["extra"] == "1"
    assert run.data.tags["anonlab.resumed"] == "true"

    client.delete_run(run_id)
    with Tracker(
        sqlite_root,
        experiment="resume",
        run_name="r",
        params=again,
        tags={},
        system_metrics=False,
        resume_run_id=run_id,
    ) as fresh:
        assert fresh.run_id not in (None, run_id)  # the checkpoint's run is gone: a new one


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_run_round_trip(backend: Path, tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights, config = tiny_model
    # Sample system metrics often enough to see some in a short run.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    params = {"train": {"optimizer": {"lr": 0.01}, "models": ["face"]}, "token": "T0KEN"}
    losses = [1.0, 0.5, float("nan"), 0.25, 0.125]
    with Tracker(
        backend,
        experiment="anonlab/test",
        run_name="face",
        params=params,
        tags={"anonlab.stage": "train", "anonlab.model": "face"},
    ) as tracker:
        for step, loss in enumerate(losses):
            tracker.log_metrics({"train/loss": loss, "train/lr": 0.01}, step)
        tracker.log_artifact(config)
        time.sleep(0.5)
        version = tracker.log_model(
            weights=weights, config=config, registered_name="face", metadata={"kind": TINY.kind}
        )
    assert version == "1"

    client = mlflow.MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.optimizer.lr": "0.01", "train.models": '["face"]'}
    assert run.data.tags["anonlab.stage"] == "train"
    assert run.data.tags["anonlab.model"] == "face"
    assert run.data.tags["mlflow.runName"] == "face"
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    for logged, expected in zip([m.value for m in history], losses, strict=True):
        assert logged == expected or (math.isnan(logged) and math.isnan(expected))
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.yaml"]

    mv = client.get_model_version("face", "1")
    assert mv.run_id == tracker.run_id
    assert not mv.aliases  # aliases are validate's to set
    # The run and the version it registered link each other's page in the UI.
    assert run.data.tags[NOTE_TAG] == (
        "Registered as [face version 1](#/models/face/versions/1?workflowType=machine_learning)."
    )
    page = f"#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}?"
    assert mv.description.startswith(f"Trained in run [face]({page}")
    assert "not evaluated yet" in mv.description
    assert mv.tags["anonlab.weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    model_id = mv.source.removeprefix("models:/")
    files = _artifact_files(client, model_id)
    assert {
        "MLmodel",
        "mlflow_model.py",
        "artifacts/weights.safetensors",
        "artifacts/config.yaml",
        "code/training/models.py",
        "requirements.txt",
    } <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert client.get_logged_model(model_id).params == run.data.params  # no token here either

    # models:/ URIs resolve through MLflow's global tracking URI, whatever the client's.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    loaded = mlflow.pyfunc.load_model("models:/face/1")
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    (got,) = loaded.predict(image)
    with torch.inference_mode():
        (want,) = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    assert len(want["boxes"]) > 0  # a random model still proposes boxes to compare
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=1e-5, atol=1e-6)
    assert list(got["labels"]) == [TINY.classes[i - 1] for i in want["labels"].tolist()]
    assert got["masks"].shape == (len(want["boxes"]), 72, 96)
    assert got["masks"].dtype == bool
    # Mask heads over 100 random boxes are slow on a CPU: the list path is checked without them.
    assert loaded.predict([]) == []
    with pytest.raises(AnonlabError, match="image 0: expected an HxWx3 uint8 RGB array"):
        loaded.predict([image.astype(np.float32)])


def _artifact_files(client: mlflow.MlflowClient, model_id: str, path: str = "") -> set[str]:
    """Paths of every file of a logged model, listed through the tracking server."""
    files: set[str] = set()
    for entry in client.list_logged_model_artifacts(model_id, path or None):
        if entry.is_dir:
            files |= _artifact_files(client, model_id, entry.path)
        else:
            files.add(entry.path)
    return files


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_exception_ends_run_failed_or_killed(
    backend: Path, error: type[BaseException], status: str
) -> None:
    with (
        pytest.raises(error),
        Tracker(
            backend,
            experiment="anonlab/test-fail",
            run_name="boom",
            params={},
            tags={},
            system_metrics=False,
        ) as tracker,
    ):
        tracker.log_metrics({"loss": 1.0}, 0)
        raise error("stop")
    run = mlflow.MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.info.status == status


def test_experiments_are_tagged_for_model_training_and_keep_a_view(
    sqlite_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    client = mlflow.MlflowClient(tracking_uri(sqlite_root))
    older = client.create_experiment("anonlab/older")  # as an older anonlab made it
    for experiment in ("anonlab/new", "anonlab/older"):
        with Tracker(
            sqlite_root,
            experiment=experiment,
            run_name="r",
            params={},
            tags={},
            system_metrics=False,
        ) as tracker:
            tracker.log_metrics({"holdout/face/iou": 0.5}, 0)
            tracker.save_view(["holdout/face/iou"])
        tags = client.get_experiment(tracker.experiment_id).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
        assert view_state(tags[VIEW_TAG])["selectedColumns"] == ["metrics.`holdout/face/iou`"]
    assert tracker.experiment_id == older
