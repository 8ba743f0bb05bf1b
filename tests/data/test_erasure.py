"""The erasure core without a pipeline: the audit key, the chained audit log, tombstones, figure
marks in reports, the rewrites of derived files, and a pending erasure completed later."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from data.erasure import audit_log, redact
from data.erasure.erase import ALREADY_ERASED, ERASED, NOT_HELD, Request, erase, resume_pending
from data.erasure.keys import KEY_VARIABLE, AuditKey, audit_key
from data.erasure.stores import Held
from data.erasure.subjects import By, Subject
from data.erasure.tombstones import Tombstones
from data.errors import AnonlabError
from data.report_figures import figure, unmarked
from data.report_figures import redact as redact_figures
from data.stage_paths import StagePaths

A, B = "a" * 64, "b" * 64
KEY = AuditKey(b"k" * 40)
NOW = datetime(2027, 1, 2, tzinfo=UTC)


def test_the_key_is_required_and_long_and_never_shown() -> None:
    with pytest.raises(AnonlabError, match=f"{KEY_VARIABLE} is not set"):
        audit_key({})
    with pytest.raises(AnonlabError, match="shorter than 32"):
        audit_key({KEY_VARIABLE: "short"})
    key = audit_key({KEY_VARIABLE: "s" * 32})
    assert "s" * 32 not in repr(key)
    # Keyed: another key gives another hash; the kind separates equal strings.
    assert key.hash("session", "x") != AuditKey(b"t" * 32).hash("session", "x")
    assert key.hash("session", "x") != key.hash("source_path", "x")


def test_the_audit_chain_shows_a_removed_or_edited_line(tmp_path: Path) -> None:
    log = tmp_path / "erasure.jsonl"
    for n in range(3):
        audit_log.append(log, {"n": n})
    assert audit_log.check_chain(log) is None
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")
    broken = audit_log.check_chain(log)
    assert broken is not None and broken.line == 2
    with pytest.raises(AnonlabError, match="line 2"):
        audit_log.append(log, {"n": 3})
    assert log.read_text().splitlines() == [lines[0], lines[2]], "a broken log is not extended"
    log.write_text("\n".join([lines[0], lines[1].replace('"n": 1', '"n": 9'), lines[2]]) + "\n")
    assert audit_log.check_chain(log).line == 3


def test_tombstones_hold_keyed_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "tombstones.jsonl"
    stones = Tombstones.read(path, KEY)
    subject = Subject(A, "images/aa/a.jpg", ("drive-1",), ("/data/drive-1/a.jpg",))
    assert stones.add([subject], NOW) == 1 and stones.add([subject], NOW) == 0
    text = path.read_text()
    assert A not in text and "drive-1" not in text and "/data" not in text
    again = Tombstones.read(path, KEY)
    assert again.holds(A) and not again.holds(B)
    assert again.names(By.SESSION, "drive-1") and again.names(By.SOURCE_PATH, "/data/drive-1/a.jpg")
    assert again.erased_content([A, B]) == {A}
    assert not Tombstones.read(path, AuditKey(b"other" * 8)).holds(A)


def test_report_figures_are_marked_and_redacted_one_image_at_a_time() -> None:
    page = "\n".join(
        [
            "<html><body><h1>report</h1>",
            figure("<img src='x'>", [A]),
            figure("<div>pair</div>", [A, B]),
            figure("<img src='y'>\n<figcaption>b</figcaption>", [B]),
            "</body></html>",
        ]
    )
    assert redact_figures(page, [A])[1] == 2 and redact_figures(page, [B])[1] == 2
    kept, removed = redact_figures(page, [A])
    assert removed == 2 and redact_figures(kept, [B])[1] == 1 and "<h1>report</h1>" in kept
    assert unmarked(page) == 0 and unmarked("<figure><img></figure>") == 1
    with pytest.raises(ValueError, match="sha256"):
        figure("x", ["../etc"])


def test_a_row_naming_an_erased_image_keeps_its_place_scrubbed() -> None:
    rows = [
        {"sha256": A, "source_path": "/d/a.jpg"},
        {"sha256": B, "duplicate_of": A, "reason": "near_duplicate"},
        {"sha256": "c" * 64, "source_path": "/d/c.jpg"},
    ]
    kept, changed = redact.rows(rows, {A}, [A, "/d/a.jpg"])
    assert changed == 2
    assert kept == [
        {"sha256": B, "duplicate_of": redact.ERASED, "reason": "near_duplicate"},
        {"sha256": "c" * 64, "source_path": "/d/c.jpg"},
    ]


def test_coco_without_an_image_keeps_the_others() -> None:
    dataset = {
        "images": [
            {"id": 1, "sha256": A, "file_name": "../raw/images/aa/a.jpg"},
            {"id": 2, "sha256": B, "file_name": f"tiles/{A}-0-0.jpg"},
            {"id": 3, "sha256": B, "file_name": f"tiles/{B}-0-0.jpg"},
        ],
        "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 3}],
        "categories": [{"id": 1, "name": "face"}],
    }
    new, gone, n = redact.coco(dataset, {A})
    assert gone == {1, 2} and n == 3
    assert [i["id"] for i in new["images"]] == [3]
    assert new["annotations"] == [{"id": 2, "image_id": 3}]
    assert new["categories"] == dataset["categories"]


class _FileStore:
    """A store of one file per image, named by its sha256."""

    name = "files"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _held(self, subjects: list[Subject]) -> list[Path]:
        return [self.folder / s.sha256 for s in subjects if (self.folder / s.sha256).exists()]

    def find(self, subjects: list[Subject]) -> list[Held]:
        return [Held(p.name, "file") for p in self._held(subjects)]

    def erase(self, subjects: list[Subject]) -> list[Held]:
        held = self._held(subjects)
        for p in held:
            p.unlink()
        return [Held(p.name, "file") for p in held]


class _Stuck(_FileStore):
    """A store whose erase does nothing: the verification must catch it."""

    name = "stuck"

    def erase(self, subjects: list[Subject]) -> list[Held]:
        return []


def test_erase_verifies_records_and_repeats(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / A).write_text("pixels")
    (folder / B).write_text("other")
    audit = StagePaths(tmp_path / "artifacts").audit
    request = Request("request", "ticket 1", (Subject(A),), {"sha256": (A,)})
    outcome = erase(request, [_FileStore(folder)], audit, KEY, NOW)
    assert outcome.status == ERASED and outcome.passed
    assert not (folder / A).exists() and (folder / B).read_text() == "other"
    assert not list(audit.pending.iterdir())
    assert erase(request, [_FileStore(folder)], audit, KEY, NOW).status == ALREADY_ERASED
    never = Request("request", "ticket 2", (Subject("c" * 64),), {"sha256": ("c" * 64,)})
    assert erase(never, [_FileStore(folder)], audit, KEY, NOW).status == NOT_HELD
    log = audit.erasure_log.read_text()
    assert A not in log and audit_log.check_chain(audit.erasure_log) is None
    assert [json.loads(x)["status"] for x in log.splitlines()] == [ERASED, ALREADY_ERASED, NOT_HELD]


def test_a_failed_verification_names_the_store_and_stays_pending(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / A).write_text("pixels")
    audit = StagePaths(tmp_path / "artifacts").audit
    request = Request("request", "ticket 1", (Subject(A),), {"sha256": (A,)})
    outcome = erase(request, [_Stuck(folder)], audit, KEY, NOW)
    assert not outcome.passed and outcome.left == {"stuck": [Held(A, "file")]}
    assert json.loads(audit.erasure_log.read_text())["verification"] == {
        "passed": False,
        "left": {"stuck": 1},
    }
    assert len(list(audit.pending.iterdir())) == 1
    # The next command completes it once the store works.
    (done,) = resume_pending([_FileStore(folder)], audit, KEY, NOW)
    assert done.passed and not (folder / A).exists() and not list(audit.pending.iterdir())


def test_a_reason_that_names_the_image_is_refused(tmp_path: Path) -> None:
    audit = StagePaths(tmp_path / "artifacts").audit
    request = Request("request", "erase drive-9 now", (Subject(A),), {"session": ("drive-9",)})
    with pytest.raises(AnonlabError, match="keyed hashes"):
        erase(request, [], audit, KEY, NOW)
    assert not audit.folder.exists(), "nothing was written"
