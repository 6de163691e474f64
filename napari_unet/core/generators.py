"""Helpers for the core's progress-yielding generators."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

R = TypeVar("R")
Y = TypeVar("Y")


def run_to_end(generator: Generator[Y, None, R], each: Callable[[Y], object] | None = None) -> R:
    """Consume a generator, passing each yielded item to ``each`` (if given), and return its
    return value."""
    while True:
        try:
            item = next(generator)
        except StopIteration as finished:
            return finished.value
        if each is not None:
            each(item)
