"""The options of the commands that load artifacts (blur, serve), and the models they name."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

# The torch backend's precisions (serving.runtime.backends.PRECISIONS, which imports cv2: not
# worth it for --help).
PRECISIONS = ("fp32", "bf16")

if TYPE_CHECKING:
    from serving.runtime.pipeline import Runtime


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def add_runtime_args(p: argparse.ArgumentParser, *, max_pixels_default: int) -> None:
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
        help="onnx: onnxruntime on model.onnx; torch: PyTorch on weights.safetensors",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU where the backend has one, else the CPU), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="inference threads (0: the library's own number)"
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        metavar="N",
        help="windows per call of the network. onnx: the batch the graph was exported at "
        "(manifest.json's batch; export.batch), which is the default, and another value is "
        "refused. torch: any; default 8 on a GPU, 1 on the CPU",
    )
    p.add_argument(
        "--concurrent",
        type=positive_int,
        default=1,
        metavar="N",
        help="batches of an image's windows in the network at once. On "
        "CPUs, 2 or more lets each network call run on its own cores, which can pay for a model "
        "whose time goes into many small operations (BENCHMARKS.md); with --threads 0 each "
        "onnx call gets an equal share of the cores",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32, or bf16: bfloat16 autocast, --backend torch only, for GPUs with "
        "bfloat16 units. The operating thresholds were chosen on fp32 scores",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=max_pixels_default,
        help="refuse images with more pixels than this, from the file's header before decoding "
        "(decompression bombs, and detection time, which grows with the pixels; an 8000x4000 "
        f"panorama is 32 MP); default %(default)s ({max_pixels_default / 1e6:g} MP)",
    )


def load_runtime(args: argparse.Namespace) -> Runtime:
    """The model set the options name, every artifact verified (`Runtime.load`)."""
    from serving.runtime.pipeline import Runtime  # onnxruntime or torch: only once a command runs

    return Runtime.load(
        args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        batch=args.batch,
        precision=args.precision,
        concurrent=args.concurrent,
        max_pixels=args.max_pixels,
        require=args.require,
        pins=args.pin,
        environ=os.environ,
        allow_demo=args.allow_demo,
    )


def verify_runtime(args: argparse.Namespace) -> None:
    """The model set the options name, verified as `load_runtime` verifies it, without loading
    a network (`Runtime.verify`): what the Ray engine checks before starting its actors."""
    from serving.runtime.pipeline import Runtime

    Runtime.verify(
        args.model,
        require=args.require,
        pins=args.pin,
        environ=os.environ,
        allow_demo=args.allow_demo,
    )
