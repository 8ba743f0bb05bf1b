"""The ASGI application: routing, reading a body from `receive()` in chunks under the upload
deadline, the anonymize request from upload to reply, and sending and logging each response."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from serving.runtime.errors import ImageError
from serving.runtime.pipeline import Anonymized, Runtime
from serving.runtime.service.limits import check_header
from serving.runtime.service.openapi import DOCUMENT, docs_page
from serving.runtime.service.protocol import (
    ANONYMIZE,
    CONTENT_TYPES,
    HTML,
    METRICS_TYPE,
    HttpError,
    Reply,
    error_reply,
    json_reply,
)

if TYPE_CHECKING:
    from serving.runtime.service.server import AnonymizeServer

log = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# After refusing a body it will not read whole (over max_body_bytes, chunked, or an upload cut
# off), the server drains at most this much before closing, so the client's kernel more likely
# delivers the response than a reset; the rest is never read.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0
_DIGITS = re.compile(r"[0-9]{1,20}")
# The methods routed to a 404 or 405; any other gets 501, as from the standard library's server.
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


def log_request(
    level: int,
    method: str,
    path: str,
    status: int,
    seconds: float,
    sizes: tuple[int, int],
    rid: str,
) -> None:
    """A request's one line: never its query string, body or the client's address."""
    log.log(
        level,
        "%s %s %d %.1f ms in=%d out=%d id=%s",
        (method if method.isalpha() else "-")[:16],
        path[:200].encode("unicode_escape").decode("ascii"),
        status,
        1000 * seconds,
        *sizes,
        rid,
    )


class AnonymizeApp:
    """The service as an ASGI 3 application over `server`'s runtime, limits and metrics."""

    def __init__(self, server: AnonymizeServer) -> None:
        self.server = server

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await Exchange(self.server, scope, receive, send).run()


class Exchange:
    """One request and its response: routed, answered with a `Reply`, counted in the metrics
    and logged in one line; a body left unread is drained before the connection closes."""

    def __init__(self, server: AnonymizeServer, scope: Message, receive: Receive, send: Send):
        self.server = server
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = scope["query_string"].decode("latin-1")
        self.headers: list[tuple[str, str]] = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        self._receive = receive
        self._send = send
        self.request_id = uuid.uuid4().hex[:16]
        self.bytes_in = 0
        self.body_started = False  # receive() called: 100 Continue sent or the body asked for
        self.body_read = False
        self.disconnected = False
        self.expect_continue = self.header("expect", "").lower() == "100-continue"

    def header(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.headers if k == name), default)

    def header_all(self, name: str) -> list[str]:
        return [v.strip() for k, v in self.headers if k == name for v in v.split(",")]

    async def run(self) -> None:
        started = time.perf_counter()
        metrics = self.server.metrics
        metrics.add_in_flight(1)
        try:
            reply = await self.reply()
        finally:
            metrics.add_in_flight(-1)
        # Counted before the response goes out, so a client that has it sees it in /metrics.
        seconds = time.perf_counter() - started
        size = 0 if self.method == "HEAD" else len(reply.body)
        metrics.request(self.path, reply.status, seconds, self.bytes_in, size)
        unread = self.unread_body(reply)
        # The client sends a body it announced unless it waits for a 100 Continue it never got.
        length = self.drainable_length()
        waiting = self.expect_continue and not self.body_started
        await self.send(reply, close=unread)
        level = logging.INFO if self.path == ANONYMIZE else logging.DEBUG
        sizes = (self.bytes_in, 0 if self.disconnected else size)
        log_request(level, self.method, self.path, reply.status, seconds, sizes, self.request_id)
        if unread:
            if not waiting and not self.disconnected:
                await self.drain(length if not self.body_started else None)
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def reply(self) -> Reply:
        try:
            return await self.route()
        except HttpError as exc:
            self.server.metrics.failure(exc.kind)
            return error_reply(exc.status, exc.message, exc.headers)
        except Exception:
            # Fail closed: whatever happened, no image bytes go out with a 5xx.
            log.exception("request %s failed", self.request_id)
            self.server.metrics.failure("internal")
            return error_reply(
                500,
                "internal error: the image was not anonymized and nothing of it is returned; "
                f"retry, and report request id {self.request_id} if it persists",
            )

    async def route(self) -> Reply:
        if self.method not in _METHODS:
            raise HttpError(
                501,
                f"method {self.method[:16]!r} is not supported: use GET or POST",
                "bad_request",
            )
        routes: dict[str, dict[str, Callable[[], Awaitable[Reply]]]] = {
            ANONYMIZE: {"POST": self.anonymize},
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
            "/metrics": {"GET": self.metrics},
            "/openapi.json": {"GET": self.openapi},
            "/docs": {"GET": self.docs},
        }
        methods = routes.get(self.path)
        if methods is None:
            raise HttpError(
                404,
                f"no endpoint {self.path[:200]}: use POST {ANONYMIZE}, or GET /healthz, /readyz, "
                "/metrics, /docs",
                "not_found",
            )
        handler = methods.get(self.method)
        if handler is None:
            allowed = ", ".join(methods)
            raise HttpError(
                405,
                f"{self.method} is not allowed on {self.path}: use {allowed}",
                "method_not_allowed",
                {"Allow": allowed},
            )
        return await handler()

    async def healthz(self) -> Reply:
        return json_reply(200, {"status": "alive"})

    async def readyz(self) -> Reply:
        server = self.server
        if server.ready and server.runtime is not None:
            return json_reply(200, {"ready": True, "models": server.runtime.identity()})
        reason = (
            "stopping"
            if server.stopping
            else f"warm-up failed: {server.failure}"
            if server.failure
            else "loading the models"
        )
        return json_reply(503, {"ready": False, "reason": reason})

    async def metrics(self) -> Reply:
        text = self.server.metrics.render(ready=self.server.ready)
        return Reply(200, METRICS_TYPE, text.encode())

    async def openapi(self) -> Reply:
        return json_reply(200, DOCUMENT)

    async def docs(self) -> Reply:
        return Reply(200, HTML, docs_page().encode())

    async def anonymize(self) -> Reply:
        server = self.server
        want_json = self.detections_flag()
        length = self.content_length()
        if not server.ready:
            raise server.limits.unavailable(
                "the service is not ready (loading the models, or stopping): retry shortly",
                "not_ready",
            )
        runtime = server.runtime
        assert runtime is not None
        timeout = server.config.request_timeout
        try:
            async with asyncio.timeout(timeout):
                done = await self.anonymized(runtime, length)
        except TimeoutError:
            raise HttpError(
                504,
                f"the request took over {timeout:g} s (--request-timeout), from its headers to "
                "the anonymized image: nothing of it is returned; retry, or send a smaller image",
                "timeout",
            ) from None
        server.metrics.anonymized(done)
        content_type = CONTENT_TYPES[done.format]
        if not want_json:
            return Reply(200, content_type, done.data)
        return json_reply(
            200,
            {
                "image": base64.b64encode(done.data).decode("ascii"),
                "content_type": content_type,
                **done.report(),
            },
        )

    async def anonymized(self, runtime: Runtime, length: int) -> Anonymized:
        limits = self.server.limits
        with ExitStack() as admitted:
            with limits.upload():
                body = await self.read_body(length)
                # Before admission: a refused image waits for no slot and costs no decode.
                check_header(body, self.server.config)
                # Admitted before the upload slot is given back, so that every body held is
                # counted in one of the two (the memory bound).
                admitted.enter_context(limits.admission())
            # Released when the inference is over, which may be after this request stopped
            # waiting for it (504): its body is held until then.
            held = admitted.pop_all()
        return await limits.infer(lambda: _anonymized(runtime, body), held.close)

    def detections_flag(self) -> bool:
        query = parse_qs(self.query, keep_blank_values=True)
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

    def content_length(self) -> int:
        """The body's announced size, checked against the limits before any of it is read."""
        if self.header("transfer-encoding") is not None:
            raise HttpError(
                411,
                "chunked (Transfer-Encoding) uploads are not accepted: send the file with a "
                "Content-Length",
                "length_required",
            )
        values = self.header_all("content-length")
        if not values:
            raise HttpError(
                411,
                "Content-Length is required: send the image file as the body",
                "length_required",
            )
        if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0]):
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

    def drainable_length(self) -> int | None:
        """The body's length when it is framed by one valid Content-Length within
        `max_body_bytes` (a body the server may read to discard it), else None."""
        values = self.header_all("content-length")
        if self.header("transfer-encoding") is not None or len(set(values)) != 1:
            return None
        if not _DIGITS.fullmatch(values[0]):
            return None
        length = int(values[0])
        return length if 0 < length <= self.server.config.max_body_bytes else None

    async def read_body(self, length: int) -> bytes:
        body = await self.receive(length, keep=True)
        self.body_read = True
        return body

    async def receive(self, length: int, *, keep: bool) -> bytes:
        """The body's `length` bytes (with `keep` false, read and dropped: b""), in chunks under
        the upload deadline: once `upload_grace` seconds have passed, the bytes so far must
        average `min_upload_rate` per second since the body began, and no chunk may take over
        `read_timeout` seconds. 408 past either, 400 when the client ends the body early. The
        first call sends `100 Continue` to a client that asked for it."""
        config = self.server.config
        self.body_started = True
        started = time.monotonic()
        chunks: list[bytes] = []
        got = 0
        more = True
        while got < length and more:
            # The moment at which `got` bytes fall below the minimum average rate.
            due = started + config.upload_grace + got / config.min_upload_rate
            left = due - time.monotonic()
            silent = config.read_timeout < left  # whether a timeout now is read_timeout's
            try:
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(self._receive(), min(config.read_timeout, left))
            except TimeoutError:
                raise HttpError(
                    408, self._too_slow(silent, got, length, started), "timeout"
                ) from None
            if message["type"] == "http.disconnect":
                self.disconnected = True
                break
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            got += len(chunk)
            if keep:
                chunks.append(chunk)
                self.bytes_in = got
        if got < length:
            ended = (
                "the connection was reset during the body"
                if self.disconnected
                else f"the body ended after {got} bytes"
            )
            raise HttpError(
                400,
                f"{ended}, of the {length} announced: resend the whole file",
                "client_disconnected",
            )
        return b"".join(chunks)

    def _too_slow(self, silent: bool, got: int, length: int, started: float) -> str:
        config = self.server.config
        if silent:
            return (
                f"no part of the body arrived for {config.read_timeout:g} s ({got} of "
                f"{length} bytes received): resend it"
            )
        return (
            f"the body arrived too slowly: {got} of {length} bytes in "
            f"{time.monotonic() - started:.1f} s, under the minimum of {config.min_upload_rate} "
            f"bytes/s on average after the first {config.upload_grace:g} s (--min-upload-rate, "
            "--upload-grace): resend it over a faster connection"
        )

    def unread_body(self, reply: Reply) -> bool:
        """Whether the request announced a body that was not read whole: the connection is
        closed after the response (its bytes would be taken for the next request). So is one
        refused for want of a Content-Length (a body may follow, unframed)."""
        return not self.body_read and (
            reply.status == 411
            or self.header("transfer-encoding") is not None
            or (self.header("content-length") or "0").strip() not in ("", "0")
        )

    async def send(self, reply: Reply, *, close: bool) -> None:
        """Send `reply`; with `close`, say the connection closes and leave the response open
        (its whole body sent) so that the unread request body can be drained first."""
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Request-Id", self.request_id),
            ("Server", "anonlab"),
            *reply.headers.items(),
        ]
        if close:
            headers.append(("Connection", "close"))
        await self._send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await self._send({"type": "http.response.body", "body": reply.body, "more_body": close})

    async def drain(self, length: int | None) -> None:
        """Lingering close: discard what the client sends, so that its kernel delivers the
        response rather than a connection reset (which unread bytes at close cause). A body of
        known `length` (within max_body_bytes, not begun) is read whole under the upload
        deadline; anything else at most _DRAIN_BYTES in _DRAIN_SECONDS."""
        try:
            if length is not None:
                await self.receive(length, keep=False)
                return
            async with asyncio.timeout(_DRAIN_SECONDS):
                left = _DRAIN_BYTES
                while left > 0:
                    message = await self._receive()
                    left -= len(message.get("body", b""))
                    if message["type"] == "http.disconnect" or not message.get("more_body"):
                        break
        except (TimeoutError, HttpError):
            pass  # the response is out; a client that stops sending is not waited for


def _anonymized(runtime: Runtime, body: bytes) -> Anonymized:
    """`runtime.anonymize_bytes(body)`, its ImageError a 422. The decoded pixels are gone when
    this returns, before the inference slot is given back."""
    try:
        return runtime.anonymize_bytes(body)
    except ImageError as exc:
        raise HttpError(422, exc.for_upload(), "bad_image") from None
