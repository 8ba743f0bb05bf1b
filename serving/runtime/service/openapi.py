"""The service's OpenAPI 3.1 document (`GET /openapi.json`) and the `/docs` page made from it:
plain HTML with no script and nothing fetched from elsewhere, so it works on a machine with no
internet."""

from __future__ import annotations

import html
import json
from functools import cache
from typing import Any

from serving.runtime.service.protocol import ANONYMIZE, CONTENT_TYPES, JSON, METRICS_TYPE

_ERROR = {
    "description": "",
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "description": "what to do"}},
            }
        }
    },
}


def _error(text: str) -> dict[str, Any]:
    return {**_ERROR, "description": text}


_IMAGE = {"type": "string", "format": "binary"}
_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "anonlab serve",
        "version": "1",
        "description": "POST an image file, get it back anonymized (faces, persons, license "
        "plates, vehicles hidden), in the same format with its metadata. Nothing is written to "
        "disk; the log holds no image content, query string or client address.",
    },
    "paths": {
        ANONYMIZE: {
            "post": {
                "summary": "Anonymize one image",
                "description": "The body is one JPEG, PNG, TIFF or WebP file, recognised from its "
                "bytes (Content-Type is not used), sent with a Content-Length (chunked uploads get "
                "411). Its header is checked (pixel budget, CPU-cost guard) before any pixel is "
                "decoded.",
                "parameters": [
                    {
                        "name": "detections",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                        "description": "true: answer JSON with the image in base64 and the "
                        "detections hidden",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": _IMAGE}},
                },
                "responses": {
                    "200": {
                        "description": "The anonymized file, in the format it came in; with "
                        "?detections=true, JSON {image (base64), content_type, format, width, "
                        "height, classes, detections [{class, score, box}], metadata_dropped}.",
                        "content": {
                            **{t: {"schema": _IMAGE} for t in CONTENT_TYPES.values()},
                            JSON: {"schema": {"type": "object"}},
                        },
                    },
                    "400": _error("Empty body, bad Content-Length or an unknown query parameter."),
                    "408": _error("The body arrived too slowly, or stalled (connection closed)."),
                    "411": _error("No Content-Length (chunked uploads are refused)."),
                    "413": _error("Content-Length over the body limit, refused before reading."),
                    "422": _error(
                        "Not an image that can be anonymized: not decodable, truncated, "
                        "unsupported, over the pixel budget or refused by the CPU-cost guard."
                    ),
                    "500": _error("Any other failure; never carries image bytes."),
                    "503": {
                        **_error("Not ready, stopping, or over capacity: retry after a while."),
                        "headers": _RETRY,
                    },
                    "504": _error("Over the request timeout; nothing of the image returned."),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": {"description": "The process answers."}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": {"description": "Models loaded and warmed up; lists them."},
                    "503": {"description": "Loading the models, warm-up failed, or stopping."},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (of the worker process that answers)",
                "responses": {
                    "200": {"description": "", "content": {METRICS_TYPE: {"schema": {}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": ""}}}
        },
        "/docs": {
            "get": {"summary": "This document as a page", "responses": {"200": {"description": ""}}}
        },
    },
}


@cache
def docs_page() -> str:
    """The document as one HTML page: each endpoint with its parameters and responses."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(DOCUMENT['info']['title'])}</title></head><body>",
        f"<h1>{html.escape(DOCUMENT['info']['title'])}</h1>",
        f"<p>{html.escape(DOCUMENT['info']['description'])}</p>",
        "<p>The machine-readable document: <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, methods in DOCUMENT["paths"].items():
        for method, operation in methods.items():
            out.append(f"<h2>{method.upper()} {html.escape(path)}</h2>")
            out.append(f"<p><b>{html.escape(operation['summary'])}</b></p>")
            if "description" in operation:
                out.append(f"<p>{html.escape(operation['description'])}</p>")
            for parameter in operation.get("parameters", []):
                out.append(
                    f"<p>Query parameter <code>{html.escape(parameter['name'])}</code> "
                    f"({html.escape(json.dumps(parameter['schema']))}): "
                    f"{html.escape(parameter['description'])}</p>"
                )
            out.append("<table border='1'><tr><th>status</th><th>meaning</th></tr>")
            for status, response in operation["responses"].items():
                text = html.escape(response["description"])
                out.append(f"<tr><td>{status}</td><td>{text}</td></tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
