"""How a fine-tuned model version was made, read from its bundle config (torch-free).

Training writes each run into ``config["training"]["history"]`` (see ``_record`` in
:mod:`napari_unet.core.training`); the last run made the version in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_unet.core.wording import counted


@dataclass(frozen=True)
class Provenance:
    """The last training run recorded in a model's config (fields None when not recorded).

    Attributes
    ----------
    parent : str or None
        The model it was fine-tuned from.
    date : str or None
        ISO date and time the run ended.
    steps_run, steps : int or None
        Optimiser steps run, and asked for.
    seed : int or None
    samples : int or None
        Corrected planes trained on.
    corrected_pixels : int or None
    seconds : float or None
    end : str or None
        Why training ended.
    metric : str or None
        What compared the versions on held-out labels, e.g. ``"AP@0.5"``.
    base_score, new_score : float or None
    n_items, n_wrong : int or None
    unit : str or None
        ``"objects"`` or ``"pixels"``.
    verdict : str or None
        ``"better"``, ``"worse"``, ``"too close"`` or ``"too few"`` (versions saved before
        2026-12-07 may say ``"not better"``); None when nothing was held out.
    """

    parent: str | None = None
    date: str | None = None
    steps_run: int | None = None
    steps: int | None = None
    seed: int | None = None
    samples: int | None = None
    corrected_pixels: int | None = None
    seconds: float | None = None
    end: str | None = None
    metric: str | None = None
    base_score: float | None = None
    new_score: float | None = None
    n_items: int | None = None
    n_wrong: int | None = None
    unit: str | None = None
    verdict: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Provenance | None:
        """The last run of ``config``'s training history; None when it has none.

        Tolerates missing or malformed entries (older or hand-edited files).
        """
        history = (config.get("training") or {}).get("history") or []
        run = history[-1] if isinstance(history, list) and history else None
        if not isinstance(run, dict):
            return None
        settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
        comparison = run.get("comparison") if isinstance(run.get("comparison"), dict) else {}
        samples = run.get("samples")
        return cls(
            parent=_text(run.get("parent")) or _text(config.get("parent")),
            date=_text(run.get("date")),
            steps_run=_integer(run.get("steps_run")),
            steps=_integer(settings.get("steps")),
            seed=_integer(settings.get("seed")),
            samples=len(samples) if isinstance(samples, list) else _integer(samples),
            corrected_pixels=_integer(run.get("corrected_pixels")),
            seconds=_number(run.get("seconds")),
            end=_text(run.get("end")),
            metric=_text(comparison.get("metric")),
            base_score=_number(comparison.get("base_score")),
            new_score=_number(comparison.get("new_score")),
            n_items=_integer(comparison.get("n_items")),
            n_wrong=_integer(comparison.get("n_wrong")),
            unit=_text(comparison.get("unit")),
            verdict=_text(comparison.get("verdict")),
        )

    @property
    def day(self) -> str:
        """The date without the time (``"2025-01-31"``), or ``""``."""
        return (self.date or "")[:10]

    @property
    def scored(self) -> bool:
        """Whether the scores mean something: both recorded, on at least one held-out item
        (with none, both versions score 1.00 for finding nothing)."""
        return self.base_score is not None and self.new_score is not None and self.n_items != 0

    def result(self) -> str:
        """The comparison in a few characters, e.g. ``"better 0.62→0.71"``."""
        if self.verdict is None:
            return "not compared"
        if not self.scored:
            return self.verdict
        return f"{self.verdict} {self.base_score:.2f}→{self.new_score:.2f}"

    def lines(self) -> list[str]:
        """Every recorded fact, one per line, for a tooltip."""
        lines = [f"from {self.parent or 'unknown'}, {self.date or 'date unknown'}"]
        steps = "?" if self.steps_run is None else str(self.steps_run)
        if self.steps is not None:
            steps += f" of {self.steps}"
        took = "" if self.seconds is None else f" in {self.seconds:.0f} s"
        lines.append(f"{steps} steps{took}, seed {'?' if self.seed is None else self.seed}")
        if self.end:
            lines.append(f"ended: {self.end}")
        pixels = "?" if self.corrected_pixels is None else f"{self.corrected_pixels:,}"
        lines.append(
            f"{'?' if self.samples is None else self.samples} corrected plane(s), "
            f"{pixels} corrected pixels"
        )
        if self.verdict is None:
            lines.append("not compared with its parent (nothing held out)")
        else:
            scores = (
                f": {self.metric or 'score'} {self.base_score:.3f} → {self.new_score:.3f}"
                if self.scored
                else ""
            )
            unit = (self.unit or "items").removesuffix("s")
            held = (
                ""
                if self.n_items is None
                else f" on {counted(self.n_items, f'held-out {unit}')}"
                + ("" if self.n_wrong is None else f" ({self.n_wrong} the parent got wrong)")
            )
            lines.append(f"{self.verdict}{scores}{held}")
        return lines


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
