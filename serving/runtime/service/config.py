"""The service's limits (`ServiceConfig`), each an `anonlab serve` flag, checked when made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.runtime.errors import ServingError

MP = 1_000_000  # pixels in a megapixel


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service, each an `anonlab serve` flag (`FLAGS`); the package docstring
    says why each default is what it is."""

    max_body_bytes: int = 64 << 20
    max_pixels: int = 64 * MP  # per image, checked from the header before decoding
    cost_check_pixels: int = 4 * MP  # images over this face the CPU-cost guard
    min_bytes_per_mp: int = 16_000  # the CPU-cost guard's floor; 0 turns it off
    max_uploads: int = 16  # bodies being received at once
    upload_grace: float = 5.0  # seconds before the minimum upload rate applies
    min_upload_rate: int = 8192  # bytes/s, averaged over the body once the grace is over
    max_concurrency: int = 2
    max_queue: int = 8
    queue_timeout: float = 30.0  # seconds an admitted request waits for a slot before 503
    read_timeout: float = 60.0  # seconds of client silence within a body before 408
    request_timeout: float = 600.0  # seconds from a request's headers to its response, else 504
    keep_alive: float = 5.0  # seconds an idle keep-alive connection is kept open
    retry_after: int = 1  # seconds, in the Retry-After of every 503

    def __post_init__(self) -> None:
        above_zero = (
            "max_body_bytes",
            "max_pixels",
            "max_uploads",
            "min_upload_rate",
            "max_concurrency",
            "read_timeout",
            "request_timeout",
            "keep_alive",
            "retry_after",
        )
        at_least_zero = (
            "cost_check_pixels",
            "min_bytes_per_mp",
            "upload_grace",
            "max_queue",
            "queue_timeout",
        )
        for name in (*above_zero, *at_least_zero):
            value = getattr(self, name)
            allowed = "above 0" if name in above_zero else "0 or more"
            flag = f" ({FLAGS[name]})" if name in FLAGS else ""
            if not math.isfinite(value) or value < 0 or (value == 0 and name in above_zero):
                raise ServingError(f"{name}{flag} is {value}: it must be a number {allowed}")


# The `anonlab serve` flag of each ServiceConfig field, for error messages.
FLAGS = {
    "max_body_bytes": "--max-body-mb",
    "max_pixels": "--max-pixels",
    "cost_check_pixels": "--cost-check-mp",
    "min_bytes_per_mp": "--min-bytes-per-mp",
    "max_uploads": "--max-uploads",
    "upload_grace": "--upload-grace",
    "min_upload_rate": "--min-upload-rate",
    "max_concurrency": "--max-concurrency",
    "max_queue": "--max-queue",
    "queue_timeout": "--queue-timeout",
    "read_timeout": "--read-timeout",
    "request_timeout": "--request-timeout",
    "keep_alive": "--timeout-keep-alive",
}
