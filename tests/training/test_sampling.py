"""The training data stream is a function of (seed, step, rank): resumable and shardable."""

from __future__ import annotations

import itertools

import pytest

from data.errors import AnonlabError
from training.sampling import BatchPlan, StepBatches

GROUPS = [0, 1] * 9 + [1, 1, 0]  # 21 images in two aspect-ratio groups


def _take(plan: BatchPlan, start: int, steps: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(StepBatches(plan, start)), steps))


def test_starting_at_a_step_continues_the_same_stream() -> None:
    plan = BatchPlan(GROUPS, 4, seed=3)
    whole = _take(plan, 0, 25)  # several epochs
    for start in (1, 5, plan.per_epoch, plan.per_epoch + 2, 17):
        assert _take(plan, start, 25 - start) == whole[start:]


def test_an_epoch_covers_every_image_once_in_single_group_batches() -> None:
    plan = BatchPlan(GROUPS, 4, seed=3)
    for epoch in range(3):
        batches = plan.epoch(epoch)
        indices = [i for batch in batches for i, _ in batch]
        assert sorted(indices) == list(range(len(GROUPS)))
        assert all(len({GROUPS[i] for i, _ in batch}) == 1 for batch in batches)
    assert plan.epoch(0) != plan.epoch(1)  # a new order every epoch
    assert BatchPlan(GROUPS, 4, seed=3).epoch(0) == plan.epoch(0)
    assert BatchPlan(GROUPS, 4, seed=4).epoch(0) != plan.epoch(0)


def test_augmentation_seeds_differ_per_sample_and_epoch() -> None:
    plan = BatchPlan(GROUPS, 4, seed=3)
    seeds = [s for e in range(3) for batch in plan.epoch(e) for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_ranks_share_out_an_epoch_without_duplicates() -> None:
    world = 3
    plans = [BatchPlan(GROUPS, 2, seed=1, rank=r, world_size=world) for r in range(world)]
    single = BatchPlan(GROUPS, 2, seed=1)
    for epoch in range(2):
        per_rank = [[tuple(b) for b in p.epoch(epoch)] for p in plans]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes as many steps
        seen = [i for batches in per_rank for batch in batches for i, _ in batch]
        assert len(seen) == len(set(seen))  # no image twice in an epoch
        # Together they are the single-process epoch, less at most world - 1 batches.
        everything = [tuple(b) for b in single.epoch(epoch)]
        together = {b for batches in per_rank for b in batches}
        assert together <= set(everything)
        assert len(everything) - len(together) < world


def test_too_few_images_for_the_processes_is_a_clear_error() -> None:
    with pytest.raises(AnonlabError, match=r"3 training images make fewer batches of 4"):
        BatchPlan([0, 0, 0], 4, seed=0, world_size=2)
