"""What a sub-command is: its help, its description, its options and its handler."""

from __future__ import annotations

import argparse
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
