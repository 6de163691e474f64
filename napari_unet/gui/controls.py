"""Small factories for the panels' input controls."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible


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


def form(rows: list[tuple[str, QWidget]], parent: QWidget | None = None) -> QFormLayout:
    """A form layout of (label, control) rows; an empty label leaves the label column blank."""
    layout = QFormLayout(parent) if parent is not None else QFormLayout()
    for label, control in rows:
        layout.addRow(label, control)
    return layout


def collapsible(title: str, content: QWidget) -> QCollapsible:
    """A collapsed section holding one widget."""
    section = QCollapsible(title)
    section.addWidget(content)
    return section


def collapsible_form(title: str, rows: list[tuple[str, QWidget]]) -> QCollapsible:
    """A collapsed section holding a form of (label, control) rows."""
    content = QWidget()
    form(rows, content)
    return collapsible(title, content)


def button_row(*buttons: QWidget) -> QHBoxLayout:
    """Buttons side by side."""
    row = QHBoxLayout()
    for button in buttons:
        row.addWidget(button)
    return row
