"""dvc.yaml names the same stage paths as `data.stage_paths`, which the stages write and read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data.stage_paths import RELATIVE, StagePaths
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
ARTIFACTS = Path(PARAMS["paths"]["artifacts"])
PATHS = StagePaths(ARTIFACTS)
# dvc.yaml's train stage is one per model: `${item}` stands for the model's name.
MODEL = PATHS.model("${item}")


def _expected() -> dict[str, dict[str, list[Path]]]:
    raw, reviewed, annotations = PATHS.raw, PATHS.reviewed, PATHS.annotations
    prepared, evaluation, validation = PATHS.prepared, PATHS.eval, PATHS.validation
    return {
        "collect": {
            "outs": [
                raw.images,
                raw.manifest,
                raw.duplicates,
                raw.quarantine,
                raw.synthetic_export,
                raw.metrics,
            ],
            "metrics": [raw.headline],
        },
        "review": {
            "deps": [raw.manifest, raw.images],
            "outs": [reviewed.manifest, reviewed.rejected, reviewed.report, reviewed.metrics],
            "metrics": [reviewed.headline],
        },
        "annotate": {
            "deps": [reviewed.manifest, raw.synthetic_export],
            "outs": [
                annotations.snapshots,
                annotations.coco,
                annotations.pull_report,
                annotations.metrics,
            ],
            "metrics": [annotations.headline],
        },
        "prepare": {
            "deps": [reviewed.manifest, annotations.coco],
            "outs": [prepared.train, prepared.val, prepared.refs, prepared.tiles, prepared.stats],
            "metrics": [prepared.headline],
            "plots": [prepared.sizes],
        },
        "train": {
            "deps": [prepared.train, prepared.val, prepared.tiles],
            "outs": [MODEL.weights, MODEL.config, MODEL.checkpoints, MODEL.metrics],
            "metrics": [MODEL.headline],
            "plots": [MODEL.loss_curve, MODEL.val_curve],
        },
        "evaluate": {
            "deps": [PATHS.models, prepared.val, prepared.refs, prepared.tiles],
            "outs": [evaluation.report, evaluation.predictions, evaluation.metrics],
            "metrics": [evaluation.headline],
            "plots": [evaluation.pr_plots, evaluation.size_plots],
        },
        "validate": {
            "deps": [prepared.folder, reviewed.manifest, evaluation.metrics],
            "outs": [validation.verdict, validation.baseline_stats],
        },
        "export": {
            "deps": [PATHS.models, evaluation.metrics, validation.verdict, prepared.val],
            "outs": [PATHS.serving],
        },
    }


def _named(entries: list[Any]) -> list[str]:
    """The paths of a deps/outs/metrics/plots list: a string, or a one-key mapping of options."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_dvc_yaml_names_the_paths_the_stages_use() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    stages["train"] = stages["train"]["do"]
    expected = _expected()
    assert sorted(stages) == sorted(expected)
    for name, kinds in expected.items():
        found = {
            kind: sorted(_named(stages[name][kind]))
            for kind in ("deps", "outs", "metrics", "plots")
            if kind in stages[name]
        }
        wanted = {kind: sorted(p.as_posix() for p in paths) for kind, paths in kinds.items()}
        assert found == wanted, name


def test_the_annotation_export_file_is_collects_synthetic_ground_truth() -> None:
    # annotation.source=export reads the file collect writes for the synthetic source.
    assert Path(PARAMS["annotation"]["export_file"]) == PATHS.raw.synthetic_export


def test_paths_are_the_stage_folders_under_the_artifacts_root() -> None:
    root = Path("/data/artifacts")
    paths = StagePaths(root)
    assert paths.prepared.dataset("ref-night") == root / "prepared" / "refs" / "night.json"
    assert paths.model("face").checkpoint("last") == root / "models/face/checkpoints/last.pt"
    assert RELATIVE.annotations.coco == Path("annotations/coco.json")
