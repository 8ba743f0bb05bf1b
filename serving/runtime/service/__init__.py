"""The runtime as an HTTP service (`anonlab serve`): POST an image file, get it back anonymized.

An ASGI application (`app.AnonymizeApp`, written against the ASGI interface itself: every
answer, 404/405/500 included, is the service's own JSON, and the body is read by hand under
the deadlines below) served by uvicorn (its h11 HTTP/1.1 protocol, keep-alive, on asyncio);
uvicorn's access log is off. One event loop per process serves every connection; inference
runs on `max_concurrency` threads, so the loop never waits on it. `anonlab serve --workers N`
forks N processes before any model is loaded, each loading its own models and serving the one
listening socket (backlog 128): memory, limits and /metrics are per worker. The runtime still
ships alone in a small container (the server adds uvicorn, with h11 and click). Nothing is written
to disk, and no image content, body, query string or client address is logged: one line per
request at INFO (method, path without its query, status, latency, body sizes, request id); a
stack trace only for a 500, and never for a 4xx.

Endpoints:
- `POST /v1/anonymize`: the body is one JPEG, PNG, TIFF or WebP file (recognised from its bytes;
  Content-Type is not used). 200: the anonymized file, same format, with its Content-Type. With
  `?detections=true`: `application/json` {"image": base64 of that file, "content_type", and
  `Anonymized.report()`: "format", "width", "height", "classes", "detections": [{"class",
  "score", "box", ...}], "metadata_dropped": [what of the metadata was not written back, why]}.
- `GET /healthz`: 200 while the process answers. `GET /readyz`: 200 once the models are loaded
  and a warm-up inference has run, with the models loaded: {"ready": true, "models": [{"name",
  "version", "weights_sha256", "manifest_sha256"}]}; 503 before (and while stopping).
  `GET /metrics`: Prometheus text format (the counters of the worker process that answers).
  `GET /openapi.json`: the OpenAPI 3.1 document (`openapi.DOCUMENT`, written by hand); `GET
  /docs`: a plain HTML page made from it, with no script and nothing fetched from elsewhere.

Errors are JSON {"error": "what went wrong and what to do"}:
- 400 empty body, bad Content-Length, unknown query parameter, or a request that is not valid
  HTTP/1.1 (answered by the protocol, `server._protocol`; an HTTP/1.1 request without Host is
  one); 404 unknown path; 405 wrong method (with Allow); 501 a method that is not a standard
  one; 408 body too slow (below); 411 no Content-Length (chunked uploads are refused); 413
  Content-Length over `max_body_bytes`, refused before any of the body is read (a client
  sending `Expect: 100-continue` never sends it: `100 Continue` goes out only when the body is
  first asked for);
- 422 the image cannot be anonymized: not decodable, truncated, unsupported, over the pixel
  budget, or refused by the CPU-cost guard (every `ImageError` of the runtime);
- 503 + Retry-After: not ready yet, stopping, or over capacity (below);
- 504: the image request took over `request_timeout` (below);
- 500 any other failure. Fail closed: a 5xx never carries image bytes; the response is only built
  from a fully anonymized result.

Bounds (ServiceConfig field, `anonlab serve` flag, default):
- Body size: `max_body_bytes` (--max-body-mb, 64 MiB): 413 from the Content-Length alone.
- Request head: a connection's request line and headers must arrive within `read_timeout`
  (--read-timeout, 60 s) of the connection opening or of its previous response, else it is
  closed without an answer; an idle keep-alive connection is closed after `keep_alive`
  (--timeout-keep-alive, 5 s).
- Upload deadline: the body is read from `receive()` in chunks; after `upload_grace` seconds
  (--upload-grace, 5) the bytes received so far must average at least `min_upload_rate` bytes/s
  (--min-upload-rate, 8192 = 64 kbit/s) since the body began, else 408 and the connection is
  closed; and no wait for the next chunk may exceed `read_timeout`. A phone on a 2G/EDGE uplink
  (100-200 kbit/s) passes with room to spare, a stall is forgiven as long as the average holds
  (the grace absorbs TCP slow start and a radio waking up), and a client trickling bytes is cut
  about `upload_grace` seconds after its body began.
- Uploads: at most `max_uploads` bodies (--max-uploads, 16) are received at once; one more gets
  503 at once. Uploads hold no inference admission: a body is admitted only once it has arrived
  whole, so slow senders cannot lock finished requests out.
- Concurrency and queue: at most `max_concurrency` images (--max-concurrency, 2) are anonymized
  at once, on as many threads (onnxruntime sessions are safe to run from several threads and
  the rest of the pipeline works on per-call arrays; more at once only splits the same cores),
  a slot held until its inference returns whatever became of its request; and at
  most `max_concurrency + max_queue` (--max-queue, 8) received bodies are admitted, waiting or
  running; one more gets 503 at once, and an admitted one that waits `queue_timeout` seconds
  (--queue-timeout, 30) for a slot gets 503 too.
- Request timeout: an image request gets 504 when `request_timeout` seconds (--request-timeout,
  600) pass between its head and its answer (upload, queue and inference together; 600 s lets
  a 5 MB photo from a 2G phone arrive). An inference under way then still finishes in its slot
  (a thread cannot be stopped), and its result is dropped.
- Memory: bodies being received take what has arrived so far, so request bodies hold at most
  (max_uploads + max_concurrency + max_queue) x max_body_bytes (26 x 64 MiB = 1.6 GiB with the
  defaults; a body is briefly held twice while its chunks are joined); decoded pixels exist only
  inside the `max_concurrency` slots, each image at most the pixel budget.
- Pixel budget: `max_pixels` (--max-pixels, 64 MP for `anonlab serve`: an 8000x4000 panorama
  is 32 MP), checked from the file's header before decoding; 422 over it. The header is read by
  the runtime's own reader (`imagefile.read_header`: microseconds, no pixel decoded); a body
  that is not a supported image, or whose header is damaged, gets 422 there and then, with the
  message the decode would give. `anonlab serve` hands the runtime the same limit, which its
  decode checks again; a runtime given with a lower limit of its own refuses above that.
- CPU-cost guard: detection costs the same per pixel however well the file compresses, so a
  flat 6000x6000 PNG of 117 KB would cost minutes of CPU. An image over `cost_check_pixels`
  (--cost-check-mp, 4 MP) whose file has fewer than `min_bytes_per_mp` bytes per megapixel
  (--min-bytes-per-mp, 16000; 0 turns the guard off) gets 422 from the header, before
  decoding. A 32 MP street JPEG of several MB has over 100 KB per megapixel.
- Refusals do not reset connections: the listen backlog holds 128 connections, and a refused
  request whose body was not read gets its whole answer (with `Connection: close`) at once,
  then the body, if its Content-Length is within `max_body_bytes`, is read and discarded
  (under the upload deadline) before the response ends and the connection closes (any other
  at most 1 MiB within 1 s), so the client gets its answer rather than a reset; a 503 at
  admission comes after the body was read and keeps the connection open.
- Stopping (SIGTERM, Ctrl-C, `server.stop(grace)`): readiness ends (/readyz 503), the socket
  stops accepting, idle connections close, and requests under way finish (up to `grace`
  seconds, --grace, 10; then uvicorn cancels them), each connection closed after its answer.

The package: `config` (ServiceConfig), `protocol` (endpoints, replies, HttpError), `limits`
(uploads, admission, inference slots and threads, the checks from the header), `metrics`
(Prometheus), `openapi` (the document and /docs), `app` (the ASGI application), `server`
(AnonymizeServer on uvicorn, the socket, warm-up, start_server), `workers` (--workers N).
"""

from serving.runtime.service.config import FLAGS, ServiceConfig
from serving.runtime.service.limits import check_header, check_image
from serving.runtime.service.metrics import Metrics
from serving.runtime.service.protocol import ANONYMIZE, CONTENT_TYPES, ENDPOINTS, HttpError
from serving.runtime.service.server import AnonymizeServer, listen, start_server
from serving.runtime.service.workers import run_workers

__all__ = [
    "ANONYMIZE",
    "CONTENT_TYPES",
    "ENDPOINTS",
    "FLAGS",
    "AnonymizeServer",
    "HttpError",
    "Metrics",
    "ServiceConfig",
    "check_header",
    "check_image",
    "listen",
    "run_workers",
    "start_server",
]
