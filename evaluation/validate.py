"""The validate stage: the data checks and the release gate, one verdict, a non-zero exit when
it fails (so `dvc repro` stops before export), the `challenger` alias for a passing model, and
the verdict in the description of each registered version it checked (`version_notes`).

The gate judges what ships: the anonymizer, the models of `train.models` run as one
(`serving.runtime.composite`), whose entry `anonymizer` of metrics.json evaluate writes beside
each model's. `gate` is pure (numbers in, checks out); on every reference set:
- `anonymizer.<set>.target.<metric>`: for each metric of `validate.gate_metrics` (iou and/or
  coverage), each class's recall reaches its `evaluate.target_recall` over all sizes and in each
  size bucket of `validate.buckets` holding at least `validate.min_objects` objects (fewer:
  reported with their numbers, not judged). The number judged is `validate.estimate`: the lower
  bound of the cell's 95% bootstrap interval (the release gate's choice: a pass then says the
  recall is at least the target with 95% confidence, not that one sample happened to reach it),
  or the recall measured. A class without ground truth in a set is reported, not judged.
- `<model>.<set>.target.<metric>`: each model's own numbers, judged the same way but at warning
  level: shown, not gated (a Keypoint R-CNN alone finds no face; the heads it adds count in the
  anonymizer's face recall).
- `<model>.<set>.champion`: no class and size bucket of the model is worse than its champion's
  (champions are registered per model) by more than `validate.tolerance`, for buckets with at
  least `validate.min_objects` objects (fewer move by 1/n per object: reported, not judged).
  No champion yet: passes with a note.
A metrics.json without the `anonymizer` entry (an older evaluate) fails `anonymizer.evaluated`;
one whose anonymizer ran other weights than a member's entry records fails `anonymizer.members`.

The verdict records the gate it judged (`gate`: targets, metrics, buckets, estimate,
min_objects, coverage), whether it is the release gate (`release`), and opens with a line
(`notice`) saying which: a gate weaker than `serving.runtime.release`'s rule is NOT A RELEASE,
and export carries that into every artifact it writes.

The chain of custody, per model (`weights`): the weights in `artifacts/models/<model>/` are
the ones evaluate scored (their sha256 is the one `metrics.json` records), and where there is a
registry, the registered version evaluate named is tagged with that sha256. The verdict names
those weights (`models.<model>.weights_sha256`, and their version) and the sha256 of the
metrics.json it judged (`metrics_sha256`); export ships no other weights, and no thresholds from
another metrics.json.

`artifacts/validation/verdict.json` holds every check with its numbers; the previous dataset
version's `stats.json` is kept as `artifacts/validation/baseline_stats.json` (a persistent DVC
output) and replaced by the current one when the data checks pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.atomic import read_json
from data.errors import AnonlabError
from data.size_buckets import BUCKETS
from data.stage_paths import StagePaths
from evaluation.anonymizer import ANONYMIZER
from evaluation.config import EvaluateConfig, ValidateConfig
from evaluation.data_checks import check_dataset
from evaluation.data_checks.checks import ERROR, WARNING, Check
from evaluation.registry import CHALLENGER, RegisteredModel, Registry
from evaluation.scoring.result import RecallCell, RecallTable, recall_from_json
from evaluation.verdict import ValidatedModel, Verdict
from evaluation.version_notes import describe_verdicts
from serving.runtime.checksum import file_sha256
from serving.runtime.release import Gate, release_notice, release_problems
from training.tracking import WEIGHTS_SHA256_TAG

__all__ = [
    "GateFailed",
    "ValidateSetup",
    "gate",
    "release_gate",
    "run_validate",
    "targets",
]

log = logging.getLogger(__name__)
_EMPTY = RecallCell(n=0)  # a bucket the table lacks: no objects, nothing to judge


class GateFailed(AnonlabError):
    """The verdict is fail; the message lists the failed checks."""


@dataclass(frozen=True)
class ValidateSetup:
    models: Sequence[str]
    classes: Sequence[str]
    identifiable: Mapping[str, float]
    evaluate: EvaluateConfig
    validate: ValidateConfig
    leak_hamming: int
    artifacts: Path
    root: Path

    @classmethod
    def of(cls, params: Any, *, artifacts: Path, root: Path) -> ValidateSetup:
        return cls(
            models=list(params.train.models),
            classes=list(params.taxonomy.classes),
            identifiable=dict(params.taxonomy.identifiable),
            evaluate=params.evaluate,
            validate=params.validation,
            leak_hamming=params.prepare.leak_hamming,
            artifacts=artifacts,
            root=root,
        )


def release_gate(
    evaluate: EvaluateConfig,
    validate: ValidateConfig,
    classes: Sequence[str],
    identifiable: Mapping[str, float],
) -> Gate:
    """The gate these settings define for `classes` (what the verdict records and judges);
    `identifiable` is taxonomy.identifiable, which evaluate scored with."""
    return Gate(
        targets={c: float(evaluate.target(c)) for c in classes},
        metrics=tuple(validate.gate_metrics),
        buckets=tuple(validate.buckets),
        estimate=validate.estimate,
        min_objects=validate.min_objects,
        coverage=float(evaluate.coverage),
        identifiable={c: float(h) for c, h in identifiable.items() if c in classes},
    )


def gate(
    metrics: Mapping[str, Any],
    *,
    models: Sequence[str],
    evaluate: EvaluateConfig,
    validate: ValidateConfig,
) -> list[Check]:
    """The release checks judged on evaluate's metrics.json (`metrics`) for the anonymizer
    made of `models` (the chain of custody aside: `run_validate` checks the weights).

    - `anonymizer.evaluated`: metrics.json has an `anonymizer` entry (an older evaluate wrote
      none); `anonymizer.members`: its members are models of `models`, each scored with the
      weights (weights_sha256) the model's own entry records;
    - `anonymizer.<set>.target.<metric>`, per reference set and metric of the gate: what ships
      reaches the targets (`targets`);
    - per model: `<model>.evaluated` (it has an entry), `<model>.<set>.target.<metric>` at
      warning level (its own numbers, shown: the anonymizer is what is gated), and
      `<model>.<set>.champion` (champions are registered per model).
    """
    checks: list[Check] = []
    anonymizer = metrics.get(ANONYMIZER)
    if isinstance(anonymizer, Mapping):
        checks.append(_members(anonymizer, metrics, models))
        checks.extend(targets(anonymizer, evaluate=evaluate, validate=validate, name=ANONYMIZER))
    else:
        checks.append(
            Check(
                f"{ANONYMIZER}.evaluated",
                False,
                ERROR,
                "artifacts/eval/metrics.json has no `anonymizer` entry (written by an older "
                "evaluate): the gate judges the anonymizer, the models run as one; run "
                "`anonlab evaluate` again, then `anonlab validate`",
                {},
            )
        )
    for model in models:
        entry = metrics.get(model)
        if not isinstance(entry, Mapping):
            message = f"{model}: not in artifacts/eval/metrics.json; run `anonlab evaluate` again"
            checks.append(Check(f"{model}.evaluated", False, ERROR, message, {}))
            continue
        shown = targets(entry, evaluate=evaluate, validate=validate, name=model, severity=WARNING)
        checks.extend(shown)
        champion_sets = (entry.get("champion") or {}).get("sets") or {}
        for set_name, result in _reference_sets(entry).items():
            recall = recall_from_json(result.get("recall") or {})
            old_json = (champion_sets.get(set_name) or {}).get("recall")
            old = None if old_json is None else recall_from_json(old_json)
            checks.append(_against_champion(model, set_name, recall, old, entry, validate))
    return checks


def targets(
    entry: Mapping[str, Any],
    *,
    evaluate: EvaluateConfig,
    validate: ValidateConfig,
    name: str,
    severity: str = ERROR,
) -> list[Check]:
    """The target checks of one metrics entry (the anonymizer's, or a model's at `WARNING`).

    Per reference set and metric of the gate, one check `<name>.<set>.target.<metric>` whose
    details hold every cell (`<class>/<bucket>`): n, the recall, its 95% interval, the number
    judged (`estimate`) and the target, and whether it was judged (`all` from one object, a size
    bucket from `min_objects`). A cell without objects is left out; without an interval under
    `estimate: lower` (evaluate.n_boot 0) it fails, saying so.
    """
    checks: list[Check] = []
    sets = _reference_sets(entry)
    if not sets:
        message = f"{name}: no reference set was evaluated; configure prepare.reference_sets"
        return [Check(f"{name}.target", False, severity, message, {})]
    shown = "" if severity == ERROR else " (shown, not gated: the gate judges the anonymizer)"
    for set_name, metrics in sets.items():
        recall = recall_from_json(metrics.get("recall") or {})
        # Identifiability is in the numbers already: evaluate scored with it.
        rule = release_gate(evaluate, validate, list(recall), {})
        for metric in rule.metrics:
            short, cells = _judge(recall, rule, metric)
            passed = not short
            scope = _scope(rule)
            message = (
                f"{name} on {set_name}: {metric} recall reaches the target for every class "
                f"({scope}){shown}"
                if passed
                else f"{name} on {set_name}: {metric} recall below target ({scope}){shown}: "
                + "; ".join(short)
            )
            checks.append(
                Check(f"{name}.{set_name}.target.{metric}", passed, severity, message, cells)
            )
    return checks


def _reference_sets(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's results per reference set (val is where thresholds were chosen)."""
    return {k: v for k, v in (entry.get("sets") or {}).items() if k != "val"}


def _members(
    anonymizer: Mapping[str, Any], metrics: Mapping[str, Any], models: Sequence[str]
) -> Check:
    """Check `anonymizer.members`: the anonymizer was scored with the very weights each of its
    members' entries records (both name the bytes validate lets ship)."""
    name = f"{ANONYMIZER}.members"
    members = anonymizer.get("members")
    if not (isinstance(members, Mapping) and members):
        message = (
            "artifacts/eval/metrics.json: the anonymizer names no members; run `anonlab "
            "evaluate` again, then `anonlab validate`"
        )
        return Check(name, False, ERROR, message, {})
    wrong, details = [], {}
    for model, member in members.items():
        scored = _sha((member or {}).get("weights_sha256"))
        entry = metrics.get(model)
        own = _sha(entry.get("weights_sha256")) if isinstance(entry, Mapping) else None
        details[model] = {"anonymizer": scored, "model": own}
        if model not in models:
            wrong.append(f"{model} is not a model of train.models {list(models)}")
        elif scored is None or scored != own:
            wrong.append(
                f"the anonymizer ran {model} with weights sha256 {scored}, but {model}'s entry "
                f"records sha256 {own}"
            )
    if wrong:
        message = (
            "artifacts/eval/metrics.json: "
            + "; ".join(wrong)
            + ": the anonymizer's numbers are not those of these models; run `anonlab "
            "evaluate` again, then `anonlab validate`"
        )
        return Check(name, False, ERROR, message, details)
    message = f"the anonymizer ran {', '.join(members)} with the weights their entries record"
    return Check(name, True, ERROR, message, details)


def _judge(recall: RecallTable, rule: Gate, metric: str) -> tuple[list[str], dict[str, Any]]:
    """The cells of one metric that fall short of the target (as messages), and every cell
    with its numbers (the check's details)."""
    short: list[str] = []
    cells: dict[str, Any] = {}
    for name, buckets in recall.items():
        target = rule.targets[name]
        for bucket in rule.buckets:
            cell = buckets.get(bucket) or _EMPTY
            n = int(cell.n or 0)
            if not n:
                continue
            value, interval = cell.value(metric), cell.interval(metric)
            judged = bucket == "all" or n >= rule.min_objects
            estimate = value if rule.estimate == "point" else (interval or [None])[0]
            cells[f"{name}/{bucket}"] = {
                "n": n,
                "value": value,
                "interval": None if interval is None else list(interval),
                "estimate": estimate,
                "target": target,
                "judged": judged,
            }
            if judged and (estimate is None or estimate < target):
                short.append(f"{name}/{bucket} {_cell_text(value, interval, rule, target, n)}")
    return short, cells


def _cell_text(
    value: float | None, interval: Sequence[float] | None, rule: Gate, target: float, n: int
) -> str:
    if value is None:
        return f"no recall < {_pct(target)} (n={n})"
    if rule.estimate == "point":
        return f"{_pct(value)} < {_pct(target)} (n={n})"
    if not interval:
        return (
            f"{_pct(value)} has no interval to judge (evaluate.n_boot is 0; the gate judges "
            f"the lower bound) (n={n})"
        )
    return (
        f"{_pct(value)} [{_pct(interval[0])}, {_pct(interval[1])}]: lower bound "
        f"{_pct(interval[0])} < {_pct(target)} (n={n})"
    )


def _scope(rule: Gate) -> str:
    sizes = [b for b in rule.buckets if b != "all"]
    where = "all sizes" if "all" in rule.buckets else ""
    if sizes:
        each = f"{'/'.join(sizes)} buckets of {rule.min_objects}+ objects"
        where = f"{where} and {each}" if where else each
    judged = "lower bound of the 95% interval" if rule.estimate == "lower" else "point estimate"
    return f"{where}, {judged}"


def _against_champion(
    model: str,
    set_name: str,
    recall: RecallTable,
    old: RecallTable | None,
    entry: Mapping[str, Any],
    validate: ValidateConfig,
) -> Check:
    name = f"{model}.{set_name}.champion"
    if old is None:
        return Check(name, True, ERROR, f"{model} on {set_name}: no champion to compare with", {})
    version = (entry.get("champion") or {}).get("version")
    worse, compared = [], {}
    for cls, buckets in recall.items():
        for bucket in [*BUCKETS, "all"]:
            new_cell = buckets.get(bucket) or _EMPTY
            old_cell = old.get(cls, {}).get(bucket) or _EMPTY
            n = min(new_cell.n or 0, old_cell.n or 0)
            if n < validate.min_objects:
                continue
            for metric in validate.gate_metrics:
                a, b = new_cell.value(metric), old_cell.value(metric)
                if a is None or b is None:
                    continue
                compared[f"{cls}/{bucket}/{metric}"] = {"new": a, "champion": b, "n": n}
                if a < b - validate.tolerance:
                    worse.append(f"{cls}/{bucket} {metric} {_pct(a)} vs {_pct(b)}")
    passed = not worse
    message = (
        f"{model} on {set_name}: no class/bucket worse than champion v{version} by more than "
        f"{validate.tolerance:.3f}"
        if passed
        else f"{model} on {set_name}: worse than champion v{version}: {'; '.join(worse)}"
    )
    return Check(name, passed, ERROR, message, compared)


def run_validate(setup: ValidateSetup) -> Verdict:
    """Run every check, write verdict.json; GateFailed when any error-level check fails."""
    paths = StagePaths(setup.artifacts)
    out = paths.validation
    baseline_path = out.baseline_stats
    baseline = read_json(baseline_path) if baseline_path.is_file() else None
    checks = check_dataset(
        paths.prepared.folder,
        paths.reviewed.folder,
        leak_hamming=setup.leak_hamming,
        baseline_stats=baseline,
        max_shift=setup.validate.max_shift,
        min_objects=setup.validate.data_min_objects,
    )
    metrics_path = paths.eval.metrics
    if not metrics_path.is_file():
        raise AnonlabError(f"{metrics_path} does not exist; run `anonlab evaluate` first")
    metrics = read_json(metrics_path)
    registry = _registry(setup.root)
    validated: dict[str, ValidatedModel] = {}
    registered: dict[str, RegisteredModel | None] = {}
    for model in setup.models:
        entry = metrics.get(model)
        if not isinstance(entry, Mapping):
            continue  # gate's `<model>.evaluated` says so
        weights = paths.model(model).weights
        check, registered[model] = _custody(model, entry, weights, registry)
        checks.append(check)
        version = registered[model].version if registered[model] else None
        validated[model] = ValidatedModel(_sha(entry.get("weights_sha256")), version)
    checks.extend(
        gate(metrics, models=setup.models, evaluate=setup.evaluate, validate=setup.validate)
    )
    failed = [c for c in checks if not c.passed and c.severity == ERROR]
    warnings = [c for c in checks if not c.passed and c.severity != ERROR]
    rule = release_gate(setup.evaluate, setup.validate, setup.classes, setup.identifiable)
    problems = release_problems(rule)
    verdict = Verdict(
        notice=release_notice(problems),
        release=not problems,
        gate=rule,
        passed=not failed,
        when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        failed=tuple(c.name for c in failed),
        warnings=tuple(c.name for c in warnings),
        checks=tuple(checks),
        metrics_sha256=file_sha256(metrics_path),
        models=validated,
        challengers={},
    )
    data_ok = all(_is_model_check(c, setup) for c in failed)
    if not failed:
        challengers = _set_challengers(registry, registered)
        verdict = dataclasses.replace(verdict, challengers=challengers)
    if registry is not None:
        describe_verdicts(registry, registered, verdict, metrics)
    verdict.write(out.verdict)
    if data_ok:
        stats = paths.prepared.stats
        if stats.is_file():
            shutil.copyfile(stats, baseline_path)
    for c in warnings:
        log.warning("%s", c.message)
    if problems:
        log.warning("%s", verdict.notice)
    if failed:
        lines = "\n  ".join(c.message for c in failed)
        raise GateFailed(
            f"validation failed ({len(failed)} of {len(checks)} checks):\n  {lines}\n"
            f"Every check is in {out.verdict}; the model is not released."
        )
    return verdict


def _is_model_check(check: Check, setup: ValidateSetup) -> bool:
    return any(check.name.startswith(f"{m}.") for m in [ANONYMIZER, *setup.models])


def _registry(root: Path) -> Registry | None:
    try:
        return Registry(root)
    except Exception as exc:
        log.warning(
            "MLflow registry unavailable (%s): the weights are not checked against a registered "
            "version, and no challenger alias is set",
            exc,
        )
        return None


def _sha(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) == 64 else None


def _custody(
    model: str, entry: Mapping[str, Any], weights: Path, registry: Registry | None
) -> tuple[Check, RegisteredModel | None]:
    """Check `{model}.weights`: `weights` are the bytes evaluate scored (`entry`'s
    weights_sha256), and the registered version evaluate named carries that sha256 in its
    `anonlab.weights_sha256` tag; that version (None without a registry or a registration)."""
    name = f"{model}.weights"
    scored = _sha(entry.get("weights_sha256"))
    if scored is None:
        message = (
            f"{model}: artifacts/eval/metrics.json records no weights_sha256 for it (written "
            "by an older evaluate), so the weights cannot be told apart; run `anonlab evaluate` "
            "again, then `anonlab validate`"
        )
        return Check(name, False, ERROR, message, {}), None
    details: dict[str, Any] = {"evaluated": scored}
    on_disk = file_sha256(weights) if weights.is_file() else None
    details["file"] = on_disk
    if on_disk != scored:
        now = f"has sha256 {on_disk}" if on_disk else "does not exist"
        message = (
            f"{model}: {weights} {now}, but evaluate scored weights with sha256 {scored}: "
            "they changed after evaluate; run `anonlab evaluate` and `anonlab validate` again"
        )
        return Check(name, False, ERROR, message, details), None
    version = _registered(model, entry, scored, registry)
    if version is not None:
        details["registered"] = {
            "version": version.version,
            "weights_sha256": version.weights_sha256,
        }
        if version.weights_sha256 != scored:
            message = (
                f"{model}: {version} is tagged {WEIGHTS_SHA256_TAG} "
                f"{version.weights_sha256}, but evaluate scored weights with sha256 {scored} "
                "under that version: the registry changed after evaluate; run `anonlab "
                "evaluate` and `anonlab validate` again"
            )
            return Check(name, False, ERROR, message, details), None
    elif entry.get("version") is not None and registry is not None:
        message = (
            f"{model}: evaluate scored it as version {entry['version']}, which the MLflow "
            f"registry ({registry.uri}) does not hold; run `anonlab evaluate` and "
            "`anonlab validate` again against the registry the model was trained with"
        )
        return Check(name, False, ERROR, message, details), None
    where = f" ({version})" if version else ""
    message = f"{model}: the weights are those evaluate scored, sha256 {scored}{where}"
    return Check(name, True, ERROR, message, details), version


def _registered(
    model: str, entry: Mapping[str, Any], scored: str, registry: Registry | None
) -> RegisteredModel | None:
    """The version evaluate named (its `version`), else the newest tagged with `scored`."""
    if registry is None:
        return None
    if entry.get("version") is not None:
        return registry.get(model, str(entry["version"]))
    return registry.version_with_weights(model, scored)


def _set_challengers(
    registry: Registry | None, registered: Mapping[str, RegisteredModel | None]
) -> dict[str, str | None]:
    """Alias `challenger` on each passing model's registered version (checked by `_custody`)."""
    out: dict[str, str | None] = {}
    for model, version in registered.items():
        if registry is None or version is None:
            if registry is not None:
                log.warning(
                    "%s: these weights are not in the MLflow registry (trained without "
                    "tracking?); no challenger alias set",
                    model,
                )
            out[model] = None
            continue
        registry.set_alias(version, CHALLENGER)
        out[model] = version.version
        log.info("%s: %s is the challenger", model, version)
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
