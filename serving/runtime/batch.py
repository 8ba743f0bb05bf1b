"""`anonlab blur`: anonymize many image files into an output folder, failing closed per image.

What is taken, failed or skipped of the files given is `inputs`' decision; the summary's counts
add up: found = written + failed + skipped. Refused before anything is written: two inputs that
would be written to one output (`inputs.check_output_names`), an output that would overwrite an
input, an output folder that cannot be created or written to.

Fail closed: an output image exists only when its image was decoded, searched, anonymized,
written in full and checked (`imagefile.check`). Everything for one image (the image, and the
optional `<name>.json` sidecar and `<name>.mask.png`) is written under temporary names in its
final folder and renamed into place at the end; on any error the temporaries are removed, any
output left for that image by an earlier run is deleted too, and the reason is recorded. A
failure to write (a full disk) is that image's failure and the run goes on. After the last
image, `failures.jsonl` in the output folder lists every failure (input, step, error) and
`skipped.jsonl` every skipped file (input, reason); a run without any removes a stale one. A
list that cannot be written is not an exception: its file and the reason are in
`BatchReport.unwritten` (the command prints its rows to stderr and exits 1).

Speed: decoding and encoding run in `workers` threads (Pillow and OpenCV release the GIL) while
the detector runs on the previous image; at most `workers + 1` images are in memory at once
(an 8000x4000 panorama is 96 MB decoded).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.inputs import Inputs, Job, Skipped, check_output_names, output_jobs
from serving.runtime.pipeline import Anonymized, Decoded, Runtime
from serving.runtime.progress import bar

__all__ = ["FAILURES", "SKIPPED", "BatchReport", "Failure", "blur_batch"]

log = logging.getLogger(__name__)

FAILURES = "failures.jsonl"
SKIPPED = "skipped.jsonl"
STEPS = ("find", "read", "decode", "detect", "anonymize", "write")


@dataclass(frozen=True)
class Failure:
    input: str
    step: str  # one of STEPS
    error: str

    def json_line(self) -> str:
        """Its line of failures.jsonl."""
        return json.dumps(
            {"input": self.input, "step": self.step, "error": self.error}, sort_keys=True
        )


@dataclass
class BatchReport:
    found: int = 0  # written + failures + skipped once the run is done
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    detections: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    # FAILURES or SKIPPED -> why that file could not be written (or, stale, removed).
    unwritten: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        mp = self.megapixels / self.seconds if self.seconds else 0.0
        text = (
            f"found {self.found} items: anonymized {self.written} images ({self.detections} "
            f"regions hidden) in {self.seconds:.1f} s: {rate:.2f} images/s, {mp:.1f} MP/s"
        )
        if self.failures:
            text += f"; {len(self.failures)} FAILED, no output written for them"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped (hidden, or not images)"
        return text


class _StepError(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause = step, cause


def blur_batch(
    runtime: Runtime,
    inputs: Inputs,
    out_dir: Path,
    *,
    workers: int = 2,
    sidecar: bool = False,
    masks: bool = False,
) -> BatchReport:
    """Anonymize every job of `inputs` into `out_dir` and record its refused and skipped files
    (see the module docstring); the report. ServingError, before anything is written, when the
    outputs would collide or overwrite an input, or `out_dir` cannot be written to."""
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
    jobs = inputs.jobs
    report = BatchReport(
        found=len(jobs) + len(inputs.refused) + len(inputs.skipped), skipped=list(inputs.skipped)
    )
    for refused in inputs.refused:
        _fail(report, out_dir, refused.source, refused.relative, refused.step, refused.error)
    start = time.perf_counter()
    progress = bar(total=len(jobs), desc="blur", unit="img")
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="blur-io") as pool:
        decoding: deque[tuple[Job, Future[Decoded]]] = deque()
        writing: deque[tuple[Job, Future[Anonymized]]] = deque()
        pending = iter(jobs)

        def feed() -> None:
            job = next(pending, None)
            if job is not None:
                decoding.append((job, pool.submit(_decode, runtime, job)))

        def settle(job: Job, future: Future[Anonymized]) -> None:
            try:
                done = future.result()
            except _StepError as exc:
                _fail_job(report, out_dir, job, exc)
            else:
                report.written += 1
                report.detections += len(done.detections)
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
                decoded = future.result()
                try:
                    dets = runtime.detect(decoded.rgb)
                except Exception as exc:
                    raise _StepError("detect", exc) from exc
            except _StepError as exc:
                _fail_job(report, out_dir, job, exc)
                progress.update(1)
                continue
            del decoded.rgb  # only the detector needs it; keep memory to one copy per image
            writing.append(
                (job, pool.submit(_finish, runtime, decoded, dets, out_dir, job, sidecar, masks))
            )
            while len(writing) > max(workers, 1) or (writing and writing[0][1].done()):
                settle(*writing.popleft())
        while writing:
            settle(*writing.popleft())
    progress.close()
    report.seconds = time.perf_counter() - start
    for name, rows in ((FAILURES, report.failures), (SKIPPED, report.skipped)):
        try:
            _write_rows(out_dir / name, rows)
        except OSError as exc:
            doing = "written" if rows else "removed (it is stale)"
            report.unwritten[name] = f"could not be {doing}: {_describe(exc)}"
    return report


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


def _decode(runtime: Runtime, job: Job) -> Decoded:
    try:
        data = job.source.read_bytes()
    except OSError as exc:
        raise _StepError("read", exc) from exc
    try:
        return runtime.decode(data)
    except Exception as exc:
        raise _StepError("decode", exc) from exc


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


def _fail_job(report: BatchReport, out_dir: Path, job: Job, exc: _StepError) -> None:
    _fail(report, out_dir, job.source, job.relative, exc.step, _describe(exc.cause))


def _fail(
    report: BatchReport,
    out_dir: Path,
    source: Path,
    relative: Path | None,
    step: str,
    error: str,
) -> None:
    """Record a failure and remove every output of that input (an earlier run's too)."""
    target = None if relative is None else out_dir / relative
    for path in () if target is None else (target, _sidecar(target), _mask_path(target)):
        try:
            if path.is_file() or path.is_symlink():  # not a folder someone put in the way
                path.unlink()
        except OSError as exc:
            error += f"; its earlier output {path} could not be removed ({exc}): delete it"
    log.warning("%s: %s failed (%s); no output written", source, step, error)
    report.failures.append(Failure(str(source), step, error))


def _write_rows(path: Path, rows: Sequence[Failure | Skipped]) -> None:
    """Write `rows` as JSON lines to `path`, or remove a stale `path` when there are none."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    data = "".join(row.json_line() + "\n" for row in rows).encode("utf-8")
    _write_together([(path, lambda: data)])


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
