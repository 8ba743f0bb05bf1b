"""The HTTP request handler: routing, reading a body in chunks under the upload deadline, the
anonymize request from upload to reply, and sending and logging each response."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from serving.runtime.errors import ImageError
from serving.runtime.pipeline import Anonymized, Runtime
from serving.runtime.service.limits import check_header
from serving.runtime.service.protocol import (
    ANONYMIZE,
    CONTENT_TYPES,
    JSON,
    METRICS_TYPE,
    HttpError,
    Reply,
    error_reply,
    json_reply,
)

if TYPE_CHECKING:
    from serving.runtime.service.server import AnonymizeServer

log = logging.getLogger(__name__)

# After refusing a body it will not read whole (over max_body_bytes, no Content-Length, or an
# upload cut off), the server drains at most this much before closing, so the client's kernel
# more likely delivers the response than a reset; the rest is never read.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0
_CHUNK = 1 << 16
_DIGITS = re.compile(r"[0-9]{1,20}")


class Handler(BaseHTTPRequestHandler):
    """One connection's requests, kept alive (HTTP/1.1): each routed, answered with a `Reply`,
    counted in the metrics and logged in one line."""

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
            return error_reply(exc.status, exc.message, exc.headers)
        except Exception:
            # Fail closed: whatever happened, no image bytes go out with a 5xx.
            log.exception("request %s failed", self._request_id)
            self.server.metrics.failure("internal")
            return error_reply(
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
        return json_reply(200, {"status": "alive"})

    def _readyz(self) -> Reply:
        server = self.server
        if server.ready and server.runtime is not None:
            models = server.runtime.identity()
            return json_reply(200, {"ready": True, "models": models})
        reason = (
            "stopping"
            if server.stopping
            else f"warm-up failed: {server.failure}"
            if server.failure
            else "loading the models"
        )
        return json_reply(503, {"ready": False, "reason": reason})

    def _metrics(self) -> Reply:
        text = self.server.metrics.render(ready=self.server.ready)
        return Reply(200, METRICS_TYPE, text.encode())

    def _anonymize(self) -> Reply:
        server = self.server
        want_json = self._detections_flag()
        length = self._content_length()
        if not server.ready:
            raise server.limits.unavailable(
                "the service is not ready (loading the models, or stopping): retry shortly",
                "not_ready",
            )
        runtime = server.runtime
        assert runtime is not None
        with ExitStack() as admitted:
            with server.limits.upload():
                body = self._read_body(length)
                # Before admission: a refused image waits for no slot and costs no decode.
                check_header(body, server.config)
                # Admitted before the upload slot is given back, so that every body held is
                # counted in one of the two (the memory bound).
                admitted.enter_context(server.limits.admission())
            with server.limits.slot():
                done = _anonymized(runtime, body)
            del body
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


def _anonymized(runtime: Runtime, body: bytes) -> Anonymized:
    """`runtime.anonymize_bytes(body)`, its ImageError a 422. The decoded pixels are gone when
    this returns, before the inference slot is given back."""
    try:
        return runtime.anonymize_bytes(body)
    except ImageError as exc:
        raise HttpError(422, str(exc), "bad_image") from None
