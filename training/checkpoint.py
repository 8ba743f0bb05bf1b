"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the step, the
random states of every process (Python, NumPy, torch CPU and CUDA; one entry per DDP rank), the
config it was trained with, the MLflow run id and the training history. It is written with
`torch.save` to a temporary name and renamed into place, and read with `weights_only=True`, so
loading one never runs pickled code: the RNG states are stored as plain lists and tensors.
Checkpoints are for resuming; released weights are `weights.safetensors`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_path
from data.errors import AnonlabError

__all__ = ["get_rng_state", "load_checkpoint", "save_checkpoint", "set_rng_state"]

FORMAT = 1


def get_rng_state() -> dict[str, Any]:
    """This process's random states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **checkpoint}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AnonlabError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise AnonlabError(
            f"{path}: not a readable anonlab checkpoint ({type(e).__name__}: {e}); "
            "delete it to start over, or resume from checkpoints/best.pt"
        ) from None
    if checkpoint.get("format") != FORMAT:
        raise AnonlabError(
            f"{path}: checkpoint format {checkpoint.get('format')!r}, this anonlab reads {FORMAT}"
        )
    return checkpoint
