"""Load on `anonlab serve`: latency, throughput and server memory under concurrent clients.

    .venv/bin/python benchmarks/serve_load.py [--requests 3000] [--clients 4] [--model DIR]
        [--image FILE | --size 128x96] [--max-concurrency 2] [--threads 0] [--workers 1]
        [--code DIR] [--json]
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8080 [...]

Starts `anonlab serve` in a subprocess on a free port against the --model artifact folders (by
default the tests' tiny random-weight Mask R-CNN, exported into a temp dir first; not timed)
and waits for /readyz; or, with --url, loads a server that is already running. --code DIR runs
the `anonlab serve` of another source tree on the same model and flags, to compare servers:

    mkdir /tmp/old-serve && git archive 396d468 | tar -x -C /tmp/old-serve   # the stdlib server
    .venv/bin/python benchmarks/serve_load.py --code /tmp/old-serve

Then --clients
threads, each on one keep-alive connection, POST the same image to /v1/anonymize: --warmup
requests first (not measured), then --requests measured ones. Reports p50/p90/p99/max latency,
requests/s, status counts, and the server's resident memory (process_resident_memory_bytes from
/metrics: with --workers, that of the worker that answered the scrape) at start, after warm-up
and at the end: growth there under a steady load means a leak.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from serving.runtime.service import ANONYMIZE

REPO = Path(__file__).resolve().parent.parent


def synthetic_jpeg(width: int, height: int) -> bytes:
    from tests.images import jpeg_bytes, texture

    return jpeg_bytes(texture(width, height, seed=7), gps=True)


def tiny_model(folder: Path) -> Path:
    from tests.serving.artifacts import tiny_artifact

    return tiny_artifact(folder)


@contextlib.contextmanager
def serve(models: list[Path], args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """`anonlab serve` in a subprocess on a free port: (host, port) once /readyz says 200."""
    command = [sys.executable, "-m", "serving.cli", "serve", "--port", "0"]
    for model in models:
        command += ["--model", str(model)]
    command += [
        "--backend",
        args.backend,
        "--threads",
        str(args.threads),
        "--max-concurrency",
        str(args.max_concurrency),
        "--max-queue",
        str(max(args.clients, 8)),
        # Every client's body is received at once at the start: none is refused for want of an
        # upload slot, which would measure the limit instead of the service.
        "--max-uploads",
        str(max(args.clients, 16)),
    ]
    if args.workers != 1:  # the flag is the new server's: one worker runs without it
        command += ["--workers", str(args.workers)]
    code = args.code or REPO
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen(command, cwd=code, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if " 200 " not in line:  # request lines are noise here; keep warnings and errors
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"anonlab serve did not start:\n{drain(lines)}")
            with contextlib.suppress(queue.Empty):
                found = re.search(r"listening on http://\S+:(\d+)", lines.get(timeout=0.5))
                port = int(found.group(1)) if found else None
        while status("127.0.0.1", port, "/readyz") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"anonlab serve did not get ready:\n{drain(lines)}")
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            print(f"anonlab serve exited with {code}:\n{drain(lines)}", file=sys.stderr)


def drain(lines: queue.Queue[str]) -> str:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(lines.get_nowait())
    return "".join(out[-20:])


def status(host: str, port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", path)
        code = conn.getresponse().status
        conn.close()
        return code
    except OSError:
        return 0


def server_rss(host: str, port: int) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else None


def load(host: str, port: int, data: bytes, clients: int, total: int) -> tuple[list, Counter]:
    """`total` POSTs of `data` from `clients` threads; latencies (s) and status counts."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client(count: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            for _ in range(count):
                started = time.perf_counter()
                conn.request("POST", ANONYMIZE, body=data)
                resp = conn.getresponse()
                resp.read()
                seconds = time.perf_counter() - started
                with lock:
                    latencies.append(seconds)
                    statuses[resp.status] += 1
                if resp.will_close:
                    conn.close()
        finally:
            conn.close()

    shares = [total // clients + (i < total % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, n) for n in shares if n]:
            future.result()
    return latencies, statuses


def run(host: str, port: int, data: bytes, args: argparse.Namespace) -> dict:
    rss_start = server_rss(host, port)
    load(host, port, data, args.clients, args.warmup)
    rss_warm = server_rss(host, port)
    started = time.perf_counter()
    latencies, statuses = load(host, port, data, args.clients, args.requests)
    seconds = time.perf_counter() - started
    rss_end = server_rss(host, port)
    ms = np.array(latencies) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "requests": args.requests,
        "clients": args.clients,
        "image_bytes": len(data),
        "seconds": round(seconds, 2),
        "requests_per_s": round(args.requests / seconds, 1),
        "latency_ms": {
            "p50": round(p50, 1),
            "p90": round(p90, 1),
            "p99": round(p99, 1),
            "max": round(float(ms.max()), 1),
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_rss_mb": {
            "start": _mb(rss_start),
            "after_warmup": _mb(rss_warm),
            "end": _mb(rss_end),
        },
    }


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=200, help="requests before measuring")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections")
    parser.add_argument(
        "--model",
        action="append",
        type=Path,
        help="artifact folder for `anonlab serve` (repeatable; default: the tiny test model)",
    )
    parser.add_argument("--url", help="load this running server instead of starting one")
    parser.add_argument("--image", type=Path, help="the image file to send")
    parser.add_argument(
        "--size", default="128x96", help="WxH of the synthetic JPEG sent without --image"
    )
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--threads", type=int, default=0, help="server's inference threads")
    parser.add_argument(
        "--max-concurrency", type=int, default=2, help="server's images at once (default 2)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server's worker processes (default 1)"
    )
    parser.add_argument(
        "--code",
        type=Path,
        help="run the `anonlab serve` of this source tree (default: this checkout's)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.url and (args.model or args.code):
        parser.error("--url loads a running server: --model and --code are for one this starts")

    if args.image:
        data = args.image.read_bytes()
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        data = synthetic_jpeg(width, height)

    with tempfile.TemporaryDirectory(prefix="anonlab-serve-bench-") as tmp:
        if args.url:
            url = urlsplit(args.url)
            results = run(url.hostname or "127.0.0.1", url.port or 80, data, args)
            results["server"] = args.url
        else:
            models = args.model or [tiny_model(Path(tmp))]
            with serve(models, args) as (host, port):
                results = run(host, port, data, args)
            results["server"] = f"anonlab serve --model {' --model '.join(map(str, models))}"
            results["code"] = str(args.code or REPO)
            results["max_concurrency"] = args.max_concurrency
            results["threads"] = args.threads
            results["workers"] = args.workers
    results["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    lat, rss = results["latency_ms"], results["server_rss_mb"]
    print(
        f"{results['requests']} requests of a {len(data)} B image, {results['clients']} clients, "
        f"{results['cpus']} CPUs: {results['requests_per_s']} req/s in {results['seconds']} s"
    )
    print(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"statuses: {results['statuses']}")
    print(
        f"server RSS MB: start {rss['start']}, after warm-up {rss['after_warmup']}, "
        f"end {rss['end']}"
    )
    return 0 if set(results["statuses"]) == {"200"} else 1


if __name__ == "__main__":
    sys.exit(main())
