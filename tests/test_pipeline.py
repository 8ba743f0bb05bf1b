"""The DVC pipeline in a real DVC repository: `dvc repro` and `dvc exp run -S` run the stages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.commands import run, sh
from tests.conftest import REPO


def gate_stops(done: subprocess.CompletedProcess[str]) -> None:
    """The run failed at the validate stage, on the model gate, not earlier."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "validation failed" in output and "recall below target" in output, output


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's pipeline and configuration."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(REPO / "conf", work / "conf")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    sh(work, "git", "init", "-q")
    sh(work, "dvc", "init", "-q")
    sh(work, "dvc", "config", "hydra.enabled", "true")
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", "pipeline")
    return work


def counts(work: Path) -> tuple[int, int, int]:
    raw = json.loads((work / "artifacts/raw/metrics.json").read_text())
    reviewed = json.loads((work / "artifacts/reviewed/metrics.json").read_text())
    return raw["images"], reviewed["kept"], reviewed["rejected"]


IMAGES = 18


def test_exp_run_with_a_hydra_override_runs_the_pipeline(repo: Path) -> None:
    holdout = "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]"
    # One training step per model: the train stages run, quickly; and no model trained for one
    # step reaches a recall target, so the release gate stops the pipeline at validate.
    done = run(
        repo,
        "dvc",
        "exp",
        "run",
        # Three capture sessions (train, val, holdout) of 6 frames: every stage runs on each
        # split, on fewer images to predict on.
        "-S",
        f"collect.synthetic.count={IMAGES}",
        "-S",
        "collect.synthetic.frames_per_session=6",
        "-S",
        holdout,
        "-S",
        "train.max_steps=1",
        # Evaluate an untrained model on few, confident detections: this test is about the
        # pipeline's wiring, and a hundred low-score masks per image cost minutes on a CPU.
        "-S",
        "evaluate.min_threshold=0.3",
        "-S",
        "evaluate.n_boot=100",
        "-S",
        "models.maskrcnn_mobilenet_v3_fpn.detections_per_image=20",
        "-S",
        "models.keypointrcnn_mobilenet_v3_fpn.detections_per_image=20",
        # No head regions: the keypoint branch then does not run in evaluate (an untrained
        # keypoint model's persons cost minutes of it on a CPU); heads are tested in
        # tests/evaluation/test_evaluate.py and tests/serving/.
        "-S",
        "anonymizer.heads.enabled=false",
    )
    gate_stops(done)
    verdict = json.loads((repo / "artifacts/validation/verdict.json").read_text())
    assert not verdict["passed"] and not verdict["challengers"]
    assert verdict["failed"] and all(".target." in name for name in verdict["failed"])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["collect"]["synthetic"]["count"] == IMAGES
    assert params["prepare"]["reference_sets"][0]["sessions"] == ["synthetic-drive-001"]
    images, kept, rejected = counts(repo)
    assert images == IMAGES and kept + rejected == IMAGES
    manifest = (repo / "artifacts/raw/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == IMAGES
    coco = json.loads((repo / "artifacts/annotations/coco.json").read_text())
    assert len(coco["images"]) == kept and coco["annotations"]
    stats = json.loads((repo / "artifacts/prepared/stats.json").read_text())
    assert stats["train"]["images"] and stats["ref-holdout"]["images"]
    # Nothing changed: DVC skips every stage up to the gate, which refuses the models again.
    again = run(repo, "dvc", "repro")
    gate_stops(again)
    # collect, review, annotate, prepare, one train per model, evaluate
    assert again.stdout.count("didn't change, skipping") == 5 + len(params["train"]["models"])
    for model in params["train"]["models"]:
        trained = json.loads((repo / f"artifacts/models/{model}/metrics.json").read_text())
        assert trained["steps"] == 1 and (repo / f"artifacts/models/{model}").is_dir()
    evaluated = json.loads((repo / "artifacts/eval/metrics.json").read_text())
    # Each model's entry, the anonymizer's (the models run as one, which the gate judged), and
    # each peer's (a baseline, never gated).
    peers = {f"peer:{name}" for name in params["evaluate"]["peers"]}
    assert peers == {"peer:centerface"}
    assert set(evaluated) == {*params["train"]["models"], "anonymizer", *peers}
    assert (repo / "artifacts/eval/report.html").is_file()
    # DVC's metrics are the small headline files; the full ones are plain outputs.
    metrics = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    shown = metrics[""]["data"]
    assert {f"artifacts/{stage}/headline.json" for stage in ("reviewed", "eval")} <= set(shown)
    assert "artifacts/eval/metrics.json" not in shown
    evaluated = shown["artifacts/eval/headline.json"]["data"]
    assert set(evaluated["anonymizer"]["holdout"]["coverage"]) == set(params["taxonomy"]["classes"])
