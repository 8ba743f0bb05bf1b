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
