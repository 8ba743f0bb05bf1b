"""Erasure from MLflow's tracking store (`mlflow`; see data.erasure.stores for the interface).

The store is the one runs go to (training.tracking.tracking_uri: MLFLOW_TRACKING_URI, else
`mlflow.db` in the project root) and the local artifact folders of its experiments. What can
hold an image there:
- artifact files: an image (by extension or magic bytes) whose content is an erased image, and
  any file whose path or bytes hold a needle (data.erasure.subjects). The project itself logs
  metrics, config files and models (training.loop, training.tracking); model weights
  (`.safetensors`, `.pt`, `.onnx`, ...) are numbers, not names, and are not read. Weights trained
  on an erased image are not retrained by erasure. Artifacts are not indexed by image:
  every other artifact file is read (a run of the project logs a few small files);
- rows of the database: params, tags and any other text that holds a needle (the metric
  tables, numbers under metric names, are not searched);
- the database file itself: SQLite keeps a deleted row's bytes in free pages until VACUUM.

The database's bytes are looked at first; its rows are searched only when they hold a needle.

Erasing deletes the artifact files. Tags are mutable: a tag row that holds a needle is deleted
(run, experiment and registry tags alike). Params are immutable in MLflow, so a run whose param
(or any other row that carries its run id: its name, say) names an image is deleted whole, for
good: marked deleted and removed with `mlflow gc` (its metrics and artifacts go with it). A row
that belongs to no run and is no tag (a registered model's description, say) is left, and
reported by `find` until it is removed by hand. The database is then VACUUMed.

Decision: only a SQLite tracking store can be checked (the project's default). For any other
URI (a tracking server, a database server) `find` and `erase` raise an error that says to run
the erasure where the store's SQLite database is: the core keeps the erasure pending until then.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from data.erasure import files
from data.erasure.stores import Held, Store
from data.erasure.subjects import Subject
from data.errors import AnonlabError
from serving.runtime.checksum import file_sha256
from serving.runtime.imagefile import IMAGE_EXTENSIONS, identify
from training.tracking import global_tracking_uri, sqlite_path, tracking_uri

log = logging.getLogger(__name__)

NAME = "mlflow"
# Model weights and other tensors: numbers that name no image (and are hundreds of MB).
WEIGHT_SUFFIXES = frozenset({".safetensors", ".pt", ".pth", ".onnx", ".ckpt", ".bin", ".npy"})
# Numbers keyed by metric names: not searched for names of images.
NUMERIC_TABLES = frozenset({"metrics", "latest_metrics"})
HEAD_BYTES = 16
SQLITE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Row:
    """A database row that holds a needle: its table, rowid, and run when it belongs to one."""

    table: str
    rowid: int
    run: str | None

    @property
    def is_tag(self) -> bool:
        return self.table.endswith("tags")


@dataclass(frozen=True)
class MlflowStore:
    """The SQLite tracking store at `uri` and its local artifact folders."""

    uri: str
    name: str = NAME

    @property
    def database(self) -> Path:
        path = sqlite_path(self.uri)
        if path is None:
            raise AnonlabError(
                f"MLflow tracking store {self.uri} (MLFLOW_TRACKING_URI) is not a SQLite "
                "database: erasure checks MLflow through its database file and artifact "
                "folders. Run `anonlab erase` or `anonlab retention` again with "
                "MLFLOW_TRACKING_URI=sqlite:///<the tracking server's database> on the machine "
                "that holds it; the erasure stays pending until then"
            )
        return path

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        database = self.database
        if not database.is_file():
            return []
        held = [Held(self._where(p), "artifact") for p in self._artifacts(database, subjects)]
        if files.read_if_holding(database, subjects) is None:
            return held
        rows = self._rows(database, subjects)
        held += [Held(f"{database.name} {r.table}", _what(r), 1) for r in rows]
        if not rows:
            held.append(Held(database.name, "deleted rows' bytes in free pages (erasing vacuums)"))
        return held

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        database = self.database
        if not database.is_file():
            return []
        erased = []
        for path in self._artifacts(database, subjects):
            path.unlink()
            erased.append(Held(self._where(path), "artifact"))
        if files.read_if_holding(database, subjects) is None:
            return erased
        rows = self._rows(database, subjects)
        tags = [r for r in rows if r.is_tag]
        runs = sorted({r.run for r in rows if not r.is_tag and r.run is not None})
        connection = sqlite3.connect(database, timeout=SQLITE_TIMEOUT_S)
        with closing(connection), connection:  # one transaction
            for r in tags:
                connection.execute(f'DELETE FROM "{r.table}" WHERE rowid = ?', (r.rowid,))
        erased += [Held(f"{database.name} {r.table}", "tag", 1) for r in tags]
        if runs:
            self._delete_runs(runs)
            erased.append(Held(database.name, "runs naming the image (deleted)", len(runs)))
        with closing(sqlite3.connect(database, timeout=SQLITE_TIMEOUT_S)) as connection:
            connection.execute("VACUUM")
        if not rows and files.read_if_holding(database, subjects) is None:
            erased.append(Held(database.name, "deleted rows' bytes (vacuumed)"))
        return erased

    def _where(self, path: Path) -> str:
        return files.relative(path, self.database.parent)

    # -- the database -------------------------------------------------------------------------

    def _rows(self, database: Path, subjects: Sequence[Subject]) -> list[Row]:
        """The rows that hold a needle (searched only when the file's bytes hold one)."""
        needles = files.needles(subjects)
        found = []
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            tables = [
                t
                for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if t not in NUMERIC_TABLES
            ]
            for table in tables:
                columns = [c[1] for c in connection.execute(f'PRAGMA table_info("{table}")')]
                run = "run_uuid" if "run_uuid" in columns else None
                match = " OR ".join(
                    f'instr(CAST("{c}" AS TEXT), ?) > 0' for c in columns for _ in needles
                )
                args = [n for _ in columns for n in needles]
                select = f'SELECT rowid, {run or "NULL"} FROM "{table}" WHERE {match}'
                found += [Row(table, i, r) for i, r in connection.execute(select, args)]
        return found

    def _delete_runs(self, runs: Sequence[str]) -> None:
        """Delete `runs` for good: marked deleted, then removed by `mlflow gc` (run here, in
        this process: a new one would import MLflow again)."""
        import click
        import mlflow
        from mlflow.cli import gc

        client = mlflow.MlflowClient(tracking_uri=self.uri)
        for run in runs:
            if client.get_run(run).info.lifecycle_stage != "deleted":
                client.delete_run(run)
        args = ["--backend-store-uri", self.uri, "--tracking-uri", self.uri]
        said = io.StringIO()  # gc echoes a line per run: logged, not printed
        try:
            # gc sets MLflow's global tracking URI: put back after.
            with global_tracking_uri(self.uri), redirect_stdout(said):
                gc.main([*args, "--run-ids", ",".join(runs)], standalone_mode=False)
        except (click.ClickException, mlflow.MlflowException) as e:
            raise AnonlabError(
                f"`mlflow gc` could not remove {len(runs)} run(s) naming the images from "
                f"{self.uri}: {e}. The erasure stays pending: run `anonlab erase` again once "
                "it is fixed"
            ) from None
        log.debug("mlflow gc: %s", said.getvalue().strip())
        log.info("deleted %d MLflow run(s) naming the images", len(runs))

    # -- the artifacts ------------------------------------------------------------------------

    def _artifact_roots(self, database: Path) -> list[Path]:
        """The local artifact folders of the store's experiments (a relative location is taken
        from the database's folder, where the project's runs put theirs)."""
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            try:
                query = "SELECT artifact_location FROM experiments"
                locations = [loc for (loc,) in connection.execute(query)]
            except sqlite3.Error:  # no experiment was ever created
                return []
        roots = set()
        for location in locations:
            parsed = urlparse(location or "")
            if parsed.scheme == "file":
                path = Path(unquote(parsed.path))
            elif not parsed.scheme and location:
                path = Path(location)  # a plain path (which may start with `//`)
            else:
                continue  # a remote artifact store: not on this machine
            roots.add(path if path.is_absolute() else database.parent / path)
        return sorted(r for r in roots if r.is_dir())

    def _artifacts(self, database: Path, subjects: Sequence[Subject]) -> list[Path]:
        """Artifact files that are one of the images, or whose path or bytes name one."""
        return sorted(
            {
                path
                for root in self._artifact_roots(database)
                for path in _files(root)
                if _holds(path, subjects)
            }
        )


def _files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() not in WEIGHT_SUFFIXES and path.is_file():
                yield path


def _holds(path: Path, subjects: Sequence[Subject]) -> bool:
    if any(n in path.as_posix() for n in files.needles(subjects)):
        return True
    if _is_image(path) and file_sha256(path) in files.shas(subjects):
        return True
    return files.holding(path, subjects)


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    with path.open("rb") as f:
        return identify(f.read(HEAD_BYTES)) is not None


def _what(row: Row) -> str:
    if row.is_tag:
        return "tag"
    return "row of a run (the run is deleted)" if row.run else "row naming the image"


def mlflow_stores(root: Path) -> list[Store]:
    """The MLflow store the project's runs go to (training.tracking.tracking_uri)."""
    return [MlflowStore(tracking_uri(root))]
