"""The HTTP service against a real server on 127.0.0.1 with the real runtime on the tiny artifact:
images in and out, every limit and error, fail closed on internal failures, a bounded load test
without memory growth, and `anonlab serve` stopping cleanly on SIGTERM."""

from __future__ import annotations

import base64
import gc
import http.client
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from serving.runtime.errors import ServingError
from serving.runtime.pipeline import Runtime
from serving.runtime.service import ANONYMIZE, AnonymizeServer, ServiceConfig, start_server
from tests.conftest import REPO
from tests.images import jpeg_bytes, texture
from tests.serving.artifacts import CLASSES, tiny_artifact

MAX_PIXELS = 100_000
MAX_BODY = 256 << 10
CONFIG = ServiceConfig(
    max_body_bytes=MAX_BODY, max_concurrency=2, max_queue=8, queue_timeout=20, read_timeout=5
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("service"))


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


def test_probes(server: AnonymizeServer) -> None:
    assert call(server, "GET", "/healthz")[0] == 200
    status, _, body = call(server, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}


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
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"BREW /healthz HTTP/1.1\r\n\r\n", 501),
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
        deadline = time.monotonic() + 5  # the line is written after the response is sent
        while f"POST {path} {status}" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert got == status
    assert says in assert_json_error(got, headers, reply)
    logged = caplog.text
    assert "not an i" not in logged and "GIF89a" not in logged  # no body content in logs


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
    runtime: Runtime,
    photo: bytes,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("simulated failure")

    internal = metric(server, "anonlab_failures_total", kind="internal")
    monkeypatch.setattr(runtime, step, boom)
    for path in (ANONYMIZE, f"{ANONYMIZE}?detections=true"):
        status, headers, body = call(server, "POST", path, photo)
        assert status == 500
        message = assert_json_error(status, headers, body)
        assert "not anonymized" in message and headers["X-Request-Id"] in message
        assert b"\xff\xd8" not in body
    monkeypatch.undo()
    assert metric(server, "anonlab_failures_total", kind="internal") == internal + 2
    assert call(server, "POST", ANONYMIZE, photo)[0] == 200


def test_over_capacity_gets_503_with_retry_after(
    runtime: Runtime, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServiceConfig(max_concurrency=1, max_queue=1, queue_timeout=2, read_timeout=5)
    srv = start_server(runtime, "127.0.0.1", 0, config)
    srv.wait_ready(30)
    release, running = threading.Event(), threading.Event()
    detect = runtime.detect

    def slow_detect(rgb: np.ndarray) -> Any:
        running.set()
        release.wait(30)
        return detect(rgb)

    monkeypatch.setattr(runtime, "detect", slow_detect)
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


def test_config_is_checked() -> None:
    with pytest.raises(ServingError, match="max_concurrency is 0"):
        ServiceConfig(max_concurrency=0)


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


def test_anonlab_serve_stops_on_sigterm(artifact: Path, photo: bytes) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model", str(artifact), "--port", "0"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_line(lines: queue.Queue[str], pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        found = re.search(pattern, line)
        if found:
            return found.group(found.lastindex or 0)
