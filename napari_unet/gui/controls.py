"""Small factories for the panels' input controls."""

from __future__ import annotations

from qtpy.QtWidgets import QDoubleSpinBox, QSpinBox


def int_spin(low: int, high: int, step: int = 1, special: str = "") -> QSpinBox:
    """An integer spin box; ``special`` is shown instead of the lowest value."""
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    if special:
        box.setSpecialValueText(special)
    return box


def float_spin(
    low: float, high: float, step: float = 0.05, decimals: int = 2, special: str = ""
) -> QDoubleSpinBox:
    """A decimal spin box; ``special`` is shown instead of the lowest value."""
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(step)
    if special:
        box.setSpecialValueText(special)
    return box
