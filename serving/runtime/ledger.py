"""The ledger of `anonlab blur`: one row per input, written as the run goes, so that what a run
did survives the run (a killed process included) and a later run can pick up where it stopped.

A ledger is a folder (a local path, or an fsspec URL such as `s3://bucket/ledger/` where fsspec
and the filesystem's package are installed) of JSON Lines files, one or more per run, named
`<run>.jsonl` locally and `<run>-<part>.jsonl` elsewhere; `<run>` is the run's start time in UTC
and its process id, so names sort by time. pandas and pyarrow read the folder as it is:

    pandas.concat(pandas.read_json(f, lines=True) for f in glob.glob("ledger/*.jsonl"))
    pyarrow.dataset.dataset("ledger/", format="json")

Columns (`COLUMNS`): `input` (the path or URL as found), `input_sha256` (of the bytes read; null
when the input could not be read), `status` (`ok`, `failed`, `skipped`), `step` (where it
failed: find, read, decode, detect, anonymize, write; or why it was skipped), `error`,
`regions` (regions hidden, for `ok`), `output` (what was written, for `ok`), then `run` and
`time` (when the row was written, UTC).

Durability: a local ledger appends each row to its run's file and flushes it at once, so a
killed process loses no finished row (at most a half-written last line, which reading
ignores). An object store cannot append: rows are written as a new part every `flush_rows`
rows or `flush_s` seconds and at the end, so a killed run loses at most those not yet written;
`--resume` then does those inputs again (their outputs are written again, whole, as before).

Reading: the rows of every file, in name order then line order; an input's last row is its
state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from serving.runtime.errors import ServingError
from serving.runtime.storage import filesystem, is_url

__all__ = ["COLUMNS", "FAILED", "OK", "SKIPPED", "Ledger", "Row"]

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
COLUMNS = ("input", "input_sha256", "status", "step", "error", "regions", "output")


@dataclass(frozen=True)
class Row:
    """One input's outcome in one run."""

    input: str
    status: str  # OK, FAILED or SKIPPED
    input_sha256: str | None = None
    step: str | None = None
    error: str | None = None
    regions: int | None = None
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Row:
        return cls(**{k: row.get(k) for k in COLUMNS})


class Ledger:
    """A ledger folder: `read` what earlier runs recorded, `append` this run's rows, `close`."""

    def __init__(
        self, location: str | os.PathLike[str], *, flush_rows: int = 500, flush_s: float = 10.0
    ) -> None:
        self.location = str(location)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        now = datetime.now(UTC)
        self.run = f"{now:%Y%m%dT%H%M%S%fZ}-{os.getpid()}"
        self._fs, self._root = _filesystem(self.location)
        self._file: IO[str] | None = None
        self._buffer: list[str] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self.written = 0

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(ServingError):  # the error being raised is the one to tell
            self.close()

    def read(self) -> dict[str, Row]:
        """Every input's last row, over every run recorded so far (this one's included)."""
        last: dict[str, Row] = {}
        for row in self._rows():
            last[row.input] = row
        return last

    def append(self, row: Row) -> None:
        """Record `row`; ServingError when the ledger cannot be written (the run must stop:
        a run whose outcome cannot be recorded cannot be resumed)."""
        line = json.dumps({**row.to_dict(), "run": self.run, "time": _now()}, sort_keys=True)
        try:
            if self._fs is None:
                self._local().write(line + "\n")
                self._local().flush()
            else:
                self._buffer.append(line)
                due = time.monotonic() - self._last_flush >= self.flush_s
                if len(self._buffer) >= self.flush_rows or due:
                    self._write_part()
        except OSError as exc:
            raise ServingError(
                f"--ledger {self.location}: cannot write to it ({exc}); {self.written} rows of "
                "this run were written; free the space or fix the permissions and run again "
                "with --resume"
            ) from None
        self.written += 1

    def close(self) -> None:
        """Write what is buffered and close this run's file."""
        try:
            if self._buffer:
                self._write_part()
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
        except OSError as exc:
            raise ServingError(
                f"--ledger {self.location}: cannot finish writing it ({exc}); run again with "
                "--resume to do again the inputs whose rows are missing"
            ) from None

    def check_writable(self) -> None:
        """ServingError, before any image is done, when the ledger cannot be created."""
        try:
            if self._fs is None:
                Path(self._root).mkdir(parents=True, exist_ok=True)
                if not os.access(self._root, os.W_OK):
                    raise PermissionError(f"{self._root} is not writable")
            else:
                self._fs.makedirs(self._root, exist_ok=True)
        except OSError as exc:
            raise ServingError(
                f"--ledger {self.location}: cannot write there ({exc}); choose a folder or URL "
                "that can be created and written to"
            ) from None

    def _local(self) -> IO[str]:
        if self._file is None:
            Path(self._root).mkdir(parents=True, exist_ok=True)
            self._file = open(Path(self._root) / f"{self.run}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        return self._file

    def _write_part(self) -> None:
        assert self._fs is not None
        self._parts += 1
        path = f"{self._root.rstrip('/')}/{self.run}-{self._parts:06d}.jsonl"
        self._fs.pipe_file(path, ("\n".join(self._buffer) + "\n").encode("utf-8"))
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def _rows(self) -> Iterator[Row]:
        for name, text in self._files():
            lines = text.splitlines()
            for n, line in enumerate(lines, 1):
                try:
                    yield Row.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    if n == len(lines):  # a row cut short by a killed run: not written
                        log.warning("%s: its last line is incomplete; ignored", name)
                        continue
                    raise ServingError(
                        f"--ledger {self.location}: {name} line {n} is not a ledger row; "
                        "move that file out of the ledger folder"
                    ) from None

    def _files(self) -> Iterator[tuple[str, str]]:
        if self._fs is None:
            folder = Path(self._root)
            names = sorted(p.name for p in folder.glob("*.jsonl")) if folder.is_dir() else []
            for name in names:
                yield name, (folder / name).read_text(encoding="utf-8")
            return
        if not self._fs.exists(self._root):
            return
        for path in sorted(self._fs.glob(f"{self._root.rstrip('/')}/*.jsonl")):
            yield path.rsplit("/", 1)[-1], self._fs.cat_file(path).decode("utf-8")


def _filesystem(location: str) -> tuple[Any, str]:
    """(None, a local path) or (an fsspec filesystem, its path) for a ledger location."""
    if not is_url(location):
        return None, location.removeprefix("file://")
    return filesystem(location)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
