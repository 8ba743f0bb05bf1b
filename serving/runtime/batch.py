"""`anonlab blur`: anonymize many image files into an output folder, failing closed per image.

Inputs are files, folders (walked recursively) and glob patterns (matched as the shell does:
not names starting with '.'; a folder a pattern matches is walked). Each output keeps the
input's path relative to what was given (a folder's or glob's fixed part; a file's own folder),
the same file name and format. Every file found is accounted for, and the summary's counts add
up: found = written + failed + skipped.
- Taken: a file named by itself, unless its extension is an unsupported format's (below;
  decoding says what else is wrong with it); in a walk or a glob's matches, a file with an
  image extension (`imagefile.IMAGE_EXTENSIONS`) or, whatever its extension (none included),
  one whose first bytes are a JPEG, PNG, TIFF or WebP signature (Pillow's checks); its output
  keeps its name.
- Failed (fail closed: each may hold a picture the operator expects to be anonymized): an image
  of a format the runtime cannot anonymize, by extension (`UNSUPPORTED_EXTENSIONS`: GIF, BMP,
  HEIF, camera raw, ...) or by signature (GIF, BMP, ICO, PSD, JPEG 2000, AVIF); a link to
  nothing; a link to a folder met in a walk (not followed, since links can loop: give it as an
  input of its own); a folder that cannot be listed (step "find"); a file whose first bytes
  cannot be read (step "read").
- Skipped, each with its reason: in a walk or a glob's matches, hidden files (names starting
  with '.': `.DS_Store`, macOS's `._*` companions), files that are images neither by extension
  nor by content, and FIFOs, sockets and devices.
A file reached twice (named twice, or also through a link) is done once, under its first name.

Refused before anything is written: two inputs that would be written to one output (the image,
or its sidecar or mask), including names that differ only by case, because those are one file
on case-insensitive file systems (macOS, Windows, SMB shares), where outputs are often copied;
an output that would overwrite an input; an output folder that cannot be created or written to.

Fail closed: an output image exists only when its image was decoded, searched, anonymized and
written in full. Everything for one image (the image, and the optional `<name>.json` sidecar and
`<name>.mask.png`) is written under temporary names in its final folder and renamed into place at
the end; on any error the temporaries are removed, any output left for that image by an earlier
run is deleted too, and the reason is recorded. A failure to write (a full disk) is that image's
failure and the run goes on. After the last image, `failures.jsonl` in the output folder lists
every failure (input, step, error) and `skipped.jsonl` every skipped file (input, reason); a run
without any removes a stale one. A list that cannot be written is not an exception: its file and
the reason are in `BatchReport.unwritten` (the command prints its rows to stderr and exits 1).

Speed: decoding and encoding run in `workers` threads (Pillow and OpenCV release the GIL) while
the detector runs on the previous image; at most `workers + 1` images are in memory at once
(an 8000x4000 panorama is 96 MB decoded).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.imagefile import FORMAT_EXTENSIONS, IMAGE_EXTENSIONS
from serving.runtime.pipeline import Anonymized, Decoded, Runtime
from serving.runtime.progress import bar

__all__ = [
    "FAILURES",
    "SKIPPED",
    "UNSUPPORTED_EXTENSIONS",
    "BatchReport",
    "Failure",
    "Inputs",
    "Job",
    "Refused",
    "Skipped",
    "blur_batch",
    "find_inputs",
]

log = logging.getLogger(__name__)

FAILURES = "failures.jsonl"
SKIPPED = "skipped.jsonl"
STEPS = ("find", "read", "decode", "detect", "anonymize", "write")

# Extensions of picture formats the runtime cannot anonymize. A file found with one of them is
# a failure, not a skip: it holds a picture that would otherwise leave the run untouched.
_UNSUPPORTED = {
    "GIF": ".gif",
    "BMP": ".bmp .dib",
    "HEIF": ".heic .heif .hif",
    "AVIF": ".avif",
    "JPEG 2000": ".jp2 .j2k .jpf .jpx",
    "JPEG XL": ".jxl",
    "JPEG XR": ".jxr .wdp",
    "Photoshop": ".psd",
    "ICO": ".ico",
    "SVG": ".svg",
    "TGA": ".tga",
    "OpenEXR": ".exr",
    "Netpbm": ".ppm .pgm .pbm .pnm",
    "camera raw": ".raw .dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .orf .rw2 .raf .pef .srw "
    ".x3f .3fr .erf",
}
UNSUPPORTED_EXTENSIONS = {ext: fmt for fmt, exts in _UNSUPPORTED.items() for ext in exts.split()}
# The picture formats whose signature (Pillow's, in the first 16 bytes) is looked for in a file
# without an image extension: those the runtime reads, and others that hold pictures. Formats
# with a weak signature (Netpbm: "P1" to "P7") or that are not pictures (MPEG) are left out.
_SNIFFED = (*FORMAT_EXTENSIONS, "GIF", "BMP", "ICO", "PSD", "JPEG2000", "AVIF")
# More colliding outputs than this are counted, not listed, in the error.
_CLASHES_LISTED = 10


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

    def json_line(self) -> str:
        """Its line of failures.jsonl."""
        return json.dumps(
            {"input": self.input, "step": self.step, "error": self.error}, sort_keys=True
        )


@dataclass(frozen=True)
class Skipped:
    """A file found that is not anonymized because it is not an image to anonymize."""

    input: str
    reason: str

    def json_line(self) -> str:
        """Its line of skipped.jsonl."""
        return json.dumps({"input": self.input, "reason": self.reason}, sort_keys=True)


@dataclass(frozen=True)
class Refused:
    """A file found that fails before it is decoded (see the module docstring). `relative` is
    its output path, whose earlier output is removed; None for a folder, which has none."""

    source: Path
    relative: Path | None
    step: str
    error: str


@dataclass
class Inputs:
    """What `find_inputs` found: the files to anonymize, those that fail already, and those
    skipped."""

    jobs: list[Job] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


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
            f"found {self.found} files: anonymized {self.written} images ({self.detections} "
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


def find_inputs(inputs: Sequence[str]) -> Inputs:
    """Every file named by `inputs` (files, folders walked recursively, glob patterns), each
    once, in order, taken, refused or skipped (see the module docstring). ServingError when an
    input names nothing, or holds no image, or when two inputs would share an output name."""
    found = Inputs()
    seen: set[str] = set()
    for given in inputs:
        before, skipped_before = len(found.jobs) + len(found.refused), len(found.skipped)
        base, candidates = _candidates(given, found)
        for file, walked in candidates:
            real = os.path.realpath(file)
            if real in seen:
                continue
            seen.add(real)
            verdict = _sort(Job(file, file.relative_to(base)), walked)
            if isinstance(verdict, Job):
                found.jobs.append(verdict)
            elif isinstance(verdict, Refused):
                found.refused.append(verdict)
            else:
                found.skipped.append(verdict)
        if len(found.jobs) + len(found.refused) == before:
            others = found.skipped[skipped_before:]
            message = f"{given}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found there"
            if others:
                files = "file" if len(others) == 1 else "files"
                message += f"; {len(others)} other {files}, such as {others[0].input}: "
                message += others[0].reason
            raise ServingError(message)
    _check_names(_outputs(found))
    return found


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
    outputs = _outputs(inputs)
    _check_names(outputs, [f for f, on in ((_sidecar, sidecar), (_mask_path, masks)) if on])
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


def _candidates(given: str, found: Inputs) -> tuple[Path, list[tuple[Path, bool]]]:
    """What `given` names: the folder outputs are relative to, and each file with whether it
    was met in a walk or a glob's matches (True) or named by itself (False)."""
    path = Path(given)
    if glob.has_magic(given):
        base = Path(_fixed_prefix(given))
        files: set[Path] = set()
        folders: set[Path] = set()
        walked: set[Path] = set()
        for match in map(Path, sorted(glob.glob(given, recursive=True))):
            if not match.is_dir():
                files.add(match)
                continue
            folders.add(match)
            if not any(parent in walked for parent in match.parents):
                walked.add(match)
                files.update(_walk(match, base, found))
        # A link to a folder that the pattern matched was followed by it, not refused.
        return base, [(file, True) for file in sorted(files - folders)]
    if path.is_dir():
        return path, [(file, True) for file in sorted(_walk(path, path, found))]
    if path.is_file():
        return path.parent, [(path, False)]
    if path.is_symlink():
        raise ServingError(
            f"{given}: a link to {os.readlink(path)}, which leads to nothing (no such file, or "
            "links in a loop): fix the link, or leave it out"
        )
    if path.exists():
        raise ServingError(f"{given}: not a file or folder (a FIFO, socket or device)")
    raise ServingError(f"{given}: no such file or folder")


def _walk(folder: Path, base: Path, found: Inputs) -> list[Path]:
    """Every entry under `folder` that is not a folder, and every link to a folder (refused
    later: not followed); a folder that cannot be listed is refused here."""

    def unlistable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        found.refused.append(
            Refused(
                where,
                None,
                "find",
                f"the folder cannot be listed ({exc.strerror}), so the files in it were not "
                "looked at: make it readable and run again",
            )
        )

    entries: list[Path] = []
    for root, folders, names in os.walk(folder, onerror=unlistable):
        here = Path(root)
        entries += [here / name for name in folders if (here / name).is_symlink()]
        entries += [here / name for name in names]
    return entries


def _sort(job: Job, walked: bool) -> Job | Refused | Skipped:
    """Whether a file found is taken (the job), refused or skipped (see the module docstring)."""
    path = job.source

    def refused(step: str, error: str) -> Refused:
        return Refused(path, job.relative, step, error)

    if walked and path.name.startswith("."):
        return Skipped(str(path), "hidden: its name starts with '.'")
    if path.is_symlink() and not path.exists():
        return refused(
            "find",
            f"a link to {os.readlink(path)}, which leads to nothing (no such file, or links in "
            "a loop): fix the link, or remove it",
        )
    if path.is_dir():
        return Refused(
            path,
            None,
            "find",
            f"a link to the folder {os.readlink(path)}, not followed (links can loop): give "
            f"{path} as an input of its own",
        )
    if not path.is_file():
        return Skipped(str(path), "not a regular file (a FIFO, socket or device)")
    ext = path.suffix.lower()
    if ext in UNSUPPORTED_EXTENSIONS:
        return refused(
            "find", _unsupported(f"a {UNSUPPORTED_EXTENSIONS[ext]} image by its extension")
        )
    if not walked or ext in IMAGE_EXTENSIONS:
        return job
    try:
        kind = _content_format(path)
    except OSError as exc:
        return refused(
            "read",
            f"its content could not be read to tell whether it is an image: {_describe(exc)}",
        )
    if kind is None:
        named = f"neither its extension ({ext}) nor" if ext else "it has no extension, and neither"
        return Skipped(str(path), f"not an image: {named} its content is an image format's")
    if kind in FORMAT_EXTENSIONS:
        return job
    return refused("find", _unsupported(f"a {kind} image by its content"))


def _content_format(path: Path) -> str | None:
    """The picture format (`_SNIFFED`) whose signature the file starts with, by Pillow's
    signature checks; None for none. OSError when the file cannot be read."""
    with path.open("rb") as f:
        head = f.read(16)  # what Pillow's own checks look at
    return next((fmt for fmt, accept in _signatures() if accept(head)), None)


@functools.cache
def _signatures() -> list[tuple[str, Callable[[bytes], object]]]:
    """Pillow's signature check of each `_SNIFFED` format that this Pillow reads."""
    Image.init()  # registers every plugin that this Pillow has (AVIF needs libavif)
    return [
        (fmt, Image.OPEN[fmt][1])
        for fmt in _SNIFFED
        if fmt in Image.OPEN and Image.OPEN[fmt][1] is not None
    ]


def _unsupported(what: str) -> str:
    kinds = ", ".join(FORMAT_EXTENSIONS)
    return f"{what}; only {kinds} images are anonymized: convert it to one of them and run again"


def _outputs(inputs: Inputs) -> list[Job]:
    """Every job that has an output path: those taken, and those refused (whose earlier output
    is removed)."""
    refused = [Job(r.source, r.relative) for r in inputs.refused if r.relative is not None]
    return [*inputs.jobs, *refused]


def _check_names(jobs: Sequence[Job], companions: Sequence[Callable[[Path], Path]] = ()) -> None:
    """ServingError, naming the inputs and the output they share, when two jobs would write one
    output: the image, or a companion file (sidecar, mask), same name or same but for case."""
    claims: dict[str, list[tuple[Path, Job]]] = defaultdict(list)
    for job in jobs:
        for name in (job.relative, *(companion(job.relative) for companion in companions)):
            claims[name.as_posix().casefold()].append((name, job))
    clashes = [group for group in claims.values() if len({job for _, job in group}) > 1]
    if not clashes:
        return
    lines = []
    for group in clashes[:_CLASHES_LISTED]:
        names = sorted({name.as_posix() for name, _ in group})
        line = f"  {' and '.join(names)} <- {', '.join(str(job.source) for _, job in group)}"
        if len(names) > 1:
            line += (
                " (names that differ only by case are one file on case-insensitive file "
                "systems: macOS, Windows, SMB shares)"
            )
        lines.append(line)
    if len(clashes) > _CLASHES_LISTED:
        lines.append(f"  and {len(clashes) - _CLASHES_LISTED} more")
    common = _common_folder([job.source for group in clashes for _, job in group])
    raise ServingError(
        f"{len(clashes)} output(s) would each be written from more than one input, one "
        "overwriting the other; nothing was written:\n"
        + "\n".join(lines)
        + "\nEach output keeps its input's path below the folder or glob it was found through "
        "(a file given by itself: its name alone). Give inputs whose paths below it differ, "
        f"e.g. the folder that holds them all ({common}) instead of files or folders inside "
        "it, or blur them into separate --out folders."
    )


def _common_folder(sources: Sequence[Path]) -> str:
    folders = [str(source.parent) for source in sources]
    try:
        common = os.path.commonpath(folders)
    except ValueError:  # absolute and relative paths mixed
        common = os.path.commonpath([os.path.abspath(folder) for folder in folders])
    return common or "."


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


def _fixed_prefix(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."
