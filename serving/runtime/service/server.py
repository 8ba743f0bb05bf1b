"""The HTTP server (`AnonymizeServer`): its runtime, limits and metrics, the warm-up that makes
it ready, and a stop that lets admitted images finish; `start_server` binds and starts one."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from serving.runtime.errors import ServingError
from serving.runtime.pipeline import Runtime
from serving.runtime.service.config import ServiceConfig
from serving.runtime.service.handler import Handler
from serving.runtime.service.limits import Limits
from serving.runtime.service.metrics import Metrics

log = logging.getLogger(__name__)

# socketserver's default backlog is 5: a burst of connections beyond it got resets, not 503s.
_BACKLOG = 128
_WARMUP_SIZE = (320, 240)


class AnonymizeServer(ThreadingHTTPServer):
    """The HTTP server with its runtime, limits and metrics; made and started by `start_server`."""

    daemon_threads = True
    request_queue_size = _BACKLOG

    def __init__(self, address: tuple[str, int], config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.limits = Limits(config, self.metrics)
        self.runtime: Runtime | None = None
        self.failure: ServingError | None = None  # why warm-up failed; the service never gets ready
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready or failed
        self.stopping = False
        super().__init__(address, Handler)

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

    def stop(self, grace: float = 10.0) -> None:
        """Stop: /readyz and new images get 503, accepting ends, admitted images finish (up to
        `grace` seconds), then the socket is closed."""
        self.stopping = True
        self.shutdown()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self.limits.idle:
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


def start_server(
    runtime: Runtime | Callable[[], Runtime],
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServiceConfig | None = None,
) -> AnonymizeServer:
    """Bind `host:port` (0: any free port), serve in a background thread, and load and warm up
    `runtime` (a Runtime, or a function that loads one) in another; returns at once. /readyz
    and `server.wait_ready()` say when images are taken; `server.stop()` ends it.

    The service's pixel budget (`config.max_pixels`) is checked from each file's header before
    the runtime decodes it; the runtime's own `max_pixels` applies as well (`anonlab serve`
    gives both the same value)."""
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
