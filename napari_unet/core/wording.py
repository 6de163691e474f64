"""Small helpers for the sentences the panels and the command line show."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median


def counted(count: int, noun: str) -> str:
    """``count`` and a singular ``noun`` made plural unless ``count`` is 1: "1 version",
    "3 held-out objects"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def value_range(values: Sequence[float], fmt: str) -> str:
    """``values`` as one number when they read the same in ``fmt`` (their median), else as
    "low-high": "41", "0.49-0.52"."""
    low, high = min(values), max(values)
    if fmt.format(low) == fmt.format(high):
        return fmt.format(float(median(values)))
    return f"{fmt.format(low)}-{fmt.format(high)}"
