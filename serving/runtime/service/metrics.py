"""The service's counters (`Metrics`), rendered in the Prometheus text exposition format."""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path

from serving.runtime.pipeline import Anonymized
from serving.runtime.service.protocol import ENDPOINTS, FAILURE_KINDS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
