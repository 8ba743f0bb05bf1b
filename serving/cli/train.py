"""`anonlab train`: train each model (or --model), with short keys meaning train.<key>."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from data.errors import AnonlabError
from serving.cli.printing import fmt_score
from serving.cli.project import load
from serving.runtime.commands.command import Command


def train_overrides(overrides: Sequence[str]) -> list[str]:
    """`resume=true` means `train.resume=true` and `optimizer.lr=0.02` means
    `train.optimizer.lr=0.02`: a key that is not under a root key of params.yaml is taken as a
    key of the train section when it has no dot or its first part is a train key."""
    from serving.params import Params
    from training.config import TrainConfig

    # As params.yaml spells them (`validate`, not the attribute `validation`).
    roots = {field.alias or name for name, field in Params.model_fields.items()}
    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        bare = key.lstrip("+~")
        first = bare.partition(".")[0]
        in_train = "." not in bare or first in TrainConfig.model_fields
        if eq and in_train and first not in roots:
            item = f"{key[: len(key) - len(bare)]}train.{bare}={value}"
        out.append(item)
    return out


def run(args: argparse.Namespace) -> int:
    project = load(args, train_overrides(args.overrides))
    from evaluation.training_validator import release_validator
    from training.loop import TrainingInterrupted, TrainSetup, run_train

    p = project.params
    names = [args.model] if args.model else list(p.train.models)
    for name in names:
        if name not in p.models:
            raise AnonlabError(
                f"--model {name}: not a model of this project; models (conf/model/): "
                f"{', '.join(p.models)}"
            )
    for name in names:
        setup = TrainSetup.of(p, name, artifacts=project.artifacts, root=project.root)
        # The release scorer picks `best`: training is handed it, and never imports evaluation.
        validator = release_validator(p, name, artifacts=project.artifacts)
        try:
            result = run_train(setup, validator)
        except TrainingInterrupted as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        if int(os.environ.get("RANK", "0")) == 0:
            best, untrained = result.best, result.untrained
            print(
                f"{name}: {result.steps} steps; best at step {best.get('step')}: val score "
                f"{fmt_score(best.get('score'))} (worst cell {best.get('worst_cell')}; untrained "
                f"{fmt_score(untrained.get('score'))}) -> {result.out_dir}"
            )
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="the model to train (a name under models:, from conf/model/); default: each of "
        "train.models in turn",
    )


COMMAND = Command(
    "train a detector (Mask R-CNN or Keypoint R-CNN), resumable, on one or many GPUs",
    "Train models.<name> (conf/model/) on artifacts/prepared/train.json with the train "
    "section. Every train.val_every steps the release scorer (anonlab score) judges the "
    "model on val.json at the operating thresholds evaluate would choose there; the "
    "checkpoint whose worst gate cell (class, size bucket, gate metric) is closest to its "
    "target recall becomes checkpoints/best.pt and weights.safetensors; "
    "checkpoints/last.pt is written every "
    "train.checkpoint_every steps, on SIGTERM or Ctrl-C, and before stopping on a NaN "
    "loss. `anonlab train resume=true` continues exactly (short keys mean train.<key>). "
    "Several GPUs or machines: torchrun --nproc-per-node=N --no-python anonlab train. "
    "Every run is tracked in MLflow (MLFLOW_TRACKING_URI, else mlflow.db) and registered "
    "under the model's name.",
    add_args,
    run,
)
