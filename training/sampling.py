"""Which samples each training step sees, as a pure function of (seed, step, rank).

Exact resume needs the data stream to be reproducible from a step number alone: after an
interruption the run must see the same batches, augmented the same way, as an uninterrupted one,
whatever the number of loader workers. So nothing here keeps state between steps:

- epoch `e`'s batches are a shuffle drawn from a generator seeded with (seed, e), grouped by
  aspect ratio (`GroupedBatchSampler`);
- under DDP, batch `j` of an epoch goes to rank `j % world_size`; each rank gets the same number
  of batches, so the last `len % world_size` batches of an epoch are left out (never
  duplicated: every image a rank sees in an epoch is one no other rank sees then);
- each sample carries its own augmentation seed, drawn from (seed, epoch, position), which
  `SeededSamples` hands to the augmenter before loading it, in whichever worker process.

`StepBatches(plan, start_step)` yields the batches of steps start_step, start_step + 1, ...
endlessly; the loop stops at max_steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from data.errors import AnonlabError
from training.dataset import CocoDetection, GroupedBatchSampler

__all__ = ["BatchPlan", "SeededSamples", "StepBatches"]

Key = tuple[int, int]  # (dataset index, augmentation seed)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): nearby inputs give unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1


class BatchPlan:
    """The batches of every epoch for one rank, computed from the seed alone."""

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_epoch = len(GroupedBatchSampler(self.group_ids, batch_size)) // world_size
        if self.per_epoch == 0:
            raise AnonlabError(
                f"{len(self.group_ids)} training images make fewer batches of {batch_size} than "
                f"there are processes ({world_size}); lower train.batch_size, use fewer "
                "processes or prepare more training data"
            )

    def epoch(self, epoch: int) -> list[list[Key]]:
        """This rank's batches of `epoch`, each sample with its augmentation seed."""
        generator = torch.Generator()
        generator.manual_seed(_mix(self.seed, epoch))
        batches = list(GroupedBatchSampler(self.group_ids, self.batch_size, generator=generator))
        mine = batches[self.rank :: self.world_size][: self.per_epoch]
        first = self.rank  # position of this rank's first batch among the epoch's batches
        return [
            [
                (index, _mix(self.seed, epoch, (first + self.world_size * j) * 1_000_003 + k))
                for k, index in enumerate(batch)
            ]
            for j, batch in enumerate(mine)
        ]


class StepBatches(Sampler[list[Key]]):
    """Batches for steps `start_step`, `start_step + 1`, ... (a DataLoader `batch_sampler`)."""

    def __init__(self, plan: BatchPlan, start_step: int = 0) -> None:
        self.plan = plan
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, skip = divmod(self.start_step, self.plan.per_epoch)
        while True:
            yield from self.plan.epoch(epoch)[skip:]
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own len()
        raise TypeError("StepBatches is endless; the training loop counts steps")


class SeededSamples(Dataset[Any]):
    """`dataset[(index, seed)]`: reseed the dataset's augmenter with `seed`, then load `index`."""

    def __init__(self, dataset: CocoDetection) -> None:
        self.dataset = dataset

    def __getitem__(self, key: Key) -> Any:
        index, seed = key
        if self.dataset.augmenter is not None:
            # albumentations seeds numpy's generator, which takes 32-bit seeds.
            self.dataset.augmenter.set_seed(seed % 2**32)
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)
