"""`python -m serving.runtime blur|serve|audit ...`: the runtime's commands, where only it is
installed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from serving.runtime.commands import audit, blur, serve
from serving.runtime.commands.command import Command, HelpFormatter, add_verbosity, run_command
from serving.runtime.errors import ServingError

COMMANDS: dict[str, Command] = {
    "blur": blur.COMMAND,
    "serve": serve.COMMAND,
    "audit": audit.COMMAND,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.runtime",
        description="Anonymize images with exported models: files (blur) or over HTTP (serve).",
        formatter_class=HelpFormatter,
    )
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (short, description, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=short, description=description, formatter_class=HelpFormatter)
        add_args(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, (ServingError,))


if __name__ == "__main__":
    sys.exit(main())
