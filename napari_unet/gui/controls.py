"""Small factories for the panels' controls, compact so the dock leaves room for the data."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLayout,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
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


def combo(*items: str) -> QComboBox:
    """A drop-down whose long entries (model paths, device names) do not widen the dock."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(8)
    box.addItems(list(items))
    return box


def text_line(text: str = "") -> QLabel:
    """A label for hints and status text, wrapped to the dock's width."""
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def panel_layout(panel: QWidget) -> QVBoxLayout:
    """The layout to fill ``panel`` with: in a frameless area that scrolls vertically when the
    dock is short, with narrow margins (the dock is one narrow column).

    The area is inside the panel (a tab page) so that wrapped text gets the height it needs
    at the dock's width: a scroll area gives its content that height, a tab widget does not.
    """
    content = QWidget()
    layout = QVBoxLayout(content)
    layout.setContentsMargins(4, 4, 4, 4)
    area = QScrollArea()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return layout


def pin_below(panel: QWidget, *items: QWidget | QLayout) -> None:
    """Put ``items`` under the scrolling area of ``panel`` (see :func:`panel_layout`), where
    they stay on screen however short the dock is (a panel's main buttons)."""
    footer = QVBoxLayout()
    footer.setContentsMargins(4, 2, 4, 4)
    for item in items:
        if isinstance(item, QLayout):
            footer.addLayout(item)
        else:
            footer.addWidget(item)
    panel.layout().addLayout(footer)


def form(rows: list[tuple[str, QWidget]], parent: QWidget | None = None) -> QFormLayout:
    """A form layout of (label, control) rows; an empty label leaves the label column blank.

    Rows whose label and control do not fit side by side put the control below the label.
    """
    layout = QFormLayout(parent) if parent is not None else QFormLayout()
    layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    for label, control in rows:
        layout.addRow(label, control)
    return layout


def collapsible(title: str, content: QWidget) -> QCollapsible:
    """A folded section holding one widget."""
    section = QCollapsible(title)
    section.addWidget(content)
    return section


def collapsible_form(title: str, rows: list[tuple[str, QWidget]]) -> QCollapsible:
    """A collapsed section holding a form of (label, control) rows."""
    content = QWidget()
    form(rows, content).setContentsMargins(0, 0, 0, 0)
    return collapsible(title, content)


def button_row(*buttons: QWidget) -> QHBoxLayout:
    """Buttons side by side."""
    row = QHBoxLayout()
    for button in buttons:
        row.addWidget(button)
    return row
