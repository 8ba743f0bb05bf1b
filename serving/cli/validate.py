"""`anonlab validate`: data checks and the release gate; `anonlab validate promote` crowns the
challenger."""

from __future__ import annotations

import argparse

from serving.cli.project import load
from serving.runtime.commands.command import Command, no_args


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from evaluation.validate import ValidateSetup, run_validate

    verdict = run_validate(
        ValidateSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    )
    warned = f", {len(verdict.warnings)} warning(s)" if verdict.warnings else ""
    print(f"validation passed: {len(verdict.checks)} checks{warned}")
    print(verdict.notice)
    for model, version in verdict.challengers.items():
        if version:
            print(
                f"{model}: version {version} is the challenger; promote it with "
                f"`anonlab validate promote --model {model}`"
            )
    return 0


def promote(args: argparse.Namespace) -> int:
    project = load(args)
    from evaluation.registry import Registry

    names = [args.model] if args.model else list(project.params.train.models)
    registry = Registry(project.root)
    for name in names:
        previous, champion = registry.promote(name, user=args.user)
        was = f" (was version {previous.version})" if previous else ""
        print(f"{name}: champion is now version {champion.version}{was}")
    return 0


def add_promote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="this model only (default: every model of train.models)")
    p.add_argument("--user", help="who promotes (default: $ANONLAB_USER, else the login name)")


COMMAND = Command(
    "data checks and the release gate; `validate promote` makes the challenger champion",
    "Check the prepared data (schema, geometry, leakage into reference sets, shifts from "
    "the previous version) and hold what ships to the gate: on every reference set each "
    "class's recall of the anonymizer (the models run as one: the `anonymizer` entry of "
    "artifacts/eval/metrics.json) reaches evaluate.target_recall; each model's own recall is "
    "shown, a warning when below target, not gated; no class and size bucket of a model is "
    "worse than its champion's by more than validate.tolerance; each model's weights must be "
    "the ones evaluate scored (by sha256, also against the registered version's tag), and the "
    "ones the anonymizer ran. A metrics.json without the anonymizer fails. Writes "
    "artifacts/validation/verdict.json (naming each model's weights by sha256) and exits "
    "non-zero when any check but a warning fails; a passing "
    "model's registered version gets the MLflow alias challenger. `anonlab validate "
    "promote` (its own --help) moves the alias champion to the challenger.",
    no_args,
    run,
)

PROMOTE = Command(
    "make each model's challenger its champion",
    "Move the MLflow alias champion of each model (train.models, or --model) to the version "
    "that holds the alias challenger (set by a passing `anonlab validate`), and tag that "
    "version with who promoted it (anonlab.promoted_by) and when (anonlab.promoted_at). A "
    "model without a challenger is an error. Later `anonlab validate` runs hold each model to "
    "its champion, and `anonlab annotate push` pre-annotates with the champions.",
    add_promote_args,
    promote,
)
