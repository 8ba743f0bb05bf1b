"""The fail-closed path of one image, the same in every engine of `anonlab blur` (the local one,
serving.runtime.batch, which overlaps the steps of consecutive images on threads; the Ray one,
serving.runtime.ray_engine, which runs them in a row in each actor).

Steps: read (the input's bytes, and their sha256), decode, detect, anonymize (which encodes, and
checks the file: `imagefile.check`), write (the image and its optional sidecar and mask, all or
nothing: storage.write_together). Any error becomes `StepError(step)`; `failed_row` then removes
every output of that image, an earlier run's included, and gives the ledger row that names the
step. An output exists only when every step of its image passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from serving.runtime import storage
from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.ledger import FAILED, OK, Row
from serving.runtime.pipeline import Anonymized, Decoded, Runtime

__all__ = [
    "STEPS",
    "StepError",
    "Work",
    "companions",
    "describe",
    "detect",
    "failed_row",
    "finish_write",
    "ok_row",
    "process",
    "read_decode",
]

log = logging.getLogger(__name__)

STEPS = ("find", "read", "decode", "detect", "anonymize", "write")


@dataclass(frozen=True)
class Work:
    """One input to anonymize: where it is read and where its output goes (paths or URLs)."""

    input: str
    output: str
    sidecar: bool = False
    masks: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# What `anonlab blur` appends to an output image's name for its sidecar and its mask.
SIDECAR_SUFFIX, MASK_SUFFIX = ".json", ".mask.png"


def companions(output: str) -> tuple[str, str]:
    """The sidecar and mask `anonlab blur` may write beside an output image."""
    return f"{output}{SIDECAR_SUFFIX}", f"{output}{MASK_SUFFIX}"


class StepError(Exception):
    """A step of one image failed: which, why, and the sha256 of its bytes when they were read."""

    def __init__(self, step: str, cause: BaseException, sha256: str | None = None) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause, self.sha256 = step, cause, sha256


def read_decode(runtime: Runtime, work: Work) -> tuple[Decoded, str]:
    """The image decoded, and the sha256 of the bytes read."""
    try:
        data = storage.read_bytes(work.input)
    except Exception as exc:  # an object store's client raises its own kinds too
        raise StepError("read", exc) from exc
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return runtime.decode(data), sha256
    except Exception as exc:
        raise StepError("decode", exc, sha256) from exc


def detect(runtime: Runtime, decoded: Decoded, sha256: str) -> Detections:
    try:
        return runtime.detect(decoded.rgb)
    except Exception as exc:
        raise StepError("detect", exc, sha256) from exc


def finish_write(runtime: Runtime, decoded: Decoded, dets: Detections, work: Work) -> Anonymized:
    """Anonymize and encode, then write the output and its companions together."""
    try:
        done = runtime.finish(decoded, dets)
    except Exception as exc:
        raise StepError("anonymize", exc) from exc
    sidecar, mask = companions(work.output)
    files: list[tuple[str, Callable[[], bytes]]] = [(work.output, lambda: done.data)]
    if work.sidecar:
        files.append((sidecar, lambda: _sidecar_bytes(work, done)))
    if work.masks:
        files.append((mask, lambda: _mask_png(runtime, done)))
    try:
        storage.write_together(files)
    except Exception as exc:
        raise StepError("write", exc) from exc
    return done


def ok_row(work: Work, sha256: str, done: Anonymized) -> Row:
    return Row(work.input, OK, sha256, regions=len(done.detections), output=work.output)


def failed_row(
    work: Work | None, key: str, step: str, error: str, sha256: str | None = None
) -> Row:
    """Remove every output of a failed input (an earlier run's too; none when `work` is None: it
    has no output name); its ledger row, whose error says which output could not be removed."""
    outputs = () if work is None else (work.output, *companions(work.output))
    for output in outputs:
        try:
            storage.remove(output)
        except Exception as exc:  # the row must be written whatever the store says
            error += f"; its earlier output {output} could not be removed ({exc}): delete it"
    log.warning("%s: %s failed (%s); no output written", key, step, error)
    return Row(key, FAILED, sha256, step=step, error=error)


def process(runtime: Runtime, work: Work) -> tuple[Row, float]:
    """Every step of one image in a row; its ledger row and megapixels (0 when it failed).
    Never raises for the image's sake."""
    sha256 = None
    try:
        decoded, sha256 = read_decode(runtime, work)
        done = finish_write(runtime, decoded, detect(runtime, decoded, sha256), work)
    except StepError as exc:
        row = failed_row(work, work.input, exc.step, describe(exc.cause), exc.sha256 or sha256)
        return row, 0.0
    return ok_row(work, sha256, done), done.width * done.height / 1e6


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


def _sidecar_bytes(work: Work, done: Anonymized) -> bytes:
    body = {"input": work.input, **done.report()}
    return (json.dumps(body, indent=1) + "\n").encode("utf-8")


def _mask_png(runtime: Runtime, done: Anonymized) -> bytes:
    """What was hidden, upright: 255 where anonymizing changed pixels, 0 elsewhere."""
    ok, buf = cv2.imencode(".png", runtime.hidden_mask(done).astype(np.uint8) * 255)
    if not ok:
        raise ServingError("the mask PNG could not be encoded")
    return buf.tobytes()
