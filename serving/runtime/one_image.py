"""The fail-closed path of one image, the same in every engine of `anonlab blur` (the local one,
serving.runtime.batch, which overlaps the steps of consecutive images on threads; the Ray one,
serving.runtime.ray_engine, which runs them in a row in each actor).

Steps: read (the input's bytes, and their sha256), decode, detect, anonymize (which encodes, and
checks the file: `imagefile.check`; and measures the share of the image hidden, logging a
warning when it is more than half: `MOSTLY_HIDDEN`), write (the image and its optional sidecar
and mask, all or nothing: storage.write_together). Any error becomes `StepError(step)`;
`failed_row` then removes every output of that image, an earlier run's included, and gives the
ledger row that names the step. An output exists only when every step of its image passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

from serving.runtime import storage
from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.ledger import FAILED, OK, Row
from serving.runtime.pipeline import Anonymized, Decoded, Runtime

__all__ = [
    "MOSTLY_HIDDEN",
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
# An image with more than this share of its pixels hidden is written, and warned about: what is
# left of it is rarely worth publishing, and a model that hides that much may be misfiring.
MOSTLY_HIDDEN = 0.5


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
    """Anonymize and encode, measure the share hidden (a warning above MOSTLY_HIDDEN), then
    write the output and its companions together."""
    try:
        done = runtime.finish(decoded, dets)
        hidden = runtime.hidden_mask(done)
        share = float(np.count_nonzero(hidden)) / hidden.size
        done = replace(done, hidden_share=share)
    except Exception as exc:
        raise StepError("anonymize", exc) from exc
    if share > MOSTLY_HIDDEN:
        log.warning(
            "%s: %.0f%% of the image hidden, more than half: check %s",
            work.input,
            100 * share,
            work.output,
        )
    sidecar, mask = companions(work.output)
    files: list[tuple[str, Callable[[], bytes]]] = [(work.output, lambda: done.data)]
    if work.sidecar:
        files.append((sidecar, lambda: sidecar_bytes(runtime, work, done)))
    if work.masks:
        files.append((mask, lambda: _mask_png(hidden)))
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


def process(runtime: Runtime, work: Work) -> tuple[Row, float, float]:
    """Every step of one image in a row; its ledger row, megapixels and the share of it hidden
    (both 0 when it failed). Never raises for the image's sake."""
    sha256 = None
    try:
        decoded, sha256 = read_decode(runtime, work)
        done = finish_write(runtime, decoded, detect(runtime, decoded, sha256), work)
    except StepError as exc:
        row = failed_row(work, work.input, exc.step, describe(exc.cause), exc.sha256 or sha256)
        return row, 0.0, 0.0
    return ok_row(work, sha256, done), done.width * done.height / 1e6, done.hidden_share or 0.0


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


def sidecar_bytes(runtime: Runtime, work: Work, done: Anonymized) -> bytes:
    """The sidecar of an output image (README "blur": its keys): the input, what was done
    (`Anonymized.report`: size, classes, detections, metadata not written back), the share of
    the image hidden, and what did it: each model's identity (name, version, weights and
    manifest sha256, release), its thresholds, and the style of each class."""
    body = {
        "input": work.input,
        **done.report(),
        "hidden_share": None if done.hidden_share is None else round(done.hidden_share, 4),
        "models": runtime.identity(),
        "thresholds": runtime.thresholds(),
        "styles": {name: style.to_dict() for name, style in runtime.styles.items()},
    }
    return (json.dumps(body, indent=1) + "\n").encode("utf-8")


def _mask_png(hidden: np.ndarray) -> bytes:
    """What was hidden, upright: 255 where anonymizing changed pixels, 0 elsewhere."""
    ok, buf = cv2.imencode(".png", hidden.astype(np.uint8) * 255)
    if not ok:
        raise ServingError("the mask PNG could not be encoded")
    return buf.tobytes()
