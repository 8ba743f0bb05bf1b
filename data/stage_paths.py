"""Where each stage's outputs live under the artifacts root: the one owner of the paths the stages
write and read, and that dvc.yaml names (tests/test_stage_paths.py holds the two equal).

A stage that writes its folder as a whole writes into a staged copy of it: it joins the file names
below to that copy; every other reader takes the paths from `StagePaths`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# raw/ (collect): the content-addressed store and what collect recorded.
IMAGES = "images"
MANIFEST = "manifest.jsonl"  # also reviewed/'s: the images review kept
DUPLICATES = "duplicates.jsonl"
QUARANTINE = "quarantine.jsonl"
SYNTHETIC_EXPORT = "synthetic/labelstudio_export.json"
METRICS = "metrics.json"  # every stage's full counts or scores, in its own folder
# every stage's few numbers for `dvc metrics show` and `dvc exp show` (data/headline.py)
HEADLINE = "headline.json"

# reviewed/ (review)
REJECTED = "rejected.jsonl"
REVIEW_REPORT = "report.html"

# annotations/ (annotate)
SNAPSHOTS = "snapshots"
COCO = "coco.json"
PULL_REPORT = "pull_report.json"
LABEL_STUDIO_STATE = "project.json"  # push's record of the Label Studio project

# prepared/ (prepare): a split's COCO file is <split>.json, a reference set's refs/<name>.json.
REFS = "refs"
TILES = "tiles"
STATS = "stats.json"
SIZES = "sizes.json"

# models/<name>/ (train)
WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
CURVES = "curves"

# eval/ (evaluate)
EVAL_REPORT = "report.html"
PREDICTIONS = "predictions"
PLOTS = "plots"
PR_PLOTS = "pr"  # plots/pr/<model>/<set>.json: precision/recall points per class
SIZE_PLOTS = "recall_by_size"  # plots/recall_by_size/<model>/<set>.json

# validation/ (validate)
VERDICT = "verdict.json"
BASELINE_STATS = "baseline_stats.json"

# audit/ (retention, erase): not a stage's output; nothing in it names an image in clear, except
# a pending request while its erasure runs.
ERASURE_LOG = "erasure.jsonl"
TOMBSTONES = "tombstones.jsonl"
PENDING = "pending"


@dataclass(frozen=True)
class RawStore:
    """raw/: collect's store; a manifest row's `path` is relative to `folder`."""

    folder: Path

    @property
    def images(self) -> Path:
        return self.folder / IMAGES

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    @property
    def duplicates(self) -> Path:
        return self.folder / DUPLICATES

    @property
    def quarantine(self) -> Path:
        return self.folder / QUARANTINE

    @property
    def synthetic_export(self) -> Path:
        return self.folder / SYNTHETIC_EXPORT

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE


@dataclass(frozen=True)
class Reviewed:
    """reviewed/: the images review kept, those it rejected and why."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    @property
    def rejected(self) -> Path:
        return self.folder / REJECTED

    @property
    def report(self) -> Path:
        return self.folder / REVIEW_REPORT

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE


@dataclass(frozen=True)
class Annotations:
    """annotations/: Label Studio export snapshots and their COCO conversion."""

    folder: Path

    @property
    def snapshots(self) -> Path:
        return self.folder / SNAPSHOTS

    @property
    def coco(self) -> Path:
        return self.folder / COCO

    @property
    def pull_report(self) -> Path:
        return self.folder / PULL_REPORT

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE

    @property
    def label_studio_state(self) -> Path:
        return self.folder / LABEL_STUDIO_STATE


@dataclass(frozen=True)
class Prepared:
    """prepared/: the COCO file of each split and reference set, the tiles, their statistics."""

    folder: Path

    def dataset(self, split: str) -> Path:
        """A split's COCO file: train.json, val.json; `ref-<name>` is refs/<name>.json."""
        if split.startswith("ref-"):
            return self.ref(split.removeprefix("ref-"))
        return self.folder / f"{split}.json"

    def ref(self, name: str) -> Path:
        return self.refs / f"{name}.json"

    def splits(self) -> list[str]:
        """Every dataset prepare wrote, by split name: train, val, then ref-<name> per
        reference set on disk, sorted."""
        refs = sorted(self.refs.glob("*.json")) if self.refs.is_dir() else []
        return ["train", "val", *(f"ref-{p.stem}" for p in refs)]

    @property
    def train(self) -> Path:
        return self.dataset("train")

    @property
    def val(self) -> Path:
        return self.dataset("val")

    @property
    def refs(self) -> Path:
        return self.folder / REFS

    @property
    def tiles(self) -> Path:
        return self.folder / TILES

    @property
    def stats(self) -> Path:
        return self.folder / STATS

    @property
    def sizes(self) -> Path:
        return self.folder / SIZES

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE


@dataclass(frozen=True)
class ModelFolder:
    """models/<name>/: one model's training outputs."""

    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    @property
    def config(self) -> Path:
        return self.folder / MODEL_CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINTS

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.pt: `last` (to resume) or `best`."""
        return self.checkpoints / f"{which}.pt"

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE

    @property
    def loss_curve(self) -> Path:
        return self.folder / CURVES / "loss.json"

    @property
    def val_curve(self) -> Path:
        return self.folder / CURVES / "val.json"


@dataclass(frozen=True)
class EvalOutputs:
    """eval/: every model's scores, predictions, plots and the report."""

    folder: Path

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def headline(self) -> Path:
        return self.folder / HEADLINE

    @property
    def report(self) -> Path:
        return self.folder / EVAL_REPORT

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS

    @property
    def plots(self) -> Path:
        return self.folder / PLOTS

    @property
    def pr_plots(self) -> Path:
        return self.plots / PR_PLOTS

    @property
    def size_plots(self) -> Path:
        return self.plots / SIZE_PLOTS

    def pr_plot(self, model: str, set_name: str) -> Path:
        """plots/pr/<model>/<set>.json: the rows of one precision/recall plot."""
        return self.pr_plots / model / f"{set_name}.json"

    def size_plot(self, model: str, set_name: str) -> Path:
        """plots/recall_by_size/<model>/<set>.json: the rows of one recall-by-size plot."""
        return self.size_plots / model / f"{set_name}.json"


@dataclass(frozen=True)
class Validation:
    """validation/: the verdict, and the dataset statistics the next run compares against."""

    folder: Path

    @property
    def verdict(self) -> Path:
        return self.folder / VERDICT

    @property
    def baseline_stats(self) -> Path:
        return self.folder / BASELINE_STATS


@dataclass(frozen=True)
class AuditFolder:
    """audit/: the erasure log, the tombstones of erased images, requests being erased."""

    folder: Path

    @property
    def erasure_log(self) -> Path:
        return self.folder / ERASURE_LOG

    @property
    def tombstones(self) -> Path:
        return self.folder / TOMBSTONES

    @property
    def pending(self) -> Path:
        return self.folder / PENDING


@dataclass(frozen=True)
class StagePaths:
    """Every stage's outputs under one artifacts root (params.yaml's `paths.artifacts`)."""

    artifacts: Path

    @property
    def raw(self) -> RawStore:
        return RawStore(self.artifacts / "raw")

    @property
    def reviewed(self) -> Reviewed:
        return Reviewed(self.artifacts / "reviewed")

    @property
    def annotations(self) -> Annotations:
        return Annotations(self.artifacts / "annotations")

    @property
    def prepared(self) -> Prepared:
        return Prepared(self.artifacts / "prepared")

    @property
    def models(self) -> Path:
        return self.artifacts / "models"

    def model(self, name: str) -> ModelFolder:
        return ModelFolder(self.models / name)

    @property
    def eval(self) -> EvalOutputs:
        return EvalOutputs(self.artifacts / "eval")

    @property
    def validation(self) -> Validation:
        return Validation(self.artifacts / "validation")

    @property
    def serving(self) -> Path:
        """serving/: export's runtime artifacts, one folder per model version."""
        return self.artifacts / "serving"

    @property
    def blurred(self) -> Path:
        """blurred/: where the demo (and anyone who chooses to) writes `anonlab blur` outputs."""
        return self.artifacts / "blurred"

    @property
    def audit(self) -> AuditFolder:
        return AuditFolder(self.artifacts / "audit")


# The same paths relative to the artifacts root, as COCO file names, Label Studio's local-files
# URLs (the artifacts folder is its document root) and messages write them.
RELATIVE = StagePaths(Path())
