"""`blur`: anonymize image files with exported models, failing closed per image."""

from __future__ import annotations

import argparse
import functools
import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.runtime.commands.command import Command
from serving.runtime.commands.options import add_runtime_args, load_runtime, verify_runtime


def run(args: argparse.Namespace) -> int:
    from serving.runtime.batch import DEFAULT_LEDGER, blur_batch
    from serving.runtime.errors import ServingError
    from serving.runtime.inputs import find_inputs
    from serving.runtime.ledger import Ledger
    from serving.runtime.storage import is_url, join

    urls = [i for i in args.inputs if is_url(i)]
    local = [i for i in args.inputs if not is_url(i)]
    if not args.inputs and not args.inventory:
        raise ServingError("give the images to anonymize: files, folders, globs, or --inventory")
    if args.engine == "local" and (urls or args.inventory or is_url(args.out)):
        raise ServingError(
            "URLs (s3://...) and --inventory need --engine ray (pip install 'anonlab[ray]'); "
            "the local engine reads and writes local files"
        )
    check_out_apart(local, args.out)
    auditors = None
    if args.audit:
        if is_url(args.out):
            raise ServingError(
                "--audit reads what was written from a local --out folder, not a URL; run "
                "`anonlab audit` where the outputs can be read"
            )
        from serving.runtime.commands.audit import load_detectors

        auditors = load_detectors(args.audit)  # a detector that cannot load stops us first
        args.sidecar = True  # what was hidden, for the audit
    ledger = Ledger(args.ledger or join(args.out, DEFAULT_LEDGER))
    if args.engine == "ray":
        report = _blur_on_ray(args, local, urls, ledger)
    else:
        report = blur_batch(
            load_runtime(args),
            find_inputs(local),
            Path(args.out),
            ledger=ledger,
            resume=args.resume,
            workers=args.workers,
            sidecar=args.sidecar,
            masks=args.masks,
            keep_outputs=auditors is not None,
        )
    print(report.summary())
    print(f"ledger: {ledger.location} ({ledger.written} rows, run {ledger.run})")
    for row in report.failures:
        print(f"failed: {row.input}: {row.step}: {row.error}", file=sys.stderr)
    if report.failed > len(report.failures):
        more = report.failed - len(report.failures)
        print(f"... and {more} more: the ledger's rows with status failed", file=sys.stderr)
    if auditors is not None and report.outputs:
        from serving.runtime.audit import audit
        from serving.runtime.commands.audit import show

        names, detectors = auditors
        audited = audit(report.outputs, detectors)
        show(audited, names)
        if not audited.passed:
            return 1
    return 1 if report.failed else 0


def check_out_apart(inputs: Sequence[str], out: str) -> None:
    """ServingError, before anything is read or written, when the local --out folder is a folder
    that blur searches for inputs (one given, or a glob's fixed part) or lies inside one, or
    holds one: the outputs of one run would be the inputs of the next."""
    from serving.runtime.errors import ServingError
    from serving.runtime.inputs import fixed_prefix
    from serving.runtime.storage import is_url

    if is_url(out):
        return
    out_real = os.path.realpath(out)
    for given in inputs:
        if glob.has_magic(given):
            folder = fixed_prefix(given)
        elif os.path.isdir(given):
            folder = given
        else:
            continue
        named = folder if folder == given else f"{folder} (of {given})"
        real = os.path.realpath(folder)
        if out_real == real:
            raise ServingError(
                f"--out {out} is the input folder {named}: the outputs would replace the "
                f"inputs. Give an --out outside {folder}; nothing was read or written"
            )
        if os.path.commonpath([out_real, real]) == real:
            raise ServingError(
                f"--out {out} is inside the input folder {named}: the next run would take "
                f"this run's outputs for inputs. Give an --out outside {folder}; nothing was "
                "read or written"
            )
        if os.path.commonpath([out_real, real]) == out_real:
            raise ServingError(
                f"the input folder {named} is inside --out {out}: outputs would be written "
                f"among the inputs. Give an --out outside {folder}; nothing was read or written"
            )


def _blur_on_ray(args: argparse.Namespace, local: list[str], urls: list[str], ledger: Any) -> Any:
    from serving.runtime.inputs import find_inputs
    from serving.runtime.ray_engine import blur_found, ray_module
    from serving.runtime.url_inputs import find_inventory, find_urls, from_local, merge

    ray_module()  # says how to install Ray before anything else is done
    verify_runtime(args)  # a bad model set is said here, not by every actor
    parts = [from_local(find_inputs(local))] if local else []
    parts += [find_urls(urls)] if urls else []
    parts += [find_inventory(Path(args.inventory))] if args.inventory else []
    return blur_found(
        functools.partial(load_runtime, args),
        merge(parts),
        args.out,
        ledger,
        resume=args.resume,
        sidecar=args.sidecar,
        masks=args.masks,
        keep_outputs=bool(args.audit),
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
    )


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (searched recursively) and glob patterns ('**/*.jpg'). Every "
        "file found gets a row in the ledger: ok (anonymized); failed (an image format that "
        "cannot be anonymized, a broken link, a step that failed); or skipped (hidden, or not "
        "an image). Two inputs with the same output name are refused",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: neither an input folder, nor inside one, nor holding one (refused "
        "before anything is read); each output keeps its input's path "
        "below the folder or glob it was found through",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this machine, local files; ray: Ray Data actors on a Ray cluster "
        "($RAY_ADDRESS, else a local one on every CPU), inputs and --out also fsspec URLs "
        "(s3://bucket/prefix/, s3://bucket/**/*.jpg) and --inventory (needs anonlab[ray])",
    )
    p.add_argument(
        "--inventory",
        metavar="FILE",
        help="(--engine ray) a file listing one path or URL per line to anonymize, besides any "
        "INPUT; outputs keep their paths below the lines' common folder",
    )
    p.add_argument(
        "--actors",
        type=int,
        help="(--engine ray) actors, each with the models loaded (default: one per GPU with "
        "--gpus-per-actor, else one per --cpus-per-actor CPUs of the cluster, one CPU left over)",
    )
    p.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="(--engine ray) CPUs each actor takes"
    )
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="(--engine ray) GPUs each actor takes, with --device cuda",
    )
    p.add_argument(
        "--ledger",
        help="folder (or fsspec URL: s3://bucket/ledger/) of JSON Lines files with one row per "
        "input, written as the run goes: input, input_sha256, status (ok, failed, skipped), "
        "step, error, regions, output (default: --out's .anonlab-ledger/)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="do only the inputs whose last row in the ledger is not ok (after a killed or "
        "partly failed run); an input changed since its ok row is not done again: run without "
        "--resume for that",
    )
    add_runtime_args(p, max_pixels_default=150_000_000)
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="(--engine local) threads decoding and encoding beside inference",
    )
    p.add_argument(
        "--sidecar",
        action="store_true",
        help="write <name>.json beside each image: detections, the share of the image hidden, "
        "each model's name, version and checksums, thresholds and styles",
    )
    p.add_argument(
        "--audit",
        nargs="?",
        const="centerface",
        metavar="DETECTORS",
        help="after anonymizing, audit what this run wrote (`anonlab audit`, its defaults) with "
        "these independent detectors (comma-separated; centerface when none is given); turns "
        "--sidecar on; exits 1 when a residual scores 0.5 or more. Local --out only",
    )
    p.add_argument(
        "--masks", action="store_true", help="write <name>.mask.png: the pixels that were hidden"
    )


COMMAND = Command(
    "anonymize image files with exported models; fails closed per image",
    "Load the --model artifacts as one model set, whole or not at all: each artifact verified"
    " (schema, the sha256 of every file and of the manifest, the manifest's values: "
    "thresholds, styles, classes, input size, tiling), the --require classes (default "
    "$ANONLAB_REQUIRE_CLASSES, else face,license_plate) detected between them, and with --pin"
    " (or $ANONLAB_ARTIFACT_SHA256) every artifact's manifest_sha256 pinned and every pin "
    "loaded; an artifact that passed only a gate weaker than the release gate is refused "
    "unless --allow-demo. Then detect with each (tiled, panoramas wrapped around the seam, at"
    " the operating thresholds in its manifest) and hide every detection in its class's style"
    " (faces: feathered ellipse; persons and vehicles: their mask; plates: box). Outputs keep"
    " each input's relative path, name, format, bit depth, orientation and JPEG quality; "
    "pixels outside hidden regions are untouched (beyond JPEG re-encoding). Metadata is kept "
    "by allowlist: EXIF only for orientation, capture time, GPS, camera and exposure tags; "
    "XMP without its picture properties; the ICC profile; short PNG text and JPEG comments; "
    "any that holds a picture, thumbnails, previews, maker notes and all else are left out "
    "(--sidecar names what was left out and why). Every file found gets a row in the ledger "
    "as soon as it is done: ok, failed (at which step and why) or skipped (hidden files and "
    "folders, files that are not images); an image that fails gets no output at all (an "
    "earlier run's is removed). Exit status 1 when any image failed (the first failures are "
    "printed); 0 when every image has an ok row, --resume's earlier ones included. Inputs "
    "that would share an output name, or names differing only by case, are refused before "
    "anything is written. Reads no params.yaml and takes no key=value overrides.",
    add_args,
    run,
)
