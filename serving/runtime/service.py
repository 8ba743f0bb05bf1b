"""The runtime as an HTTP service (`anonlab serve`): POST an image file, get it back anonymized.

Stdlib only (`http.server`): the runtime ships alone in a small container. HTTP/1.1 with
keep-alive; nothing is written to disk and no image content, body or client address is logged
(one line per request: method, path, status, latency, body sizes, request id).

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
  method (with Allow); 408 body not received within the read timeout; 411 no Content-Length
  (chunked uploads are refused); 413 Content-Length over `max_body_bytes`, refused before any of
  the body is read (a client sending `Expect: 100-continue` never sends it);
- 422 the image cannot be anonymized: not decodable, truncated, unsupported, or over
  `max_pixels` (every `ImageError` of the runtime);
- 503 + Retry-After: not ready yet, stopping, or over capacity (see below);
- 500 any other failure. Fail closed: a 5xx never carries image bytes; the response is only built
  from a fully anonymized result.

Concurrency: `ThreadingHTTPServer` gives each connection a thread. At most `max_concurrency`
images are anonymized at once (a semaphore: onnxruntime sessions are safe to run from several
threads and the rest of `Runtime.anonymize_bytes` works on per-call arrays; more at once only
splits the same cores). At most `max_concurrency + max_queue` anonymize requests are admitted
(body read, waiting or running), which bounds memory to that many bodies of `max_body_bytes`;
one more is refused at once with 503. An admitted request waits up to `queue_timeout` seconds for
a slot, then gets 503 too.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

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
    "not_ready",
    "overloaded",
    "client_disconnected",
    "internal",
)
# After refusing a body it did not read, the server drains at most this much before closing, so
# the client's kernel gets the response instead of a reset; the rest is never read.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0
_WARMUP_SIZE = (320, 240)
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service (the `anonlab serve` flags)."""

    max_body_bytes: int = 64 << 20
    max_concurrency: int = 2
    max_queue: int = 8
    queue_timeout: float = 30.0  # seconds an admitted request waits for a slot before 503
    read_timeout: float = 60.0  # seconds of client silence before the connection is dropped
    retry_after: int = 1  # seconds, in the Retry-After of every 503

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_concurrency", "read_timeout", "retry_after"):
            if getattr(self, name) <= 0:
                raise ServingError(f"{name} is {getattr(self, name)}: it must be above 0")
        for name in ("max_queue", "queue_timeout"):
            if getattr(self, name) < 0:
                raise ServingError(f"{name} is {getattr(self, name)}: it must be 0 or more")


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

    def __init__(self, address: tuple[str, int], config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.failure: ServingError | None = None  # why warm-up failed; the service never gets ready
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready or failed
        self.stopping = False
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
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
            self.runtime = runtime
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
    def admission(self) -> Iterator[None]:
        """One admitted anonymize request (body read, waiting or running), or 503 at once."""
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
                if not self._admitted:
                    break
            time.sleep(0.02)
        self.server_close()
        log.info("stopped")


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
        self._body_read = False
        self._expect_continue = getattr(self, "_expect_continue", False)
        path = urlsplit(self.path).path
        metrics = self.server.metrics
        metrics.add_in_flight(1)
        try:
            reply = self._reply(path)
        finally:
            metrics.add_in_flight(-1)
            self._expect_continue = False
        # Counted before the response goes out, so a client that has it sees it in /metrics.
        seconds = time.perf_counter() - started
        size = 0 if self.command == "HEAD" else len(reply.body)
        metrics.request(path, reply.status, seconds, self._bytes_in, size)
        sent = self._send(reply)
        level = logging.INFO if path == ANONYMIZE else logging.DEBUG
        log.log(
            level,
            "%s %s %d %.1f ms in=%d out=%d id=%s",
            self.command,
            self.path[:200],
            reply.status,
            1000 * seconds,
            self._bytes_in,
            size if sent else 0,
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
        with server.admission():
            body = self._read_body(length)
            with server.slot():
                try:
                    done = runtime.anonymize_bytes(body)
                except ImageError as exc:
                    raise HttpError(422, str(exc), "bad_image") from None
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

    def _read_body(self, length: int) -> bytes:
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise HttpError(
                408,
                f"the body did not arrive within {self.server.config.read_timeout:g} s: resend",
                "timeout",
            ) from None
        self._bytes_in = len(body)
        if len(body) < length:
            raise HttpError(
                400,
                f"the body ended after {len(body)} of {length} bytes: resend the whole file",
                "client_disconnected",
            )
        self._body_read = True
        return body

    def _send(self, reply: Reply) -> bool:
        """Write `reply`; whether it went out. A connection whose request body was not read is
        closed after it (its bytes would be taken for the next request), and so is one refused
        for want of a Content-Length (a body may follow, unframed)."""
        unread = not self._body_read and (
            reply.status == 411
            or self.headers.get("Transfer-Encoding") is not None
            or (self.headers.get("Content-Length") or "0").strip() not in ("", "0")
        )
        if unread:
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
        if unread:
            self._drain()
        return True

    def _drain(self) -> None:
        """Lingering close: end our side, then discard what the client already sent (bounded)
        so its kernel delivers the response rather than a connection reset."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(_DRAIN_SECONDS)
            deadline = time.monotonic() + _DRAIN_SECONDS
            left = _DRAIN_BYTES
            while left > 0 and time.monotonic() < deadline:
                chunk = sock.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by `http.server` itself (bad request line, too long headers, unknown
        method): JSON like ours, and the connection closed."""
        self.close_connection = True
        self._request_id = getattr(self, "_request_id", uuid.uuid4().hex[:16])
        self._body_read = True  # nothing to drain: the request could not be parsed
        text = message or HTTPStatus(code).phrase
        self.server.metrics.failure("bad_request")
        self.server.metrics.request("other", code, 0.0, 0, 0)
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
        log.debug("http.server: " + format, *args)


def _json(status: int, payload: dict[str, Any]) -> Reply:
    return Reply(status, JSON, json.dumps(payload).encode())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, JSON, json.dumps({"error": message}).encode(), headers or {})
