"""The torch device and autocast precision that `device` and `precision` settings name."""

from __future__ import annotations

import torch

from data.errors import AnonlabError


def resolve_device(setting: str, *, key: str, local_rank: int = 0) -> torch.device:
    """The device a `device` setting names (`key` is its config key, for errors): `auto` is the
    process's GPU (`local_rank`) when CUDA is available, else the CPU; `cuda` without an index
    is the process's GPU too, so that each process under torchrun has its own."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise AnonlabError(f"{key} = {setting!r}: not a device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnonlabError(f"{key} = {setting!r}: this machine has no CUDA GPU; use auto")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype; None for fp32."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if setting != "fp32" and device.type != "cuda":
        raise AnonlabError(f"train.precision = {setting!r}: mixed precision needs a GPU; use auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]
