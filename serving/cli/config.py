"""`anonlab config`: compose conf/ into params.yaml (or check that it is fresh)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.runtime.commands.command import Command


def run(args: argparse.Namespace) -> int:
    import yaml

    from data.atomic import write_text
    from data.config import compose, validate
    from serving.params import Params

    text = compose(Path(args.conf), args.overrides)
    validate(yaml.safe_load(text), Params)
    target = Path(args.params)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            print(f"{target} is stale: run `anonlab config` and commit it", file=sys.stderr)
            return 1
        print(f"{target} is up to date with {args.conf}/")
        return 0
    write_text(target, text)
    print(f"wrote {target} from {args.conf}/")
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", default="conf", help="the Hydra config folder")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when params.yaml differs from a fresh composition",
    )


COMMAND = Command(
    "compose conf/ into params.yaml",
    "Compose the Hydra tree in conf/ (with overrides, e.g. collect=s3 or "
    "collect.synthetic.count=50), validate it, and write params.yaml, the file every "
    "stage reads and DVC tracks. Commit params.yaml together with conf/.",
    add_args,
    run,
)
