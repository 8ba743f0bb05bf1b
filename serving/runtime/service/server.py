"""The HTTP server (`AnonymizeServer`): the ASGI app served by uvicorn on a socket bound here
(backlog 128), its runtime, limits and metrics, the warm-up that makes it ready, and a stop
that lets admitted images finish; `start_server` binds and starts one in background threads."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

import cv2
import h11
import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.runtime.errors import ServingError
from serving.runtime.pipeline import Runtime
from serving.runtime.service.app import AnonymizeApp, log_request
from serving.runtime.service.config import ServiceConfig
from serving.runtime.service.limits import Limits
from serving.runtime.service.metrics import Metrics
from serving.runtime.service.protocol import JSON

log = logging.getLogger(__name__)

# Python's default listen backlog is small: a burst of connections beyond it got resets, not 503s.
BACKLOG = 128
_WARMUP_SIZE = (320, 240)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (0: any free port) and listening with a backlog of 128;
    the worker processes of `anonlab serve --workers N` share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ServingError(
            f"cannot listen on {host}:{port} ({exc}): choose another --port"
        ) from None


class AnonymizeServer:
    """The service on one listening socket: uvicorn runs the ASGI app (`AnonymizeApp`) on an
    event loop of its own thread; made and started by `start_server`."""

    def __init__(self, sock: socket.socket, config: ServiceConfig) -> None:
        self.socket = sock
        self.config = config
        self.metrics = Metrics()
        self.limits = Limits(config, self.metrics)
        self.runtime: Runtime | None = None
        self.failure: ServingError | None = None  # why warm-up failed; the service never gets ready
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready or failed
        self.stopping = False
        self.server_address = sock.getsockname()[:2]
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                AnonymizeApp(self),
                http=_protocol(self.metrics, config.read_timeout),
                interface="asgi3",
                lifespan="off",
                loop="asyncio",
                access_log=False,  # the app logs its own line, without the client's address
                log_config=None,
                proxy_headers=False,
                server_header=False,
                backlog=BACKLOG,
                timeout_keep_alive=config.keep_alive,
            )
        )
        self._thread = threading.Thread(
            target=self._uvicorn.run, args=([sock],), name="anonlab-serve", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

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
        """Stop: /readyz and new images get 503, accepting ends, requests under way finish (up
        to `grace` seconds; then they are cancelled), then the socket is closed."""
        self.stopping = True
        self._uvicorn.config.timeout_graceful_shutdown = grace
        self._uvicorn.should_exit = True
        if self._thread.is_alive():
            self._thread.join(grace + 5)
        self.limits.close()
        self.socket.close()
        log.info("stopped")


def _protocol(metrics: Metrics, read_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, with two changes: a request it cannot parse is answered
    like any refusal of the app (JSON, counted, one log line without the request line: it can
    hold a query), and a connection whose request head (line and headers) has not arrived
    `read_timeout` seconds after it opened, or after its previous response, is closed (uvicorn
    alone waits for a head forever once any byte of it came)."""

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self._in_request():
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                self._await_head()

        def send_400_response(self, msg: str) -> None:
            rid = uuid.uuid4().hex[:16]
            body = json.dumps({"error": f"{msg} send a valid HTTP/1.1 request"}).encode()
            metrics.failure("bad_request")
            metrics.request("other", 400, 0.0, 0, len(body))
            log_request(logging.INFO, "-", "-", 400, 0.0, (0, len(body)), rid)
            headers = [
                (b"Content-Type", JSON.encode()),
                (b"Content-Length", str(len(body)).encode()),
                (b"X-Request-Id", rid.encode()),
                (b"Connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _await_head(self) -> None:
            self._stop_waiting()
            self._head_timer = self.loop.call_later(read_timeout, self._head_overdue)

        def _stop_waiting(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                log.debug("no request head within %g s: connection closed", read_timeout)
                self.transport.close()

    return Protocol


def start_server(
    runtime: Runtime | Callable[[], Runtime],
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServiceConfig | None = None,
    *,
    sock: socket.socket | None = None,
) -> AnonymizeServer:
    """Bind `host:port` (0: any free port; or serve `sock`, bound already), serve in a
    background thread, and load and warm up `runtime` (a Runtime, or a function that loads one)
    in another; returns at once. /readyz and `server.wait_ready()` say when images are taken;
    `server.stop()` ends it.

    The service's pixel budget (`config.max_pixels`) is checked from each file's header before
    the runtime decodes it; the runtime's own `max_pixels` applies as well (`anonlab serve`
    gives both the same value)."""
    server = AnonymizeServer(sock or listen(host, port), config or ServiceConfig())
    server.start()
    threading.Thread(
        target=server.warm_up, args=(runtime,), name="anonlab-warm-up", daemon=True
    ).start()
    log.info("listening on %s (not ready until the warm-up inference is done)", server.url)
    return server
