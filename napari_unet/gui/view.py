"""Room for the data: where the plugin's dock sits, and keeping the image fitted in the view.

napari's left column (layer controls above the layer list) is at least 337 px wide; a second
column for the plugin on the right would leave the canvas under 60% of a 1280 px window. The
plugin's dock therefore joins the left column as a tab beside the layer list
(:func:`dock_beside_layer_list`). napari keeps the camera's zoom when the canvas changes size,
so opening the dock would crop an image fitted before: :class:`ViewFitter` fits the view again
then, and when a result arrives, as long as the user has not moved the camera since.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

LAYER_LIST = "layer list"  # objectNames of napari's docks
LAYER_CONTROLS = "layer controls"
CONTROLS_HEIGHT = 360  # px: a Labels layer's controls (brush, label, modes) fit


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def dock_beside_layer_list(widget: QWidget) -> bool:
    """Move the dock holding ``widget`` into napari's left column, as a tab beside the layer
    list, shown, and keep that column at its narrowest.

    Returns False (and moves nothing) when ``widget`` is not in a dock of a window with
    napari's layer list.
    """
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow):
        return False
    layer_list = window.findChild(QDockWidget, LAYER_LIST)
    if layer_list is None or layer_list is dock:
        return False
    window.tabifyDockWidget(layer_list, dock)
    dock.show()
    dock.raise_()
    column = max(layer_list.minimumSizeHint().width(), dock.minimumSizeHint().width())
    window.resizeDocks([dock], [column], Qt.Orientation.Horizontal)
    controls = window.findChild(QDockWidget, LAYER_CONTROLS)
    if controls is not None:  # the rest of the column's height goes to the plugin
        window.resizeDocks([controls], [CONTROLS_HEIGHT], Qt.Orientation.Vertical)
    return True


class ViewFitter:
    """Fits the view to the layers (``viewer.reset_view()``) when the canvas changes size (the
    dock opened or closed, the window was resized) and when :meth:`fit` is called (a result
    arrived), unless the user has moved the camera since the last fit.

    The last fit is whatever fit the view last, napari included (it fits the first layer, and
    its Home button fits): the camera as it was then is remembered, and a camera that differs
    from it (panned, zoomed, rotated, or moved to an object by Correct next) is left alone.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self._fitted: tuple[float, ...] | None = None
        viewer.events.reset_view.connect(self._remember)
        viewer.canvas.events.size.connect(self.fit)

    def _camera(self) -> tuple[float, ...]:
        camera = viewer_camera(self.viewer)
        return (*camera.center, camera.zoom, *camera.angles)

    def _remember(self, *_: Any) -> None:
        self._fitted = self._camera()

    @property
    def moved(self) -> bool:
        """Whether the camera was moved since the last fit (False before any fit)."""
        if self._fitted is None:
            return False
        now = self._camera()
        return len(now) != len(self._fitted) or not np.allclose(now, self._fitted)

    def fit(self, *_: Any) -> None:
        """Fit the view to the layers, unless the user moved the camera since the last fit."""
        if not self.moved:
            self.viewer.reset_view()

    def disconnect(self) -> None:
        """Stop following the viewer (the widget is closing)."""
        self.viewer.events.reset_view.disconnect(self._remember)
        self.viewer.canvas.events.size.disconnect(self.fit)
