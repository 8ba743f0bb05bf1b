"""`anonlab retention`: erase every image past its `delete_after` from every store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from serving.cli import erasure
from serving.cli.project import load
from serving.runtime.commands.command import Command


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--now",
        type=erasure.parse_time,
        metavar="ISO-TIME",
        help="the time to compare delete_after with (default: the current time; a time "
        "without a zone is UTC)",
    )
    erasure.add_common(p)


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from data.erasure.erase import Request
    from data.erasure.subjects import Known

    now = args.now or datetime.now(UTC)
    subjects = Known.read(project.artifacts).overdue(now)
    days = project.params.collect.retention_days
    if not subjects:
        print(f"retention: no image is past its delete_after at {now.isoformat()}")
    request = Request("retention", f"retention: delete_after passed ({days} days)", tuple(subjects))
    return erasure.run_request(project, request, now, args.dry_run)


COMMAND = Command(
    "erase every image past its delete_after (the retention policy) from every store",
    "Every image whose delete_after (collect.retention_days after its capture time, or its "
    "collection time when the capture time is unknown) is not after --now is erased from "
    "every store, as `anonlab erase` does, with one line in artifacts/audit/erasure.jsonl "
    "(ANONLAB_AUDIT_KEY required). Run it on a schedule (daily); stages refuse to run on "
    "overdue images until it has.",
    add_args,
    run,
)
