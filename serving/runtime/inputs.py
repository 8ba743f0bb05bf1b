"""The files `anonlab blur` is given, sorted before anything is read: taken, failed or skipped.

Inputs are files, folders (walked recursively) and glob patterns (matched as the shell does:
not names starting with '.'; a folder a pattern matches is walked). Each output keeps the
input's path relative to what was given (a folder's or glob's fixed part; a file's own folder),
the same file name and format. Every file found is accounted for:
- Taken: a file named by itself, unless its extension is an unsupported format's (below;
  decoding says what else is wrong with it); in a walk or a glob's matches, a file with an
  image extension (`imagefile.IMAGE_EXTENSIONS`) or, whatever its extension (none included),
  one whose first bytes are a JPEG, PNG, TIFF or WebP signature (`imagefile.identify`); its
  output keeps its name.
- Failed (fail closed: each may hold a picture the operator expects to be anonymized): an image
  of a format the runtime cannot anonymize, by extension (`UNSUPPORTED_EXTENSIONS`: GIF, BMP,
  HEIF, camera raw, ...) or by signature (GIF, BMP, ICO, Photoshop, JPEG 2000, JPEG XL, HEIF/
  AVIF, ...); a link to nothing; a link to a folder met in a walk (not followed, since links
  can loop: give it as an input of its own); a folder that cannot be listed (step "find"); a
  file whose first bytes cannot be read (step "read").
- Skipped, each with its reason: in a walk or a glob's matches, hidden files and folders (names
  starting with '.': `.DS_Store`, macOS's `._*` companions, `.git`; a hidden folder is one
  entry, not walked), files that are images neither by extension nor by content, and FIFOs,
  sockets and devices.
A file reached twice (named twice, or also through a link) is done once, under its first name.

Refused before anything is written (`check_output_names`): two inputs that would be written to
one output (the image, or its sidecar or mask), including names that differ only by case,
because those are one file on case-insensitive file systems (macOS, Windows, SMB shares), where
outputs are often copied.
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serving.runtime.errors import ServingError
from serving.runtime.imagefile import FORMAT_EXTENSIONS, IMAGE_EXTENSIONS, identify

__all__ = [
    "UNSUPPORTED_EXTENSIONS",
    "Inputs",
    "Job",
    "Refused",
    "Skipped",
    "check_output_names",
    "find_inputs",
    "fixed_prefix",
    "output_jobs",
]


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


# More colliding outputs than this are counted, not listed, in the error.
_CLASHES_LISTED = 10


@dataclass(frozen=True)
class Job:
    """One input file and its output path relative to the output folder."""

    source: Path
    relative: Path


@dataclass(frozen=True)
class Skipped:
    """A file found that is not anonymized because it is not an image to anonymize."""

    input: str
    reason: str


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
    check_output_names(output_jobs(found))
    return found


def _candidates(given: str, found: Inputs) -> tuple[Path, list[tuple[Path, bool]]]:
    """What `given` names: the folder outputs are relative to, and each file with whether it
    was met in a walk or a glob's matches (True) or named by itself (False)."""
    path = Path(given)
    if glob.has_magic(given):
        base = Path(fixed_prefix(given))
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
    later: not followed); a folder that cannot be listed is refused here, and a hidden folder
    (`.git`, `.Trash-1000`) is skipped here, whole."""

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
        for name in [name for name in folders if name.startswith(".")]:
            found.skipped.append(
                Skipped(str(here / name), "hidden folder (its name starts with '.'): not walked")
            )
        folders[:] = [name for name in folders if not name.startswith(".")]
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
            "its content could not be read to tell whether it is an image: "
            f"{type(exc).__name__}: {exc}",
        )
    if kind is None:
        named = f"neither its extension ({ext}) nor" if ext else "it has no extension, and neither"
        return Skipped(str(path), f"not an image: {named} its content is an image format's")
    if kind in FORMAT_EXTENSIONS:
        return job
    return refused("find", _unsupported(f"a {kind} image by its content"))


def _content_format(path: Path) -> str | None:
    """The picture format the file's first bytes announce (`imagefile.identify`); None for
    none. OSError when the file cannot be read."""
    with path.open("rb") as f:
        return identify(f.read(16))


def _unsupported(what: str) -> str:
    kinds = ", ".join(FORMAT_EXTENSIONS)
    return f"{what}; only {kinds} images are anonymized: convert it to one of them and run again"


def output_jobs(inputs: Inputs) -> list[Job]:
    """Every job that has an output path: those taken, and those refused (whose earlier output
    is removed)."""
    refused = [Job(r.source, r.relative) for r in inputs.refused if r.relative is not None]
    return [*inputs.jobs, *refused]


def check_output_names(
    jobs: Sequence[Job], companions: Sequence[Callable[[Path], Path]] = ()
) -> None:
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


def fixed_prefix(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."
