"""The `anonlab` command line: one sub-command per lifecycle step, `key=value` overrides on each.

Stage modules are imported only when their command runs, so `anonlab --help` is instant and a
command never pays for the libraries of another.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from data.errors import AnonlabError
from serving.runtime.errors import ServingError

log = logging.getLogger("anonlab")

OVERRIDES_HELP = (
    "key=value overrides applied on top of params.yaml (Hydra syntax: "
    "collect.synthetic.count=50, review.blur_threshold=25.5, collect.sources=[{uri:/data}])"
)

# An argument in Hydra's override syntax: key=value, +key=value, ++key=value or ~key.
_OVERRIDE = re.compile(r"^(?:(?:\+\+?)?[A-Za-z_][\w.@-]*=|~[A-Za-z_])")


def _cmd_config(args: argparse.Namespace) -> int:
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


def _cmd_collect(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from data.collect import run_collect

    p = project.params
    report = run_collect(
        p.collect, project.artifacts / "raw", taxonomy=p.taxonomy, root=project.root
    )
    print(report.summary())
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from data.review import run_review

    report = run_review(
        project.params.review, project.artifacts / "raw", project.artifacts / "reviewed"
    )
    print(report.summary())
    return 0


def _cmd_annotate_serve(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from annotation.server import serve

    return serve(project.params.annotation, project.root, project.artifacts)


def _cmd_annotate_push(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from annotation.predictions import ModelDetector
    from annotation.push import run_push

    p = project.params

    def champions() -> list[ModelDetector]:
        from evaluation.champion import load_champions  # mlflow and torch: only when needed

        return load_champions(
            p.train.models,
            root=project.root,
            evaluate=p.evaluate,
            min_score=p.annotation.champion_min_score,
        )

    print(run_push(p.annotation, p.taxonomy, project.artifacts, champions).summary())
    return 0


def _cmd_annotate_status(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from annotation.status import run_status

    print(run_status(project.params.annotation, project.artifacts).summary())
    return 0


def _cmd_annotate_pull(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from annotation.pull import run_pull

    p = project.params
    report = run_pull(p.annotation, p.taxonomy, project.artifacts, project.root)
    print(report.summary())
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from data.prepare import run_prepare

    p = project.params
    print(run_prepare(p.prepare, p.taxonomy, project.artifacts, project.root).summary())
    return 0


def _train_overrides(overrides: Sequence[str]) -> list[str]:
    """`resume=true` means `train.resume=true` and `optimizer.lr=0.02` means
    `train.optimizer.lr=0.02`: a key that is not under a root key of params.yaml is taken as a
    key of the train section when it has no dot or its first part is a train key."""
    from serving.params import Params
    from training.config import TrainConfig

    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        bare = key.lstrip("+~")
        first = bare.partition(".")[0]
        in_train = "." not in bare or first in TrainConfig.model_fields
        if eq and in_train and first not in Params.model_fields:
            item = f"{key[: len(key) - len(bare)]}train.{bare}={value}"
        out.append(item)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, _train_overrides(args.overrides))
    from evaluation.training_validator import release_validator
    from training.loop import TrainingInterrupted, TrainSetup, run_train

    p = project.params
    names = [args.model] if args.model else list(p.train.models)
    for name in names:
        if name not in p.models:
            raise AnonlabError(
                f"--model {name}: not a model of this project; models (conf/model/): "
                f"{', '.join(p.models)}"
            )
    for name in names:
        setup = TrainSetup.of(p, name, artifacts=project.artifacts, root=project.root)
        # The release scorer picks `best`: training is handed it, and never imports evaluation.
        validator = release_validator(p, name, artifacts=project.artifacts)
        try:
            result = run_train(setup, validator)
        except TrainingInterrupted as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        if int(os.environ.get("RANK", "0")) == 0:
            best, untrained = result.best, result.untrained
            print(
                f"{name}: {result.steps} steps; best at step {best.get('step')}: val score "
                f"{_fmt(best.get('score'))} (worst cell {best.get('worst_cell')}; untrained "
                f"{_fmt(untrained.get('score'))}) -> {result.out_dir}"
            )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from evaluation.evaluate import EvalSetup, run_evaluate

    metrics = run_evaluate(
        EvalSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    )
    for model, entry in metrics.items():
        for set_name, s in entry["sets"].items():
            cells = [
                f"{name} {_fmt(buckets['all'].get('iou'))}/{_fmt(buckets['all'].get('coverage'))}"
                for name, buckets in (s.get("recall") or {}).items()
            ]
            print(f"{model} on {set_name} (recall iou/coverage): {', '.join(cells)}")
    print(f"report: {project.artifacts / 'eval' / 'report.html'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from serving.params import load_project

    overrides = list(args.overrides)
    promote = bool(overrides) and overrides[0] == "promote"
    project = load_project(args.params, overrides[1:] if promote else overrides)
    if promote:
        from evaluation.registry import Registry

        names = [args.model] if args.model else list(project.params.train.models)
        registry = Registry(project.root)
        for name in names:
            previous, champion = registry.promote(name, user=args.user)
            was = f" (was version {previous.version})" if previous else ""
            print(f"{name}: champion is now version {champion.version}{was}")
        return 0
    from evaluation.validate import ValidateSetup, run_validate

    verdict = run_validate(
        ValidateSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    )
    warned = f", {len(verdict['warnings'])} warning(s)" if verdict["warnings"] else ""
    print(f"validation passed: {len(verdict['checks'])} checks{warned}")
    print(verdict["notice"])
    for model, version in verdict["challengers"].items():
        if version:
            print(
                f"{model}: version {version} is the challenger; promote it with "
                f"`anonlab validate promote --model {model}`"
            )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from serving.params import load_project

    project = load_project(args.params, args.overrides)
    from serving.export import ExportSetup, run_export

    setup = ExportSetup.of(project.params, artifacts=project.artifacts, root=project.root)
    for folder in run_export(setup):
        print(f"exported {folder}")
    return 0


def _cmd_blur(args: argparse.Namespace) -> int:
    from serving.runtime.batch import FAILURES, SKIPPED, blur_batch
    from serving.runtime.inputs import find_inputs
    from serving.runtime.pipeline import Runtime

    found = find_inputs(args.inputs)
    runtime = Runtime.load(
        args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        max_pixels=args.max_pixels,
        require=args.require,
        pins=args.pin,
        environ=os.environ,
        allow_demo=args.allow_demo,
    )
    out = Path(args.out)
    report = blur_batch(
        runtime, found, out, workers=args.workers, sidecar=args.sidecar, masks=args.masks
    )
    print(report.summary())
    for name, rows in ((FAILURES, report.failures), (SKIPPED, report.skipped)):
        if name in report.unwritten:
            # Its file could not be written: stderr is then the only record of these rows.
            follow = f"; its {len(rows)} lines follow" if rows else ""
            print(f"error: {out / name} {report.unwritten[name]}{follow}", file=sys.stderr)
            for row in rows:
                print(row.json_line(), file=sys.stderr)
        elif rows:
            print(f"{name.removesuffix('.jsonl')}: {out / name}", file=sys.stderr)
    return 1 if report.failures or report.unwritten else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def _runtime_args(p: argparse.ArgumentParser, *, max_pixels_default: int) -> None:
    """Options of the commands that load artifacts (blur, serve); each has its own default
    pixel limit."""
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="an exported artifact folder (artifacts/serving/<model>-<version>), or a folder of "
        "them (artifacts/serving: every model in it, and nothing else: a sub-folder without "
        "manifest.json, a hidden entry or a file there is refused); repeat it to add models. "
        "Every artifact is verified before anything runs, and one that fails stops the "
        "command. Everything any model finds is hidden",
    )
    p.add_argument(
        "--require",
        action="append",
        metavar="CLASSES",
        help="classes the loaded models must detect between them, comma-separated; repeatable. "
        "Loading is refused when one is missing. Default: $ANONLAB_REQUIRE_CLASSES, else "
        "face,license_plate (a Keypoint R-CNN alone detects persons only: --require person)",
    )
    p.add_argument(
        "--pin",
        action="append",
        metavar="SHA256",
        help="the manifest_sha256 (in its manifest.json) of an artifact to run; repeatable or "
        "comma-separated. With pins, every loaded artifact must be pinned and every pin loaded. "
        "Default: $ANONLAB_ARTIFACT_SHA256 (comma-separated), else nothing is pinned",
    )
    p.add_argument(
        "--allow-demo",
        action="store_true",
        help="also load artifacts that passed only a gate weaker than the release gate (the "
        "demo's reachable targets, a trial's; their manifest.json says NOT A RELEASE in its "
        "first line), each logged as a warning. Without it, loading one is refused, saying why",
    )
    p.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        default="onnx",
        help="onnx: onnxruntime on model.onnx (default); torch: PyTorch on weights.safetensors",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU where the backend has one, else the CPU), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="inference threads (0: the library's default)"
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=max_pixels_default,
        help="refuse images with more pixels than this, from the file's header before decoding "
        "(decompression bombs, and detection time, which grows with the pixels; an 8000x4000 "
        f"panorama is 32 MP); default {max_pixels_default} ({max_pixels_default / 1e6:g} MP)",
    )


def _blur_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) and glob patterns ('**/*.jpg'). Every "
        "file found is accounted for: anonymized; failed (an image format that cannot be "
        "anonymized, a broken link: failures.jsonl); or skipped (hidden, or not an image: "
        "skipped.jsonl). Two inputs with the same output name are refused",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (must not hold the inputs); each output keeps its input's path "
        "below the folder or glob it was found through",
    )
    _runtime_args(p, max_pixels_default=150_000_000)
    p.add_argument(
        "--workers", type=int, default=2, help="threads decoding and encoding beside inference"
    )
    p.add_argument(
        "--sidecar", action="store_true", help="write <name>.json beside each image: detections"
    )
    p.add_argument(
        "--masks", action="store_true", help="write <name>.mask.png: the pixels that were hidden"
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving.runtime.pipeline import Runtime
    from serving.runtime.service import ServiceConfig, start_server

    config = ServiceConfig(
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_pixels=args.max_pixels,
        cost_check_pixels=int(args.cost_check_mp * 1_000_000),
        min_bytes_per_mp=args.min_bytes_per_mp,
        max_uploads=args.max_uploads,
        upload_grace=args.upload_grace,
        min_upload_rate=args.min_upload_rate,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
        read_timeout=args.read_timeout,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def load() -> Runtime:
        return Runtime.load(
            args.model,
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            max_pixels=args.max_pixels,
            require=args.require,
            pins=args.pin,
            environ=os.environ,
            allow_demo=args.allow_demo,
        )

    server = start_server(load, args.host, args.port, config)
    try:
        while not stop.wait(0.25):
            if server.failure is not None:
                raise server.failure
    finally:
        server.stop(grace=args.grace)
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    def number(text: str) -> float:
        value = float(text)
        if value != value or abs(value) == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value

    # Lower than blur's: each image the service takes holds a slot and its pixels while it runs.
    _runtime_args(p, max_pixels_default=64_000_000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument(
        "--max-body-mb",
        type=number,
        default=64,
        help="refuse bodies over this many MiB with 413, before reading them (default 64)",
    )
    p.add_argument(
        "--min-bytes-per-mp",
        type=int,
        default=16000,
        help="CPU-cost guard: refuse with 422 an image over --cost-check-mp whose file has fewer "
        "bytes than this per megapixel (a flat 36 MP PNG of 117 KB would cost minutes of "
        "detection; a photo has far more); 0 turns the guard off (default 16000)",
    )
    p.add_argument(
        "--cost-check-mp",
        type=number,
        default=4,
        help="images over this many megapixels face the CPU-cost guard (default 4)",
    )
    p.add_argument(
        "--max-uploads",
        type=int,
        default=16,
        help="request bodies received at once; one more gets 503 (default 16)",
    )
    p.add_argument(
        "--upload-grace",
        type=number,
        default=5,
        help="seconds a body gets before its average rate since it began must reach "
        "--min-upload-rate (default 5)",
    )
    p.add_argument(
        "--min-upload-rate",
        type=int,
        default=8192,
        help="bytes/s a body must average after --upload-grace, else 408 and the connection "
        "closed (default 8192, 64 kbit/s: a 2G/EDGE uplink passes, a client trickling bytes "
        "is cut)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="images anonymized at once (default 2)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="received images admitted beyond those, waiting for a slot; more get 503 (default 8)",
    )
    p.add_argument(
        "--queue-timeout",
        type=number,
        default=30,
        help="seconds an admitted image waits for a slot before 503 (default 30)",
    )
    p.add_argument(
        "--read-timeout",
        type=number,
        default=60,
        help="seconds of client silence (before a request, or within a body) before its "
        "connection is dropped (default 60)",
    )
    p.add_argument(
        "--grace",
        type=number,
        default=10,
        help="on SIGTERM or Ctrl-C, seconds to let uploads and admitted images finish (default 10)",
    )


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="promote: this model only (default: every train.models)")
    p.add_argument(
        "--user", help="promote: who promotes (default: $ANONLAB_USER, else the login name)"
    )


def _cmd_score(args: argparse.Namespace) -> int:
    from data.coco.files import load_ground_truth, load_predictions
    from evaluation.score import score
    from evaluation.scoring.options import ScoreOptions, parse_heights, parse_thresholds
    from evaluation.scoring.table import format_table

    gt = load_ground_truth(Path(args.gt))
    predictions = load_predictions(Path(args.pred), gt, gt_name=args.gt)
    classes = [c["name"] for c in gt["categories"]]
    options = ScoreOptions(
        thresholds=parse_thresholds(args.thresholds, classes),
        coverage=args.coverage,
        target_recall=args.target_recall,
        n_boot=args.n_boot,
        seed=args.seed,
        min_identifiable=parse_heights(args.identifiable, classes),
    )
    metrics = score(gt, predictions, options)
    print(format_table(metrics))
    if args.out:
        from data.atomic import write_json

        write_json(Path(args.out), metrics)
        print(f"wrote {args.out}")
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="COCO ground truth (instances) JSON")
    p.add_argument("--pred", required=True, help="COCO results JSON (a list of detections)")
    p.add_argument(
        "--thresholds",
        default="0.5",
        help="operating score threshold: one for all classes (0.5) or per class "
        "(face=0.6,license_plate=0.4; others 0.5)",
    )
    p.add_argument(
        "--coverage",
        type=float,
        default=0.9,
        help="share of an object's pixels that must be covered for it to count as anonymized",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall the reported operating thresholds must reach",
    )
    p.add_argument(
        "--identifiable",
        default="",
        metavar="CLASS=PX,...",
        help="per class, the box height in pixels from which an object can identify someone "
        "(e.g. face=6,license_plate=5, the project's taxonomy.identifiable); smaller objects "
        "are scored in their own row (below_identifiable), not in `all` or the size buckets, "
        "and detections on them are no false positives. Default: every object counts",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", help="write every number as JSON here")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="the model to train (a name under models:, from conf/model/); default: each of "
        "train.models in turn",
    )


# name -> (one-line help, longer description, extra arguments, handler); a name of two words
# is a sub-command of the group named by the first (see GROUPS).
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]


def _no_args(_: argparse.ArgumentParser) -> None:
    pass


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", default="conf", help="the Hydra config folder (default: conf)")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when params.yaml differs from a fresh composition",
    )


COMMANDS: dict[str, Command] = {
    "config": (
        "compose conf/ into params.yaml",
        "Compose the Hydra tree in conf/ (with overrides, e.g. collect=s3 or "
        "collect.synthetic.count=50), validate it, and write params.yaml, the file every "
        "stage reads and DVC tracks. Commit params.yaml together with conf/.",
        _config_args,
        _cmd_config,
    ),
    "collect": (
        "gather images from the configured sources into the content-addressed store",
        "Read every source in collect.sources (local folders and globs, fsspec URLs such as "
        "s3://, the built-in synthetic source), verify each image, store it once under "
        "artifacts/raw/images/<sha256[:2]>/<sha256>.<ext>, and write manifest.jsonl, "
        "duplicates.jsonl, quarantine.jsonl and metrics.json. Re-runs are incremental: files "
        "seen before (same path, size and modification time) are not read again.",
        _no_args,
        _cmd_collect,
    ),
    "review": (
        "drop low-value images (duplicates, dark, over-exposed, blurry, too small)",
        "Score every collected image on a reduced-resolution decode and reject exact and "
        "near-duplicates (keeping the sharpest of each cluster), too dark, over-exposed, blurry "
        "and too small images. Writes artifacts/reviewed/: manifest.jsonl (kept), "
        "rejected.jsonl (reason and score each), report.html (thumbnails per reason, nearest "
        "the threshold first) and metrics.json.",
        _no_args,
        _cmd_review,
    ),
    "annotate serve": (
        "run a local Label Studio on loopback (foreground; Ctrl-C stops it)",
        "Start Label Studio headless at annotation.serve.host:port with its data in "
        "annotation.serve.data_dir, serving the images of artifacts/ as local files (no "
        "copies are uploaded). The admin user and API token come from ANONLAB_LS_USERNAME, "
        "ANONLAB_LS_PASSWORD and ANONLAB_LS_TOKEN; they are never printed or logged.",
        _no_args,
        _cmd_annotate_serve,
    ),
    "annotate push": (
        "import reviewed images as tasks, with pre-annotations, least certain first",
        "Create the Label Studio project (annotation.project_title) once, keep its labeling "
        "interface in step with the taxonomy, and import the reviewed images that are not yet "
        "tasks, in batches of annotation.batch_size. Each task carries predictions: when a "
        "model of train.models has a version with the MLflow alias champion, that version's "
        "detections (run with the runtime's detector and evaluate.tiling on the upright image, "
        "score at least annotation.champion_min_score; faces as ellipses, plates as rectangles, "
        "masks as brushes, keypoints), model_version <name>:<version>; otherwise OpenCV's Haar "
        "face and plate cascades, and a log line says what the registry held. The least "
        "certain images (by the champion's scores, or Haar's) are imported first. Re-running "
        "never duplicates a task.",
        _no_args,
        _cmd_annotate_push,
    ),
    "annotate status": (
        "tasks total, annotated, skipped, by annotator; reviewed images not yet in Label Studio",
        "Summarise the Label Studio project: tasks total, annotated, skipped or cancelled, "
        "annotations per annotator, and how many reviewed images are not yet tasks.",
        _no_args,
        _cmd_annotate_status,
    ),
    "annotate pull": (
        "take annotations back: an immutable snapshot of the export, converted to COCO",
        "Export every task from Label Studio (annotation.source=server) or read a Label "
        "Studio JSON export file (annotation.source=export, annotation.export_file=FILE), keep "
        "it byte for byte under artifacts/annotations/snapshots/ (never overwritten), and "
        "convert it to artifacts/annotations/coco.json for the images review kept. Skipped, "
        "cancelled and conflicting tasks, degenerate geometry and keypoints that fit no person "
        "are listed with task ids in artifacts/annotations/pull_report.json. A failed pull "
        "writes nothing.",
        _no_args,
        _cmd_annotate_pull,
    ),
    "prepare": (
        "build train/val/reference datasets: session splits, leak check, tiles",
        "Take the reference sets out (prepare.reference_sets: by session, tag or an external "
        "COCO file), split the remaining capture sessions into train and val (stratified by "
        "class and object size), refuse any train image that equals or nearly equals a "
        "reference image, and cut large images and panoramas into overlapping tiles (the "
        "seam wraps). Writes artifacts/prepared/: train.json, val.json, ref-<name>.json, "
        "tiles/, stats.json, sizes.json.",
        _no_args,
        _cmd_prepare,
    ),
    "train": (
        "train a detector (Mask R-CNN or Keypoint R-CNN), resumable, on one or many GPUs",
        "Train models.<name> (conf/model/) on artifacts/prepared/train.json with the train "
        "section. Every train.val_every steps the release scorer (anonlab score) judges the "
        "model on val.json at the operating thresholds evaluate would choose there; the "
        "checkpoint whose worst gate cell (class, size bucket, gate metric) is closest to its "
        "target recall becomes checkpoints/best.pt and weights.safetensors; "
        "checkpoints/last.pt is written every "
        "train.checkpoint_every steps, on SIGTERM or Ctrl-C, and before stopping on a NaN "
        "loss. `anonlab train resume=true` continues exactly (short keys mean train.<key>). "
        "Several GPUs or machines: torchrun --nproc-per-node=N --no-python anonlab train. "
        "Every run is tracked in MLflow (MLFLOW_TRACKING_URI, else mlflow.db) and registered "
        "under the model's name.",
        _train_args,
        _cmd_train,
    ),
    "evaluate": (
        "recall of every trained model (and the champion) on val and each reference set",
        "Run each model of train.models over val and every reference set with the runtime's "
        "tiling (evaluate.tiling), choose per class the highest score threshold that reaches "
        "evaluate.target_recall on val, and score every set at those thresholds: recall by "
        "IoU and by pixel coverage per class and size bucket with bootstrap intervals, COCO "
        "AP, false positives per image. The registry's champion is scored the same way. "
        "Writes artifacts/eval/: metrics.json, plots/, predictions/, report.html (with a "
        "gallery of the missed objects); logs recall/<set>/<class>/<bucket> to MLflow.",
        _no_args,
        _cmd_evaluate,
    ),
    "validate": (
        "data checks and the release gate; `validate promote` makes the challenger champion",
        "Check the prepared data (schema, geometry, leakage into reference sets, shifts from "
        "the previous version) and hold each model to the gate: on every reference set each "
        "class's recall reaches evaluate.target_recall, and no class and size bucket is worse "
        "than the champion's by more than validate.tolerance; its weights must be the ones "
        "evaluate scored (by sha256, also against the registered version's tag). Writes "
        "artifacts/validation/verdict.json (naming each model's weights by sha256) and exits "
        "non-zero when any check fails; a passing "
        "model's registered version gets the MLflow alias challenger. `anonlab validate "
        "promote [--model NAME]` moves the alias champion to the challenger and records who "
        "and when.",
        _validate_args,
        _cmd_validate,
    ),
    "export": (
        "write each validated model as a runtime artifact (ONNX checked against PyTorch)",
        "After a passing `anonlab validate`, write artifacts/serving/<model>-<version>/ for each "
        "model of train.models: model.onnx (checked at export: on val tiles holding objects of "
        "each class first, onnxruntime and PyTorch must give the same detections, masks and "
        "keypoints within export.parity, and at least export.parity.min_compared detections "
        "must be compared, every class of the model among them but those in "
        "export.parity.allow_absent, or nothing is written), "
        "weights.safetensors, MODEL_CARD.md (recall per reference set and size bucket with "
        "intervals, known limits) and manifest.json (operating thresholds chosen on val, "
        "anonymization style per class from export.styles, input size and tiling, provenance, "
        "the sha256 of every file). Only the weights the verdict names are exported: a "
        "weights.safetensors whose sha256 differs, or an artifacts/eval/metrics.json other than "
        "the one validate judged, is an error naming both sha256s, and nothing is written. "
        "`anonlab blur` and `anonlab serve` load these folders.",
        _no_args,
        _cmd_export,
    ),
    "blur": (
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
        "(--sidecar names what was left out and why). Every file found is accounted for: "
        "anonymized, failed (failures.jsonl in --out says at which step and why; exit status 1) "
        "or skipped (hidden files and folders, files that are not images: skipped.jsonl); an "
        "image that fails gets no output at all (an earlier run's is removed). Inputs that would "
        "share an output name, or names differing only by case, are refused before anything is "
        "written. Reads no params.yaml and takes no key=value overrides.",
        _blur_args,
        _cmd_blur,
    ),
    "serve": (
        "HTTP service: POST an image to /v1/anonymize, get it back anonymized",
        "Load the --model artifacts (the model set verified as for blur), warm up with one "
        "inference, and serve on --host:--port: POST /v1/anonymize with an image file as the "
        "body returns it anonymized in the same format (?detections=true: JSON with the image "
        "in base64, the detections and the metadata left out); GET /healthz, /readyz (200 once "
        "warm) and /metrics (Prometheus). A body over --max-body-mb gets 413 before it is read; "
        "it must arrive at --min-upload-rate on average after --upload-grace, else 408. Its "
        "header is read before any pixel is decoded: a body that is not a JPEG, PNG, TIFF or "
        "WebP, a damaged header, an image over --max-pixels (default 64 MP) or one the "
        "CPU-cost guard refuses (--min-bytes-per-mp over --cost-check-mp) gets 422 without "
        "waiting for a slot. Bad images get a 4xx with a JSON error, any other failure a 500 "
        "without image bytes. At most --max-uploads bodies are received at once, "
        "--max-concurrency images run at once and --max-queue more wait (up to "
        "--queue-timeout); beyond that 503 with Retry-After. Nothing is written to disk; logs "
        "hold no image content, query string or client address. SIGTERM or Ctrl-C stops it "
        "after admitted images finish. Reads no params.yaml and takes no key=value overrides.",
        _serve_args,
        _cmd_serve,
    ),
    "score": (
        "score any detector's COCO results against COCO ground truth",
        "Recall per class and object size (by IoU and by pixel coverage: a face inside a "
        "detected person counts as covered) with bootstrap 95% intervals, at per-class "
        "operating thresholds; the 12 COCO AP/AR numbers (equal to pycocotools'); false "
        "positives per image; precision/recall curves; and the highest threshold per class "
        "that still reaches --target-recall. Class names are the ground truth's. Reads no "
        "params.yaml and takes no key=value overrides.",
        _score_args,
        _cmd_score,
    ),
}

# Commands that read no params.yaml (the runtime's read an artifact folder, score two COCO
# files): their options are all their settings, so a key=value argument is an error there.
NO_PARAMS_COMMANDS = frozenset({"blur", "serve", "score"})

GROUPS: dict[str, tuple[str, str]] = {
    "annotate": (
        "Label Studio: serve, push images with pre-annotations, pull annotations, status",
        "Annotators work in Label Studio; these commands feed it images and take their work "
        "back as training data. Credentials come from the environment: ANONLAB_LS_TOKEN (API "
        "token), ANONLAB_LS_USERNAME and ANONLAB_LS_PASSWORD (the admin user of `serve`).",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonlab",
        description="Train, evaluate and ship image-anonymization models. "
        "Every command but blur, serve and score reads params.yaml (written from conf/ by "
        "`anonlab config`) and takes key=value overrides after its options; an unknown key is "
        "an error.",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="the resolved configuration to read (default: params.yaml in this folder)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (short, description, add_args, handler) in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            g_short, g_description = GROUPS[group]
            g = sub.add_parser(group, help=g_short, description=g_description)
            groups[group] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        p = (groups[group] if group else sub).add_parser(leaf, help=short, description=description)
        add_args(p)
        if name not in NO_PARAMS_COMMANDS:
            p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
        p.set_defaults(handler=handler, command_name=name)
    return parser


def _stray_overrides(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The key=value arguments given to a command that takes none, among the arguments argparse
    did not take and blur's inputs; for blur, only those that are no file or folder (nor a
    pattern): `a=b.jpg` may be an image."""
    if args.command_name not in NO_PARAMS_COMMANDS:
        return []
    given = [*extra, *(getattr(args, "inputs", None) or [])]
    stray = [a for a in given if _OVERRIDE.match(a)]
    if args.command_name == "blur":
        stray = [a for a in stray if not any(c in a for c in "*?[") and not os.path.lexists(a)]
    return stray


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = _stray_overrides(args, extra)
    if stray:
        name = args.command_name
        print(
            f"error: {name} reads no params.yaml and takes no key=value overrides: "
            f"{', '.join(stray)}"
            + (" (not a file or folder either)" if name == "blur" else "")
            + f"; its settings are its options (anonlab {name} --help)",
            file=sys.stderr,
        )
        return 2
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (AnonlabError, ServingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
