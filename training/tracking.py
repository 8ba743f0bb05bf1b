"""MLflow tracking of a stage invocation: where runs go, how they are tagged, a `Tracker` per run.

Everything goes through an explicit `MlflowClient` bound to the URI `tracking_uri` picks, so
several trackers (and tests) can share a process without MLflow's global "active run".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import yaml
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from data.config import SECRET_KEY
from data.errors import AnonlabError

# The one definition of "looks like a credential", shared with the config validation.
from serving.runtime.checksum import file_sha256
from training.tracking_ui import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    VIEW_TAG,
    link_version,
    run_path,
    saved_view,
    ui_url,
)

__all__ = [
    "TRUNCATED",
    "WEIGHTS_SHA256_TAG",
    "Tracker",
    "flatten",
    "global_tracking_uri",
    "run_tags",
    "sqlite_path",
    "tracking_uri",
]

logger = logging.getLogger(__name__)

# Appended to a parameter value cut at MLflow's length limit, so a reader knows it is partial.
TRUNCATED = "...[truncated]"
# The tag on a registered model version that holds the sha256 of its weights.safetensors.
WEIGHTS_SHA256_TAG = "anonlab.weights_sha256"

# MLflow accepts only these characters in param, metric and tag keys (colon: not on Windows).
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")

# The file MLflow's "models from code" executes to build the pyfunc model; nothing is pickled.
_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# First-party packages that file imports, copied into the logged model (`code/`) so a registered
# version loads where anonlab is not installed (`mlflow models serve`, a bare container).
_MODEL_PACKAGES = ("training", "data")
# Distributions the logged model needs at load time. Listed explicitly so MLflow does not run
# pip to infer them (slow, and impossible offline).
_MODEL_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "torchvision",
    "safetensors",
    "numpy",
    "pydantic",
    "pyyaml",
)


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite database `mlflow.db` in the project root.

    The root is `$DVC_ROOT` when DVC runs the stage: queued experiments run in temporary copies
    of the repository and must all write to the one database of the real checkout.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(os.environ.get("DVC_ROOT") or root).resolve()
    return f"sqlite:///{base / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    return Path(unquote(parsed.path))


def _local_artifact_root(uri: str) -> Path | None:
    """`mlruns/` beside a SQLite database; None for a server, which decides for itself.

    Without this, MLflow puts a SQLite store's artifacts in `./mlruns` of the current folder,
    which for a queued DVC experiment is a temporary copy that is deleted afterwards.
    """
    database = sqlite_path(uri)
    return None if database is None else database.parent / "mlruns"


def run_tags(
    root: Path, *, stage: str, data_stages: Sequence[str] = ("prepare",)
) -> dict[str, str]:
    """Tags that say what produced a run: stage, git commit and state, DVC experiment, input data.

    Data tags are `anonlab.data.<stage>.<path>` = md5 of each `outs` entry of the named stages in
    `root/dvc.lock`. Metadata that is not there (no git, no dvc.lock, a DVC-less checkout) is left
    out: a missing tag is better than a run that does not start.
    """
    tags = {"anonlab.stage": stage}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        # Untracked files do not change what the commit means for the code that ran.
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["anonlab.git.dirty"] = "true" if status else "false"
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        tags["anonlab.dvc.experiment"] = experiment
    tags.update(_data_tags(root / "dvc.lock", data_stages))
    return tags


def _git(root: Path, *args: str) -> str | None:
    """Stripped stdout of a git command in `root`, or None when git or the repository is missing."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _data_tags(lock: Path, stages: Sequence[str]) -> dict[str, str]:
    try:
        parsed = yaml.safe_load(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        logger.warning("%s is unreadable (%s); runs carry no input data hashes", lock, exc)
        return {}
    entries = parsed.get("stages") if isinstance(parsed, dict) else None
    if not isinstance(entries, dict):
        return {}
    tags: dict[str, str] = {}
    for stage in stages:
        outs = (entries.get(stage) or {}).get("outs") or []
        for out in outs:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                path = str(out["path"]).strip("/")
                tags[_key(f"anonlab.data.{stage}.{path}")] = str(out["md5"])
    return tags


def _key(name: str) -> str:
    """`name` with the characters MLflow rejects in keys replaced by `_`."""
    return _BAD_KEY_CHARS.sub("_", name)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params from a nested config: dotted keys, lists as JSON, credentials dropped.

    Nested mappings become dotted keys (`train.optimizer.lr`) so each knob is comparable across
    runs; lists stay one value (JSON) because their items have no stable names. A key that looks
    like a credential is dropped with everything under it, inside lists too (invariant 3), even
    though config validation already refuses them: this is the last door before MLflow. Values
    longer than MLflow's limit are cut and end with `TRUNCATED`.
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        if SECRET_KEY.search(str(key)):
            continue
        name = f"{prefix}{_key(str(key))}"
        if isinstance(value, Mapping) and value:
            params.update(flatten(value, f"{name}."))
        else:
            params[name] = _truncate(_text(value))
    return params


def _text(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_scrub(value), sort_keys=True, default=str)
    return str(value)


def _scrub(value: Any) -> Any:
    """`value` without credential-like keys at any depth."""
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _truncate(text: str) -> str:
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    return text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED


def _model_requirements() -> list[str]:
    """Pinned pip requirements of a logged model: the versions installed here.

    Local version labels (`+cpu`, `+cu124`) are dropped: which build to install is the serving
    host's choice of package index, not the model's.
    """
    pins = []
    for dist in _MODEL_DISTRIBUTIONS:
        try:
            version = importlib_metadata.version(dist).split("+", 1)[0]
        except importlib_metadata.PackageNotFoundError:
            pins.append(dist)
        else:
            pins.append(f"{dist}=={version}")
    return pins


class Tracker:
    """One MLflow run. Only rank 0 tracks: with enabled=False every method is a no-op.

    Use as a context manager: entering creates the run (or resumes `resume_run_id`: a resumed
    training continues its MLflow run, metrics keep their steps), logs the params and tags, and
    starts the system-metrics monitor; leaving ends the run FINISHED, FAILED on an exception,
    KILLED on Ctrl-C. A tracking server that cannot be reached at the start is an error (a run
    that will not be recorded should not start); once running, tracking errors are warnings, at
    most one per kind, and training goes on: it must not die because the server blinked.

    System metrics (`system/cpu_utilization_percentage`, memory, disk, network, and GPU when
    `nvidia-ml-py` is installed) come from MLflow's `SystemMetricsMonitor`, a thread bound to this
    run id and tracking URI, so no fluent "active run" is needed. It samples every
    `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds (MLflow's default: 10) and needs psutil.
    """

    def __init__(
        self,
        root: Path,
        *,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        enabled: bool = True,
        system_metrics: bool = True,
        resume_run_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.uri = tracking_uri(root)
        self.experiment = experiment
        self.run_name = run_name
        self.params = flatten(params)
        self.tags = dict(tags)
        self.system_metrics = system_metrics
        self.resume_run_id = resume_run_id
        self._run_id: str | None = None
        self._run_experiment_id: str | None = None
        self._client: mlflow.MlflowClient | None = None
        self._monitor: SystemMetricsMonitor | None = None
        self._warned: set[str] = set()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id while the run is open (and after); None when not tracking."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id of the open run; None when not tracking."""
        return self._run_experiment_id

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            run = self._resumable_run(client)
            if run is None:
                experiment_id = self._experiment_id(client)
                # MLflow's own context tags (user, source) under ours, as mlflow.start_run does.
                resolved = resolve_tags({**self.tags, "mlflow.runName": self.run_name})
                run = client.create_run(experiment_id, run_name=self.run_name, tags=resolved)
                params, tags = self.params, {}
            else:
                params, tags = self._resume(client, run), self.tags
            self._run_id = run.info.run_id
            self._run_experiment_id = run.info.experiment_id
            _log_batch(client, self._run_id, params=params, tags=tags)
        except Exception as exc:
            if self._run_id is not None:
                with contextlib.suppress(Exception):
                    client.set_terminated(self._run_id, "FAILED")
                self._run_id = None
            raise AnonlabError(
                f"cannot start an MLflow run at {self.uri}: {exc}. Start the tracking server, or "
                "set MLFLOW_TRACKING_URI to one that is up (unset, runs go to mlflow.db in the "
                "project root)"
            ) from exc
        self._client = client
        if self.system_metrics:
            self._start_monitor(resumed=run.info.run_id == self.resume_run_id)
        page = ui_url(self.uri, run_path(run.info.experiment_id, run.info.run_id))
        logger.info("MLflow run %s (%s) at %s", self._run_id, self.run_name, page or self.uri)
        return self

    def _resumable_run(self, client: mlflow.MlflowClient) -> Run | None:
        """The run to resume; None (a new run) when there is none or it is gone.

        A checkpoint outlives its MLflow run when the database was reset or the run deleted;
        training still resumes exactly, into a new run, rather than refusing to.
        """
        if not self.resume_run_id:
            return None
        try:
            run = client.get_run(self.resume_run_id)
        except mlflow.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            logger.warning(
                "MLflow run %s to resume is not in %s (deleted, or another database); "
                "continuing in a new run",
                self.resume_run_id,
                self.uri,
            )
            return None
        return run

    def _resume(self, client: mlflow.MlflowClient, run: Run) -> dict[str, str]:
        """Reopen `run` as mlflow.start_run(run_id=...) does; the params it does not have yet."""
        client.update_run(run.info.run_id, status="RUNNING")
        # Params are immutable in MLflow: a resumed run keeps the values it started with
        # (`train.resume` itself differs, for one).
        old = run.data.params
        changed = sorted(k for k, v in self.params.items() if k in old and old[k] != v)
        if changed:
            logger.warning(
                "resuming MLflow run %s: params %s differ from the run's and keep their first "
                "values",
                run.info.run_id,
                ", ".join(changed),
            )
        return {k: v for k, v in self.params.items() if k not in old}

    def _experiment_id(self, client: mlflow.MlflowClient) -> str:
        """The id of the experiment named `experiment`, created (or restored) when needed, and
        tagged as a model-training experiment (`tracking_ui.EXPERIMENT_KIND`)."""
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            root = _local_artifact_root(self.uri)
            location = str(root / _key(self.experiment)) if root else None
            try:
                return client.create_experiment(
                    self.experiment,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except mlflow.MlflowException:
                # Another process (a parallel DVC experiment) created it first.
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            # Deleted in the UI: its name stays taken, so it is restored rather than recreated.
            logger.warning("MLflow experiment %r was deleted; restoring it", self.experiment)
            client.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # Made by an older anonlab, or switched in the UI: runs are what this one holds.
            try:
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            except mlflow.MlflowException as exc:  # a display hint: the run is recorded anyway
                self._warn("kind", f"MLflow experiment {self.experiment!r} keeps its kind: {exc}")
        return found.experiment_id

    def _start_monitor(self, *, resumed: bool) -> None:
        try:
            self._monitor = SystemMetricsMonitor(
                self._run_id,
                # A resumed run's system metrics continue after its last step.
                resume_logging=resumed,
                tracking_uri=self.uri,
            )
            self._monitor.start()
        except Exception as exc:  # psutil missing or broken: the run goes on without them
            self._monitor = None
            self._warn("system-metrics", f"no system metrics for this run: {exc}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is None or self._run_id is None:
            return
        if self._monitor is not None:
            # Stopped first: it exits when it sees the run is no longer RUNNING, and its last
            # batch must be flushed while the run is still open.
            self._monitor.finish()
            self._monitor = None
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        with self._guard("end"):
            self._client.set_terminated(self._run_id, RunStatus.to_string(status))
        self._client = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log values at `step`; NaN is logged as it is (MLflow stores it: a diverged loss)."""
        if self._client is None or not metrics:
            return
        now = int(time.time() * 1000)
        entries = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()]
        with self._guard("metrics"):
            for i in range(0, len(entries), MAX_METRICS_PER_BATCH):
                self._client.log_batch(self._run_id, metrics=entries[i : i + MAX_METRICS_PER_BATCH])

    def save_view(self, metrics: Sequence[str], tags: Sequence[str] = ()) -> None:
        """Make the experiment's saved view `tracking_ui.VIEW_NAME` show these tag columns and
        these metric columns beside those it showed."""
        if self._client is None or self._run_experiment_id is None:
            return
        with self._guard("view"):
            experiment = self._client.get_experiment(self._run_experiment_id)
            key, value = saved_view(metrics, tags, experiment.tags.get(VIEW_TAG))
            self._client.set_experiment_tag(self._run_experiment_id, key, value)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file (or a folder's contents) into the run's artifacts."""
        if self._client is None:
            return
        with self._guard("artifacts"):
            if Path(path).is_dir():
                self._client.log_artifacts(self._run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_model(
        self,
        *,
        weights: Path,
        config: Path,
        registered_name: str,
        metadata: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> str | None:
        """Log the model as an MLflow pyfunc of this run and register it; the new version.

        Nothing is pickled: the model is MLflow "models from code" (training/mlflow_model.py,
        run at load time) plus two artifacts, `weights` (safetensors) and `config` (YAML). The
        logged model's folder holds `MLmodel`, `mlflow_model.py`, `artifacts/` with those two
        files, `code/` (the training and data packages) and the requirement files (plus
        `uv.lock` and `pyproject.toml`: MLflow copies them when the current folder is a uv
        project, as the repository root is). Metrics of
        the run at `step` are linked to the logged model. The version gets no alias: aliases
        (`challenger`, `champion`) are for validate to set. None when not tracking, or when
        logging failed (a warning says why; the weights are on disk all the same).
        """
        if self._client is None or self._run_id is None:
            return None
        # Model.log takes the run id, so no fluent run is started (its end would mark this run
        # FINISHED mid-training and stop the system-metrics monitor). It would put the logged
        # model in MLflow's current experiment, not the run's, so the entity is created here;
        # and it reads the tracking and registry URIs from MLflow's globals, set for the call.
        with self._guard("model", once=False), global_tracking_uri(self.uri):
            run = self._client.get_run(self._run_id)
            logged = self._client.create_logged_model(
                run.info.experiment_id,
                name="model",
                source_run_id=self._run_id,
                params=run.data.params,
            )
            info = mlflow.models.Model.log(
                artifact_path=None,  # deprecated in favour of name, but still positional
                name="model",
                flavor=mlflow.pyfunc,
                run_id=self._run_id,
                model_id=logged.model_id,
                python_model=str(_MODEL_CODE),
                artifacts={"weights": str(weights), "config": str(config)},
                code_paths=[str(_MODEL_CODE.parents[1] / p) for p in _MODEL_PACKAGES],
                pip_requirements=_model_requirements(),
                metadata=dict(metadata) if metadata else None,
                registered_model_name=registered_name,
                step=step,
            )
            version = info.registered_model_version
            if version is None:
                return None
            # Validate and export find the version of a weights file by its content.
            self._client.set_model_version_tag(
                registered_name, str(version), WEIGHTS_SHA256_TAG, file_sha256(weights)
            )
            link_version(
                self._client,
                run=(run.info.experiment_id, self._run_id, self.run_name),
                model=(registered_name, str(version)),
            )
            return str(version)
        return None

    @contextlib.contextmanager
    def _guard(self, what: str, *, once: bool = True) -> Iterator[None]:
        """Turn a tracking error into a warning (once per kind), so training carries on."""
        try:
            yield
        except Exception as exc:
            self._warn(what, f"MLflow {what} logging failed for run {self._run_id}: {exc}", once)

    def _warn(self, what: str, message: str, once: bool = True) -> None:
        if once and what in self._warned:
            logger.debug(message)
            return
        self._warned.add(what)
        suffix = " (further such errors are logged at debug level)" if once else ""
        logger.warning("%s%s", message, suffix)


def _log_batch(
    client: mlflow.MlflowClient, run_id: str, *, params: Mapping[str, str], tags: Mapping[str, str]
) -> None:
    """Params and tags in batches of MLflow's per-request limit (100 each)."""
    param_list = [Param(k, v) for k, v in params.items()]
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    step = MAX_PARAMS_TAGS_PER_BATCH
    for i in range(0, max(len(param_list), len(tag_list)), step):
        client.log_batch(run_id, params=param_list[i : i + step], tags=tag_list[i : i + step])


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at `uri` for a block, then restore exactly what was set.

    `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI` into the environment (and unsets
    it for None), so both the explicit global and the variable are put back.
    """
    # MLflow's own module global: no public getter tells an explicit URI from the default.
    explicit = mlflow_tracking_utils._tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env
