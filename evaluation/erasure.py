"""evaluate's outputs as an erasure store (`eval`): the gallery figures of `report.html` that show
an image (marked, data.report_figures) and the detections of `predictions/<model>/<set>.json`
on it.

COCO results name an image only by its id in the set's COCO file (`prepared/val.json`,
`prepared/refs/<set>.json`), so this store must run before the `prepared` store takes the image
out of those files (the command line lists it first). It finds the ids there, then looks for
them in each predictions file's bytes, and parses only a file that holds one. Aggregates
(`metrics.json`, `plots/`) name no image and are left as evaluate computed them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.erasure import files, redact
from data.erasure.stores import Held, Scanned
from data.erasure.subjects import Subject
from data.stage_paths import StagePaths


@dataclass(frozen=True)
class EvalStore(Scanned):
    artifacts: Path
    name: str = "eval"

    def _set_ids(self, set_name: str, subjects: Sequence[Subject]) -> set[int]:
        prepared = StagePaths(self.artifacts).prepared
        # evaluate's sets: val, and each reference set by its name.
        path = prepared.val if set_name == prepared.val.stem else prepared.ref(set_name)
        data = files.read_if_holding(path, subjects)
        if data is None:
            return set()
        return redact.image_ids(json.loads(data), files.shas(subjects))

    def _predictions(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        folder = StagePaths(self.artifacts).eval.predictions
        held: list[Held] = []
        ids_of: dict[str, set[int]] = {}
        for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
            set_name = path.stem
            if set_name not in ids_of:
                ids_of[set_name] = self._set_ids(set_name, subjects)
            ids = ids_of[set_name]
            if not ids:
                continue
            pattern = re.compile(rb'"image_id": (%s)\b' % b"|".join(str(i).encode() for i in ids))
            data = path.read_bytes()
            if not pattern.search(data):
                continue
            results = json.loads(data)
            kept = [r for r in results if r.get("image_id") not in ids]
            if write:
                files.write_keeping_mode(
                    path, (json.dumps(kept, indent=2, sort_keys=True) + "\n").encode("utf-8")
                )
            held.append(
                Held(files.relative(path, self.artifacts), "detections", len(results) - len(kept))
            )
        return held

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        report = StagePaths(self.artifacts).eval.report
        return [
            *self._predictions(subjects, write),
            *files.html_report(report, self.artifacts, subjects, write=write),
        ]
