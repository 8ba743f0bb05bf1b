"""How the commands print a score that may be missing."""

from __future__ import annotations


def fmt_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
