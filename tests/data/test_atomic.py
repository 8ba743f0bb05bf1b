"""staged_dir: a stage's output folder is swapped in whole; a kill at any point of the swap
leaves the old or the new outputs, and the next run cleans up what the kill left."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data import atomic
from data.atomic import staged_dir

REPO = Path(__file__).resolve().parents[2]
OLD = {"a.txt": "old a", "b.txt": "old b"}
NEW = {"a.txt": "new a", "c.txt": "new c"}

# Runs one staged_dir in a fresh process that SIGKILLs itself on the KILL_AT-th call to a
# function that changes the folders (os.replace, the exchange, shutil.rmtree). With
# `renames`, the exchange answers EINVAL, as on a filesystem without it.
SWAP = """
import errno, os, shutil, signal, sys
from pathlib import Path
from data import atomic

final, kill_at, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
calls = 0

def deadly(fn):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return call

def no_exchange(a, b):
    raise OSError(errno.EINVAL, "Invalid argument")

if mode == "renames":
    atomic.exchange = no_exchange
os.replace = deadly(os.replace)
shutil.rmtree = deadly(shutil.rmtree)
atomic.exchange = deadly(atomic.exchange)
with atomic.staged_dir(final) as stage:
    (stage / "a.txt").write_text("new a")
    (stage / "c.txt").write_text("new c")
"""


def contents(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {p.name: p.read_text() for p in folder.iterdir()}


def swap_killed_at(final: Path, kill_at: int, mode: str) -> bool:
    """Run the swap, killed at call `kill_at`; True when it was killed (False: it finished)."""
    done = subprocess.run(
        [sys.executable, "-c", SWAP, str(final), str(kill_at), mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == -signal.SIGKILL:
        return True
    assert done.returncode == 0, done.stderr
    return False


def old_outputs(tmp_path: Path) -> Path:
    final = tmp_path / "artifacts" / "reviewed"
    final.mkdir(parents=True)
    for name, text in OLD.items():
        (final / name).write_text(text)
    return final


def exchange_supported(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        atomic.exchange(a, b)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        a.rmdir()
        b.rmdir()
    return True


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_a_kill_anywhere_in_the_swap_loses_no_outputs(tmp_path: Path, mode: str) -> None:
    if mode == "exchange" and not exchange_supported(tmp_path):
        pytest.skip("this filesystem cannot exchange two folders (renameat2)")
    states = []
    kill_at = 1
    while True:
        run = tmp_path / f"kill-{kill_at}"
        run.mkdir()
        final = old_outputs(run)
        killed = swap_killed_at(final, kill_at, mode)
        states.append(contents(final))
        # The next run finds the old or the new outputs, and nothing left over beside them.
        with staged_dir(final) as stage:
            assert contents(final) in (OLD, NEW)
            assert {p.name for p in final.parent.iterdir()} == {"reviewed", stage.name}
            (stage / "a.txt").write_text("next")
        assert contents(final) == {"a.txt": "next"}
        assert [p.name for p in final.parent.iterdir()] == ["reviewed"]
        if not killed:
            break
        kill_at += 1
    assert states[-1] == NEW and kill_at > 2
    if mode == "exchange":
        # One exchange: the folder holds the old or the new outputs at every moment.
        assert all(s in (OLD, NEW) for s in states), states
    else:
        # Two renames: a kill between them leaves no folder, which the next run restores.
        assert None in states


def test_staging_folders_of_other_outputs_are_left_alone(tmp_path: Path) -> None:
    final = old_outputs(tmp_path)
    mine = final.with_name(".reviewed.0123456789ab.staging")
    other = final.with_name(".reviewed.v2.0123456789ab.staging")  # output `reviewed.v2`
    mine.mkdir()
    other.mkdir()
    with staged_dir(final) as stage:
        (stage / "a.txt").write_text("new a")
    assert not mine.exists() and other.is_dir()
    assert contents(final) == {"a.txt": "new a"}


def test_a_failed_block_keeps_the_previous_outputs(tmp_path: Path) -> None:
    final = old_outputs(tmp_path)
    with pytest.raises(RuntimeError), staged_dir(final) as stage:
        (stage / "a.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert contents(final) == OLD
    assert [p.name for p in final.parent.iterdir()] == ["reviewed"]
