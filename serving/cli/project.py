"""The project a command runs on: --params read, key=value overrides applied, all validated."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.params import Project


def load(args: argparse.Namespace, overrides: Sequence[str] | None = None) -> Project:
    """The configuration `args.params` names, with `overrides` on top (by default the command's
    own key=value arguments); ConfigError on any problem."""
    # Imported here: pydantic and every stage's schema load only once a command runs.
    from serving.params import load_project

    return load_project(args.params, args.overrides if overrides is None else overrides)
