"""The store interface erasure works through: anything that can hold an image or something derived
from it (the raw store, a stage's outputs, the DVC cache and its remotes, Label Studio, MLflow).

A store answers two questions about a set of images: what of them do you hold (`find`, used for
`--dry-run` and, after erasing, as the verification scan), and erase it (`erase`, which returns
what it removed and does nothing the second time). Each store's `find` looks where the store can
hold an image (files named by its sha256, rows and entries that name it, figures marked with it),
not through every byte it holds: erasing one image must not cost a scan of everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from data.erasure.subjects import Subject


@dataclass(frozen=True)
class Held:
    """Something a store holds of the images: `count` items of kind `what` at `where` (a path
    relative to the store, a URL, a task). Shown on the console and in `--dry-run`; never
    written to the audit log, which keeps counts per store only."""

    where: str
    what: str
    count: int = 1


class Store(Protocol):
    """A place that can hold images or what is derived from them."""

    @property
    def name(self) -> str:
        """Short, stable: the key of its counts in the audit log (`raw`, `dvc-cache`, ...)."""
        ...

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        """What this store holds of `subjects`."""
        ...

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        """Remove what this store holds of `subjects` (derived files rewritten without them, or
        removed); what was removed. Idempotent: a second call removes nothing."""
        ...


class Scanned:
    """A store whose `find` and `erase` are one scan: `_run(subjects, write)` lists what it
    holds of them, and removes it when `write`."""

    def _run(self, subjects: Sequence[Subject], write: bool) -> list[Held]:
        raise NotImplementedError

    def find(self, subjects: Sequence[Subject]) -> list[Held]:
        return self._run(subjects, write=False)

    def erase(self, subjects: Sequence[Subject]) -> list[Held]:
        return self._run(subjects, write=True)


def total(held: Sequence[Held]) -> int:
    return sum(h.count for h in held)
