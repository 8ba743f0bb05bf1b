"""Erasure from Label Studio: the JSON exports on disk (`label-studio-files`) and the server's
tasks with its data folder (`label-studio`); see data.erasure.stores for the interface.

`label-studio-files` holds the Label Studio exports under the artifacts root: the synthetic
source's export (`raw/synthetic/labelstudio_export.json`), every pull snapshot
(`annotations/snapshots/*.json`) and push's state (`annotations/project.json`); and the export
file `annotation.export_file` names, wherever it is. A file is parsed
only when its bytes hold a needle of an image (data.erasure.subjects); it is then rewritten
without the tasks whose image URL names the image (`annotation.pull.image_sha256`) or whose
data holds a needle, under the same name and with the same mode (a snapshot stays read-only;
its name's content hash is then that of the export before the redaction). A file that is not a
task list, or that still names the image outside its tasks, is removed whole; push's state
names a project, never an image, and is removed only if it ever does (push finds the project
by its title again).

`label-studio` holds the tasks of the project push uses (the id in `annotations/project.json`
when it is of this server, and the project titled `annotation.project_title`) whose
`data.image` names the image, found by the server's task filter on `data.image`; erasing
deletes each task through the API, its annotations and predictions with it. When
`annotation.serve.data_dir` (the folder `anonlab annotate serve` gives Label Studio) is on this
machine, its SQLite database is checked too: SQLite keeps a deleted row's bytes in free pages
(unless it was built to zero them), so erasing VACUUMs a database whose bytes hold a needle, and
the database counts as still holding the image while its bytes contain one (a task of another
project, say: the store deletes only push's project's tasks, and says so). Export and
upload files there (`export/`, `media/export/`, `media/upload/`) whose name or bytes hold a
needle are removed.

Decisions:
- `annotation.source=export` configures no server: nothing is asked of one (the demo runs
  offline), and the store holds nothing there. A local data folder is still checked, so
  that a Label Studio once served here cannot keep an erased image unnoticed.
- A configured server that does not answer (or refuses the token) is an error that names
  its URL: the core keeps the erasure pending, and it completes when `anonlab erase` or
  `anonlab retention` runs again with the server up.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation.client import PAGE_SIZE, LabelStudio, connect
from annotation.config import AnnotationConfig
from annotation.pull import image_sha256
from data.erasure import files, redact
from data.erasure.stores import Held, Store
from data.erasure.subjects import Subject
from data.errors import AnonlabError
from data.stage_paths import StagePaths

log = logging.getLogger(__name__)

FILES_STORE = "label-studio-files"
SERVER_STORE = "label-studio"
# Label Studio's database and the folders of its exports and uploads, under its data folder.
DATABASE_GLOB = "*.sqlite3"
DATABASE_SIDE_FILES = ("-wal", "-journal")
FILE_FOLDERS = ("export", "media/export", "media/upload")
# A database Label Studio is writing to is locked for a moment; wait rather than fail.
SQLITE_TIMEOUT_S = 60.0

TASKS = "tasks"
SERVER_TASKS = "tasks (with their annotations and predictions)"
FREE_PAGES = (
    "bytes naming the image outside any task row: deleted rows in free pages (erasing vacuums "
    "them), or a row of another table"
)


def names_image(task: Any, shas: set[str], needles: Sequence[bytes]) -> bool:
    """Whether an exported task is one of the images': its image URL names one's sha256, or
    its data holds a needle."""
    if not isinstance(task, dict):
        return False
    if image_sha256(task) in shas:
        return True
    data = json.dumps(task.get("data"), ensure_ascii=False).encode()
    return any(n in data for n in needles)


@dataclass(frozen=True)
class Redaction:
    """What erasing does to one export file: the tasks it drops, and its new bytes (None: the
    file is removed whole)."""

    dropped: int
    content: bytes | None


def redact_export(raw: bytes, subjects: Sequence[Subject]) -> Redaction:
    """A Label Studio JSON export without the tasks of `subjects`."""
    shas, needles = files.shas(subjects), [n.encode() for n in files.needles(subjects)]
    try:
        tasks = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Redaction(1, None)
    if not isinstance(tasks, list):
        return Redaction(1, None)
    kept = [t for t in tasks if not names_image(t, shas, needles)]
    content = json.dumps(kept, ensure_ascii=False, indent=1).encode("utf-8")
    if redact.holds(content, needles):
        return Redaction(len(tasks) - len(kept) or 1, None)
    return Redaction(len(tasks) - len(kept), content)


@dataclass(frozen=True)
class LabelStudioFiles:
    """The Label Studio exports and push's state under an artifacts root, and the export file
    `annotation.export_file` names (read by pull when `annotation.source=export`)."""

    artifacts: Path
    export_file: Path | None = None
    name: str = FILES_STORE

    def _files(self) -> list[Path]:
        paths = StagePaths(self.artifacts)
        folder = paths.annotations.snapshots
        snapshots = sorted(folder.glob("*.json")) if folder.is_dir() else []
        found = [paths.raw.synthetic_export, *snapshots, paths.annotations.label_studio_state]
        if self.export_file is not None and self.export_file not in found:
            found.append(self.export_file)
        return [p for p in found if p.is_file()]

    def _where(self, path: Path) -> str:
        return files.relative(path, self.artifacts)

    def _holding(self, subjects: Sequence[Subject]) -> Iterator[tuple[Path, bytes]]:
        """The files whose bytes hold a needle, with their bytes."""
        for path in self._files():
            data = files.read_if_holding(path, subjects)
            if data is not None:
                yield path, data

    def _is_state(self, path: Path) -> bool:
        return path == StagePaths(self.artifacts).annotations.label_studio_state

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        held = []
        for path, data in self._holding(subjects):
            if self._is_state(path):
                held.append(Held(self._where(path), "push state naming the image"))
                continue
            redaction = redact_export(data, subjects)
            what = TASKS if redaction.content is not None else "export naming the image (removed)"
            held.append(Held(self._where(path), what, redaction.dropped))
        return held

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        erased = []
        for path, data in self._holding(subjects):
            if self._is_state(path):
                path.unlink()
                erased.append(Held(self._where(path), "push state naming the image"))
                continue
            redaction = redact_export(data, subjects)
            if redaction.content is None:
                path.unlink()
                erased.append(Held(self._where(path), "export naming the image (removed)"))
                continue
            files.write_keeping_mode(path, redaction.content)
            log.info("%s: %d task(s) removed", path, redaction.dropped)
            erased.append(Held(self._where(path), TASKS, redaction.dropped))
        return erased


@dataclass(frozen=True)
class LabelStudioServer:
    """The tasks on the Label Studio server of `cfg`, and its data folder when it is local."""

    cfg: AnnotationConfig
    artifacts: Path
    data_dir: Path
    name: str = SERVER_STORE

    @property
    def configured(self) -> bool:
        return self.cfg.source == "server"

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        held = []
        if self.configured:
            with self._client() as client:
                for project, tasks in self._tasks(client, subjects).items():
                    where = f"{client.url} project {project}"
                    held.append(Held(where, SERVER_TASKS, len(tasks)))
        held += [Held(str(p), "export or upload naming the image") for p in self._files(subjects)]
        for database in self._databases():
            if self._holds(database, subjects):
                held.append(Held(str(database), self._database_state(database, subjects)))
        return held

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        erased = []
        if self.configured:
            with self._client() as client:
                for project, tasks in self._tasks(client, subjects).items():
                    for task in tasks:  # its annotations and predictions go with it
                        client.request("DELETE", f"/api/tasks/{task}", missing_ok=True)
                    where = f"{client.url} project {project}"
                    log.info("deleted %d task(s) of %s", len(tasks), where)
                    erased.append(Held(where, SERVER_TASKS, len(tasks)))
        for path in self._files(subjects):
            path.unlink()
            erased.append(Held(str(path), "export or upload naming the image"))
        for database in self._databases():
            if not self._holds(database, subjects):
                continue
            with closing(sqlite3.connect(database, timeout=SQLITE_TIMEOUT_S)) as connection:
                connection.execute("VACUUM")
            if not self._holds(database, subjects):
                erased.append(Held(str(database), "deleted rows' bytes (vacuumed)"))
        return erased

    # -- the server ---------------------------------------------------------------------------

    @contextmanager
    def _client(self) -> Iterator[LabelStudio]:
        try:
            client = connect(self.cfg)
        except AnonlabError as e:
            raise self._unavailable(e) from None
        try:
            yield client
        except AnonlabError as e:
            raise self._unavailable(e) from None
        finally:
            client.close()

    def _unavailable(self, e: AnonlabError) -> AnonlabError:
        return AnonlabError(
            f"{e}. Label Studio at {self.cfg.url} (annotation.url, annotation.source=server) "
            "may hold tasks of the images: the erasure stays pending and completes when "
            "`anonlab erase` or `anonlab retention` runs again with the server up "
            "(`anonlab annotate serve`) and its token in ANONLAB_LS_TOKEN"
        )

    def _projects(self, client: LabelStudio) -> list[int]:
        """Push's project (annotations/project.json, when it is of this server) and the project
        titled `annotation.project_title`."""
        ids = set()
        state_file = StagePaths(self.artifacts).annotations.label_studio_state
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        if isinstance(state, dict) and state.get("url") == client.url:
            project = state.get("project_id")
            if isinstance(project, int) and client.get_project(project) is not None:
                ids.add(project)
        titled = client.find_project(self.cfg.project_title)
        if titled is not None:
            ids.add(titled)
        return sorted(ids)

    def _tasks(self, client: LabelStudio, subjects: Sequence[Subject]) -> dict[int, list[int]]:
        """Per project, the ids of the tasks whose image URL names one of `subjects`."""
        found: dict[int, list[int]] = {}
        for project in self._projects(client):
            ids = sorted(
                {int(t["id"]) for s in subjects for t in _tasks_naming(client, project, s.sha256)}
            )
            if ids:
                found[project] = ids
        return found

    # -- the data folder ----------------------------------------------------------------------

    def _databases(self) -> list[Path]:
        return sorted(self.data_dir.glob(DATABASE_GLOB)) if self.data_dir.is_dir() else []

    def _holds(self, database: Path, subjects: Sequence[Subject]) -> bool:
        side = [database.with_name(database.name + s) for s in DATABASE_SIDE_FILES]
        return any(files.holding(p, subjects) for p in (database, *side))

    def _database_state(self, database: Path, subjects: Sequence[Subject]) -> str:
        """What the database holds of the images: live rows, or deleted rows' bytes only."""
        query = "SELECT COUNT(*) FROM task WHERE " + " OR ".join(
            "CAST(data AS TEXT) LIKE ?" for _ in subjects
        )
        try:
            with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
                rows = connection.execute(query, [f"%{s.sha256}%" for s in subjects]).fetchone()[0]
        except sqlite3.Error as e:
            return f"bytes naming the image (not a Label Studio database? {e})"
        if rows:
            return (
                f"{rows} task row(s) naming the image (a project other than push's? delete "
                "those tasks in Label Studio, then erase again)"
            )
        return FREE_PAGES

    def _files(self, subjects: Sequence[Subject]) -> list[Path]:
        """Export and upload files in the data folder whose name or bytes hold a needle."""
        needles = files.needles(subjects)
        found = []
        for name in FILE_FOLDERS:
            folder = self.data_dir / name
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                if any(n in path.name for n in needles) or files.holding(path, subjects):
                    found.append(path)
        return found


def _tasks_naming(client: LabelStudio, project: int, sha256: str) -> list[dict[str, Any]]:
    """The project's tasks whose `data.image` names `sha256`, by the server's own filter (no
    listing of every task)."""
    query = {
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:data.image",
                    "operator": "contains",
                    "type": "String",
                    "value": sha256,
                }
            ],
        }
    }
    tasks: list[dict[str, Any]] = []
    page = 1
    while True:
        params = {"project": project, "query": json.dumps(query), "page": page}
        body = client.request("GET", "/api/tasks", params={**params, "page_size": PAGE_SIZE})
        batch = body.get("tasks", [])
        tasks += [t for t in batch if image_sha256(t) == sha256]
        if not batch or page * PAGE_SIZE >= int(body.get("total", 0)):
            return tasks
        page += 1


def label_studio_stores(artifacts: Path, cfg: AnnotationConfig, *, root: Path) -> list[Store]:
    """The Label Studio stores of a project: its exports on disk, and the server of `cfg` with
    its data folder (`annotation.serve.data_dir`, relative to `root`)."""
    artifacts = Path(artifacts).resolve()
    data_dir = (Path(root) / cfg.serve.data_dir).resolve()
    export_file = (Path(root) / cfg.export_file).resolve()
    return [LabelStudioFiles(artifacts, export_file), LabelStudioServer(cfg, artifacts, data_dir)]
