"""`anonlab blur`: anonymize many image files into an output folder, failing closed per image.

Inputs are files, folders (searched recursively for image files) and glob patterns. Each output
keeps the input's path relative to what was given (a folder's or glob's fixed part; a file's own
folder), the same file name and format.

Fail closed: an output image exists only when its image was decoded, searched, anonymized and
written in full. Everything for one image (the image, and the optional `<name>.json` sidecar and
`<name>.mask.png`) is written under temporary names in its final folder and renamed into place at
the end; on any error the temporaries are removed, any output left for that image by an earlier
run is deleted too, and the reason is recorded. After the last image, `failures.jsonl` in the
output folder lists every failure (input, step, error) and the command exits non-zero; a run
without failures removes a stale `failures.jsonl`.

Speed: decoding and encoding run in `workers` threads (Pillow and OpenCV release the GIL) while
the detector runs on the previous image; at most `workers + 1` images are in memory at once
(an 8000x4000 panorama is 96 MB decoded).
"""

from __future__ import annotations

import glob
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
from serving.runtime.imagefile import IMAGE_EXTENSIONS
from serving.runtime.pipeline import Anonymized, Decoded, Runtime
from serving.runtime.progress import bar

__all__ = ["FAILURES", "BatchReport", "Failure", "Job", "blur_batch", "find_inputs"]

log = logging.getLogger(__name__)

FAILURES = "failures.jsonl"
STEPS = ("read", "decode", "detect", "anonymize", "write")


@dataclass(frozen=True)
class Job:
    """One input file and its output path relative to the output folder."""

    source: Path
    relative: Path


@dataclass(frozen=True)
class Failure:
    input: str
    step: str  # one of STEPS
    error: str


@dataclass
class BatchReport:
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    detections: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        mp = self.megapixels / self.seconds if self.seconds else 0.0
        text = (
            f"anonymized {self.written} images ({self.detections} regions hidden) in "
            f"{self.seconds:.1f} s: {rate:.2f} images/s, {mp:.1f} MP/s"
        )
        if self.failures:
            text += f"; {len(self.failures)} FAILED, no output written for them"
        return text


class _StepError(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause = step, cause


def find_inputs(inputs: Sequence[str]) -> list[Job]:
    """The image files named by `inputs` (files, folders searched recursively, glob patterns),
    each once, in order; ServingError when an input names nothing."""
    jobs: list[Job] = []
    seen: set[Path] = set()
    for given in inputs:
        path = Path(given)
        if glob.has_magic(given):
            base = Path(_fixed_prefix(given))
            found = [Path(p) for p in sorted(glob.glob(given, recursive=True))]
            files = [p for p in found if p.is_file() and _is_image(p)]
        elif path.is_dir():
            base = path
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
        elif path.is_file():
            base, files = path.parent, [path]
        else:
            raise ServingError(f"{given}: no such file or folder")
        if not files:
            raise ServingError(
                f"{given}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found there"
            )
        for file in files:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                jobs.append(Job(file, file.relative_to(base)))
    return jobs


def blur_batch(
    runtime: Runtime,
    jobs: Sequence[Job],
    out_dir: Path,
    *,
    workers: int = 2,
    sidecar: bool = False,
    masks: bool = False,
) -> BatchReport:
    """Anonymize every job into `out_dir` (see the module docstring); the report."""
    out_dir = Path(out_dir)
    sources = {job.source.resolve() for job in jobs}
    for job in jobs:
        if (out_dir / job.relative).resolve() in sources:
            raise ServingError(
                f"--out {out_dir} would overwrite the input {job.source}; choose another folder"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
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
                _fail(report, out_dir, job, exc.step, exc.cause)
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
                _fail(report, out_dir, job, exc.step, exc.cause)
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
    _write_failures(out_dir, report.failures)
    return report


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


def _fail(report: BatchReport, out_dir: Path, job: Job, step: str, cause: BaseException) -> None:
    """Record a failure and remove every output of that image (an earlier run's too)."""
    target = out_dir / job.relative
    for path in (target, _sidecar(target), _mask_path(target)):
        if path.is_file() or path.is_symlink():  # not a folder someone put in the way
            try:
                path.unlink()
            except OSError as exc:
                log.error("%s: could not remove the earlier output %s (%s)", job.source, path, exc)
    message = str(cause) if isinstance(cause, ServingError) else f"{type(cause).__name__}: {cause}"
    log.warning("%s: %s failed (%s); no output written", job.source, step, message)
    report.failures.append(Failure(str(job.source), step, message))


def _write_failures(out_dir: Path, failures: Sequence[Failure]) -> None:
    path = out_dir / FAILURES
    if not failures:
        path.unlink(missing_ok=True)
        return
    rows = "".join(
        json.dumps({"input": f.input, "step": f.step, "error": f.error}, sort_keys=True) + "\n"
        for f in failures
    )
    _write_together([(path, lambda: rows.encode("utf-8"))])


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


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _fixed_prefix(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."
