"""`anonlab erase`: erase named images on request (the right to erasure) from every store."""

from __future__ import annotations

import argparse

from serving.cli import erasure
from serving.cli.project import load
from serving.runtime.commands.command import Command


def add_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    # One value per option, repeated for more: key=value overrides may follow.
    which.add_argument(
        "--sha256", action="append", metavar="H", help="an image by content hash (repeatable)"
    )
    which.add_argument(
        "--session", action="append", metavar="S", help="every image of a capture session"
    )
    which.add_argument(
        "--source-path",
        action="append",
        metavar="P",
        help="the image found at a path or URL, as the manifest records it (repeatable)",
    )
    p.add_argument(
        "--reason",
        required=True,
        help="why, as it goes into the audit log: a ticket or request number, never a name",
    )
    erasure.add_common(p)


def run(args: argparse.Namespace) -> int:
    project = load(args)
    from data.erasure.erase import Request
    from data.erasure.subjects import By, Known
    from data.erasure.tombstones import Tombstones
    from data.errors import AnonlabError

    by, values = next(
        (b, v)
        for b, v in (
            (By.SHA256, args.sha256),
            (By.SESSION, args.session),
            (By.SOURCE_PATH, args.source_path),
        )
        if v
    )
    if by is By.SHA256:
        values = [v.lower() for v in values]
    subjects = Known.read(project.artifacts, naming=values).matching(by, values)
    if not subjects:
        # A session or path no manifest knows: erased before, or never collected.
        from data.erasure.keys import audit_key

        tombstones = Tombstones.read(project.stage_paths.audit.tombstones, audit_key())
        if all(tombstones.names(by, v) for v in values):
            print(f"already erased: every {by.value} named was erased before")
            return 0
        raise AnonlabError(
            f"no image in {project.stage_paths.raw.manifest} or the reviewed manifest has "
            f"{by.value} {', '.join(values)}, and none was erased before: check the value "
            "(sessions and source paths are as the manifest records them)"
        )
    request = Request("request", args.reason, tuple(subjects), {by.value: tuple(values)})
    from data.retention import now

    return erasure.run_request(project, request, now(), args.dry_run)


COMMAND = Command(
    "erase named images (a request under the right to erasure) from every store",
    "Erase the images named by --sha256, --session or --source-path from every store that "
    "holds them or anything derived from them: the raw store and its manifests, review's "
    "report, the annotations, the prepared sets and tiles, evaluate's detections and gallery, "
    "blurred copies under artifacts/blurred and leftovers of interrupted writes. An image is "
    "its content: naming one copy erases every copy. Each store is scanned again afterwards; "
    "the command fails, naming the place, if anything is left. A tombstone (a keyed hash) "
    "keeps collect from taking the image in again, and one line is appended to "
    "artifacts/audit/erasure.jsonl with the reason, the counts per store and the verification, "
    "holding identifiers only as keyed hashes under ANONLAB_AUDIT_KEY (required). A command "
    "killed midway is completed by the next erase or retention; erasing again reports "
    "`already erased`.",
    add_args,
    run,
)
