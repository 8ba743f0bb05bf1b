"""`serve`: the HTTP anonymization service on exported models."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from typing import Any

from serving.runtime.commands.command import Command
from serving.runtime.commands.options import add_runtime_args, load_runtime

# The command line's logger, as before the runtime's commands had their own module.
log = logging.getLogger("anonlab")


def run(args: argparse.Namespace) -> int:
    from serving.runtime.service import ServiceConfig, listen, run_workers

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
        request_timeout=args.request_timeout,
        keep_alive=args.timeout_keep_alive,
    )
    if args.workers == 1:
        return serve(args, config, None)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info(
        "listening on %s with %d workers (each ready once it has warmed up)", url, args.workers
    )
    return run_workers(args.workers, sock, lambda bound: serve(args, config, bound))


def serve(args: argparse.Namespace, config: Any, sock: socket.socket | None) -> int:
    """Serve on `sock` (or bind --host:--port) until SIGTERM or Ctrl-C, then stop after the
    admitted images (up to --grace seconds); raise the failure if the models cannot be loaded."""
    from serving.runtime import service

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    loader = lambda: load_runtime(args)  # noqa: E731
    if sock is None:
        server = service.start_server(loader, args.host, args.port, config)
    else:
        server = service.start_server(loader, config=config, sock=sock)
    try:
        while not stop.wait(0.25):
            if server.failure is not None:
                raise server.failure
    finally:
        server.stop(grace=args.grace)
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    def number(text: str) -> float:
        value = float(text)
        if value != value or abs(value) == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value

    def positive_int(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not 1 or more")
        return value

    # Lower than blur's: each image the service takes holds a slot and its pixels while it runs.
    add_runtime_args(p, max_pixels_default=64_000_000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument(
        "--max-body-mb",
        type=number,
        default=64,
        help="refuse bodies over this many MiB with 413, before reading them",
    )
    p.add_argument(
        "--min-bytes-per-mp",
        type=int,
        default=16000,
        help="CPU-cost guard: refuse with 422 an image over --cost-check-mp whose file has fewer "
        "bytes than this per megapixel (a flat 36 MP PNG of 117 KB would cost minutes of "
        "detection; a photo has far more); 0 turns the guard off",
    )
    p.add_argument(
        "--cost-check-mp",
        type=number,
        default=4,
        help="images over this many megapixels face the CPU-cost guard",
    )
    p.add_argument(
        "--max-uploads",
        type=int,
        default=16,
        help="request bodies received at once; one more gets 503",
    )
    p.add_argument(
        "--upload-grace",
        type=number,
        default=5,
        help="seconds a body gets before its average rate since it began must reach "
        "--min-upload-rate",
    )
    p.add_argument(
        "--min-upload-rate",
        type=int,
        default=8192,
        help="bytes/s a body must average after --upload-grace, else 408 and the connection "
        "closed (default: %(default)s, 64 kbit/s: a 2G/EDGE uplink passes, a client "
        "trickling bytes is cut)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="images anonymized at once",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="received images admitted beyond those, waiting for a slot; more get 503",
    )
    p.add_argument(
        "--queue-timeout",
        type=number,
        default=30,
        help="seconds an admitted image waits for a slot before 503",
    )
    p.add_argument(
        "--read-timeout",
        type=number,
        default=60,
        help="seconds of client silence within a body before 408 and the connection closed; "
        "also the time a request's line and headers have to arrive once its connection opened "
        "or its previous response was sent, else the connection is closed",
    )
    p.add_argument(
        "--request-timeout",
        type=number,
        default=600,
        help="seconds from an image request's headers to its response (upload, queue and "
        "inference together) before 504; an inference under way still finishes, holding its "
        "slot (default: %(default)s; a 5 MB photo from a 2G phone arrives in about 5 minutes)",
    )
    p.add_argument(
        "--timeout-keep-alive",
        type=number,
        default=5,
        help="seconds an idle keep-alive connection stays open for its next request",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes serving the one port; each loads its own copy of the "
        "models and has its own limits and /metrics, so memory and the bounds above are per "
        "worker: N workers take about N times one's memory (the tiny test model: about 110 MB "
        "each; /metrics shows the answering worker's) and anonymize up to N x "
        "--max-concurrency images at once",
    )
    p.add_argument(
        "--grace",
        type=number,
        default=10,
        help="on SIGTERM or Ctrl-C, seconds to let uploads and admitted images finish; requests "
        "still under way then are cancelled",
    )


COMMAND = Command(
    "HTTP service: POST an image to /v1/anonymize, get it back anonymized",
    "Load the --model artifacts (the model set verified as for blur), warm up with one "
    "inference, and serve on --host:--port with uvicorn (HTTP/1.1, one event loop per "
    "process, inference on --max-concurrency threads; --workers processes share the port, "
    "each with its own models): POST /v1/anonymize with an image file as the "
    "body returns it anonymized in the same format (?detections=true: JSON with the image "
    "in base64, the detections and the metadata left out); GET /healthz, /readyz (200 once "
    "warm), /metrics (Prometheus), /openapi.json and /docs (the API, a page that needs no "
    "internet). A body over --max-body-mb gets 413 before it is read; "
    "it must arrive at --min-upload-rate on average after --upload-grace, else 408. Its "
    "header is read before any pixel is decoded: a body that is not a JPEG, PNG, TIFF or "
    "WebP, a damaged header, an image over --max-pixels (default 64 MP) or one the "
    "CPU-cost guard refuses (--min-bytes-per-mp over --cost-check-mp) gets 422 without "
    "waiting for a slot. Bad images get a 4xx with a JSON error, any other failure a 500 "
    "without image bytes. At most --max-uploads bodies are received at once, "
    "--max-concurrency images run at once and --max-queue more wait (up to "
    "--queue-timeout); beyond that 503 with Retry-After. An image request gets 504 past "
    "--request-timeout. Nothing is written to disk; logs "
    "hold no image content, query string or client address. SIGTERM or Ctrl-C stops it "
    "after admitted images finish. Reads no params.yaml and takes no key=value overrides.",
    add_args,
    run,
)
