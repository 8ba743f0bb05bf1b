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
from typing import Any

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
from serving.runtime.commands.command import Command, HelpFormatter, add_verbosity, run_command
from serving.runtime.errors import ServingError

OVERRIDES_HELP = (
    "key=value overrides applied on top of params.yaml (Hydra syntax: "
    "collect.synthetic.count=50, review.blur_threshold=25.5, collect.sources=[{uri:/data}])"
)

# `anonlab config` composes conf/ itself: its overrides are Hydra's, groups included.
CONFIG_OVERRIDES_HELP = (
    "Hydra overrides of the composition of conf/: a group's option (collect=s3) or a "
    "key=value (collect.synthetic.count=50)"
)

# An argument in Hydra's override syntax: key=value, +key=value, ++key=value or ~key.
_OVERRIDE = re.compile(r"^(?:(?:\+\+?)?[A-Za-z_][\w.@-]*=|~[A-Za-z_])")

# In the order `anonlab --help` lists them; a name of two words is a sub-command of the group
# named by the first (see GROUPS), or of the command named by the first (`validate promote`):
# that command also runs alone, with its key=value overrides.
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
    "validate promote": validate.PROMOTE,
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
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="the resolved configuration to read, relative to this folder",
    )
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = {name.rpartition(" ")[0] for name in COMMANDS} & set(COMMANDS)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (short, description, add_args, handler) in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            g_short, g_description = GROUPS[group]
            g = sub.add_parser(
                group, help=g_short, description=g_description, formatter_class=HelpFormatter
            )
            groups[group] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        p = (groups[group] if group else sub).add_parser(
            leaf, help=short, description=description, formatter_class=HelpFormatter
        )
        add_args(p)
        if name in parents:
            subcommands = [c.partition(" ")[2] for c in COMMANDS if c.startswith(f"{name} ")]
            groups[name] = p.add_subparsers(
                dest="subcommand",
                metavar=f"[{' | '.join(subcommands)} | key=value]",
                action=SubcommandOrOverrides,
                help=f"a sub-command, or {OVERRIDES_HELP}",
            )
            p.set_defaults(overrides=[])
        elif name not in NO_PARAMS_COMMANDS:
            p.add_argument(
                "overrides",
                nargs="*",
                metavar="key=value",
                help=CONFIG_OVERRIDES_HELP if name == "config" else OVERRIDES_HELP,
            )
        p.set_defaults(handler=handler, command_name=name)
        if group in parents:
            # The command alone, then each sub-command: argparse would show one positional.
            g = sub.choices[group]
            own = p.format_usage().removeprefix("usage: ").rstrip()
            g.usage = f"{g.usage or '%(prog)s [-h] [key=value ...]'}\n       {own}"
    return parser


class SubcommandOrOverrides(argparse._SubParsersAction):
    """The sub-commands of a command that also runs alone (`validate`, `validate promote`): the
    arguments after the command name a sub-command, which parses the rest, or else they are the
    command's own overrides (`main` refuses those that are no key=value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = None  # argparse refuses what is not a choice; overrides are no choices

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Sequence[str],
        option_string: str | None = None,
    ) -> None:
        if values[0] in self._name_parser_map:
            super().__call__(parser, namespace, values, option_string)
        else:
            namespace.overrides = list(values)


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


def _not_overrides(args: argparse.Namespace) -> list[str]:
    """The arguments after a command that has sub-commands (`validate`) that are no key=value
    override: a mistyped sub-command, or an option of a sub-command given to the command."""
    if args.command_name not in {c.rpartition(" ")[0] for c in COMMANDS}:
        return []
    return [a for a in args.overrides if not _OVERRIDE.match(a)]


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
    wrong = _not_overrides(args)
    if extra or any(a.startswith("-") for a in wrong):
        parser.error(f"unrecognized arguments: {' '.join([*extra, *wrong])}")
    if wrong:
        name = args.command_name
        subcommands = [c.partition(" ")[2] for c in COMMANDS if c.startswith(f"{name} ")]
        parser.error(
            f"{name}: {wrong[0]!r} is neither a sub-command ({', '.join(subcommands)}) nor a "
            f"key=value override (anonlab {name} --help)"
        )
    return run_command(args, (AnonlabError, ServingError))
