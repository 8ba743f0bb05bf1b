"""The runtime keeps nothing on disk: loading an artifact and anonymizing an image leaves the
home folder as it was (no onnxruntime telemetry database or device id)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUN = """
import sys
import cv2
import numpy as np
from serving.runtime.pipeline import Runtime

runtime = Runtime.load([sys.argv[1]], backend="onnx")
ok, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))
runtime.anonymize_bytes(jpeg.tobytes())
"""


def test_anonymizing_writes_nothing_to_the_home_folder(
    shared_artifact: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "XDG_"))}
    env["HOME"] = str(home)
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", RUN, str(shared_artifact)],
        env={**env, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert [p.relative_to(home) for p in home.rglob("*")] == []
