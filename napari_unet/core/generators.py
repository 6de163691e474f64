"""Helpers for the core's progress-yielding generators."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

R = TypeVar("R")


def run_to_end(generator: Generator[object, None, R]) -> R:
    """Consume a generator, discarding what it yields, and return its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as finished:
            return finished.value
