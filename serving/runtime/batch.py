"""`anonlab blur`: anonymize many image files into an output folder, failing closed per image,
with a ledger of what became of each input.

What is taken, failed or skipped of the files given is `inputs`' decision; the summary's counts
add up: found = written + failed + skipped + resumed. Refused before anything is written: two
inputs that would be written to one output (`inputs.check_output_names`), an output that would
overwrite an input, an output folder or a ledger that cannot be created or written to.

One path per image, fail closed: read, decode, detect, anonymize, encode, write. An output image
exists only when its image was decoded, searched, anonymized, written in full and checked
(`imagefile.check`). An image more than half hidden is written, logged as a warning and named
in the summary (`one_image.MOSTLY_HIDDEN`). Everything for one image (the image, and the
optional `<name>.json` sidecar and `<name>.mask.png`) is written under temporary names in its
final folder and renamed into place at the end; on any error the temporaries are removed, any
output left for that image by an earlier run is deleted too, and the failed step is recorded.
A failure to write (a full disk) is that image's failure and the run goes on.

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

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from serving.runtime.errors import ServingError
from serving.runtime.inputs import Inputs, check_output_names, output_jobs
from serving.runtime.ledger import FAILED, OK, SKIPPED, Ledger, Row
from serving.runtime.one_image import (
    MOSTLY_HIDDEN,
    StepError,
    Work,
    companions,
    describe,
    detect,
    failed_row,
    finish_write,
    ok_row,
    read_decode,
)
from serving.runtime.pipeline import Anonymized, Decoded, Runtime
from serving.runtime.progress import bar
from serving.runtime.storage import join
from serving.runtime.url_inputs import Found, from_local

__all__ = ["DEFAULT_LEDGER", "BatchReport", "begin", "blur_batch", "check_out"]

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
    # Images written with more than one_image.MOSTLY_HIDDEN of their pixels hidden: how many,
    # and the first SHOWN inputs.
    mostly_hidden: int = 0
    mostly_hidden_shown: list[str] = field(default_factory=list)
    # With keep_outputs (blur --audit), the output of every image written by this run.
    keep_outputs: bool = False
    outputs: list[str] = field(default_factory=list)
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
        if self.mostly_hidden:
            more = self.mostly_hidden - len(self.mostly_hidden_shown)
            text += (
                f"; {self.mostly_hidden} more than half hidden, check them: "
                + ", ".join(self.mostly_hidden_shown)
                + (f" and {more} more" if more else "")
            )
        return text

    def hidden(self, key: str, share: float) -> None:
        """Note that the image of input `key` was written with `share` of it hidden."""
        if share > MOSTLY_HIDDEN:
            self.mostly_hidden += 1
            if len(self.mostly_hidden_shown) < SHOWN:
                self.mostly_hidden_shown.append(key)

    def record(self, ledger: Ledger, row: Row) -> None:
        ledger.append(row)
        if row.status == OK:
            self.written += 1
            if self.keep_outputs and row.output:
                self.outputs.append(row.output)
        elif row.status == FAILED:
            self.failed += 1
            if len(self.failures) < SHOWN:
                self.failures.append(row)
        elif row.status == SKIPPED:
            self.skipped += 1


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
    keep_outputs: bool = False,
) -> BatchReport:
    """Anonymize every job of `inputs` into `out_dir`, recording each input in `ledger` (by
    default `<out_dir>/.anonlab-ledger`; see the module docstring); the report. ServingError,
    before anything is written, when the outputs would collide or overwrite an input, or
    `out_dir` or the ledger cannot be written to; during the run, when the ledger cannot."""
    out_dir = Path(out_dir)
    outputs = output_jobs(inputs)
    beside = [
        lambda p, i=i: Path(companions(str(p))[i]) for i, on in enumerate((sidecar, masks)) if on
    ]
    check_output_names(outputs, beside)
    sources = {os.path.realpath(job.source) for job in outputs}
    for job in outputs:
        if os.path.realpath(out_dir / job.relative) in sources:
            raise ServingError(
                f"--out {out_dir} would overwrite the input {job.source}; choose another folder"
            )
    check_out(out_dir)
    ledger = ledger or Ledger(out_dir / DEFAULT_LEDGER)
    ledger.check_writable()
    found = from_local(inputs)
    with ledger:  # closed however the run ends: the rows written so far are kept
        report, works = begin(found, str(out_dir), ledger, resume, sidecar, masks)
        report.keep_outputs = keep_outputs  # blur --audit: what this run wrote
        _run(runtime, works, ledger, report, workers)
    return report


def begin(
    found: Found, out: str, ledger: Ledger, resume: bool, sidecar: bool, masks: bool
) -> tuple[BatchReport, list[Work]]:
    """What every engine does before the first image: the rows of the inputs that were sorted
    out (skipped; failed, with any earlier output removed), and with `resume`, the inputs whose
    last row is `ok` left out. The report so far, and the work left to do."""
    report = BatchReport(found=len(found.taken) + len(found.failed) + len(found.skipped))
    works = [Work(key, join(out, relative), sidecar, masks) for key, relative in found.taken]
    if resume:
        done = {key for key, row in ledger.read().items() if row.status == OK}
        works = [work for work in works if work.input not in done]
        report.resumed = len(found.taken) - len(works)
    for key, reason in found.skipped:
        report.record(ledger, Row(key, SKIPPED, step="find", error=reason))
    for key, relative, step, error in found.failed:
        work = None if relative is None else Work(key, join(out, relative), sidecar, masks)
        report.record(ledger, failed_row(work, key, step, error))
    return report, works


def _run(
    runtime: Runtime, works: Sequence[Work], ledger: Ledger, report: BatchReport, workers: int
) -> None:
    """The images through one_image's steps: reading and decoding, and anonymizing and writing,
    on `workers` threads; detecting on this one."""
    start = time.perf_counter()
    progress = bar(total=len(works), desc="blur", unit="img")
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="blur-io") as pool:
        decoding: deque[tuple[Work, Future[tuple[Decoded, str]]]] = deque()
        writing: deque[tuple[Work, str, Future[Anonymized]]] = deque()
        pending = iter(works)

        def feed() -> None:
            work = next(pending, None)
            if work is not None:
                decoding.append((work, pool.submit(read_decode, runtime, work)))

        def fail(work: Work, exc: StepError, sha256: str | None = None) -> None:
            error = describe(exc.cause)
            report.record(
                ledger, failed_row(work, work.input, exc.step, error, exc.sha256 or sha256)
            )

        def settle(work: Work, sha256: str, future: Future[Anonymized]) -> None:
            try:
                done = future.result()
            except StepError as exc:
                fail(work, exc, sha256)
            else:
                report.record(ledger, ok_row(work, sha256, done))
                report.hidden(work.input, done.hidden_share or 0.0)
                report.detections += len(done.detections)
                report.megapixels += done.width * done.height / 1e6
            progress.update(1)
            elapsed = time.perf_counter() - start
            progress.set_postfix_str(f"{report.megapixels / max(elapsed, 1e-9):.1f} MP/s")

        for _ in range(max(workers, 1)):
            feed()
        while decoding:
            work, future = decoding.popleft()
            feed()
            try:
                decoded, sha256 = future.result()
                dets = detect(runtime, decoded, sha256)
            except StepError as exc:
                fail(work, exc)
                progress.update(1)
                continue
            del decoded.rgb  # only the detector needs it; keep memory to one copy per image
            finishing = pool.submit(finish_write, runtime, decoded, dets, work)
            writing.append((work, sha256, finishing))
            while len(writing) > max(workers, 1) or (writing and writing[0][2].done()):
                settle(*writing.popleft())
        while writing:
            settle(*writing.popleft())
    progress.close()
    report.seconds = time.perf_counter() - start


def _sidecar(target: Path) -> Path:
    return Path(companions(str(target))[0])


def _mask(target: Path) -> Path:
    return Path(companions(str(target))[1])


def check_out(out_dir: Path) -> None:
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
