"""A live loss / validation curve, redrawn at most ten times a second."""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

REDRAW_MS = 100


class LossPlot(QWidget):
    """Matplotlib canvas with training loss (left axis) and validation score (right axis)."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.loss_axis = self.figure.add_subplot(111)
        self.val_axis = self.loss_axis.twinx()
        self.loss_axis.set_xlabel("step")
        self.loss_axis.set_ylabel("loss", color="tab:blue")
        self.val_axis.set_ylabel("validation", color="tab:orange")
        (self.loss_line,) = self.loss_axis.plot([], [], color="tab:blue", linewidth=1)
        (self.val_line,) = self.val_axis.plot([], [], "o-", color="tab:orange", markersize=3)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_scores: list[float] = []
        self.draws = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(180)

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.val_steps.clear()
        self.val_scores.clear()
        self.redraw()

    def add(self, step: int, loss: float, val_score: float | None) -> None:
        """Record one step; the redraw is scheduled, not immediate."""
        self.steps.append(step)
        self.losses.append(loss)
        if val_score is not None:
            self.val_steps.append(step)
            self.val_scores.append(val_score)
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        self.loss_line.set_data(self.steps, self.losses)
        self.val_line.set_data(self.val_steps, self.val_scores)
        for axis in (self.loss_axis, self.val_axis):
            axis.relim()
            axis.autoscale_view()
        self.canvas.draw_idle()
        self.draws += 1
