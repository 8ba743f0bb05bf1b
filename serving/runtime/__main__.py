"""`python -m serving.runtime blur|serve ...`: the runtime's commands where only it is installed."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from serving.runtime.commands import blur, serve
from serving.runtime.commands.command import Command
from serving.runtime.errors import ServingError

COMMANDS: dict[str, Command] = {"blur": blur.COMMAND, "serve": serve.COMMAND}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.runtime",
        description="Anonymize images with exported models: files (blur) or over HTTP (serve).",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (short, description, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=short, description=description)
        add_args(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
