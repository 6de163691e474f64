"""Small helpers for the sentences the panels and the command line show."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``count`` and a singular ``noun`` made plural unless ``count`` is 1: "1 version",
    "3 held-out objects"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
