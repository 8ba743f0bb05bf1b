"""How anonlab's runs read in the MLflow UI: run names, the experiment kind, a saved view of the
runs table with the headline metric columns, and links to run and model version pages.

The MLflow 3 UI opens an experiment on its GenAI overview (traces, tokens) unless told the
experiment is for model training. MLflow versions that read the experiment tag
`mlflow.experimentKind` take it from there; MLflow 3.17's UI instead follows its sidebar switch
(GenAI / Model training, remembered per browser) or the URL's `workflowType=machine_learning`,
which every link anonlab prints carries. The runs table shows no metric column by default; the
saved view `VIEW_NAME` (its "Views" menu, or `view_path`) shows the headline ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Protocol
from urllib.parse import quote, urlparse

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "NOTE_TAG",
    "VIEW_ID",
    "VIEW_NAME",
    "VIEW_TAG",
    "experiment_page",
    "link_version",
    "run_name",
    "run_path",
    "saved_view",
    "ui_url",
    "version_path",
    "view_path",
]

# The experiment tag MLflow 3's UI reads for an experiment's kind, and the kind whose page is the
# runs table (the other kinds MLflow knows: genai_development, finetuning, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A run's description, shown (as markdown) at the top of its page.
NOTE_TAG = "mlflow.note.content"
# The UI keeps a saved view of the runs table as the experiment tag
# `mlflow.sharedViewState.<id>`; `viewStateShareKey=<id>` in the URL opens it.
VIEW_ID = "anonlab-recall"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "anonlab: recall"
# The workflow the UI's sidebar switch selects for model training (its default is GenAI).
_WORKFLOW = "workflowType=machine_learning"
# The runs table's width of a metric column is in pixels; a name of n characters needs about
# this many per character, plus the sort arrow's room.
_PX_PER_CHAR, _PX_EXTRA, _PX_MIN = 8, 40, 110
# The run name's column: names are `<model> · <experiment> · <stage>`.
_RUN_NAME_COLUMN, _RUN_NAME_WIDTH = "attributes.`Run Name`", 400
SEPARATOR = " · "


def run_name(subject: str, stage: str, tags: Mapping[str, str]) -> str:
    """`<subject> · <experiment> · <stage>`, e.g. `maskrcnn_r50_fpn · exp-1a2b3 · evaluate`.

    The experiment is the DVC experiment's name (tag `anonlab.dvc.experiment`), else the git
    commit's first 7 hex digits, with `-dirty` when tracked files had changes
    (`mlflow.source.git.commit`, `anonlab.git.dirty`); with neither it is left out. `tags` are
    `training.tracking.run_tags`' output.
    """
    experiment = tags.get("anonlab.dvc.experiment")
    commit = tags.get("mlflow.source.git.commit")
    if not experiment and commit:
        experiment = commit[:7] + ("-dirty" if tags.get("anonlab.git.dirty") == "true" else "")
    return SEPARATOR.join(p for p in (subject, experiment, stage) if p)


def saved_view(
    metrics: Sequence[str], tags: Sequence[str] = (), previous: str | None = None
) -> tuple[str, str]:
    """The experiment tag (key, value) of the saved view `VIEW_NAME`: the runs table, newest
    first, with the run name wide enough to read, then a column per name of `tags` and of
    `metrics`, sorted, each as wide as its name. The metric columns of `previous` (the tag's
    value so far) are kept: runs of other models of the experiment have other classes."""
    metrics = sorted(set(metrics) | set(_view_metrics(previous)))
    columns = [f"tags.`{t}`" for t in tags] + [f"metrics.`{m}`" for m in metrics]
    widths = {
        c: max(_PX_MIN, _PX_PER_CHAR * len(name) + _PX_EXTRA)
        for c, name in zip(columns, [*tags, *metrics], strict=True)
    }
    widths[_RUN_NAME_COLUMN] = _RUN_NAME_WIDTH
    state = {
        "selectedColumns": columns,
        # The grid sizes only the columns it is given an order for.
        "columnOrder": [_RUN_NAME_COLUMN, *columns],
        "columnWidths": widths,
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "searchFilter": "",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "startTime": "ALL",
    }
    now = int(time.time() * 1000)
    envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return VIEW_TAG, json.dumps(envelope)


def _view_metrics(value: str | None) -> list[str]:
    """The metric names of a saved view's tag value; none when it is absent or not one."""
    try:
        columns = json.loads(json.loads(value or "")["state"])["selectedColumns"]
    except (ValueError, KeyError, TypeError):
        return []
    prefix = "metrics.`"
    return [c[len(prefix) : -1] for c in columns if isinstance(c, str) and c.startswith(prefix)]


def run_path(experiment_id: str, run_id: str) -> str:
    """The UI's page of a run, as a link relative to the UI's root (`#/...`), in the
    model-training workflow."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{_WORKFLOW}"


def version_path(name: str, version: str) -> str:
    """The UI's page of a registered model version, relative to the UI's root."""
    return f"#/models/{quote(name, safe='')}/versions/{version}?{_WORKFLOW}"


def experiment_page(experiment_id: str) -> str:
    """The UI's runs table of an experiment, in the model-training workflow."""
    return f"#/experiments/{experiment_id}/runs?{_WORKFLOW}"


def view_path(experiment_id: str) -> str:
    """The runs table of an experiment opened on the saved view `VIEW_NAME`."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&{_WORKFLOW}"


def ui_url(tracking_uri: str, path: str) -> str | None:
    """`path` on the tracking server's UI; None when the URI is not a server (SQLite: the UI is
    whatever `mlflow ui` the user starts, at an address anonlab cannot know)."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return None
    return f"{tracking_uri.rstrip('/')}/{path}"


class _Client(Protocol):
    def set_tag(self, run_id: str, key: str, value: str) -> None: ...
    def update_model_version(self, name: str, version: str, description: str) -> object: ...


def link_version(client: _Client, *, run: tuple[str, str, str], model: tuple[str, str]) -> None:
    """Link a training run, `run` = (experiment id, run id, run name), and the version `model`
    = (name, version) it registered: each one's description links the other's page. The
    version's is its first; evaluate and validate write theirs over it."""
    experiment_id, run_id, name = run
    model_name, version = model
    page = version_path(model_name, version)
    client.set_tag(run_id, NOTE_TAG, f"Registered as [{model_name} version {version}]({page}).")
    client.update_model_version(
        model_name,
        version,
        description=f"Trained in run [{name}]({run_path(experiment_id, run_id)}); not evaluated "
        "yet (`anonlab evaluate`).",
    )
