"""The process group of a run under torchrun, and the two agreements the training loop needs
from every process (all finite, any stop request).

NCCL reduces only tensors on the process's GPU, and binds its communicator to the device that is
current when the group starts: `init_distributed` makes the process's device current before the
group exists (and passes it as the group's `device_id`), and every tensor handed to a collective
is built on that device (`flag_tensor`). On CPUs the group is gloo and the device is the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

__all__ = ["Dist", "all_ranks", "any_rank", "flag_tensor", "init_distributed", "local_rank"]

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run, and the device its model and collectives use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def main(self) -> bool:
        return self.rank == 0


def local_rank() -> int:
    """The process's index on its machine under torchrun (LOCAL_RANK), 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> Dist:
    """This process's `Dist` on `device`: under torchrun (WORLD_SIZE > 1) the process group is
    started (NCCL when `device` is a GPU, gloo otherwise) after `device` was made current; a
    group the caller already started is used as it is."""
    if device.type == "cuda":
        # Before any collective: NCCL and all_gather_object use the current device.
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Dist(device=device)
        if device.type == "cuda":
            torch_dist.init_process_group("nccl", device_id=device)
        else:
            torch_dist.init_process_group("gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank(), device)


def flag_tensor(value: bool | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A one-element float32 tensor of `value` (1.0 for true) on `device`, for a collective."""
    return torch.as_tensor(value, device=device).to(device, torch.float32).reshape(1)


def all_ranks(value: bool | torch.Tensor, dist: Dist) -> bool:
    """Whether `value` is true on every process (this one's alone outside a process group)."""
    return _reduce(value, dist, torch_dist.ReduceOp.MIN)


def any_rank(value: bool | torch.Tensor, dist: Dist) -> bool:
    """Whether `value` is true on any process (this one's alone outside a process group)."""
    return _reduce(value, dist, torch_dist.ReduceOp.MAX)


def _reduce(value: bool | torch.Tensor, dist: Dist, op: torch_dist.ReduceOp) -> bool:
    flag = flag_tensor(value, dist.device)
    if torch_dist.is_initialized():
        torch_dist.all_reduce(flag, op=op)
    return bool(flag.item())
