"""The runtime as an HTTP service (`anonlab serve`): POST an image file, get it back anonymized.

Stdlib only (`http.server`): the runtime ships alone in a small container. HTTP/1.1 with
keep-alive; nothing is written to disk, and no image content, body, query string or client
address is logged: one line per request at INFO (method, path without its query, status,
latency, body sizes, request id); a stack trace only for a 500, and never for a 4xx.

Endpoints:
- `POST /v1/anonymize`: the body is one JPEG, PNG, TIFF or WebP file (recognised from its bytes;
  Content-Type is not used). 200: the anonymized file, same format, with its Content-Type. With
  `?detections=true`: `application/json` {"image": base64 of that file, "content_type", and
  `Anonymized.report()`: "format", "width", "height", "classes", "detections": [{"class",
  "score", "box", ...}], "metadata_dropped": [what of the metadata was not written back, why]}.
- `GET /healthz`: 200 while the process answers. `GET /readyz`: 200 once the models are loaded
  and a warm-up inference has run; 503 before (and while stopping). `GET /metrics`: Prometheus
  text format.

Errors are JSON {"error": "what went wrong and what to do"}:
- 400 empty body, bad Content-Length, unknown query parameter; 404 unknown path; 405 wrong
  method (with Allow); 408 body too slow (below); 411 no Content-Length (chunked uploads are
  refused); 413 Content-Length over `max_body_bytes`, refused before any of the body is read (a
  client sending `Expect: 100-continue` never sends it);
- 422 the image cannot be anonymized: not decodable, truncated, unsupported, over the pixel
  budget, or refused by the CPU-cost guard (every `ImageError` of the runtime);
- 503 + Retry-After: not ready yet, stopping, or over capacity (below);
- 500 any other failure. Fail closed: a 5xx never carries image bytes; the response is only built
  from a fully anonymized result.

Bounds (ServiceConfig field, `anonlab serve` flag, default):
- Body size: `max_body_bytes` (--max-body-mb, 64 MiB): 413 from the Content-Length alone.
- Upload deadline: the body is read in chunks; after `upload_grace` seconds (--upload-grace, 5)
  the bytes received so far must average at least `min_upload_rate` bytes/s (--min-upload-rate,
  8192 = 64 kbit/s) since the body began, else 408 and the connection is closed; and no wait for
  the next chunk may exceed `read_timeout` (--read-timeout, 60 s). A phone on a 2G/EDGE uplink
  (100-200 kbit/s) passes with room to spare, a stall is forgiven as long as the average holds
  (the grace absorbs TCP slow start and a radio waking up), and a client trickling bytes is cut
  about `upload_grace` seconds after its body began.
- Uploads: at most `max_uploads` bodies (--max-uploads, 16) are received at once; one more gets
  503 at once. Uploads hold no inference admission: a body is admitted only once it has arrived
  whole, so slow senders cannot lock finished requests out.
- Concurrency and queue: at most `max_concurrency` images (--max-concurrency, 2) are anonymized
  at once (a semaphore: onnxruntime sessions are safe to run from several threads and the rest
  of the pipeline works on per-call arrays; more at once only splits the same cores), and at
  most `max_concurrency + max_queue` (--max-queue, 8) received bodies are admitted, waiting or
  running; one more gets 503 at once, and an admitted one that waits `queue_timeout` seconds
  (--queue-timeout, 30) for a slot gets 503 too.
- Memory: bodies being received take what has arrived so far, so request bodies hold at most
  (max_uploads + max_concurrency + max_queue) x max_body_bytes (26 x 64 MiB = 1.6 GiB with the
  defaults; a body is briefly held twice while its chunks are joined); decoded pixels exist only
  inside the `max_concurrency` slots, each image at most the pixel budget.
- Pixel budget: `max_pixels` (--max-image-mp, 64 MP: an 8000x4000 panorama is 32 MP), checked
  from the file's header before decoding (and by the runtime itself, which is handed the lower
  of this and its own `max_pixels`); 422 over it.
- CPU-cost guard: detection costs the same per pixel however well the file compresses, so a
  flat 6000x6000 PNG of 117 KB would cost minutes of CPU. An image over `cost_check_pixels`
  (--cost-check-mp, 4 MP) whose file has fewer than `min_bytes_per_mp` bytes per megapixel
  (--min-bytes-per-mp, 16000; 0 turns the guard off) gets 422 before decoding (from the header;
  after the decode and before detection when only the runtime can read the header). A 32 MP
  street JPEG of several MB has over 100 KB per megapixel.
- Refusals do not reset connections: the listen backlog holds 128 connections (a burst beyond
  socketserver's 5 got resets), and a refused body whose Content-Length is within
  `max_body_bytes` is read and discarded (under the upload deadline) before the connection is
  closed, so the client gets its response; a 503 at admission comes after the body was read
  and keeps the connection open.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import math
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from PIL import Image

from serving.runtime.errors import ImageError, ServingError
from serving.runtime.pipeline import Anonymized, Runtime

__all__ = [
    "ANONYMIZE",
    "CONTENT_TYPES",
    "AnonymizeServer",
    "Metrics",
    "ServiceConfig",
    "start_server",
]

log = logging.getLogger(__name__)

ANONYMIZE = "/v1/anonymize"
ENDPOINTS = (ANONYMIZE, "/healthz", "/readyz", "/metrics")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}
JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FAILURE_KINDS = (
    "bad_request",
    "not_found",
    "method_not_allowed",
    "length_required",
    "body_too_large",
    "timeout",
    "bad_image",
    "too_costly",
    "not_ready",
    "overloaded",
    "client_disconnected",
    "internal",
)
# After refusing a body it will not read whole (over max_body_bytes, no Content-Length, or an
# upload cut off), the server drains at most this much before closing, so the client's kernel
# more likely delivers the response than a reset; the rest is never read.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0
_CHUNK = 1 << 16
# socketserver's default backlog is 5: a burst of connections beyond it got resets, not 503s.
_BACKLOG = 128
_MP = 1_000_000
_WARMUP_SIZE = (320, 240)
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service, each an `anonlab serve` flag (`FLAGS`); the module docstring says
    why each default is what it is."""

    max_body_bytes: int = 64 << 20
    max_pixels: int = 64 * _MP  # per image, checked from the header before decoding
    cost_check_pixels: int = 4 * _MP  # images over this face the CPU-cost guard
    min_bytes_per_mp: int = 16_000  # the CPU-cost guard's floor; 0 turns it off
    max_uploads: int = 16  # bodies being received at once
    upload_grace: float = 5.0  # seconds before the minimum upload rate applies
    min_upload_rate: int = 8192  # bytes/s, averaged over the body once the grace is over
    max_concurrency: int = 2
    max_queue: int = 8
    queue_timeout: float = 30.0  # seconds an admitted request waits for a slot before 503
    read_timeout: float = 60.0  # seconds of client silence before the connection is dropped
    retry_after: int = 1  # seconds, in the Retry-After of every 503

    def __post_init__(self) -> None:
        above_zero = (
            "max_body_bytes",
            "max_pixels",
            "max_uploads",
            "min_upload_rate",
            "max_concurrency",
            "read_timeout",
            "retry_after",
        )
        at_least_zero = (
            "cost_check_pixels",
            "min_bytes_per_mp",
            "upload_grace",
            "max_queue",
            "queue_timeout",
        )
        for name in (*above_zero, *at_least_zero):
            value = getattr(self, name)
            allowed = "above 0" if name in above_zero else "0 or more"
            flag = f" ({FLAGS[name]})" if name in FLAGS else ""
            if not math.isfinite(value) or value < 0 or (value == 0 and name in above_zero):
                raise ServingError(f"{name}{flag} is {value}: it must be a number {allowed}")


# The `anonlab serve` flag of each ServiceConfig field, for error messages.
FLAGS = {
    "max_body_bytes": "--max-body-mb",
    "max_pixels": "--max-image-mp",
    "cost_check_pixels": "--cost-check-mp",
    "min_bytes_per_mp": "--min-bytes-per-mp",
    "max_uploads": "--max-uploads",
    "upload_grace": "--upload-grace",
    "min_upload_rate": "--min-upload-rate",
    "max_concurrency": "--max-concurrency",
    "max_queue": "--max-queue",
    "queue_timeout": "--queue-timeout",
    "read_timeout": "--read-timeout",
}


def check_image(width: int, height: int, size: int, config: ServiceConfig) -> None:
    """Refuse (422) an image of `width` x `height` pixels in a file of `size` bytes that is over
    the pixel budget, or that the CPU-cost guard stops: detection time grows with the pixels,
    not the bytes, so a big image in a tiny file is cheap to send and dear to process."""
    pixels = width * height
    megapixels = pixels / _MP
    if pixels > config.max_pixels:
        raise HttpError(
            422,
            f"the image is {width}x{height} = {megapixels:.1f} MP, over this server's limit of "
            f"{config.max_pixels / _MP:g} MP (--max-image-mp): downscale it, or start the "
            "server with a larger --max-image-mp",
            "bad_image",
        )
    floor = config.min_bytes_per_mp
    if pixels > config.cost_check_pixels and size < floor * megapixels:
        raise HttpError(
            422,
            f"the image is {width}x{height} = {megapixels:.1f} MP in a file of only {size} "
            f"bytes ({size / megapixels:.0f} per MP): the CPU-cost guard refuses images over "
            f"{config.cost_check_pixels / _MP:g} MP (--cost-check-mp) with fewer than {floor} "
            "bytes per MP (--min-bytes-per-mp), since detection costs the same per pixel "
            "however well the file compresses; send the photo itself, or start the server "
            "with --min-bytes-per-mp 0 to turn the guard off",
            "too_costly",
        )


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding its pixels; None when
    Pillow cannot tell (the runtime's decode then has the last word)."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb limit warns from 89 MP; the service's budget is checked here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "TIFF", "WEBP")) as img:
                width, height = img.size
    except Exception:  # any reason Pillow cannot read it: the decode reports it properly
        return None
    return int(width), int(height)


# ---------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Counters of the service, rendered in the Prometheus text exposition format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.failures: Counter[str] = Counter(dict.fromkeys(FAILURE_KINDS, 0))
        self.hidden: Counter[str] = Counter()
        self.images = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0
        self.uploading = 0
        self.inferring = 0
        self._buckets = {e: [0] * (len(LATENCY_BUCKETS) + 1) for e in (*ENDPOINTS, "other")}
        self._sum = dict.fromkeys(self._buckets, 0.0)

    def add_classes(self, classes: list[str]) -> None:
        with self._lock:
            for name in classes:
                self.hidden[name] += 0

    def request(
        self, endpoint: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        endpoint = endpoint if endpoint in self._buckets else "other"
        index = next(
            (i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS)
        )
        with self._lock:
            self.requests[endpoint, status] += 1
            self._buckets[endpoint][index] += 1
            self._sum[endpoint] += seconds
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def failure(self, kind: str) -> None:
        with self._lock:
            self.failures[kind] += 1

    def anonymized(self, done: Anonymized) -> None:
        found = Counter(done.classes[int(label) - 1] for label in done.detections.labels)
        with self._lock:
            self.images += 1
            self.hidden.update(found)

    def add_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def add_uploading(self, delta: int) -> None:
        with self._lock:
            self.uploading += delta

    def add_inferring(self, delta: int) -> None:
        with self._lock:
            self.inferring += delta

    def render(self, *, ready: bool) -> str:
        with self._lock:
            out: list[str] = []

            def family(name: str, kind: str, text: str, rows: list[tuple[str, float]]) -> None:
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} {kind}")
                out.extend(f"{name}{labels} {_number(v)}" for labels, v in rows)

            family(
                "anonlab_http_requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status code.",
                [
                    (_labels(endpoint=e, code=str(c)), n)
                    for (e, c), n in sorted(self.requests.items())
                ],
            )
            name = "anonlab_http_request_duration_seconds"
            out.append(f"# HELP {name} Request latency, by endpoint.")
            out.append(f"# TYPE {name} histogram")
            for endpoint, counts in self._buckets.items():
                total = 0
                for bound, n in zip((*LATENCY_BUCKETS, "+Inf"), counts, strict=True):
                    total += n
                    out.append(
                        f"{name}_bucket{_labels(endpoint=endpoint, le=_bound(bound))} {total}"
                    )
                seconds = _number(self._sum[endpoint])
                out.append(f"{name}_sum{_labels(endpoint=endpoint)} {seconds}")
                out.append(f"{name}_count{_labels(endpoint=endpoint)} {total}")
            family(
                "anonlab_images_anonymized_total",
                "counter",
                "Images anonymized and returned.",
                [("", self.images)],
            )
            family(
                "anonlab_detections_hidden_total",
                "counter",
                "Regions hidden, by class.",
                [(_labels(**{"class": c}), n) for c, n in sorted(self.hidden.items())],
            )
            family(
                "anonlab_failures_total",
                "counter",
                "Requests not answered with 2xx, by kind.",
                [(_labels(kind=k), n) for k, n in sorted(self.failures.items())],
            )
            family(
                "anonlab_http_request_bytes_total",
                "counter",
                "Request body bytes read.",
                [("", self.bytes_in)],
            )
            family(
                "anonlab_http_response_bytes_total",
                "counter",
                "Response body bytes answered.",
                [("", self.bytes_out)],
            )
            family(
                "anonlab_http_requests_in_flight",
                "gauge",
                "Requests being handled now.",
                [("", self.in_flight)],
            )
            family(
                "anonlab_uploads_in_flight",
                "gauge",
                "Request bodies being received now (at most max_uploads).",
                [("", self.uploading)],
            )
            family(
                "anonlab_inferences_in_flight",
                "gauge",
                "Images being anonymized now (at most max_concurrency).",
                [("", self.inferring)],
            )
            family("anonlab_ready", "gauge", "1 when /readyz answers 200.", [("", int(ready))])
            rss = _rss_bytes()
            if rss is not None:
                family(
                    "process_resident_memory_bytes",
                    "gauge",
                    "Resident memory size in bytes.",
                    [("", rss)],
                )
        return "\n".join(out) + "\n"


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _bound(bound: float | str) -> str:
    return bound if isinstance(bound, str) else repr(float(bound))


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _rss_bytes() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


# ---------------------------------------------------------------------------------------------
# Server


class HttpError(Exception):
    """A refused request: its status, the message for the client, and the metrics kind."""

    def __init__(
        self, status: int, message: str, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers or {}


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class AnonymizeServer(ThreadingHTTPServer):
    """The HTTP server with its runtime, limits and metrics; made and started by `start_server`."""

    daemon_threads = True
    request_queue_size = _BACKLOG

    def __init__(self, address: tuple[str, int], config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.failure: ServingError | None = None  # why warm-up failed; the service never gets ready
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready or failed
        self.stopping = False
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._uploads = 0
        self._admitted = 0
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.stopping

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until models are loaded and warm; raise the failure if they cannot be."""
        if not self._settled.wait(timeout):
            raise TimeoutError(f"the service was not ready within {timeout} s")
        if self.failure is not None:
            raise self.failure

    def warm_up(self, source: Runtime | Callable[[], Runtime]) -> None:
        """Load the runtime (when given a loader) and anonymize one synthetic image, then ready."""
        try:
            runtime = source if isinstance(source, Runtime) else source()
            rng = np.random.default_rng(0)
            pixels = rng.integers(0, 256, (_WARMUP_SIZE[1], _WARMUP_SIZE[0], 3), np.uint8)
            ok, encoded = cv2.imencode(".jpg", pixels)
            if not ok:
                raise RuntimeError("OpenCV cannot encode the warm-up JPEG")
            started = time.perf_counter()
            runtime.anonymize_bytes(encoded.tobytes())
            log.info("warm-up inference in %.0f ms", 1000 * (time.perf_counter() - started))
            self.metrics.add_classes(runtime.classes)
            self.runtime = _with_pixel_budget(runtime, self.config.max_pixels)
            self._ready.set()
            log.info("ready on %s", self.url)
        except ServingError as exc:
            self.failure = exc
            log.error("not ready: %s", exc)
        except Exception as exc:
            log.exception("warm-up failed")
            self.failure = ServingError(
                f"the warm-up inference failed ({type(exc).__name__}: {exc}): check the "
                "artifact and the backend"
            )
        finally:
            self._settled.set()

    @contextmanager
    def upload(self) -> Iterator[None]:
        """One of `max_uploads` bodies being received, or 503 at once."""
        limit = self.config.max_uploads
        with self._lock:
            if self._uploads >= limit:
                raise self.unavailable(
                    f"the server is receiving {limit} uploads already (--max-uploads): retry "
                    "shortly",
                    "overloaded",
                )
            self._uploads += 1
        self.metrics.add_uploading(1)
        try:
            yield
        finally:
            self.metrics.add_uploading(-1)
            with self._lock:
                self._uploads -= 1

    @contextmanager
    def admission(self) -> Iterator[None]:
        """One admitted anonymize request (body received, waiting or running), or 503 at once."""
        cap = self.config.max_concurrency + self.config.max_queue
        with self._lock:
            if self._admitted >= cap:
                raise self.unavailable(
                    f"the server is at capacity ({cap} images admitted): retry shortly",
                    "overloaded",
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of `max_concurrency` inference slots, waited for up to `queue_timeout` s."""
        if not self._slots.acquire(timeout=self.config.queue_timeout):
            raise self.unavailable(
                f"no inference slot within {self.config.queue_timeout:g} s: retry shortly",
                "overloaded",
            )
        self.metrics.add_inferring(1)
        try:
            yield
        finally:
            self.metrics.add_inferring(-1)
            self._slots.release()

    def unavailable(self, message: str, kind: str) -> HttpError:
        return HttpError(503, message, kind, {"Retry-After": str(self.config.retry_after)})

    def stop(self, grace: float = 10.0) -> None:
        """Stop: /readyz and new images get 503, accepting ends, admitted images finish (up to
        `grace` seconds), then the socket is closed."""
        self.stopping = True
        self.shutdown()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._uploads and not self._admitted:
                    break
            time.sleep(0.02)
        self.server_close()
        log.info("stopped")

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception that escaped a connection's handler. socketserver's default prints the
        client's address and a traceback to stderr; here a connection error (the client's side)
        is one line at DEBUG, anything else a traceback in the log, neither with the address."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("a connection ended with %s", type(exc).__name__)
        else:
            log.error("a connection's handler failed", exc_info=True)


def _with_pixel_budget(runtime: Runtime, max_pixels: int) -> Runtime:
    """`runtime`, or a shallow copy of it whose `max_pixels` is lowered to the service's budget,
    so the decode itself refuses bigger images from the header; the caller's runtime keeps its
    own limit, and the copy shares its detectors (their sessions run from several threads)."""
    if runtime.max_pixels is not None and runtime.max_pixels <= max_pixels:
        return runtime
    bounded = copy.copy(runtime)
    bounded.max_pixels = max_pixels
    return bounded


def start_server(
    runtime: Runtime | Callable[[], Runtime],
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServiceConfig | None = None,
) -> AnonymizeServer:
    """Bind `host:port` (0: any free port), serve in a background thread, and load and warm up
    `runtime` (a Runtime, or a function that loads one) in another; returns at once. /readyz
    and `server.wait_ready()` say when images are taken; `server.stop()` ends it."""
    try:
        server = AnonymizeServer((host, port), config or ServiceConfig())
    except OSError as exc:
        raise ServingError(
            f"cannot listen on {host}:{port} ({exc}): choose another --port"
        ) from None
    threading.Thread(target=server.serve_forever, name="anonlab-serve", daemon=True).start()
    threading.Thread(
        target=server.warm_up, args=(runtime,), name="anonlab-warm-up", daemon=True
    ).start()
    log.info("listening on %s (not ready until the warm-up inference is done)", server.url)
    return server


# ---------------------------------------------------------------------------------------------
# Requests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "anonlab"
    sys_version = ""
    server: AnonymizeServer

    def setup(self) -> None:
        self.timeout = self.server.config.read_timeout
        super().setup()

    # Every standard method goes through one dispatch, so a wrong one gets 405, not 501.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        # `100 Continue` is sent only once the request passed its checks (see _read_body).
        self._expect_continue = True
        return True

    def _dispatch(self) -> None:
        started = time.perf_counter()
        self._request_id = uuid.uuid4().hex[:16]
        self._bytes_in = 0
        self._body_started = False  # 100 Continue sent or the first chunk asked for
        self._body_read = False
        self._expect_continue = getattr(self, "_expect_continue", False)
        path = urlsplit(self.path).path
        metrics = self.server.metrics
        metrics.add_in_flight(1)
        try:
            reply = self._reply(path)
        finally:
            metrics.add_in_flight(-1)
        # Counted before the response goes out, so a client that has it sees it in /metrics.
        seconds = time.perf_counter() - started
        size = 0 if self.command == "HEAD" else len(reply.body)
        metrics.request(path, reply.status, seconds, self._bytes_in, size)
        unread = self._unread_body(reply)
        length = self._drainable_length()
        # The client sends a body it announced unless it waits for a 100 Continue it never got.
        sending = length is not None and not self._body_started and not self._expect_continue
        self._expect_continue = False
        sent = self._send(reply, close=unread)
        self._log(
            logging.INFO if path == ANONYMIZE else logging.DEBUG,
            path,
            reply.status,
            seconds,
            size if sent else 0,
        )
        if unread and sent:
            self._drain(length if sending else None)

    def _log(self, level: int, path: str, status: int, seconds: float, size: int) -> None:
        """The request's one line: never its query string, body or the client's address."""
        command = self.command if (self.command or "").isalpha() else "-"
        log.log(
            level,
            "%s %s %d %.1f ms in=%d out=%d id=%s",
            command[:16],
            path[:200].encode("unicode_escape").decode("ascii"),
            status,
            1000 * seconds,
            self._bytes_in,
            size,
            self._request_id,
        )

    def _reply(self, path: str) -> Reply:
        try:
            return self._route(path)
        except HttpError as exc:
            self.server.metrics.failure(exc.kind)
            return _error(exc.status, exc.message, exc.headers)
        except Exception:
            # Fail closed: whatever happened, no image bytes go out with a 5xx.
            log.exception("request %s failed", self._request_id)
            self.server.metrics.failure("internal")
            return _error(
                500,
                "internal error: the image was not anonymized and nothing of it is returned; "
                f"retry, and report request id {self._request_id} if it persists",
            )

    def _route(self, path: str) -> Reply:
        routes: dict[str, dict[str, Callable[[], Reply]]] = {
            ANONYMIZE: {"POST": self._anonymize},
            "/healthz": {"GET": self._healthz},
            "/readyz": {"GET": self._readyz},
            "/metrics": {"GET": self._metrics},
        }
        methods = routes.get(path)
        if methods is None:
            raise HttpError(
                404,
                f"no endpoint {path[:200]}: use POST {ANONYMIZE}, or GET /healthz, /readyz, "
                "/metrics",
                "not_found",
            )
        handler = methods.get(self.command)
        if handler is None:
            allowed = ", ".join(methods)
            raise HttpError(
                405,
                f"{self.command} is not allowed on {path}: use {allowed}",
                "method_not_allowed",
                {"Allow": allowed},
            )
        return handler()

    def _healthz(self) -> Reply:
        return _json(200, {"status": "alive"})

    def _readyz(self) -> Reply:
        server = self.server
        if server.ready:
            return _json(200, {"ready": True})
        reason = (
            "stopping"
            if server.stopping
            else f"warm-up failed: {server.failure}"
            if server.failure
            else "loading the models"
        )
        return _json(503, {"ready": False, "reason": reason})

    def _metrics(self) -> Reply:
        text = self.server.metrics.render(ready=self.server.ready)
        return Reply(200, METRICS_TYPE, text.encode())

    def _anonymize(self) -> Reply:
        server = self.server
        want_json = self._detections_flag()
        length = self._content_length()
        if not server.ready:
            raise server.unavailable(
                "the service is not ready (loading the models, or stopping): retry shortly",
                "not_ready",
            )
        runtime = server.runtime
        assert runtime is not None
        with ExitStack() as admitted:
            with server.upload():
                body = self._read_body(length)
                # Before admission: a refused image waits for no slot and costs no decode.
                size = header_size(body)
                if size is not None:
                    check_image(*size, len(body), server.config)
                # Admitted before the upload slot is given back, so that every body held is
                # counted in one of the two (the memory bound).
                admitted.enter_context(server.admission())
            with server.slot():
                done = self._run(runtime, body)
            del body
        server.metrics.anonymized(done)
        content_type = CONTENT_TYPES[done.format]
        if not want_json:
            return Reply(200, content_type, done.data)
        return _json(
            200,
            {
                "image": base64.b64encode(done.data).decode("ascii"),
                "content_type": content_type,
                **done.report(),
            },
        )

    def _run(self, runtime: Runtime, body: bytes) -> Anonymized:
        """`runtime.anonymize_bytes(body)` in its steps, with the CPU-cost guard between the
        decode and the detection for a file whose header only the runtime could read. The
        decoded pixels are gone when this returns, before the slot is given back."""
        try:
            decoded = runtime.decode(body)
            height, width = decoded.view.shape[:2]
            check_image(width, height, len(body), self.server.config)
            return runtime.finish(decoded, runtime.detect(decoded.rgb))
        except ImageError as exc:
            raise HttpError(422, str(exc), "bad_image") from None

    def _detections_flag(self) -> bool:
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        unknown = sorted(set(query) - {"detections"})
        if unknown:
            raise HttpError(
                400,
                f"unknown query parameter {unknown[0]!r}: the only one is detections=true|false",
                "bad_request",
            )
        values = query.get("detections", ["false"])
        if len(values) != 1 or values[0].lower() not in ("true", "false", "1", "0"):
            raise HttpError(400, "detections must be true or false, given once", "bad_request")
        return values[0].lower() in ("true", "1")

    def _content_length(self) -> int:
        """The body's announced size, checked against the limits before any of it is read."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise HttpError(
                411,
                "chunked (Transfer-Encoding) uploads are not accepted: send the file with a "
                "Content-Length",
                "length_required",
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise HttpError(
                411,
                "Content-Length is required: send the image file as the body",
                "length_required",
            )
        if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0].strip()):
            raise HttpError(
                400, f"Content-Length {', '.join(values)!r} is not one byte count", "bad_request"
            )
        length = int(values[0])
        if length == 0:
            raise HttpError(
                400, "the body is empty: send the image file's bytes as the body", "bad_request"
            )
        limit = self.server.config.max_body_bytes
        if length > limit:
            raise HttpError(
                413,
                f"the body is {length} bytes, over the limit of {limit} bytes: send a smaller "
                "file, or start the server with a larger --max-body-mb",
                "body_too_large",
            )
        return length

    def _drainable_length(self) -> int | None:
        """The body's length when it is framed by one valid Content-Length within
        `max_body_bytes` (a body the server may read to discard it), else None."""
        values = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None or len(set(values)) != 1:
            return None
        if not _DIGITS.fullmatch(values[0].strip()):
            return None
        length = int(values[0])
        return length if 0 < length <= self.server.config.max_body_bytes else None

    def _read_body(self, length: int) -> bytes:
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        self._body_started = True
        body = self._receive(length, keep=True)
        self._body_read = True
        return body

    def _receive(self, length: int, *, keep: bool) -> bytes:
        """The body's `length` bytes (with `keep` false, read and dropped: b""), in chunks under
        the upload deadline: once `upload_grace` seconds have passed, the bytes so far must
        average `min_upload_rate` per second since the body began, and no chunk may take over
        `read_timeout` seconds. 408 past either, 400 when the client ends the body early."""
        config = self.server.config
        sock = self.connection
        started = time.monotonic()
        chunks: list[bytes] = []
        got = 0
        silent = False  # whether the wait that ran out was read_timeout, not the rate's
        try:
            while got < length:
                # The moment at which `got` bytes fall below the minimum average rate.
                due = started + config.upload_grace + got / config.min_upload_rate
                left = due - time.monotonic()
                silent = config.read_timeout < left
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(min(config.read_timeout, left))
                chunk = self.rfile.read1(min(length - got, _CHUNK))
                if not chunk:
                    break
                got += len(chunk)
                if keep:
                    chunks.append(chunk)
                    self._bytes_in = got
        except TimeoutError:
            elapsed = time.monotonic() - started
            if silent:
                message = (
                    f"no part of the body arrived for {config.read_timeout:g} s ({got} of "
                    f"{length} bytes received): resend it"
                )
            else:
                message = (
                    f"the body arrived too slowly: {got} of {length} bytes in {elapsed:.1f} s, "
                    f"under the minimum of {config.min_upload_rate} bytes/s on average after "
                    f"the first {config.upload_grace:g} s (--min-upload-rate, --upload-grace): "
                    "resend it over a faster connection"
                )
            raise HttpError(408, message, "timeout") from None
        except OSError:  # reset by the client: it will not read an answer, and it is no bug here
            got = -1
        finally:
            sock.settimeout(config.read_timeout)
        if got < length:
            ended = (
                "the connection was reset during the body"
                if got < 0
                else f"the body ended after {got} bytes"
            )
            raise HttpError(
                400,
                f"{ended}, of the {length} announced: resend the whole file",
                "client_disconnected",
            )
        return b"".join(chunks)

    def _unread_body(self, reply: Reply) -> bool:
        """Whether the request announced a body that was not read whole: its bytes would be
        taken for the next request, so the connection is closed after the response. So is one
        refused for want of a Content-Length (a body may follow, unframed)."""
        return not self._body_read and (
            reply.status == 411
            or self.headers.get("Transfer-Encoding") is not None
            or (self.headers.get("Content-Length") or "0").strip() not in ("", "0")
        )

    def _send(self, reply: Reply, *, close: bool) -> bool:
        """Write `reply` (closing the connection after it when `close`); whether it went out."""
        if close:
            self.close_connection = True
        body = b"" if self.command == "HEAD" else reply.body
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Request-Id", self._request_id)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client went away; nothing to tell it
            self.server.metrics.failure("client_disconnected")
            self.close_connection = True
            return False
        return True

    def _drain(self, length: int | None) -> None:
        """Lingering close: end our side, then discard what the client sends, so that its
        kernel delivers the response rather than a connection reset (which unread bytes at
        close cause). A body of known `length` (within max_body_bytes, being sent) is read
        whole under the upload deadline; anything else at most _DRAIN_BYTES in _DRAIN_SECONDS."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            if length is not None:
                self._receive(length, keep=False)
                return
            sock.settimeout(_DRAIN_SECONDS)
            deadline = time.monotonic() + _DRAIN_SECONDS
            left = _DRAIN_BYTES
            while left > 0 and time.monotonic() < deadline:
                chunk = sock.recv(min(left, _CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, HttpError):
            pass  # the response is out; a client that stops sending is not waited for

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by `http.server` itself (bad request line, too long headers, unknown
        method): JSON like ours, the connection closed, and one log line like any request's
        (the request line itself is not logged: it can hold a query string)."""
        self.close_connection = True
        self._request_id = uuid.uuid4().hex[:16]
        self._bytes_in = 0
        self._body_read = True  # nothing to drain: the request could not be parsed
        text = message or HTTPStatus(code).phrase
        self.server.metrics.failure("bad_request")
        self.server.metrics.request("other", code, 0.0, 0, 0)
        path = getattr(self, "path", None)
        self._log(logging.INFO, urlsplit(path).path if path else "-", code, 0.0, 0)
        try:
            self.send_response(code)
            body = json.dumps({"error": f"{text}: send a valid HTTP/1.1 request"}).encode()
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200:
                self.wfile.write(body)
        except OSError:
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _dispatch, without the client's address

    def log_message(self, format: str, *args: Any) -> None:
        pass  # http.server's messages quote the raw request line; send_error logs instead


def _json(status: int, payload: dict[str, Any]) -> Reply:
    return Reply(status, JSON, json.dumps(payload).encode())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, JSON, json.dumps({"error": message}).encode(), headers or {})
