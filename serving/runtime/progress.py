"""The one progress bar of the project (the runtime's too, so it lives here): counts, rate and ETA
on stderr when it is a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _enabled() -> bool:
    forced = os.environ.get("ANONLAB_PROGRESS")
    if forced is not None:
        return forced not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def bar(
    items: Iterable[T] | None = None, *, total: int | None = None, desc: str, unit: str = "img"
) -> tqdm:
    """A tqdm bar over `items`, or updated by hand (`.update(n)`) when there are none."""
    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        disable=not _enabled(),
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str, unit: str = "img"
) -> Iterator[T]:
    """Iterate `items` behind the progress bar.

    The bar is hidden when stderr is not a terminal; ANONLAB_PROGRESS=1 forces it on (logs of
    `dvc repro` in CI), ANONLAB_PROGRESS=0 hides it.
    """
    yield from bar(items, total=total, desc=desc, unit=unit)
