"""The loop's collectives: their tensors are on the process's device (NCCL reduces GPU tensors
only), and all_ranks / any_rank agree through a real process group (gloo, in this process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist

from training.distributed import Dist, all_ranks, any_rank, flag_tensor, init_distributed


def test_a_collective_tensor_is_built_on_the_device_it_is_given() -> None:
    # The meta device stands in for a GPU: a tensor left on (or moved to) the CPU fails here.
    meta = torch.device("meta")
    for value in (True, False, torch.tensor(True), torch.isfinite(torch.tensor(float("nan")))):
        flag = flag_tensor(value, meta)
        assert flag.device == meta
        assert flag.dtype == torch.float32 and flag.shape == (1,)
    assert flag_tensor(torch.tensor(True), torch.device("cpu")).tolist() == [1.0]
    assert flag_tensor(False, torch.device("cpu")).tolist() == [0.0]


@pytest.fixture
def gloo_group(tmp_path: Path) -> Iterator[Dist]:
    """A real one-process gloo group, and this process's place in it (from init_distributed,
    which takes a group its caller started as it is)."""
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield init_distributed(torch.device("cpu"))
    finally:
        torch_dist.destroy_process_group()


def test_agreements_reduce_tensors_on_the_process_device_through_the_group(
    gloo_group: Dist, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (gloo_group.rank, gloo_group.world_size) == (0, 1)
    handed: list[tuple[torch.device, torch_dist.ReduceOp]] = []
    real = torch_dist.all_reduce

    def recording(tensor: torch.Tensor, op: torch_dist.ReduceOp, **kwargs: object) -> object:
        handed.append((tensor.device, op))
        return real(tensor, op=op, **kwargs)

    monkeypatch.setattr(torch_dist, "all_reduce", recording)
    loss = torch.tensor(float("inf"))
    assert all_ranks(torch.isfinite(torch.tensor(1.0)), gloo_group) is True
    assert all_ranks(torch.isfinite(loss), gloo_group) is False
    assert any_rank(True, gloo_group) is True
    assert any_rank(False, gloo_group) is False
    assert handed == [
        (gloo_group.device, torch_dist.ReduceOp.MIN),
        (gloo_group.device, torch_dist.ReduceOp.MIN),
        (gloo_group.device, torch_dist.ReduceOp.MAX),
        (gloo_group.device, torch_dist.ReduceOp.MAX),
    ]


def test_outside_a_group_each_process_decides_alone() -> None:
    assert not torch_dist.is_initialized()
    dist = init_distributed(torch.device("cpu"))
    assert dist == Dist() and dist.main
    assert all_ranks(True, dist) and not any_rank(False, dist)
