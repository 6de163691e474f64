"""The Correct next list, used as a person uses it through the docked widget."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


def _press(viewer, key):
    """A key press in the viewer's canvas, through napari's key map handler."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)
    viewer.window._qt_viewer._key_map_handler.release_key(key)


def test_segment_find_uncertain_objects_and_step_through_them(qtbot, docked):
    from napari_unet.core.options import PredictOptions
    from napari_unet.core.review import MISSED
    from napari_unet.gui.correct_next import NEXT_KEY
    from napari_unet.gui.sample_data import nuclei_2d
    from napari_unet.gui.view import viewer_camera

    viewer, widget = docked
    for data, kwargs, _ in nuclei_2d():
        viewer.add_image(data, **kwargs)
    segment, panel = widget.segment, widget.correct_next
    segment.refresh_models(select="nuclei")
    segment.tile_spin.setValue(PredictOptions().tile_size)
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=120_000)
    labels = viewer.layers["nuclei labels"]
    assert panel.find_button.isEnabled() and not panel.list.isVisible()

    panel.find_button.click()
    assert panel.stop_button.isEnabled() and not panel.find_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
    assert panel.list.count() == len(panel.items) >= 1
    scores = [item.score for item in panel.items]
    assert scores == sorted(scores, reverse=True)
    top = panel.items[0]  # an object, or a place where flipped views see one (label 0)
    assert (
        panel.list.item(0)
        .text()
        .startswith(f"1. object {top.label}: " if top.label else "1. no object: ")
    )

    viewer.layers.selection.active = viewer.layers["nuclei"]
    labels.selected_label = 1000
    camera = viewer_camera(viewer)
    before = camera.center, camera.zoom
    _press(viewer, NEXT_KEY)

    first = panel.items[0]
    assert panel.list.currentRow() == 0
    expected = first.label if first.reason != MISSED else int(labels.data.max()) + 1
    assert labels.selected_label == expected
    if first.label:
        assert labels.data[tuple(np.round(first.centroid).astype(int))] == first.label
    np.testing.assert_allclose(camera.center[-2:], labels.data_to_world(first.centroid))
    assert camera.zoom > before[1]  # zoomed in on a nucleus from the whole image
    assert viewer.layers.selection.active is labels


def test_stop_shows_what_was_found_so_far_and_keys_come_back(qtbot, docked):
    from napari_unet.gui.correct_next import NEXT_KEY
    from tests.synthetic import disks

    viewer, widget = docked
    viewer.add_image(disks((96, 96), seed=1)[0], name="cells")
    segment, panel = widget.segment, widget.correct_next
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=60_000)
    assert panel.find() is not None
    panel.stop_button.click()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=60_000)
    assert "stopped early" in panel.status.text()
    assert panel.find_button.isEnabled() and not panel.stop_button.isEnabled()

    assert NEXT_KEY.upper() in {str(key) for key in viewer.keymap}
    widget.close_workers()
    assert NEXT_KEY.upper() not in {str(key) for key in viewer.keymap}
