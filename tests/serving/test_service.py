"""The HTTP service against a real server on 127.0.0.1 with the real runtime on the tiny artifact:
images in and out, every limit and error, fail closed on internal failures, a bounded load test
without memory growth, and `anonlab serve` stopping cleanly on SIGTERM."""

from __future__ import annotations

import base64
import contextlib
import gc
import http.client
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from serving.cli import build_parser
from serving.cli import main as cli_main
from serving.runtime.checksum import file_sha256
from serving.runtime.errors import ImageError, ServingError
from serving.runtime.heads import HEAD
from serving.runtime.pipeline import Runtime
from serving.runtime.service import (
    ANONYMIZE,
    ENDPOINTS,
    AnonymizeServer,
    HttpError,
    ServiceConfig,
    check_image,
    start_server,
)
from tests.conftest import REPO
from tests.images import jpeg_bytes, texture
from tests.serving.artifacts import CLASSES
from tests.serving.composites import (
    BACK_OF_HEAD,
    expected_head,
    image_with_a_face_from_behind,
    keypoint_member,
    png,
    read_composite,
    stand_in,
    write_composite,
)

MAX_PIXELS = 100_000
MAX_BODY = 256 << 10
CONFIG = ServiceConfig(
    max_body_bytes=MAX_BODY, max_concurrency=2, max_queue=8, queue_timeout=20, read_timeout=5
)


@pytest.fixture(scope="module")
def artifact(shared_artifact: Path) -> Path:
    return shared_artifact  # read only: tests that change an artifact change a copy


@pytest.fixture(scope="module")
def runtime(artifact: Path) -> Runtime:
    return Runtime.load([artifact], threads=1, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def server(runtime: Runtime) -> Iterator[AnonymizeServer]:
    srv = start_server(runtime, "127.0.0.1", 0, CONFIG)
    srv.wait_ready(60)
    yield srv
    srv.stop(grace=5)


@pytest.fixture(scope="module")
def photo() -> bytes:
    """128x96: the tiny model hides several regions in it at its 0.1 thresholds."""
    return jpeg_bytes(texture(128, 96, seed=3), gps=True)


def call(
    srv: AnonymizeServer | int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    port = srv if isinstance(srv, int) else srv.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def raw(srv: AnonymizeServer, data: bytes) -> tuple[bytes, float]:
    """Send `data` on a socket and read until the server closes it; the reply and seconds."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply, time.perf_counter() - started


def split(reply: bytes) -> tuple[int, str, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), json.loads(body)


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5) -> None:
    """The request's line is written after its response is sent: wait for it."""
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line with {text!r} in {caplog.text!r}"
        time.sleep(0.01)


def assert_json_error(status: int, headers: http.client.HTTPMessage, body: bytes) -> str:
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert list(payload) == ["error"] and payload["error"]
    assert not body.startswith(b"\xff\xd8")
    return payload["error"]


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format: every sample belongs to a declared family; (name, labels) ->
    value."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", name
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(value)
    return samples


def metric(srv: AnonymizeServer, name: str, **labels: str) -> float:
    status, _, body = call(srv, "GET", "/metrics")
    assert status == 200
    return parse_metrics(body.decode()).get((name, frozenset(labels.items())), 0.0)


def rss_kb() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE).group(1))


# ---------------------------------------------------------------------------------------------
# Images in, images out


def test_anonymizes_a_jpeg(server: AnonymizeServer, runtime: Runtime, photo: bytes) -> None:
    status, headers, body = call(
        server, "POST", ANONYMIZE, photo, {"Content-Type": "application/octet-stream"}
    )
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "no-store"
    out = Image.open(io.BytesIO(body))
    assert (out.format, out.size) == ("JPEG", (128, 96))
    assert out.getexif().get_ifd(0x8825)[2] == (52.0, 22.0, 0.0)  # GPS kept

    done = runtime.anonymize_bytes(photo)
    assert body == done.data  # the same pipeline, nothing else
    hidden = runtime.hidden_mask(done)
    assert hidden.any() and not hidden.all()
    diff = np.abs(decode(body) - decode(photo)).max(axis=2)
    assert diff[hidden].mean() > 4 * diff[~hidden].mean() + 5


def test_detections_as_json(server: AnonymizeServer, photo: bytes) -> None:
    status, _, image = call(server, "POST", ANONYMIZE, photo)
    status, headers, body = call(server, "POST", f"{ANONYMIZE}?detections=true", photo)
    assert status == 200 and headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert base64.b64decode(payload["image"]) == image
    assert payload["format"] == "JPEG" and payload["content_type"] == "image/jpeg"
    assert (payload["width"], payload["height"]) == (128, 96)
    assert payload["detections"]
    for det in payload["detections"]:
        assert det["class"] in CLASSES and det["score"] >= 0.1 and len(det["box"]) == 4

    status, headers, body = call(server, "POST", f"{ANONYMIZE}?detections=false", photo)
    assert status == 200 and body == image


def test_keep_alive_survives_a_refused_image(server: AnonymizeServer, photo: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for body, expected in [(b"garbage", 422), (photo, 200), (photo[:500], 422), (photo, 200)]:
            conn.request("POST", ANONYMIZE, body=body)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == expected
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Probes and metrics


def test_probes(server: AnonymizeServer, artifact: Path) -> None:
    assert call(server, "GET", "/healthz")[0] == 200
    status, _, body = call(server, "GET", "/readyz")
    manifest = json.loads((artifact / "manifest.json").read_text())
    loaded = {
        "name": "tiny",
        "version": "1",
        "weights_sha256": file_sha256(artifact / "weights.safetensors"),
        "manifest_sha256": manifest["manifest_sha256"],
        "release": True,
    }
    assert status == 200 and json.loads(body) == {"ready": True, "models": [loaded]}


def test_metrics_parse_and_move(server: AnonymizeServer, photo: bytes) -> None:
    status, headers, body = call(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    before = parse_metrics(body.decode())

    _, _, reply = call(server, "POST", f"{ANONYMIZE}?detections=true", photo)
    found = json.loads(reply)["detections"]
    call(server, "POST", ANONYMIZE, b"garbage")
    after = parse_metrics(call(server, "GET", "/metrics")[2].decode())

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("anonlab_images_anonymized_total") == 1
    code_200 = {"endpoint": ANONYMIZE, "code": "200"}
    assert moved("anonlab_http_requests_total", **code_200) == 1
    assert moved("anonlab_http_requests_total", endpoint=ANONYMIZE, code="422") == 1
    assert moved("anonlab_failures_total", kind="bad_image") == 1
    assert moved("anonlab_http_request_bytes_total") == len(photo) + len(b"garbage")
    assert moved("anonlab_http_response_bytes_total") > len(reply)  # + the metrics and error
    assert moved("anonlab_http_request_duration_seconds_count", endpoint=ANONYMIZE) == 2
    inf = {"endpoint": ANONYMIZE, "le": "+Inf"}
    assert (
        after[("anonlab_http_request_duration_seconds_bucket", frozenset(inf.items()))]
        == (
            after[
                (
                    "anonlab_http_request_duration_seconds_count",
                    frozenset({("endpoint", ANONYMIZE)}),
                )
            ]
        )
    )
    for cls in CLASSES:
        assert ("anonlab_detections_hidden_total", frozenset({("class", cls)})) in after
    hidden = sum(moved("anonlab_detections_hidden_total", **{"class": c}) for c in CLASSES)
    assert hidden == len(found) > 0
    assert after[("anonlab_http_requests_in_flight", frozenset())] == 1  # this scrape
    assert after[("anonlab_inferences_in_flight", frozenset())] == 0
    assert after[("anonlab_ready", frozenset())] == 1
    assert after[("process_resident_memory_bytes", frozenset())] > 0


def test_not_ready_until_warm(runtime: Runtime, photo: bytes) -> None:
    release = threading.Event()

    def load() -> Runtime:
        release.wait(30)
        return runtime

    srv = start_server(load, "127.0.0.1", 0, CONFIG)
    try:
        assert call(srv, "GET", "/healthz")[0] == 200
        status, _, body = call(srv, "GET", "/readyz")
        assert status == 503 and json.loads(body)["reason"] == "loading the models"
        status, headers, body = call(srv, "POST", ANONYMIZE, photo)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "not ready" in assert_json_error(status, headers, body)
        release.set()
        srv.wait_ready(30)
        assert call(srv, "GET", "/readyz")[0] == 200
        assert call(srv, "POST", ANONYMIZE, photo)[0] == 200
    finally:
        release.set()
        srv.stop(grace=1)
    assert not srv.ready


def test_a_failed_load_never_gets_ready() -> None:
    def load() -> Runtime:
        raise ServingError("artifact /x: manifest.json is missing")

    srv = start_server(load, "127.0.0.1", 0, CONFIG)
    try:
        with pytest.raises(ServingError, match=r"manifest\.json is missing"):
            srv.wait_ready(30)
        status, _, body = call(srv, "GET", "/readyz")
        assert status == 503 and "manifest.json is missing" in json.loads(body)["reason"]
    finally:
        srv.stop(grace=1)


# ---------------------------------------------------------------------------------------------
# Limits and errors


def test_body_too_large_is_refused_before_reading_it(server: AnonymizeServer) -> None:
    bytes_in = metric(server, "anonlab_http_request_bytes_total")
    size = 50 << 20
    head = f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
    # Expect: 100-continue: refused without `100 Continue`, so the client never sends the body.
    reply, seconds = raw(server, (head + "Expect: 100-continue\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 413 ")
    _, text, payload = split(reply)
    assert "Connection: close" in text and str(MAX_BODY) in payload["error"]
    # Without it: the server answers after the first 64 KiB of 50 MiB, and reads no more.
    reply, seconds = raw(server, head.encode() + b"\r\n" + b"\xff" * (64 << 10))
    assert split(reply)[0] == 413 and seconds < 3
    assert metric(server, "anonlab_http_request_bytes_total") == bytes_in


def test_content_length_is_required(server: AnonymizeServer) -> None:
    reply, _ = raw(server, f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, payload = split(reply)
    assert status == 411 and "Content-Length is required" in payload["error"]
    chunked = f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply, _ = raw(server, chunked.encode() + b"5\r\nhello\r\n0\r\n\r\n")
    status, _, payload = split(reply)
    assert status == 411 and "chunked" in payload["error"]


def test_malformed_requests_get_json_errors(server: AnonymizeServer) -> None:
    for data, status in [
        (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without a Host header
        (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ]:
        reply, _ = raw(server, data)
        got, text, payload = split(reply)
        assert got == status and "application/json" in text and payload["error"]


@pytest.mark.parametrize(
    ("body", "path", "status", "says"),
    [
        (b"", ANONYMIZE, 400, "the body is empty"),
        (b"not an image at all", ANONYMIZE, 422, "not a JPEG, PNG, TIFF or WebP"),
        (b"GIF89a" + bytes(64), ANONYMIZE, 422, "GIF images are not supported"),
        ("truncated", ANONYMIZE, 422, "truncated"),
        ("huge", ANONYMIZE, 422, "max_pixels"),
        ("photo", f"{ANONYMIZE}?detection=true", 400, "unknown query parameter"),
        ("photo", f"{ANONYMIZE}?detections=maybe", 400, "true or false"),
    ],
)
def test_bad_requests(
    server: AnonymizeServer,
    photo: bytes,
    caplog: pytest.LogCaptureFixture,
    body: bytes | str,
    path: str,
    status: int,
    says: str,
) -> None:
    data = {
        "truncated": photo[: len(photo) // 2],
        "huge": jpeg_bytes(texture(400, 300)),  # 120 000 pixels > MAX_PIXELS
        "photo": photo,
    }.get(body, body)
    with caplog.at_level("DEBUG", logger="serving.runtime.service"):
        got, headers, reply = call(server, "POST", path, data)
        wait_for_log(caplog, f"POST {ANONYMIZE} {status} ")
    assert got == status
    assert says in assert_json_error(got, headers, reply)
    logged = caplog.text
    assert "not an i" not in logged and "GIF89a" not in logged  # no body content in logs
    assert "?" not in logged and "detection" not in logged  # nor the query string
    assert not [r for r in caplog.records if r.exc_info]  # nor a stack trace for a 4xx


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", ANONYMIZE, 405, "POST"),
        ("PUT", ANONYMIZE, 405, "POST"),
        ("POST", "/healthz", 405, "GET"),
        ("DELETE", "/metrics", 405, "GET"),
        ("GET", "/", 404, None),
        ("POST", "/v1/blur", 404, None),
    ],
)
def test_wrong_method_or_path(
    server: AnonymizeServer, method: str, path: str, status: int, allow: str | None
) -> None:
    got, headers, body = call(server, method, path, b"x" if method == "POST" else None)
    assert got == status
    assert_json_error(got, headers, body)
    assert headers["Allow"] == allow


@pytest.mark.parametrize("step", ["detect", "finish"])
def test_internal_failure_returns_500_and_no_image(
    server: AnonymizeServer,
    photo: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("simulated failure")

    internal = metric(server, "anonlab_failures_total", kind="internal")
    monkeypatch.setattr(server.runtime, step, boom)
    with caplog.at_level("INFO", logger="serving.runtime.service"):
        for path in (ANONYMIZE, f"{ANONYMIZE}?detections=true"):
            status, headers, body = call(server, "POST", path, photo)
            assert status == 500
            message = assert_json_error(status, headers, body)
            assert "not anonymized" in message and headers["X-Request-Id"] in message
            assert b"\xff\xd8" not in body
        wait_for_log(caplog, f"POST {ANONYMIZE} 500 ")
    monkeypatch.undo()
    # The 500 logs its traceback (for the operator), without the client's address or query.
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 2 and "simulated failure" in caplog.text
    assert "127.0.0.1" not in caplog.text and "detections" not in caplog.text
    assert metric(server, "anonlab_failures_total", kind="internal") == internal + 2
    assert call(server, "POST", ANONYMIZE, photo)[0] == 200


@contextlib.contextmanager
def ready_server(runtime: Runtime, config: ServiceConfig) -> Iterator[AnonymizeServer]:
    """A server of its own on `config`, ready; stopped at the end."""
    srv = start_server(runtime, "127.0.0.1", 0, config)
    try:
        srv.wait_ready(30)
        yield srv
    finally:
        srv.stop(grace=5)


def hold_detection(
    srv: AnonymizeServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Make `srv`'s detection wait: (running, release), set once one has begun, and what lets
    it go on."""
    running, release = threading.Event(), threading.Event()
    detect = srv.runtime.detect

    def held(rgb: np.ndarray) -> Any:
        running.set()
        release.wait(30)
        return detect(rgb)

    monkeypatch.setattr(srv.runtime, "detect", held)
    return running, release


def test_over_capacity_gets_503_with_retry_after(
    runtime: Runtime, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServiceConfig(max_concurrency=1, max_queue=1, queue_timeout=2, read_timeout=5)
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    running, release = hold_detection(srv, monkeypatch)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call, srv, "POST", ANONYMIZE, photo)
            assert running.wait(10)  # holds the only slot
            queued = pool.submit(call, srv, "POST", ANONYMIZE, photo)
            deadline = time.monotonic() + 2  # until it is admitted (in flight: 2 + the scrape)
            while metric(srv, "anonlab_http_requests_in_flight") < 3:
                assert time.monotonic() < deadline
            status, headers, body = call(srv, "POST", ANONYMIZE, photo)
            assert status == 503 and headers["Retry-After"] == "1"
            assert "capacity" in assert_json_error(status, headers, body)
            status, headers, body = queued.result(10)  # gave up after queue_timeout
            assert status == 503 and "no inference slot" in json.loads(body)["error"]
            release.set()
            assert first.result(30)[0] == 200
    finally:
        release.set()
        srv.stop(grace=5)


def test_a_request_over_its_timeout_gets_504_and_its_inference_keeps_the_slot(
    runtime: Runtime, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ready_server(runtime, ServiceConfig(max_concurrency=1, request_timeout=1.0)) as srv:
        _, release = hold_detection(srv, monkeypatch)
        started = time.monotonic()
        status, headers, body = call(srv, "POST", ANONYMIZE, photo)
        assert status == 504 and time.monotonic() - started < 3
        message = assert_json_error(status, headers, body)
        assert "over 1 s (--request-timeout)" in message
        # The inference it started still runs, in the only slot: nothing more runs at once.
        assert metric(srv, "anonlab_inferences_in_flight") == 1
        assert metric(srv, "anonlab_failures_total", kind="timeout") == 1
        release.set()
        monkeypatch.undo()
        deadline = time.monotonic() + 10
        while metric(srv, "anonlab_inferences_in_flight"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert call(srv, "POST", ANONYMIZE, photo)[0] == 200


def test_stop_lets_an_admitted_image_finish(
    runtime: Runtime, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = start_server(runtime, "127.0.0.1", 0, CONFIG)
    srv.wait_ready(30)
    running, release = hold_detection(srv, monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, srv, "POST", ANONYMIZE, photo)
        assert running.wait(10)
        threading.Timer(1.0, release.set).start()  # while the server is stopping
        srv.stop(grace=10)
        status, headers, _ = pending.result(10)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert not srv.ready
    with pytest.raises(OSError):
        call(srv, "GET", "/healthz")  # the socket is closed


def test_openapi_document_and_offline_docs(server: AnonymizeServer) -> None:
    status, headers, body = call(server, "GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == set(ENDPOINTS)
    anonymize = document["paths"][ANONYMIZE]["post"]
    statuses = {"200", "400", "408", "411", "413", "422", "500", "503", "504"}
    assert set(anonymize["responses"]) == statuses
    assert [p["name"] for p in anonymize["parameters"]] == ["detections"]
    status, headers, body = call(server, "GET", "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    for path in ENDPOINTS:
        assert f"{path}</h2>" in page
    # Offline: nothing is fetched from elsewhere (no script, stylesheet or absolute URL).
    assert "<script" not in page and "<link" not in page and "http" not in page


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_concurrency", 0, r"max_concurrency \(--max-concurrency\) is 0: .* above 0"),
        ("max_body_bytes", -1, r"max_body_bytes \(--max-body-mb\) is -1"),
        ("max_pixels", 0, r"max_pixels \(--max-pixels\) is 0"),
        ("min_upload_rate", 0, r"min_upload_rate \(--min-upload-rate\) is 0: .* above 0"),
        ("upload_grace", float("nan"), r"upload_grace \(--upload-grace\) is nan"),
        ("max_uploads", 0, r"max_uploads \(--max-uploads\) is 0"),
        ("min_bytes_per_mp", -5, r"min_bytes_per_mp \(--min-bytes-per-mp\) is -5: .* 0 or more"),
        ("cost_check_pixels", float("inf"), r"cost_check_pixels \(--cost-check-mp\) is inf"),
    ],
)
def test_config_is_checked(field: str, value: float, says: str) -> None:
    with pytest.raises(ServingError, match=says):
        ServiceConfig(**{field: value})
    ServiceConfig(min_bytes_per_mp=0, cost_check_pixels=0, upload_grace=0, max_queue=0)


# ---------------------------------------------------------------------------------------------
# Bounds: slow uploads, bursts, cheap huge images, quiet logs


class Trickler:
    """A client that announces `length` bytes and sends one every `every` seconds until the
    server answers or closes; `status` and `seconds` (since its body began) once it has."""

    def __init__(self, srv: AnonymizeServer, length: int = 100_000, every: float = 0.3) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        self.status: int | None = None
        self.seconds = float("inf")
        self.message = ""
        head = f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        self.sock.sendall(head.encode())
        self._started = time.monotonic()
        self._every = every
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(self._every)
        reply = b""
        try:
            while time.monotonic() - self._started < 20:  # stops by itself, whatever happens
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    self.sock.sendall(b"x")
                    continue
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        finally:
            self.seconds = time.monotonic() - self._started
            self.sock.close()
        if reply:
            self.status, _, payload = split(reply)
            self.message = payload["error"]


def tricklers(srv: AnonymizeServer, count: int) -> list[Trickler]:
    """`count` trickling clients, returned once the server is receiving all their bodies."""
    clients = [Trickler(srv) for _ in range(count)]
    deadline = time.monotonic() + 5
    while metric(srv, "anonlab_uploads_in_flight") < count:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return clients


def assert_cut(clients: list[Trickler], grace: float) -> None:
    for client in clients:
        client.thread.join(grace + 5)
        assert client.status == 408, client.message
        assert "too slowly" in client.message and "--min-upload-rate" in client.message
        assert client.seconds < grace + 2  # cut about `grace` seconds after its body began


def test_slow_uploads_hold_no_admission(runtime: Runtime, photo: bytes) -> None:
    # 6 tricklers, more than the 2 requests admitted (1 running + 1 queued): they hold upload
    # slots, not admission, so a request whose body has arrived is served while they trickle.
    grace = 3.0
    config = ServiceConfig(
        max_concurrency=1, max_queue=1, max_uploads=8, upload_grace=grace, min_upload_rate=1000
    )
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    try:
        started = time.monotonic()
        slow = tricklers(srv, 6)
        status, _, body = call(srv, "POST", ANONYMIZE, photo)
        assert status == 200, body[:300]
        # Served before any trickler can have been cut: all six were uploading all along.
        assert time.monotonic() - started < grace
        assert_cut(slow, grace)
        assert metric(srv, "anonlab_failures_total", kind="timeout") == 6
    finally:
        srv.stop(grace=1)


def test_trickling_clients_lock_nobody_out_beyond_the_grace(runtime: Runtime, photo: bytes) -> None:
    # As many tricklers as upload slots: a legitimate client gets 503 (with Retry-After) until
    # they are cut after the grace period, then 200.
    grace = 1.0
    config = ServiceConfig(max_uploads=3, upload_grace=grace, min_upload_rate=1000)
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    try:
        slow = tricklers(srv, 3)
        started = time.monotonic()
        statuses = []
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() - started < grace + 2, statuses
            status, headers, body = call(srv, "POST", ANONYMIZE, photo)
            statuses.append(status)
            if status == 503:
                assert headers["Retry-After"] == "1"
                assert "--max-uploads" in assert_json_error(status, headers, body)
                time.sleep(0.1)
        assert statuses[0] == 503 and statuses[-1] == 200
        assert_cut(slow, grace)
    finally:
        srv.stop(grace=1)


def test_a_silent_body_is_cut_by_the_read_timeout(server: AnonymizeServer) -> None:
    head = f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    config = ServiceConfig(read_timeout=0.5, upload_grace=30)
    srv = start_server(server.runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    try:
        reply, seconds = raw(srv, head.encode() + b"x" * 10)
        status, _, payload = split(reply)
        assert status == 408 and "no part of the body arrived for 0.5 s" in payload["error"]
        assert seconds < 3
    finally:
        srv.stop(grace=1)


def test_a_connection_without_a_whole_request_head_is_closed(server: AnonymizeServer) -> None:
    with ready_server(server.runtime, ServiceConfig(read_timeout=0.5, keep_alive=30)) as srv:
        for data in [b"", f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\n".encode()]:
            reply, seconds = raw(srv, data)
            assert reply == b"" and seconds < 3
        # After a response too: the next head must come within the read timeout.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            reply = b""
            while not reply.endswith(b'{"status": "alive"}'):
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 ")
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert sock.recv(65536) == b"" and time.monotonic() - started < 3


def test_a_burst_of_posts_gets_responses_not_resets(runtime: Runtime, photo: bytes) -> None:
    # 40 clients at once against 1 upload, 1 inference and no queue: every one gets 200 or
    # 503, none a reset. More than socketserver's backlog of 5 connect at once, and each body
    # (8.4 MB) outgrows both a lingering close's 1 MiB and the loopback socket buffers, so a
    # refused body that is not read whole would reset the connection under the client.
    config = ServiceConfig(max_concurrency=1, max_queue=0, max_uploads=1, queue_timeout=0)
    comment = b"\xff\xfe\xff\xff" + b"x" * 65533  # a JPEG COM segment of 64 KiB
    body = photo[:2] + comment * 128 + photo[2:]
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    clients = 40
    start = threading.Barrier(clients)

    def post() -> int | str:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            start.wait(10)
            conn.request("POST", ANONYMIZE, body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "1"
            return resp.status
        except OSError as exc:
            return type(exc).__name__
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _: post(), range(clients)))
    finally:
        srv.stop(grace=1)
    assert set(results) <= {200, 503}, results
    assert results.count(200) >= 1 and results.count(503) >= 1


def test_a_refused_body_is_read_so_the_client_gets_its_answer(server: AnonymizeServer) -> None:
    # Refused before its body is read, each body (8 MiB, within max_body_bytes) is read and
    # dropped before the connection closes: unread, its bytes would reset the connection and
    # the client would see that instead of the answer.
    config = ServiceConfig(max_body_bytes=16 << 20)
    srv = start_server(server.runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    body = b"\xff" * (8 << 20)
    try:
        for path, status in [("/v1/blur", 404), (f"{ANONYMIZE}?detection=true", 400)]:
            got, headers, reply = call(srv, "POST", path, body)
            assert got == status and headers["Connection"] == "close"
            assert_json_error(got, headers, reply)
    finally:
        srv.stop(grace=1)


def test_a_flat_huge_png_is_refused_before_decoding(server: AnonymizeServer) -> None:
    # 36 MP in about 120 KB: minutes of detection for a tiny upload.
    ok, png = cv2.imencode(
        ".png", np.full((6000, 6000, 3), 128, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    flat = png.tobytes()
    assert ok and len(flat) < 200_000
    refused = metric(server, "anonlab_failures_total", kind="too_costly")
    started = time.monotonic()
    status, headers, body = call(server, "POST", ANONYMIZE, flat)
    seconds = time.monotonic() - started
    assert status == 422
    message = assert_json_error(status, headers, body)
    assert "6000x6000" in message and "CPU-cost guard" in message
    assert "--min-bytes-per-mp" in message
    assert seconds < 1.0  # decoding it alone takes 1-2 s on a shared 2-core machine
    assert metric(server, "anonlab_failures_total", kind="too_costly") == refused + 1


@pytest.mark.parametrize(
    ("width", "height", "size", "says"),
    [
        (6000, 6000, 119_906, "CPU-cost guard"),  # a flat PNG
        (6000, 6000, 575_000, "CPU-cost guard"),  # 15 972 bytes per MP: just under 16 000
        (6000, 6000, 576_000, None),  # 16 000 per MP
        (8000, 4000, 3_000_000, None),  # a 32 MP panorama JPEG of 3 MB
        (2000, 2000, 1_000, None),  # 4 MP: small enough to be cheap whatever its file
        (2001, 2000, 1_000, "CPU-cost guard"),
        (8000, 8000, 64 << 20, None),  # the budget: 64 MP
        (8001, 8000, 64 << 20, "over this server's limit of 64 MP (--max-pixels)"),
    ],
)
def test_pixel_budget_and_cost_guard(width: int, height: int, size: int, says: str | None) -> None:
    config = ServiceConfig()
    if says is None:
        check_image(width, height, size, config)
        return
    with pytest.raises(HttpError) as refused:
        check_image(width, height, size, config)
    assert refused.value.status == 422 and says in refused.value.message


def test_the_cost_guard_can_be_turned_off() -> None:
    check_image(6000, 6000, 119_906, ServiceConfig(min_bytes_per_mp=0))
    check_image(6000, 6000, 119_906, ServiceConfig(cost_check_pixels=36_000_000))


@pytest.mark.parametrize("kind", ["png", "jpeg", "tiff", "gif"])
def test_a_damaged_header_is_refused_before_admission(
    server: AnonymizeServer, photo: bytes, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # The runtime's own header reader refuses it, with the message the decode would give (in
    # the service's words: upload, not copy); the body waits for no slot and nothing is decoded
    # (a decode here would be a 500).
    data = {
        "png": b"\x89PNG\r\n\x1a\n" + bytes(40),
        "jpeg": photo[:40],  # cut inside its EXIF segment
        "tiff": b"II*\x00" + bytes(40),
        "gif": b"GIF89a" + bytes(64),
    }[kind]
    with pytest.raises(ImageError) as decoded:
        server.runtime.decode(data)

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(server.runtime, "anonymize_bytes", no_decode)
    monkeypatch.setattr(server.runtime, "decode", no_decode)
    bad_image = metric(server, "anonlab_failures_total", kind="bad_image")
    status, headers, body = call(server, "POST", ANONYMIZE, data)
    assert status == 422
    assert assert_json_error(status, headers, body) == decoded.value.for_upload()
    assert metric(server, "anonlab_failures_total", kind="bad_image") == bad_image + 1


def test_the_pixel_budget_is_the_services_own(runtime: Runtime, photo: bytes) -> None:
    # The runtime allows 100 000 pixels; the service's budget of 20 000 applies, from the
    # header, and the runtime is served as it was given, with its own limit.
    config = ServiceConfig(max_pixels=20_000)
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    try:
        status, headers, body = call(srv, "POST", ANONYMIZE, jpeg_bytes(texture(200, 150)))
        assert status == 422
        assert "(--max-pixels)" in assert_json_error(status, headers, body)
        assert call(srv, "POST", ANONYMIZE, photo)[0] == 200  # 12 288 pixels
        assert srv.runtime is runtime and runtime.max_pixels == MAX_PIXELS
    finally:
        srv.stop(grace=1)


def test_logs_hold_no_query_address_or_client_error_trace(
    server: AnonymizeServer,
    photo: bytes,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = "tok3n"
    with caplog.at_level("DEBUG", logger="serving.runtime.service"):
        assert call(server, "POST", f"{ANONYMIZE}?detections=true", photo)[0] == 200
        assert call(server, "POST", f"{ANONYMIZE}?key={secret}", photo)[0] == 400
        assert call(server, "GET", f"/nope?key={secret}")[0] == 404
        assert call(server, "POST", f"{ANONYMIZE}?detections=1", b"garbage")[0] == 422
        plain = f"POST {ANONYMIZE} HTTP/1.1\r\nHost: x\r\n"
        raw(server, (plain + "Content-Length: 999999999\r\n\r\n").encode())  # 413
        raw(server, (plain + "\r\n").encode())  # 411
        raw(server, f"GET /x?key={secret} HTTP/1.1 extra\r\n\r\n".encode())  # 400
        # Reset by the client while its body arrives, and before its request line.
        for data in [(plain + "Content-Length: 100\r\n\r\nabc").encode(), b""]:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(data)
            time.sleep(0.2)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        for status in (200, 404, 422, 413, 411):
            wait_for_log(caplog, f" {status} ")
        deadline = time.monotonic() + 5  # the ?key= request's line and the reset body's
        while caplog.text.count(f"POST {ANONYMIZE} 400 ") < 2:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
    logged = caplog.text + capfd.readouterr().err
    assert f"POST {ANONYMIZE} 200 " in logged and "GET /nope 404 " in logged
    assert secret not in logged and "detections" not in logged  # no query string
    assert "127.0.0.1" not in logged  # no client address
    assert "Traceback" not in logged and not [r for r in caplog.records if r.exc_info]


# ---------------------------------------------------------------------------------------------
# Load: no failures, no memory growth

# 4 clients x (25 warm-up + 125 measured) = 600 requests of a 96x96 JPEG: 40-60 requests/s, so
# 10-15 s on a shared 2-core machine, and the whole file stays under a minute with the export.
CLIENTS = 4
WARMUP_PER_CLIENT = 25
MEASURED_PER_CLIENT = 125
RSS_SLACK_KB = 16 << 10  # allocator and onnxruntime arena jitter, not per-request growth
TRACED_SLACK = 1 << 20


def run_clients(srv: AnonymizeServer, data: bytes, per_client: int) -> tuple[list, list]:
    statuses: list[int] = []
    latencies: list[float] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        try:
            for _ in range(per_client):
                started = time.perf_counter()
                conn.request("POST", ANONYMIZE, body=data)
                resp = conn.getresponse()
                resp.read()
                latencies.append(time.perf_counter() - started)
                statuses.append(resp.status)
        finally:
            conn.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(CLIENTS)]:
            future.result()
    return statuses, latencies


def test_load_without_failures_or_memory_growth(server: AnonymizeServer) -> None:
    data = jpeg_bytes(texture(96, 96, seed=7))
    tracemalloc.start()
    try:
        statuses, _ = run_clients(server, data, WARMUP_PER_CLIENT)
        assert set(statuses) == {200}
        gc.collect()
        rss_before, traced_before = rss_kb(), tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        statuses, latencies = run_clients(server, data, MEASURED_PER_CLIENT)
        seconds = time.perf_counter() - started
        gc.collect()
        rss_after, traced_after = rss_kb(), tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(statuses) == CLIENTS * MEASURED_PER_CLIENT and set(statuses) == {200}
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    print(
        f"\n{len(statuses)} requests, {CLIENTS} clients: {len(statuses) / seconds:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; RSS {rss_before} -> {rss_after} kB, "
        f"traced {traced_before} -> {traced_after} B"
    )
    assert rss_after - rss_before < RSS_SLACK_KB
    assert traced_after - traced_before < TRACED_SLACK


# ---------------------------------------------------------------------------------------------
# The command line


@contextlib.contextmanager
def anonlab_serve(artifact: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, queue.Queue]]:
    """`anonlab serve --model artifact --port 0 *flags` in a subprocess, and its stderr lines;
    killed at the end if it is still running."""
    command = [sys.executable, "-m", "serving.cli", "serve", "--model", str(artifact)]
    proc = subprocess.Popen(
        [*command, "--port", "0", *flags],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_anonlab_serve_stops_on_sigterm(artifact: Path, photo: bytes) -> None:
    with anonlab_serve(artifact) as (proc, lines):
        url = wait_for_line(lines, r"listening on (http://\S+)", 60)
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while call(port, "GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        status, headers, _ = call(port, "POST", ANONYMIZE, photo)
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        wait_for_line(lines, rf"POST {ANONYMIZE} 200 [0-9.]+ ms in={len(photo)} out=", 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_for_line(lines, "stopped", 5)


def test_anonlab_serve_workers_share_the_port_and_stop_on_sigterm(
    artifact: Path, photo: bytes
) -> None:
    with anonlab_serve(artifact, "--workers", "2") as (proc, lines):
        url = wait_for_line(lines, r"listening on (http://\S+) with 2 workers", 60)
        port = int(url.rsplit(":", 1)[1])
        pids = wait_for_line(lines, r"2 worker processes: (\d+, \d+)", 30)
        workers = [int(pid) for pid in pids.split(", ")]
        for _ in range(2):
            wait_for_line(lines, "ready on ", 60)
        # Each request on a new connection, taken by whichever worker accepts it first.
        assert {call(port, "POST", ANONYMIZE, photo)[0] for _ in range(8)} == {200}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for pid in workers:  # stopped and reaped, not left running
            assert not Path(f"/proc/{pid}").exists()


def test_max_pixels_is_one_flag_whose_default_is_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    serve = parser.parse_args(["serve", "--model", "m"])
    blur = parser.parse_args(["blur", "in.jpg", "--model", "m", "--out", "o"])
    assert serve.max_pixels == 64_000_000 and blur.max_pixels == 150_000_000
    assert not hasattr(serve, "max_image_mp")
    for command, default in (("serve", "64000000 (64 MP)"), ("blur", "150000000 (150 MP)")):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert f"default {default}" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("given", "expected"), [([], 64_000_000), (["5000000"], 5_000_000)])
def test_serve_gives_the_runtime_and_the_service_the_same_pixel_limit(
    monkeypatch: pytest.MonkeyPatch, given: list[str], expected: int
) -> None:
    seen: dict[str, int] = {}

    def load(paths: list[str], **kwargs: Any) -> Runtime:
        seen["runtime"] = kwargs["max_pixels"]
        raise ServingError("stop here")

    class Stopped:
        failure: ServingError | None = None

        def stop(self, grace: float) -> None:
            pass

    def start(loader: Any, host: str, port: int, config: ServiceConfig) -> Stopped:
        seen["service"] = config.max_pixels
        server = Stopped()
        try:
            loader()
        except ServingError as exc:
            server.failure = exc
        return server

    monkeypatch.setattr(Runtime, "load", load)
    monkeypatch.setattr("serving.runtime.service.start_server", start)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    flag = ["--max-pixels", *given] if given else []
    assert cli_main(["serve", "--model", "m", *flag]) == 2
    assert seen == {"runtime": expected, "service": expected}


@pytest.mark.parametrize("command", ["serve", "blur"])
def test_a_bad_max_pixels_is_named(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, *(["x", "--out", "o"] if command == "blur" else []), "--model", "m"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--max-pixels", "0"])
    assert exited.value.code == 2
    assert "argument --max-pixels: '0' is not above 0" in capsys.readouterr().err


def wait_for_line(lines: queue.Queue[str], pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        found = re.search(pattern, line)
        if found:
            return found.group(found.lastindex or 0)


def test_a_composite_is_served_as_one_anonymizer_that_hides_heads(
    shared_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = [
        shutil.copytree(shared_artifact, tmp_path / "members" / shared_artifact.name),
        keypoint_member(shared_artifact, tmp_path / "members"),
    ]
    anonymizer = write_composite(tmp_path, members)
    stand_in(monkeypatch)
    runtime = Runtime.load([anonymizer], threads=1, max_pixels=MAX_PIXELS)
    srv = start_server(runtime, "127.0.0.1", 0, CONFIG)
    try:
        srv.wait_ready(60)
        status, _, body = call(srv, "GET", "/readyz")
        [model] = json.loads(body)["models"]
        assert status == 200 and model["name"] == "anonymizer" and model["release"] is True
        assert model["manifest_sha256"] == read_composite(anonymizer)["manifest_sha256"]
        assert [m["name"] for m in model["members"]] == ["tiny", "tinykp"]

        image = image_with_a_face_from_behind()
        status, _, body = call(srv, "POST", f"{ANONYMIZE}?detections=true", png(image))
        assert status == 200, body[:300]
        payload = json.loads(body)
        heads = [d["box"] for d in payload["detections"] if d["class"] == HEAD]
        assert heads == [expected_head(anonymizer)]
        after = decode(base64.b64decode(payload["image"]))
        x0, y0, x1, y1 = BACK_OF_HEAD
        assert (after[y0:y1, x0:x1] != image[y0:y1, x0:x1]).any(axis=2).all()
    finally:
        srv.stop(grace=5)
