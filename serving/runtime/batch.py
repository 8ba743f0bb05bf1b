"""`anonlab blur`: anonymize many image files into an output folder, failing closed per image,
with a ledger of what became of each input.

What is taken, failed or skipped of the files given is `inputs`' decision; the summary's counts
add up: found = written + failed + skipped + resumed. Refused before anything is written: two
inputs that would be written to one output (`inputs.check_output_names`), an output that would
overwrite an input, an output folder or a ledger that cannot be created or written to.

One path per image, fail closed: read, decode, detect, anonymize, encode, write. An output image
exists only when its image was decoded, searched, anonymized, written in full and checked
(`imagefile.check`). Everything for one image (the image, and the optional `<name>.json`
sidecar and `<name>.mask.png`) is written under temporary names in its final folder and renamed
into place at the end; on any error the temporaries are removed, any output left for that
image by an earlier run is deleted too, and the failed step is recorded. A failure to write (a
full disk) is that image's failure and the run goes on.

The ledger (serving.runtime.ledger) gets one row per input as the run goes: `ok` (with the
input's sha256, the regions hidden and the output), `failed` (the step and the error) or
`skipped` (hidden files, files that are not images: the reason). Nothing about the outcome is
held back to the end of the run: a killed run leaves the rows of every input it finished. With
`resume`, inputs whose last row is `ok` are not done again (counted as `resumed`). A ledger that
cannot be written stops the run (ServingError): a run whose outcome is not recorded cannot be
resumed.

Speed: decoding and encoding run in `workers` threads (Pillow and OpenCV release the GIL) while
the detector runs on the previous image; at most `workers + 1` images are in memory at once
(an 8000x4000 panorama is 96 MB decoded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.inputs import Inputs, Job, check_output_names, output_jobs
from serving.runtime.ledger import FAILED, OK, SKIPPED, Ledger, Row
from serving.runtime.pipeline import Anonymized, Decoded, Runtime
from serving.runtime.progress import bar

__all__ = ["DEFAULT_LEDGER", "BatchReport", "blur_batch"]

log = logging.getLogger(__name__)

DEFAULT_LEDGER = ".anonlab-ledger"  # in --out: hidden, so never an image's output name
STEPS = ("find", "read", "decode", "detect", "anonymize", "write")
SHOWN = 20  # failures kept for the summary; every one is in the ledger


@dataclass
class BatchReport:
    found: int = 0  # written + failed + skipped + resumed once the run is done
    written: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0  # `ok` in the ledger before this run (resume): not done again
    failures: list[Row] = field(default_factory=list)  # the first SHOWN of this run
    detections: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        mp = self.megapixels / self.seconds if self.seconds else 0.0
        text = (
            f"found {self.found} items: anonymized {self.written} images ({self.detections} "
            f"regions hidden) in {self.seconds:.1f} s: {rate:.2f} images/s, {mp:.1f} MP/s"
        )
        if self.resumed:
            text += f"; {self.resumed} already anonymized (ok in the ledger), not done again"
        if self.failed:
            text += f"; {self.failed} FAILED, no output written for them"
        if self.skipped:
            text += f"; {self.skipped} skipped (hidden, or not images)"
        return text

    def record(self, ledger: Ledger, row: Row) -> None:
        ledger.append(row)
        if row.status == FAILED:
            self.failed += 1
            if len(self.failures) < SHOWN:
                self.failures.append(row)
        elif row.status == SKIPPED:
            self.skipped += 1


class _StepError(Exception):
    def __init__(self, step: str, cause: BaseException, sha256: str | None = None) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause, self.sha256 = step, cause, sha256


def blur_batch(
    runtime: Runtime,
    inputs: Inputs,
    out_dir: Path,
    *,
    ledger: Ledger | None = None,
    resume: bool = False,
    workers: int = 2,
    sidecar: bool = False,
    masks: bool = False,
) -> BatchReport:
    """Anonymize every job of `inputs` into `out_dir`, recording each input in `ledger` (by
    default `<out_dir>/.anonlab-ledger`; see the module docstring); the report. ServingError,
    before anything is written, when the outputs would collide or overwrite an input, or
    `out_dir` or the ledger cannot be written to; during the run, when the ledger cannot."""
    out_dir = Path(out_dir)
    outputs = output_jobs(inputs)
    check_output_names(outputs, [f for f, on in ((_sidecar, sidecar), (_mask_path, masks)) if on])
    sources = {os.path.realpath(job.source) for job in outputs}
    for job in outputs:
        if os.path.realpath(out_dir / job.relative) in sources:
            raise ServingError(
                f"--out {out_dir} would overwrite the input {job.source}; choose another folder"
            )
    _check_out(out_dir)
    ledger = ledger or Ledger(out_dir / DEFAULT_LEDGER)
    ledger.check_writable()
    jobs = inputs.jobs
    report = BatchReport(found=len(jobs) + len(inputs.refused) + len(inputs.skipped))
    if resume:
        done = {key for key, row in ledger.read().items() if row.status == OK}
        jobs = [job for job in jobs if _key(job.source) not in done]
        report.resumed = len(inputs.jobs) - len(jobs)
    for skipped in inputs.skipped:
        row = Row(_key(Path(skipped.input)), SKIPPED, step="find", error=skipped.reason)
        report.record(ledger, row)
    for refused in inputs.refused:
        row = Row(_key(refused.source), FAILED, step=refused.step, error=refused.error)
        report.record(ledger, _failed(out_dir, refused.relative, row))
    try:
        _run(runtime, jobs, out_dir, ledger, report, workers, sidecar, masks)
    except BaseException:
        with contextlib.suppress(ServingError):  # the first error is the one to tell
            ledger.close()
        raise
    ledger.close()
    return report


def _run(
    runtime: Runtime,
    jobs: Sequence[Job],
    out_dir: Path,
    ledger: Ledger,
    report: BatchReport,
    workers: int,
    sidecar: bool,
    masks: bool,
) -> None:
    start = time.perf_counter()
    progress = bar(total=len(jobs), desc="blur", unit="img")
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="blur-io") as pool:
        decoding: deque[tuple[Job, Future[tuple[Decoded, str]]]] = deque()
        writing: deque[tuple[Job, str, Future[Anonymized]]] = deque()
        pending = iter(jobs)

        def feed() -> None:
            job = next(pending, None)
            if job is not None:
                decoding.append((job, pool.submit(_decode, runtime, job)))

        def settle(job: Job, sha256: str, future: Future[Anonymized]) -> None:
            try:
                done = future.result()
            except _StepError as exc:
                exc.sha256 = sha256
                report.record(ledger, _failed_job(out_dir, job, exc))
            else:
                output = str(out_dir / job.relative)
                regions = len(done.detections)
                row = Row(_key(job.source), OK, sha256, regions=regions, output=output)
                report.record(ledger, row)
                report.written += 1
                report.detections += regions
                report.megapixels += done.width * done.height / 1e6
            progress.update(1)
            elapsed = time.perf_counter() - start
            progress.set_postfix_str(f"{report.megapixels / max(elapsed, 1e-9):.1f} MP/s")

        for _ in range(max(workers, 1)):
            feed()
        while decoding:
            job, future = decoding.popleft()
            feed()
            try:
                decoded, sha256 = future.result()
                try:
                    dets = runtime.detect(decoded.rgb)
                except Exception as exc:
                    raise _StepError("detect", exc, sha256) from exc
            except _StepError as exc:
                report.record(ledger, _failed_job(out_dir, job, exc))
                progress.update(1)
                continue
            del decoded.rgb  # only the detector needs it; keep memory to one copy per image
            writing.append(
                (
                    job,
                    sha256,
                    pool.submit(_finish, runtime, decoded, dets, out_dir, job, sidecar, masks),
                )
            )
            while len(writing) > max(workers, 1) or (writing and writing[0][2].done()):
                settle(*writing.popleft())
        while writing:
            settle(*writing.popleft())
    progress.close()
    report.seconds = time.perf_counter() - start


def _key(source: Path) -> str:
    """An input's key in the ledger: its absolute path as found (links not resolved), the same
    from whichever folder the command runs."""
    return os.path.abspath(source)


def _check_out(out_dir: Path) -> None:
    """ServingError when `out_dir` cannot be created or written to: said once, up front, not
    once for each image."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".anonlab-", suffix=".tmp", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ServingError(
            f"--out {out_dir}: cannot write there: {exc.strerror or exc}{where}; choose a "
            "folder that can be created and written to"
        ) from None


def _decode(runtime: Runtime, job: Job) -> tuple[Decoded, str]:
    """The image decoded, and the sha256 of the bytes read."""
    try:
        data = job.source.read_bytes()
    except OSError as exc:
        raise _StepError("read", exc) from exc
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return runtime.decode(data), sha256
    except Exception as exc:
        raise _StepError("decode", exc, sha256) from exc


def _finish(
    runtime: Runtime,
    decoded: Decoded,
    dets: Detections,
    out_dir: Path,
    job: Job,
    sidecar: bool,
    masks: bool,
) -> Anonymized:
    try:
        done = runtime.finish(decoded, dets)
    except Exception as exc:
        raise _StepError("anonymize", exc) from exc
    target = out_dir / job.relative
    files: list[tuple[Path, Callable[[], bytes]]] = [(target, lambda: done.data)]
    if sidecar:
        files.append((_sidecar(target), lambda: _sidecar_bytes(job, done)))
    if masks:
        files.append((_mask_path(target), lambda: _mask_png(runtime, done)))
    try:
        _write_together(files)
    except Exception as exc:
        raise _StepError("write", exc) from exc
    return done


def _write_together(files: Sequence[tuple[Path, Callable[[], bytes]]]) -> None:
    """Write every file under a temporary name beside its target, then rename them all; on any
    error remove the temporaries (nothing appears under a final name)."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for target, content in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            temporaries.append((Path(name), target))
            with os.fdopen(fd, "wb") as f:
                f.write(content())
        for tmp, target in temporaries:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temporaries:
            tmp.unlink(missing_ok=True)


def _failed_job(out_dir: Path, job: Job, exc: _StepError) -> Row:
    row = Row(_key(job.source), FAILED, exc.sha256, step=exc.step, error=_describe(exc.cause))
    return _failed(out_dir, job.relative, row)


def _failed(out_dir: Path, relative: Path | None, row: Row) -> Row:
    """Remove every output of a failed input (an earlier run's too); its row, whose error says
    which output could not be removed."""
    target = None if relative is None else out_dir / relative
    error = row.error or ""
    for path in () if target is None else (target, _sidecar(target), _mask_path(target)):
        try:
            if path.is_file() or path.is_symlink():  # not a folder someone put in the way
                path.unlink()
        except OSError as exc:
            error += f"; its earlier output {path} could not be removed ({exc}): delete it"
    log.warning("%s: %s failed (%s); no output written", row.input, row.step, error)
    return replace(row, error=error)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _mask_path(target: Path) -> Path:
    return target.with_name(target.name + ".mask.png")


def _sidecar_bytes(job: Job, done: Anonymized) -> bytes:
    body = {"input": str(job.source), **done.report()}
    return (json.dumps(body, indent=1) + "\n").encode("utf-8")


def _mask_png(runtime: Runtime, done: Anonymized) -> bytes:
    """What was hidden, upright: 255 where anonymizing changed pixels, 0 elsewhere."""
    ok, buf = cv2.imencode(".png", runtime.hidden_mask(done).astype(np.uint8) * 255)
    if not ok:
        raise ServingError("the mask PNG could not be encoded")
    return buf.tobytes()
