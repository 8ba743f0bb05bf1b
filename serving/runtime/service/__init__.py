"""The runtime as an HTTP service (`anonlab serve`): POST an image file, get it back anonymized.

Stdlib only (`http.server`): the runtime ships alone in a small container. HTTP/1.1 with
keep-alive; nothing is written to disk, and no image content, body, query string or client
address is logged: one line per request at INFO (method, path without its query, status,
latency, body sizes, request id); a stack trace only for a 500, and never for a 4xx.

Endpoints:
- `POST /v1/anonymize`: the body is one JPEG, PNG, TIFF or WebP file (recognised from its bytes;
  Content-Type is not used). 200: the anonymized file, same format, with its Content-Type. With
  `?detections=true`: `application/json` {"image": base64 of that file, "content_type", and
  `Anonymized.report()`: "format", "width", "height", "classes", "detections": [{"class",
  "score", "box", ...}], "metadata_dropped": [what of the metadata was not written back, why]}.
- `GET /healthz`: 200 while the process answers. `GET /readyz`: 200 once the models are loaded
  and a warm-up inference has run, with the models loaded: {"ready": true, "models": [{"name",
  "version", "weights_sha256", "manifest_sha256"}]}; 503 before (and while stopping).
  `GET /metrics`: Prometheus text format.

Errors are JSON {"error": "what went wrong and what to do"}:
- 400 empty body, bad Content-Length, unknown query parameter; 404 unknown path; 405 wrong
  method (with Allow); 408 body too slow (below); 411 no Content-Length (chunked uploads are
  refused); 413 Content-Length over `max_body_bytes`, refused before any of the body is read (a
  client sending `Expect: 100-continue` never sends it);
- 422 the image cannot be anonymized: not decodable, truncated, unsupported, over the pixel
  budget, or refused by the CPU-cost guard (every `ImageError` of the runtime);
- 503 + Retry-After: not ready yet, stopping, or over capacity (below);
- 500 any other failure. Fail closed: a 5xx never carries image bytes; the response is only built
  from a fully anonymized result.

Bounds (ServiceConfig field, `anonlab serve` flag, default):
- Body size: `max_body_bytes` (--max-body-mb, 64 MiB): 413 from the Content-Length alone.
- Upload deadline: the body is read in chunks; after `upload_grace` seconds (--upload-grace, 5)
  the bytes received so far must average at least `min_upload_rate` bytes/s (--min-upload-rate,
  8192 = 64 kbit/s) since the body began, else 408 and the connection is closed; and no wait for
  the next chunk may exceed `read_timeout` (--read-timeout, 60 s). A phone on a 2G/EDGE uplink
  (100-200 kbit/s) passes with room to spare, a stall is forgiven as long as the average holds
  (the grace absorbs TCP slow start and a radio waking up), and a client trickling bytes is cut
  about `upload_grace` seconds after its body began.
- Uploads: at most `max_uploads` bodies (--max-uploads, 16) are received at once; one more gets
  503 at once. Uploads hold no inference admission: a body is admitted only once it has arrived
  whole, so slow senders cannot lock finished requests out.
- Concurrency and queue: at most `max_concurrency` images (--max-concurrency, 2) are anonymized
  at once (a semaphore: onnxruntime sessions are safe to run from several threads and the rest
  of the pipeline works on per-call arrays; more at once only splits the same cores), and at
  most `max_concurrency + max_queue` (--max-queue, 8) received bodies are admitted, waiting or
  running; one more gets 503 at once, and an admitted one that waits `queue_timeout` seconds
  (--queue-timeout, 30) for a slot gets 503 too.
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
- Refusals do not reset connections: the listen backlog holds 128 connections (a burst beyond
  socketserver's 5 got resets), and a refused body whose Content-Length is within
  `max_body_bytes` is read and discarded (under the upload deadline) before the connection is
  closed, so the client gets its response; a 503 at admission comes after the body was read
  and keeps the connection open.

The package: `config` (ServiceConfig), `protocol` (endpoints, replies, HttpError), `limits`
(uploads, admission, slots, the checks from the header), `metrics` (Prometheus), `handler` (the
HTTP request handler), `server` (AnonymizeServer, warm-up, start_server).
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
