"""The `anonlab` command: its parser, built from every command's module, and the dispatch.

Stage modules are imported only when their command runs, so `anonlab --help` is instant and a
command never pays for the libraries of another.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from data.errors import AnonlabError
from serving.cli import (
    annotate,
    collect,
    config,
    erase,
    evaluate,
    export,
    prepare,
    retention,
    review,
    score,
    train,
    validate,
)
from serving.runtime.commands import audit, blur, serve
from serving.runtime.commands.command import Command, add_verbosity, run_command
from serving.runtime.errors import ServingError

OVERRIDES_HELP = (
    "key=value overrides applied on top of params.yaml (Hydra syntax: "
    "collect.synthetic.count=50, review.blur_threshold=25.5, collect.sources=[{uri:/data}])"
)

# An argument in Hydra's override syntax: key=value, +key=value, ++key=value or ~key.
_OVERRIDE = re.compile(r"^(?:(?:\+\+?)?[A-Za-z_][\w.@-]*=|~[A-Za-z_])")

# In the order `anonlab --help` lists them; a name of two words is a sub-command of the group
# named by the first (see GROUPS).
COMMANDS: dict[str, Command] = {
    "config": config.COMMAND,
    "collect": collect.COMMAND,
    "review": review.COMMAND,
    "annotate serve": annotate.SERVE,
    "annotate push": annotate.PUSH,
    "annotate status": annotate.STATUS,
    "annotate pull": annotate.PULL,
    "prepare": prepare.COMMAND,
    "train": train.COMMAND,
    "evaluate": evaluate.COMMAND,
    "validate": validate.COMMAND,
    "export": export.COMMAND,
    "blur": blur.COMMAND,
    "serve": serve.COMMAND,
    "audit": audit.COMMAND,
    "score": score.COMMAND,
    "retention": retention.COMMAND,
    "erase": erase.COMMAND,
}

# Commands that read no params.yaml (the runtime's read an artifact folder, score two COCO
# files): their options are all their settings, so a key=value argument is an error there.
NO_PARAMS_COMMANDS = frozenset({"audit", "blur", "serve", "score"})

GROUPS: dict[str, tuple[str, str]] = {"annotate": annotate.GROUP}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonlab",
        description="Train, evaluate and ship image-anonymization models. "
        "Every command but audit, blur, serve and score reads params.yaml (written from conf/ by "
        "`anonlab config`) and takes key=value overrides after its options; an unknown key is "
        "an error.",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="the resolved configuration to read (default: params.yaml in this folder)",
    )
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (short, description, add_args, handler) in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            g_short, g_description = GROUPS[group]
            g = sub.add_parser(group, help=g_short, description=g_description)
            groups[group] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        p = (groups[group] if group else sub).add_parser(leaf, help=short, description=description)
        add_args(p)
        if name not in NO_PARAMS_COMMANDS:
            p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
        p.set_defaults(handler=handler, command_name=name)
    return parser


def _stray_overrides(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The key=value arguments given to a command that takes none, among the arguments argparse
    did not take and blur's inputs; for blur, only those that are no file or folder (nor a
    pattern): `a=b.jpg` may be an image."""
    if args.command_name not in NO_PARAMS_COMMANDS:
        return []
    given = [*extra, *(getattr(args, "inputs", None) or [])]
    stray = [a for a in given if _OVERRIDE.match(a)]
    if args.command_name == "blur":
        stray = [a for a in stray if not any(c in a for c in "*?[") and not os.path.lexists(a)]
    return stray


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = _stray_overrides(args, extra)
    if stray:
        name = args.command_name
        print(
            f"error: {name} reads no params.yaml and takes no key=value overrides: "
            f"{', '.join(stray)}"
            + (" (not a file or folder either)" if name == "blur" else "")
            + f"; its settings are its options (anonlab {name} --help)",
            file=sys.stderr,
        )
        return 2
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(args, (AnonlabError, ServingError))
