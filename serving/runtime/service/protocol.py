"""The service's HTTP surface: its endpoints and content types, and what it answers (a `Reply`,
or an `HttpError` that refuses a request with a status, a message and a failure kind)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ANONYMIZE = "/v1/anonymize"
ENDPOINTS = (ANONYMIZE, "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}
JSON = "application/json"
HTML = "text/html; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The `kind` of every refusal and failure: the label values of anonlab_failures_total.
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
    """A response to send: status, Content-Type, body and any further headers."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: dict[str, Any]) -> Reply:
    return Reply(status, JSON, json.dumps(payload).encode())


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """The body of every error: JSON {"error": what went wrong and what to do}."""
    return Reply(status, JSON, json.dumps({"error": message}).encode(), headers or {})
