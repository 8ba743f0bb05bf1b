"""Reading COCO ground-truth and results files: parsed and checked, or an AnonlabError that
names the file and the bad entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.coco.results import check_predictions
from data.coco.schema import check_ground_truth
from data.errors import AnonlabError


def load_ground_truth(path: Path) -> dict:
    """A COCO ground-truth file, parsed and checked (AnonlabError naming the bad entry)."""
    data = _read_json(Path(path), "a COCO ground-truth file")
    check_ground_truth(data, str(path))
    return data


def load_predictions(path: Path, gt: dict, *, gt_name: str | None = None) -> list[dict]:
    """A COCO results file (a list of detections), parsed and checked against `gt`."""
    data = _read_json(Path(path), "a COCO results file")
    check_predictions(data, gt, str(path), gt_name=gt_name)
    return data


def _read_json(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnonlabError(f"{path}: no such file (expected {what})") from None
    except OSError as e:
        raise AnonlabError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnonlabError(f"{path}: not valid JSON ({e}); expected {what}") from None
