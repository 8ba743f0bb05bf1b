"""What the service takes on: upload slots, admission to the queue and inference slots on a
thread pool (each a 503 with Retry-After when full), and the per-image checks made from the
file's header before any pixel is decoded (the pixel budget and the CPU-cost guard, 422)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from serving.runtime.errors import ImageError
from serving.runtime.imagefile import ImageHeader, read_header
from serving.runtime.service.config import MP, ServiceConfig
from serving.runtime.service.metrics import Metrics
from serving.runtime.service.protocol import HttpError

T = TypeVar("T")


def check_header(data: bytes, config: ServiceConfig) -> ImageHeader:
    """The header of the image file `data`, read by the runtime's own reader (no pixel
    decoded), once `check_image` passes it. 422 when it is not a supported image or its header
    is damaged, with the message the decode would give, in the words of uploads."""
    try:
        header = read_header(data)
    except ImageError as exc:
        raise HttpError(422, exc.for_upload(), "bad_image") from None
    check_image(header.width, header.height, len(data), config)
    return header


def check_image(width: int, height: int, size: int, config: ServiceConfig) -> None:
    """Refuse (422) an image of `width` x `height` pixels in a file of `size` bytes that is over
    the pixel budget, or that the CPU-cost guard stops: detection time grows with the pixels,
    not the bytes, so a big image in a tiny file is cheap to send and dear to process."""
    pixels = width * height
    megapixels = pixels / MP
    if pixels > config.max_pixels:
        raise HttpError(
            422,
            f"the image is {width}x{height} = {megapixels:.1f} MP, over this server's limit of "
            f"{config.max_pixels / MP:g} MP (--max-pixels): downscale it, or start the "
            "server with a larger --max-pixels",
            "bad_image",
        )
    floor = config.min_bytes_per_mp
    if pixels > config.cost_check_pixels and size < floor * megapixels:
        raise HttpError(
            422,
            f"the image is {width}x{height} = {megapixels:.1f} MP in a file of only {size} "
            f"bytes ({size / megapixels:.0f} per MP): the CPU-cost guard refuses images over "
            f"{config.cost_check_pixels / MP:g} MP (--cost-check-mp) with fewer than {floor} "
            "bytes per MP (--min-bytes-per-mp), since detection costs the same per pixel "
            "however well the file compresses; send the photo itself, or start the server "
            "with --min-bytes-per-mp 0 to turn the guard off",
            "too_costly",
        )


class Limits:
    """The counts of bodies being received, of requests admitted (received whole, waiting or
    running) and of inference slots taken, held to `config`'s bounds. Inference runs on
    `max_concurrency` threads, so the event loop that serves the connections never waits on it."""

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._threads = ThreadPoolExecutor(config.max_concurrency, "anonlab-inference")
        self._uploads = 0
        self._admitted = 0
        self._lock = threading.Lock()

    @contextmanager
    def upload(self) -> Iterator[None]:
        """One of `max_uploads` bodies being received, or 503 at once."""
        limit = self.config.max_uploads
        with self._lock:
            if self._uploads >= limit:
                raise self.unavailable(
                    f"the server is receiving {limit} uploads already (--max-uploads): retry "
                    "shortly",
                    "overloaded",
                )
            self._uploads += 1
        self.metrics.add_uploading(1)
        try:
            yield
        finally:
            self.metrics.add_uploading(-1)
            with self._lock:
                self._uploads -= 1

    @contextmanager
    def admission(self) -> Iterator[None]:
        """One admitted anonymize request (body received, waiting or running), or 503 at once."""
        cap = self.config.max_concurrency + self.config.max_queue
        with self._lock:
            if self._admitted >= cap:
                raise self.unavailable(
                    f"the server is at capacity ({cap} images admitted): retry shortly",
                    "overloaded",
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    async def infer(self, work: Callable[[], T], done: Callable[[], None]) -> T:
        """`work()` on one of `max_concurrency` inference threads, the slot waited for up to
        `queue_timeout` s (503 past it); `done()` once `work` has returned, or once this gives
        up before starting it. The slot (and what `done` releases) is held until `work`
        returns, even when the request stops waiting for it (its --request-timeout), so no
        more than `max_concurrency` images are ever anonymized at once, nor more bodies held
        than the admission counts."""
        try:
            if self._slots.locked():
                try:
                    await asyncio.wait_for(self._slots.acquire(), self.config.queue_timeout)
                except TimeoutError:
                    raise self.unavailable(
                        f"no inference slot within {self.config.queue_timeout:g} s: retry shortly",
                        "overloaded",
                    ) from None
            else:
                await self._slots.acquire()  # free: taken at once, even with a timeout of 0
        except BaseException:
            done()
            raise
        self.metrics.add_inferring(1)

        def release(_: object = None) -> None:
            self.metrics.add_inferring(-1)
            self._slots.release()
            done()

        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, work)
        except BaseException:
            release()
            raise
        future.add_done_callback(release)
        return await asyncio.shield(future)

    def close(self) -> None:
        """End the inference threads once their images are done."""
        self._threads.shutdown(wait=False)

    def unavailable(self, message: str, kind: str) -> HttpError:
        """A 503 with the Retry-After of every 503."""
        return HttpError(503, message, kind, {"Retry-After": str(self.config.retry_after)})
