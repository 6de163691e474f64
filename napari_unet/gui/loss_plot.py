"""A live loss / validation curve drawn with QPainter, repainted at most ten times a second.

Matplotlib took 44 ms (median) per redraw of this curve on the main thread, which showed as
stalls of the viewer during fine-tuning; a QPainter polyline takes well under a millisecond.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

REDRAW_MS = 100
LOSS_COLOR = QColor(31, 119, 180)
VALIDATION_COLOR = QColor(255, 127, 14)
_MARGIN = 6
_TEXT_HEIGHT = 16


class LossPlot(QWidget):
    """Training loss (blue, 0 to its maximum) and held-out score (orange dots, 0 to 1) by step.

    The first held-out score is the base model's (step 0); the others are the network's as
    it trains, scored as the final comparison scores it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_scores: list[float] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self.setMinimumHeight(140)

    def clear(self) -> None:
        """Forget every point (a new run starts)."""
        self.steps.clear()
        self.losses.clear()
        self.val_steps.clear()
        self.val_scores.clear()
        self.redraw()

    def add(self, step: int, loss: float, val_score: float | None) -> None:
        """Record one step; the repaint is scheduled, not immediate."""
        self.steps.append(step)
        self.losses.append(loss)
        if val_score is not None:
            self.add_validation(step, val_score)
        self._schedule_redraw()

    def add_validation(self, step: int, score: float) -> None:
        """Record a validation score (step 0: the model before training)."""
        self.val_steps.append(step)
        self.val_scores.append(score)
        self._schedule_redraw()

    def _schedule_redraw(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        """Ask Qt to repaint (coalesced with other pending repaints)."""
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text_color = self.palette().color(self.foregroundRole())
        area = QRectF(self.rect()).adjusted(
            _MARGIN, _MARGIN + _TEXT_HEIGHT, -_MARGIN, -_MARGIN - _TEXT_HEIGHT
        )
        painter.setPen(QPen(text_color, 1))
        painter.drawRect(area)
        last_step = max(self.steps[-1] if self.steps else 1, 1)
        finite = [(s, v) for s, v in zip(self.steps, self.losses, strict=True) if math.isfinite(v)]
        top_loss = max((v for _, v in finite), default=1.0) or 1.0
        self._draw_series(painter, area, finite, last_step, top_loss, LOSS_COLOR, dots=False)
        validations = list(zip(self.val_steps, self.val_scores, strict=True))
        self._draw_series(painter, area, validations, last_step, 1.0, VALIDATION_COLOR, dots=True)
        self._draw_captions(painter, area, text_color, last_step)
        painter.end()

    @staticmethod
    def _draw_series(
        painter: QPainter,
        area: QRectF,
        points: list[tuple[int, float]],
        last_step: int,
        top: float,
        color: QColor,
        *,
        dots: bool,
    ) -> None:
        if not points:
            return
        polygon = QPolygonF(
            [
                QPointF(
                    area.left() + area.width() * step / last_step,
                    area.bottom() - area.height() * min(max(value / top, 0.0), 1.0),
                )
                for step, value in points
            ]
        )
        painter.setPen(QPen(color, 1.5))
        painter.drawPolyline(polygon)
        if dots:
            painter.setBrush(color)
            for point in polygon:
                painter.drawEllipse(point, 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_captions(
        self, painter: QPainter, area: QRectF, text_color: QColor, last_step: int
    ) -> None:
        top = QRectF(area.left(), 0, area.width(), _TEXT_HEIGHT + _MARGIN)
        bottom = QRectF(area.left(), area.bottom(), area.width(), _TEXT_HEIGHT + _MARGIN)
        if self.losses:
            painter.setPen(LOSS_COLOR)
            painter.drawText(top, Qt.AlignmentFlag.AlignLeft, f"loss {self.losses[-1]:.4g}")
        if self.val_scores:
            painter.setPen(VALIDATION_COLOR)
            painter.drawText(
                top,
                Qt.AlignmentFlag.AlignRight,
                f"held-out score {self.val_scores[-1]:.2f} (base {self.val_scores[0]:.2f})",
            )
        painter.setPen(text_color)
        painter.drawText(bottom, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom, "0")
        painter.drawText(
            bottom,
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom,
            f"step {last_step}",
        )
