"""What the training loop asks of its validator: a model and a step in, a `Validation` out.

Training does not score models itself: the caller hands the loop a `Validator` (`anonlab train`
hands it evaluation's, `evaluation.training_validator`, the release scorer at evaluate's
operating thresholds), so the checkpoint kept as `best` is chosen by what the release gate
measures, and `training` never imports `evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

__all__ = ["Validation", "Validator", "better"]


@dataclass(frozen=True)
class Validation:
    """One validation of the model being trained.

    `score` is what `best` maximises; between equal scores, `tie_break` decides (compared in
    order, higher is better). `metrics` are logged to MLflow under `val/` at the step;
    `summary` (JSON-ready) is what `metrics.json` and the checkpoints keep of it.
    """

    score: float
    tie_break: Sequence[float] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The plain dict a checkpoint and `metrics.json` keep: score, tie-break, summary."""
        return {"score": self.score, "tie_break": list(self.tie_break), **self.summary}


class Validator(Protocol):
    """Scores `model` (in eval mode, on its training device) after `step` steps.

    It must leave the model as it found it (weights and every setting it changes to predict),
    and it runs on the main process only, inside the loop's `torch.random.fork_rng`.
    """

    def __call__(self, model: nn.Module, step: int) -> Validation: ...


def better(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether the validation record `new` beats `old` (`Validation.record()` dicts): a higher
    score, or an equal score and a higher tie-break. A record without a score (none yet, or
    one written by an older anonlab) is beaten by any."""
    if old.get("score") is None:
        return True
    return (new["score"], list(new["tie_break"])) > (old["score"], list(old["tie_break"]))
