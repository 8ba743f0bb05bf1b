"""`anonlab blur --engine ray`: the same blur on Ray Data, for more images than one machine can do.

The driver sorts the inputs (local paths, globs, fsspec URLs, an inventory file:
serving.runtime.url_inputs), records the skipped and failed ones, and leaves out, with
`resume`, those whose last ledger row is `ok`. The rest become rows of a Ray dataset that hold
keys only (the input, the output, the options): raw images never enter Ray's object store or
its spill files, which no erasure knows about. `map_batches` runs them through a pool of actors,
each loading the models once (`loader`, on its node) and taking every image through
serving.runtime.one_image's fail-closed path (read, decode, detect, anonymize, write), reading
and writing where the keys say. Each actor answers a ledger row per image (a few hundred bytes),
and the driver writes the rows to the ledger as they stream in.

Where: `RAY_ADDRESS` attaches to an existing cluster (`ray job submit` sets it); without it, a
local cluster is started with every CPU of this machine, at least 2 (an actor pool with one
CPU declared has none left for the rest of the pipeline, and waits forever). Every node needs
anonlab with the `ray` extra, the model folders at the same path, and credentials for the
URLs. Actors: one per `cpus_per_actor` CPUs of the cluster, one CPU left over, or one per GPU
with `gpus_per_actor`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.batch import BatchReport, begin, check_out
from serving.runtime.errors import ServingError
from serving.runtime.ledger import OK, Ledger, Row
from serving.runtime.one_image import Work, process
from serving.runtime.pipeline import Runtime
from serving.runtime.progress import bar
from serving.runtime.storage import is_url, join
from serving.runtime.url_inputs import Found

__all__ = ["Anonymizer", "blur_found", "ray_module"]

log = logging.getLogger(__name__)


# Ray's default under `uv run` (RAY_ENABLE_UV_RUN_RUNTIME_ENV): every worker runs `uv run` in a
# copy of the driver's working directory, which Ray zips and uploads to the cluster. A project
# folder holds artifacts/ (raw images among them), which must never be copied into Ray's
# storage, and the workers need anonlab installed anyway. Read by Ray when it is imported.
UV_RUN_HOOK = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"


def ray_module() -> Any:
    """Ray (with its `uv run` hook off unless the environment says otherwise), or a
    ServingError that says how to install it."""
    os.environ.setdefault(UV_RUN_HOOK, "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise ServingError(
            "--engine ray needs Ray Data: pip install 'anonlab[ray]' (on every node of the "
            "cluster too)"
        ) from None
    return ray


class Anonymizer:
    """A Ray actor: the models loaded once, then one image after another through one_image."""

    def __init__(self, loader: Callable[[], Runtime]) -> None:
        self.runtime = loader()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        rows = []
        for item in batch["work"]:
            row, megapixels, hidden = process(self.runtime, Work(**json.loads(item)))
            rows.append(json.dumps({**row.to_dict(), "megapixels": megapixels, "hidden": hidden}))
        return {"row": rows}


def blur_found(
    loader: Callable[[], Runtime],
    found: Found,
    out: str,
    ledger: Ledger,
    *,
    resume: bool = False,
    sidecar: bool = False,
    masks: bool = False,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    keep_outputs: bool = False,
) -> BatchReport:
    """Anonymize what `found` took into `out` (a folder or a URL prefix) on Ray, recording every
    input in `ledger`; the report (counts as batch.blur_batch's). ServingError before any image
    is read when two inputs share an output name, or `out` or the ledger cannot be written."""
    _check_names(found, out)
    if not is_url(out):
        check_out(Path(out))
    ledger.check_writable()
    with ledger:  # closed however the run ends: the rows written so far are kept
        report, works = begin(found, out, ledger, resume, sidecar, masks)
        report.keep_outputs = keep_outputs  # blur --audit: what this run wrote
        _run(loader, works, ledger, report, actors, cpus_per_actor, gpus_per_actor)
    return report


def _run(
    loader: Callable[[], Runtime],
    works: Sequence[Work],
    ledger: Ledger,
    report: BatchReport,
    actors: int | None,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> None:
    ray = ray_module()
    started = _connect(ray)
    try:
        if not works:
            return
        cluster = ray.cluster_resources()
        if actors is None:
            if gpus_per_actor:
                actors = max(1, int(cluster.get("GPU", 0) // gpus_per_actor))
            else:
                actors = max(1, int((cluster.get("CPU", 1) - 1) // cpus_per_actor))
        log.info("ray: %d actors on a cluster of %s", actors, cluster)
        items = [{"work": json.dumps(w.to_dict())} for w in works]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 10_000))
        rows = dataset.map_batches(
            Anonymizer,
            fn_constructor_args=(loader,),
            batch_size=1,
            concurrency=actors,
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        start = time.perf_counter()
        progress = bar(total=len(works), desc="blur (ray)", unit="img")
        for out in _streamed(rows):
            data = json.loads(out["row"])
            megapixels, hidden = data.pop("megapixels"), data.pop("hidden")
            row = Row.from_dict(data)
            report.record(ledger, row)
            if row.status == OK:
                report.hidden(row.input, hidden)
                report.detections += row.regions or 0
                report.megapixels += megapixels
            progress.update(1)
        progress.close()
        report.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()


def _streamed(rows: Any) -> Any:
    """The dataset's rows as they come; a failure of Ray itself (an actor that cannot start or
    died, a lost node) as a ServingError: the ledger keeps the rows that arrived, and
    `--resume` does the rest."""
    try:
        yield from rows.iter_rows()
    except Exception as exc:  # Ray raises its own kinds (RayTaskError, ActorDiedError, ...)
        raise ServingError(
            f"the Ray job stopped: {type(exc).__name__}: {str(exc).splitlines()[0][:500]}; the "
            "ledger keeps the images done so far: fix the cause and run again with --resume"
        ) from None


def _check_names(found: Found, out: str) -> None:
    """ServingError when an output would overwrite an input, or two inputs would be written to
    one output (or to names that differ only by case)."""
    claims: dict[str, list[str]] = {}
    inputs = {_same(key) for key, _ in found.taken}
    for key, relative in found.taken:
        if _same(join(out, relative)) in inputs:
            raise ServingError(
                f"--out {out} would overwrite the input {key}; choose another folder or prefix"
            )
        claims.setdefault(relative.casefold(), []).append(key)
    shared = [keys for keys in claims.values() if len(keys) > 1]
    if shared:
        listed = "; ".join(", ".join(keys) for keys in shared[:5])
        raise ServingError(
            f"{len(shared)} outputs would be written by more than one input ({listed}); give "
            "them separate --out folders, or the folder that holds them all; nothing was written"
        )


def _same(key: str) -> str:
    """A key as compared for sameness: a local path resolved (links followed)."""
    return key if is_url(key) else os.path.realpath(key)


def _connect(ray: Any) -> bool:
    """Attach to `RAY_ADDRESS` or start a local cluster, unless Ray is connected already;
    whether this call started it (and should stop it)."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, **options)
    return True
