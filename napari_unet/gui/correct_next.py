"""The "Correct next" list: the places of a segmentation the model is least sure of.

"Find uncertain objects" segments the current plane again, flipped three ways, in a worker
(:func:`napari_unet.core.review.iter_review`, with the model and settings of the
segmentation) and lists the objects whose flipped views disagree most, with what they saw.
Clicking an item, or pressing :data:`NEXT_KEY` in the viewer (:data:`PREVIOUS_KEY` goes
back), moves to its plane, centres and zooms the view on it, makes the Labels layer active and
selects the object's label (a new label for a likely miss), ready to paint.
"""

from __future__ import annotations

import dataclasses
import threading
from functools import partial
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.gui.controls import button_row, text_line
from napari_unet.gui.layers import layer_key, shown_plane
from napari_unet.gui.session import Session
from napari_unet.gui.view import viewer_camera
from napari_unet.gui.workers import Job, JobRunner, stage_step

# Not bound by napari's Labels layer (1-7, E P F L Z M X B - = [ ], Ctrl+Z) nor the viewer
NEXT_KEY = "n"
PREVIOUS_KEY = "Shift-n"
VIEW_SIDES = 4.0  # the view shows about this many times the object's size around it
MIN_VIEW_PIXELS = 24  # ... and never zooms in further than this many pixels across
LIST_ROWS = 6
TOOLTIP = (
    "Places where the model is least sure: it segments the current plane again flipped "
    "left-right, upside down and both; objects the flipped views see differently come first. "
    "Click one, or press N in the viewer for the next (Shift+N for the previous): the view "
    "centres on it and its label is selected for painting."
)


class CorrectNextPanel(QWidget):
    """Find uncertain objects in a worker; step through them with a click or a key.

    Parameters
    ----------
    viewer : napari.Viewer
    session : Session
        Which Labels layers the plugin wrote, from which image, model and settings.
    """

    def __init__(self, viewer: Any, session: Session) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = session
        self.items: list[Any] = []
        self._target: str | None = None  # layer_key of the labels to review
        self._reviewed: str | None = None  # layer_key of the labels the items belong to
        self._unbound: dict[str, Any] = {}

        self.find_button = QPushButton("Find uncertain objects")
        self.next_button = QPushButton(f"Next ({NEXT_KEY.upper()})")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.next_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status = text_line("Segment an image, then find the objects to check first.")
        self.runner = JobRunner(
            on_yield=self._on_progress,
            measure=stage_step,
            status=self.status.setText,
            on_end=lambda _end: self._set_running(False),
        )
        self.list = QListWidget()
        self.list.setMaximumHeight((self.list.fontMetrics().height() + 4) * LIST_ROWS + 8)
        self.list.setVisible(False)
        self.list.setWordWrap(True)  # the dock is narrow: an item's reason takes two lines
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for widget in (self, self.find_button, self.next_button, self.list):
            widget.setToolTip(TOOLTIP)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.find_button)
        layout.addLayout(button_row(self.next_button, self.stop_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.list)
        layout.addWidget(self.status)

        self.find_button.clicked.connect(self.find)
        self.next_button.clicked.connect(self.next)
        self.stop_button.clicked.connect(self.stop)
        self.list.itemClicked.connect(lambda item: self.go_to(self.list.row(item)))
        self.list.itemActivated.connect(lambda item: self.go_to(self.list.row(item)))
        self._bind_keys()

    # ----- keys ----------------------------------------------------------------------------
    def _bind_keys(self) -> None:
        for key, step in ((NEXT_KEY, 1), (PREVIOUS_KEY, -1)):

            def press(_viewer: Any, step: int = step) -> None:
                self.next(step=step)

            self._unbound[key] = self.viewer.bind_key(key, press, overwrite=True)

    def unbind_keys(self) -> None:
        """Give the keys back (to what they did before), when the widget closes."""
        for key, previous in self._unbound.items():
            try:
                self.viewer.bind_key(key, previous, overwrite=True)
            except (RuntimeError, ValueError):  # the viewer is already gone
                pass
        self._unbound.clear()

    # ----- finding -------------------------------------------------------------------------
    def set_target(self, layer: Any) -> None:
        """A segmentation arrived in ``layer``: the next search reviews it."""
        self._target = layer_key(layer)
        if not self.runner.running:
            self.status.setText(
                f"{layer.name}: find uncertain objects to see which to check first."
            )

    def target_layer(self) -> Any:
        """The Labels layer to review: the active one if the plugin wrote it, else the last
        segmented one."""
        active = self.viewer.layers.selection.active
        if active is not None and self.session.find(active) is not None:
            return active
        return self._layer(self._target)

    def _layer(self, key: str | None) -> Any:
        return next((lyr for lyr in self.viewer.layers if layer_key(lyr) == key), None)

    def find(self) -> Any:
        """Review the target layer's current plane in a worker; returns it (or None)."""
        from napari.utils.notifications import show_info, show_warning

        if self.runner.running:
            show_warning("Already looking for uncertain objects; stop it first.")
            return None
        layer = self.target_layer()
        segmentation = self.session.find(layer)
        if segmentation is None:
            show_info("Segment an image first: the list ranks the objects of a segmentation.")
            return None
        if segmentation.mode != "instances":
            show_info("Correct next ranks objects: it needs an instance segmentation.")
            return None
        axes = segmentation.labels_axes
        index = shown_plane(self.viewer, axes)
        if index is None or layer.data.ndim != len(axes):
            show_warning(f"Cannot tell which plane of '{layer.name}' is shown.")
            return None
        from napari_unet.core.preprocess import read_plane

        labels, _ = read_plane(layer.data, axes, index)
        labels = np.array(labels, copy=True)  # the user may paint meanwhile
        image, image_axes = segmentation.image_data, segmentation.image_axes
        options = segmentation.options
        model = segmentation.model

        def work(stop: threading.Event) -> Any:
            from napari_unet.core.registry import load_bundle
            from napari_unet.core.review import iter_review

            pixels, pixel_axes = read_plane(image, image_axes, index)
            found = yield from iter_review(
                pixels, labels, load_bundle(model), options, axes=pixel_axes, stop=stop
            )
            return [dataclasses.replace(item, plane=index) for item in found]

        self._reviewed = layer_key(layer)
        self._set_running(True)
        where = f" (plane {', '.join(map(str, index))})" if index else ""
        self.status.setText(f"Checking {layer.name}{where} with {model}, flipped 3 ways...")
        show = partial(self._show, name=layer.name)
        return self.runner.start(
            Job(work, f"checking {layer.name}", "Could not find uncertain objects", show)
        )

    def stop(self) -> None:
        """Stop early: the list shows what the finished flipped views found."""
        if self.runner.running:
            self.runner.stop()
            self.status.setText("Stopping...")

    def _set_running(self, running: bool) -> None:
        self.find_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.progress_bar.setVisible(running)
        if running:
            self.progress_bar.setValue(0)

    def _on_progress(self, progress: Any) -> None:
        self.progress_bar.setMaximum(max(progress.total, 1))
        self.progress_bar.setValue(progress.done)

    def _show(self, items: list[Any], name: str) -> None:
        self.items = list(items)
        self.list.clear()
        for number, item in enumerate(self.items, start=1):
            what = f"object {item.label}" if item.label else "no object"
            where = f"plane {', '.join(map(str, item.plane))}, " if item.plane else ""
            row = QListWidgetItem(f"{number}. {what}: {item.reason} ({where}{item.score:.2f})")
            row.setData(Qt.ItemDataRole.UserRole, number - 1)
            self.list.addItem(row)
        self.list.setVisible(bool(self.items))
        self.next_button.setEnabled(bool(self.items))
        stopped = " (stopped early)" if self.runner.stop_requested else ""
        if self.items:
            self.status.setText(
                f"{name}: {len(self.items)} place(s) to check first{stopped}. "
                f"Click one, or press {NEXT_KEY.upper()} in the viewer."
            )
        else:
            self.status.setText(
                f"{name}: the flipped views agree everywhere{stopped}; nothing stands out."
            )

    # ----- stepping through ----------------------------------------------------------------
    def next(self, *_: Any, step: int = 1) -> None:
        """Go to the next item (``step`` -1: the previous one), wrapping around."""
        if not self.items:
            return
        row = self.list.currentRow()
        self.go_to(0 if row < 0 and step > 0 else (row + step) % len(self.items))

    def go_to(self, row: int) -> None:
        """Show item ``row``: its plane, centred and zoomed, its label selected for painting."""
        from napari.utils.notifications import show_info

        if not 0 <= row < len(self.items):
            return
        layer = self._layer(self._reviewed)
        segmentation = self.session.find(layer)
        if segmentation is None:
            show_info("The layer these objects were found in is gone.")
            return
        item = self.items[row]
        self.list.setCurrentRow(row)
        axes = segmentation.labels_axes
        plane = iter(item.plane)
        point = [next(plane) if a not in "YX" else 0.0 for a in axes]
        point[axes.index("Y")], point[axes.index("X")] = item.centroid
        world = np.asarray(layer.data_to_world(point), dtype=float)
        offset = self.viewer.dims.ndim - len(world)
        for i, a in enumerate(axes):
            if a not in "YX":
                self.viewer.dims.set_point(offset + i, world[i])
        camera = viewer_camera(self.viewer)
        camera.center = tuple(world[[axes.index("Y"), axes.index("X")]])
        camera.zoom = self._zoom(layer, item, axes)
        self.viewer.layers.selection.active = layer
        layer.selected_label = item.label or int(np.max(layer.data)) + 1

    def _zoom(self, layer: Any, item: Any, axes: str) -> float:
        """Canvas pixels per world unit that show the object with its surroundings."""
        scale = np.asarray(layer.scale, dtype=float)
        y, x = scale[axes.index("Y")], scale[axes.index("X")]
        top, left, bottom, right = item.bbox
        side = max((bottom - top) * y, (right - left) * x, MIN_VIEW_PIXELS * min(y, x))
        return float(min(self.viewer.canvas.size)) / (VIEW_SIDES * side)
