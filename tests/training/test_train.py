"""The training loop on the synthetic data: determinism, exact resume, signals, NaN, DDP, MLflow,
and how the validator it is handed picks `best`.

A tiny Mask R-CNN (ResNet-18 FPN at 64-96 px) keeps each run to seconds on the CPU; the data is
the real pipeline's output (collect, review, annotate pull, prepare on synthetic images). The
loop's tests hand it a scripted validator (its scores given per step); `anonlab train` hands it
the release scorer's, which runs here through the command line (DDP) and in
tests/evaluation/test_evaluate.py, where it is checked against evaluate's own numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from serving.cli import main as cli_main
from serving.params import Project, load_project
from tests.prepared import prepared_project
from tests.training.tiny_runs import DATA, MODEL, TINY
from training.validator import Validation


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose artifacts/prepared holds the synthetic train and val splits."""
    return prepared_project(tmp_path_factory.mktemp("train-data"), [*DATA, *TINY]).root


def _project(prepared: Path, where: Path, *overrides: str) -> Project:
    """A fresh project in `where` that reads `prepared`'s splits (its own models/ and MLflow)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(prepared / "params.yaml", where / "params.yaml")
    (where / "artifacts").mkdir(exist_ok=True)
    link = where / "artifacts" / "prepared"
    if not link.exists():
        link.symlink_to(prepared / "artifacts" / "prepared")
    # The images the prepared files name live under artifacts/raw.
    raw = where / "artifacts" / "raw"
    if not raw.exists():
        raw.symlink_to(prepared / "artifacts" / "raw")
    return load_project(where / "params.yaml", list(overrides))


class ScriptedValidator:
    """Scores given per step (0.0 for the others), tie-breaks likewise. Like a real validator
    it may draw random numbers, which the loop must keep out of training's random stream."""

    def __init__(
        self,
        scores: dict[int, float] | None = None,
        tie_breaks: dict[int, list[float]] | None = None,
    ) -> None:
        self.scores = scores or {}
        self.tie_breaks = tie_breaks or {}
        self.calls: list[tuple[int, bool]] = []  # (step, model.training)

    def __call__(self, model: torch.nn.Module, step: int) -> Validation:
        self.calls.append((step, model.training))
        torch.rand(8)
        return Validation(
            score=self.scores.get(step, 0.0),
            tie_break=self.tie_breaks.get(step, []),
            metrics={"probe/step": float(step)},
            summary={"step_seen": step},
        )


def _train(project: Project, name: str = MODEL, validator: ScriptedValidator | None = None):
    from training.loop import TrainSetup, run_train

    setup = TrainSetup.of(project.params, name, artifacts=project.artifacts, root=project.root)
    return run_train(setup, validator or ScriptedValidator())


def _last_weights(project: Project) -> dict[str, torch.Tensor]:
    from training.checkpoint import load_checkpoint

    return load_checkpoint(project.artifacts / "models" / MODEL / "checkpoints" / "last.pt")[
        "model"
    ]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)


def test_a_seeded_run_repeats_and_an_interrupted_run_resumes_exactly(
    prepared: Path, tmp_path: Path
) -> None:
    first = _project(prepared, tmp_path / "a")
    result = _train(first)
    assert result.steps == 6
    out = first.artifacts / "models" / MODEL
    for name in ("weights.safetensors", "config.yaml", "metrics.json", "curves/loss.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "best.pt").is_file()

    second = _project(prepared, tmp_path / "b")
    _train(second)
    _assert_same(_last_weights(first), _last_weights(second))

    # Interrupt a third run with SIGTERM as soon as its first checkpoint is on disk.
    from training.loop import TrainingInterrupted

    third = _project(prepared, tmp_path / "c")
    last = third.artifacts / "models" / MODEL / "checkpoints" / "last.pt"

    def terminate_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_first_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(TrainingInterrupted) as stopped:
        _train(third)
    killer.join()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "resume=true" in str(stopped.value)
    from training.checkpoint import load_checkpoint

    assert 2 <= load_checkpoint(last)["step"] < 6

    resumed = _train(_project(prepared, tmp_path / "c", "train.resume=true"))
    assert resumed.steps == 6
    _assert_same(_last_weights(first), _last_weights(third))


def test_training_is_tracked_in_mlflow(prepared: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    project = _project(prepared, tmp_path / "p", "train.max_steps=3", "train.val_every=3")
    _train(project)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("anonlab/train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.optimizer.lr"] == str(project.params.train.optimizer.lr)
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.tags["anonlab.model"] == MODEL
    assert run.info.run_name.startswith(f"{MODEL} · ") and run.info.run_name.endswith(" · train")
    history = client.get_metric_history(run.info.run_id, "val/score")
    assert [m.step for m in history] == [0, 3]  # the untrained model, then after training
    # The validator's own metrics, under val/.
    probe = client.get_metric_history(run.info.run_id, "val/probe/step")
    assert [(m.step, m.value) for m in probe] == [(0, 0.0), (3, 3.0)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    assert version.run_id == run.info.run_id


def test_best_is_the_validation_with_the_highest_score_then_tie_break(
    prepared: Path, tmp_path: Path
) -> None:
    """Validations at steps 0 (untrained: never best), 2, 4, 6; 2 and 4 score alike, 4's
    tie-break is higher: step 4's weights are best.pt and weights.safetensors."""
    from safetensors.torch import load_file

    from training.checkpoint import load_checkpoint

    project = _project(prepared, tmp_path / "best", "train.val_every=2")
    validator = ScriptedValidator(
        scores={0: 0.9, 2: 0.5, 4: 0.5, 6: 0.1},
        tie_breaks={2: [0.1, 0.2], 4: [0.1, 0.3], 6: [0.9, 0.9]},
    )
    result = _train(project, validator=validator)
    # Handed the model in eval mode, at each step; the loop trains on in train mode.
    assert validator.calls == [(0, False), (2, False), (4, False), (6, False)]
    assert result.best == {"step": 4, "score": 0.5, "tie_break": [0.1, 0.3], "step_seen": 4}
    assert result.untrained["step"] == 0 and result.final["step"] == 6
    out = project.artifacts / "models" / MODEL
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["step"] == 4
    weights = load_file(out / "weights.safetensors")
    assert all(torch.equal(weights[k], best["model"][k]) for k in weights)
    assert not all(torch.equal(weights[k], _last_weights(project)[k]) for k in weights)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["step"] == 4 and metrics["untrained"]["score"] == 0.9
    headline = json.loads((out / "headline.json").read_text())  # DVC's metrics: a few numbers
    assert (headline[MODEL]["best_step"], headline[MODEL]["untrained_score"]) == (4, 0.9)
    curve = json.loads((out / "curves" / "val.json").read_text())
    assert curve == [{"step": s, "score": validator.scores[s]} for s in (0, 2, 4, 6)]


def test_a_non_finite_loss_stops_with_a_checkpoint_and_names_the_loss(
    prepared: Path, tmp_path: Path
) -> None:
    from training.loop import TrainingDiverged
    from training.models import build_model, save_weights

    base = _project(prepared, tmp_path / "n")
    model = build_model(base.params.models[MODEL], keypoint_names=[])
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(float("nan"))
    poisoned = tmp_path / "nan.safetensors"
    save_weights(model, poisoned)

    project = _project(prepared, tmp_path / "n", f"models.{MODEL}.weights={poisoned}")
    with pytest.raises(TrainingDiverged) as diverged:
        _train(project)
    message = str(diverged.value)
    assert "step 1" in message and "loss_mask" in message and "loss_classifier" not in message
    from training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(project.artifacts / "models" / MODEL / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 0


def test_a_backbone_that_does_not_exist_is_a_clear_error(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        ["--params", str(prepared / "params.yaml"), "train", f"models.{MODEL}.backbone=resnet5"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"models.{MODEL}.backbone = 'resnet5': unknown backbone" in err
    assert "resnet50" in err and "mobilenet_v3_large" in err
    assert not (prepared / "artifacts" / "models").exists()


def test_ddp_with_two_processes_on_gloo(prepared: Path, tmp_path: Path) -> None:
    project = _project(prepared, tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANONLAB_PROGRESS": "0"}
    torchrun = Path(sys.executable).parent / "torchrun"
    anonlab = Path(sys.executable).parent / "anonlab"
    done = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node=2",
            "--no-python",
            str(anonlab),
            "--params",
            str(project.root / "params.yaml"),
            "train",
            "max_steps=4",
            "val_every=4",
        ],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = project.artifacts / "models" / MODEL
    assert (out / "weights.safetensors").is_file() and (out / "metrics.json").is_file()
    assert done.stdout.count(f"{MODEL}: 4 steps") == 1  # rank 0 reports, rank 1 does not
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("anonlab/train")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # rank 0 tracks alone
