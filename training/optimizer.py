"""The optimizer and the learning-rate schedule that `train.optimizer` and `train.schedule` name."""

from __future__ import annotations

import math

import torch

from training.config import ScheduleConfig, TrainConfig


def build_optimizer(
    cfg: TrainConfig, parameters: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimizer train.optimizer names, over `parameters`."""
    opt = cfg.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=opt.lr, weight_decay=opt.weight_decay)


def lr_factor(step: int, schedule: ScheduleConfig, max_steps: int) -> float:
    """The learning-rate multiplier after `step` steps: linear warm-up, then cosine or step."""
    if step < schedule.warmup_steps:
        alpha = step / schedule.warmup_steps
        return schedule.warmup_factor * (1 - alpha) + alpha
    if schedule.name == "cosine":
        span = max(1, max_steps - schedule.warmup_steps)
        progress = min(1.0, (step - schedule.warmup_steps) / span)
        low = schedule.min_factor
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    passed = sum(step >= m * max_steps for m in schedule.milestones)
    return schedule.gamma**passed
