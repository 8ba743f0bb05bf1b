"""The headline recall and what a registered model version's description says about it.

The headline is, per reference set and class, the recall over all sizes by IoU and by pixel
coverage: the cells `recall/<set>/<class>/all` and `coverage/<set>/<class>/all` of evaluate's
MLflow metrics, logged again under the short names `<set>/<class>/iou` and
`<set>/<class>/coverage` so that the runs table can show them as columns. evaluate writes a
version's description with it (and links the run that measured it); validate writes it again
with the gate's verdict.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from evaluation.registry import RegisteredModel, Registry
from evaluation.verdict import Verdict
from training.tracking_ui import run_path

__all__ = [
    "EVALUATE_RUN_TAG",
    "describe_verdicts",
    "evaluated_description",
    "headline_from_entry",
    "headline_from_metrics",
    "headline_markdown",
]

log = logging.getLogger(__name__)

# The tag on a registered version naming the evaluate run that scored it: `<experiment>/<run>`.
EVALUATE_RUN_TAG = "anonlab.evaluate_run"
_METRICS = (("iou", "recall"), ("coverage", "coverage"))  # headline name, evaluate's prefix
_FLAT = re.compile(r"^(recall|coverage)/([^/]+)/([^/]+)/all$")
_VAL = "val"  # where thresholds are chosen: not a reference set


def headline_from_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The headline out of evaluate's MLflow metrics (`evaluate_runs.flat_recall`'s names),
    under its short names, sorted; val is left out (thresholds are chosen there)."""
    prefixes = {prefix: name for name, prefix in _METRICS}
    out: dict[str, float] = {}
    for key, value in metrics.items():
        found = _FLAT.match(key)
        if found and found[2] != _VAL:
            out[f"{found[2]}/{found[3]}/{prefixes[found[1]]}"] = value
    return dict(sorted(out.items()))


def headline_from_entry(entry: Mapping[str, Any]) -> dict[str, float]:
    """The headline out of a model's (or the anonymizer's) entry of eval/metrics.json."""
    out: dict[str, float] = {}
    for set_name, result in (entry.get("sets") or {}).items():
        if set_name == _VAL:
            continue
        for cls, buckets in ((result or {}).get("recall") or {}).items():
            cell = (buckets or {}).get("all") or {}
            for name, _ in _METRICS:
                if isinstance(cell.get(name), int | float):
                    out[f"{set_name}/{cls}/{name}"] = float(cell[name])
    return dict(sorted(out.items()))


def headline_markdown(headline: Mapping[str, float]) -> str:
    """A markdown table: one row per reference set and class, IoU and coverage recall."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in headline.items():
        set_name, cls, metric = key.split("/")
        rows.setdefault((set_name, cls), {})[metric] = value
    if not rows:
        return "No reference set was scored."
    lines = ["| set | class | recall (IoU) | recall (coverage) |", "|---|---|---|---|"]
    for (set_name, cls), cells in rows.items():
        iou, coverage = (_fmt(cells.get(name)) for name, _ in _METRICS)
        lines.append(f"| {set_name} | {cls} | {iou} | {coverage} |")
    return "\n".join(lines)


def evaluated_description(headline: Mapping[str, float], *, run: tuple[str, str, str]) -> str:
    """evaluate's description of a version: its headline recall and the run, `run` =
    (experiment id, run id, run name), that measured it; the gate has not judged it yet."""
    experiment_id, run_id, name = run
    return (
        f"{_recall_heading()}\n\n{headline_markdown(headline)}\n\n"
        f"Measured by evaluate run [{name}]({run_path(experiment_id, run_id)}). "
        "Gate: not judged since (`anonlab validate`)."
    )


def describe_verdicts(
    registry: Registry,
    versions: Mapping[str, RegisteredModel | None],
    verdict: Verdict,
    metrics: Mapping[str, Any],
) -> None:
    """Write validate's description on each registered version of `versions` (model name ->
    the version validate checked): the verdict, with its date and, when the gate passed, the
    `challenger` alias; the headline recall of the model's entry in `metrics`; the evaluate run
    that measured it. A registry that refuses is a warning: the verdict file stands."""
    for model, version in versions.items():
        if version is None:
            continue
        text = "\n\n".join(
            [
                _verdict_line(verdict),
                _recall_heading(),
                headline_markdown(headline_from_entry(metrics.get(model) or {})),
                _evaluate_link(version),
            ]
        ).rstrip()
        try:
            registry.describe(version, text)
        except Exception as exc:
            log.warning("%s: the verdict is not in its description (%s)", version, exc)


def _verdict_line(verdict: Verdict) -> str:
    when = verdict.when or "at an unknown time"
    if verdict.passed:
        line = (
            f"**Gate: passed** (`anonlab validate`, {when}): this version is the `challenger`; "
            "`anonlab validate promote` makes it the `champion`."
        )
    else:
        line = (
            f"**Gate: failed** (`anonlab validate`, {when}): {len(verdict.failed)} check(s) "
            f"failed: {', '.join(f'`{c}`' for c in verdict.failed)}."
        )
    if not verdict.release:
        line += f"\n\n{verdict.notice}"
    return line


def _evaluate_link(version: RegisteredModel) -> str:
    found = version.tags.get(EVALUATE_RUN_TAG, "")
    experiment_id, _, run_id = found.partition("/")
    if not run_id:
        return ""
    return f"Measured by evaluate run [{run_id[:8]}]({run_path(experiment_id, run_id)})."


def _recall_heading() -> str:
    return "**Recall over all sizes** on each reference set, at evaluate's thresholds:"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
