"""What `anonlab erase` and `anonlab retention` share: the stores of this project, in the order
they are erased, and printing a plan or an outcome."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data.erasure.erase import Outcome, Request
    from data.erasure.stores import Held, Store
    from serving.params import Project


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list, per store, what would be erased, and change nothing",
    )


def stores(project: Project) -> list[Store]:
    """Every store of the project, a derived one before what it derives from (evaluate's outputs
    first: they find an image's detections through the prepared sets)."""
    from annotation.erasure import label_studio_stores
    from data.erasure.artifact_stores import artifact_stores
    from data.erasure.dvc_cache import dvc_stores
    from evaluation.erasure import EvalStore
    from training.erasure import mlflow_stores

    return [
        EvalStore(project.artifacts),
        *artifact_stores(project.artifacts),
        *label_studio_stores(project.artifacts, project.params.annotation, root=project.root),
        *mlflow_stores(project.root),
        *dvc_stores(project.root),
    ]


def print_plan(plan: dict[str, list[Held]], images: int) -> None:
    """--dry-run: every place, per store."""
    from data.erasure.stores import total

    print(f"dry run: {images} image(s); nothing was changed")
    for name, held in plan.items():
        print(f"  {name}: {total(held) or 'nothing'}")
        for h in held:
            print(f"    {h.where}  ({h.count} {h.what})")


def report(outcome: Outcome) -> int:
    """Print what an erasure did; 1 when the scan after it found something left."""
    print(f"{outcome.status}: {outcome.images} image(s)")
    for name, count in outcome.entry["erased"].items():
        print(f"  {name}: {count} erased")
    if not outcome.passed:
        print("verification FAILED: still held after erasing:", file=sys.stderr)
        for name, held in outcome.left.items():
            for h in held:
                print(f"  {name}: {h.where} ({h.count} {h.what})", file=sys.stderr)
        print(
            "the request stays pending; fix the cause and run the command again",
            file=sys.stderr,
        )
        return 1
    print("verification passed: a scan of every store found nothing left")
    return 0


def run_request(project: Project, request: Request, now: datetime, dry_run: bool) -> int:
    """Complete erasures left pending, then erase `request` (or list it, `dry_run`)."""
    from data.erasure.erase import erase, plan, resume_pending
    from data.erasure.keys import audit_key

    all_stores = stores(project)
    if dry_run:
        print_plan(plan(request.subjects, all_stores), len(request.subjects))
        return 0
    key = audit_key()
    audit = project.stage_paths.audit
    failed = 0
    for outcome in resume_pending(all_stores, audit, key, now):
        print("an interrupted erasure was completed first:")
        failed |= report(outcome)
    if not request.subjects:
        return failed
    failed |= report(erase(request, all_stores, audit, key, now))
    print(f"audit log: {audit.erasure_log}")
    return failed
