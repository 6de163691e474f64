"""Room for the data: the canvas's share of the window, measured from Qt geometry, and the view
fitted again when the dock opens or a result arrives, unless the user moved the camera."""

from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.gui

pytest.importorskip("napari")

MANIFEST = Path(__file__).resolve().parents[1] / "napari_unet" / "napari.yaml"


@pytest.fixture
def shown(make_napari_viewer, plugin_dirs, qtbot):
    """A shown napari window holding an image, with the widget docked from the Plugins menu."""
    from tests.conftest import small_settings

    (contribution,) = yaml.safe_load(MANIFEST.read_text())["contributions"]["widgets"]
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((300, 500)), name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", contribution["display_name"])
    small_settings(widget)
    qtbot.waitUntil(widget.isVisible, timeout=5_000)
    yield viewer, widget
    widget.close_workers()


def resize(qtbot, viewer, size):
    window = viewer.window._qt_window
    window.resize(*size)
    qtbot.waitUntil(lambda: (window.width(), window.height()) == size, timeout=5_000)
    qtbot.wait(200)  # docks and canvas laid out, the canvas's size passed on to the viewer


def camera_state(viewer):
    from napari_unet.gui.view import viewer_camera

    camera = viewer_camera(viewer)
    return (*camera.center, camera.zoom)


def fitted(viewer):
    """Whether the view is as reset_view() leaves it (checked by calling it)."""
    before = camera_state(viewer)
    viewer.reset_view()
    return np.allclose(before, camera_state(viewer))


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_the_canvas_keeps_sixty_percent_of_the_window_with_the_dock_open(qtbot, shown, size):
    from qtpy.QtWidgets import QScrollArea

    viewer, widget = shown
    resize(qtbot, viewer, size)
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.isVisible() and widget.isVisible()
    assert canvas.width() / window.width() >= 0.6, (canvas.width(), window.width())
    # the dock is usable: each panel is as wide as its controls need (nothing cut off), and
    # the Segment button is on screen without scrolling (it sits under the scrolling area)
    for panel in (widget.segment, widget.finetune):
        area = panel.findChild(QScrollArea)
        assert area.viewport().width() >= area.widget().minimumSizeHint().width()
    button = widget.segment.run_button
    assert button.isVisible() and not area.isAncestorOf(button)
    bottom = button.mapTo(window, button.rect().bottomLeft()).y()
    assert 0 < bottom <= window.height()


def test_the_view_is_fitted_again_unless_the_user_moved_the_camera(qtbot, shown):
    from napari_unet.gui.view import viewer_camera

    viewer, widget = shown
    resize(qtbot, viewer, (1280, 800))
    assert fitted(viewer)  # the dock opened and the window changed: the image fills the canvas
    resize(qtbot, viewer, (1920, 1080))
    assert fitted(viewer)
    camera = viewer_camera(viewer)
    camera.zoom = camera.zoom * 3  # the user zooms in
    moved = camera_state(viewer)
    resize(qtbot, viewer, (1280, 800))
    widget.segment.run()
    qtbot.waitUntil(lambda: not widget.segment.runner.running, timeout=60_000)
    assert "cells labels" in viewer.layers
    assert np.allclose(camera_state(viewer), moved)  # left where the user put it
    viewer.reset_view()  # napari's Home button: a fit, so following fits are wanted again
    resize(qtbot, viewer, (1920, 1080))
    assert fitted(viewer)
    # a larger layer, added without moving the camera: napari leaves the view as it is, and
    # the next result fits the view to everything
    viewer.add_image(np.zeros((300, 500)), name="wide", scale=(2, 2))
    unfitted = camera_state(viewer)
    widget.segment.image_combo.setCurrentText("cells")
    widget.segment.run()
    qtbot.waitUntil(lambda: not widget.segment.runner.running, timeout=60_000)
    assert not np.allclose(camera_state(viewer), unfitted) and fitted(viewer)
