"""What a sub-command is (help, description, options, handler), and running one: the part that
`anonlab` and `python -m serving.runtime` share."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NamedTuple


class Command(NamedTuple):
    """One sub-command; a parser shows `short` in its list of commands and `description` in the
    command's own --help."""

    short: str
    description: str
    add_args: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, "(default: X)", unless its text already shows
    it (`%(default)s`); flags (on or off) and options without a default show none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.nargs == 0
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def probability(text: str) -> float:
    """An option's value from 0 to 1 (a score threshold); argparse's error names the option."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not from 0 to 1")
    return value


def share(text: str) -> float:
    """An option's value above 0 and at most 1 (a coverage, a recall target)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0 and at most 1")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def no_args(_: argparse.ArgumentParser) -> None:
    """The options of a command that has none of its own."""


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def run_command(args: argparse.Namespace, explained: tuple[type[Exception], ...]) -> int:
    """Run the parsed command's handler at the chosen log level; its exit status. An error of
    the `explained` types prints its message alone (status 2); Ctrl-C gives status 130."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except explained as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
