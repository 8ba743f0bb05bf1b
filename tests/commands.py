"""Running the project's console commands (anonlab, dvc, git) in a test repository, as a user's
shell would: the interpreter's scripts on the PATH, a git identity, no DVC analytics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run(
    cwd: Path, *argv: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        # The project's console scripts (anonlab, dvc) are beside this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "DVC_NO_ANALYTICS": "1",
        **(env or {}),
    }
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def sh(cwd: Path, *argv: str, env: Mapping[str, str] | None = None) -> str:
    """The command's stdout; the test fails with its output when it exits non-zero."""
    done = run(cwd, *argv, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
