"""Take the user guide's screenshots from a real napari window.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

(PyQt6: napari shows a deprecation notice over the canvas under PyQt5.) The window is 1280 x 800,
napari's smallest common size, where the dock shares napari's left column.

Writes docs/images/segment.png, correct_next.png, correct.png, finetune.png and changes.png. Uses temporary folders for
models and training sets so your own are untouched.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
scratch = Path(tempfile.mkdtemp(prefix="napari-unet-shots-"))
os.environ["NAPARI_UNET_MODELS_DIR"] = str(scratch / "models")
os.environ["NAPARI_UNET_TRAINING_DIR"] = str(scratch / "training")
os.environ["NAPARI_UNET_SETTINGS"] = str(scratch / "settings.ini")


def wait(app, condition, timeout=600.0):
    end = time.time() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() > end:
            raise TimeoutError("napari-unet job did not finish")


def settle(app, seconds=1.0):
    """Let napari and the dock draw (and the correction tracker read a paint)."""
    end = time.time() + seconds
    wait(app, lambda: time.time() > end)


def show_in_dock(child):
    """Scroll the dock's panel so that ``child`` is in sight."""
    from qtpy.QtWidgets import QScrollArea

    area = child.parentWidget()
    while not isinstance(area, QScrollArea):
        area = area.parentWidget()
    area.ensureWidgetVisible(child)


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet.gui.demo import open_demo
    from napari_unet.gui.view import viewer_camera

    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1280, 800)
    app = QApplication.instance()
    widget = open_demo(viewer, run=False)
    widget.segment.run()
    wait(app, lambda: not widget.segment.runner.running)
    settle(app)
    labels = viewer.layers["nuclei labels"]
    labels.opacity = 0.6
    viewer.screenshot(str(HERE / "images" / "segment.png"), canvas_only=False)

    # Correct next: the places the model is least sure of, the first one shown (key N)
    widget.correct_next_section.expand(animate=False)
    widget.correct_next.find()
    wait(app, lambda: not widget.correct_next.runner.running)
    widget.correct_next.next()
    show_in_dock(widget.correct_next.list)
    settle(app)
    viewer.screenshot(str(HERE / "images" / "correct_next.png"), canvas_only=False)
    viewer.layers.selection.active = labels

    # a correction with the layer's own paint API: paint one nucleus over
    labels.mode = "paint"
    labels.brush_size = 12
    labels.selected_label = int(labels.data.max()) + 1
    for column in range(300, 330, 4):
        labels.paint((250, column), labels.selected_label)
    camera = viewer_camera(viewer)
    camera.zoom = 2.5
    camera.center = (250, 315)
    widget.tabs.setCurrentWidget(widget.finetune)
    settle(app)
    widget.finetune.refresh_planes()
    viewer.screenshot(str(HERE / "images" / "correct.png"), canvas_only=False)

    labels.data = labels.data  # keep the layer as is, mark the plane fully checked for the demo
    widget.finetune.steps_spin.setValue(40)
    widget.finetune.start()
    wait(app, lambda: not widget.finetune.runner.running)
    camera.zoom = 1.0
    viewer.reset_view()
    settle(app)  # let the layout grow to the result text
    show_in_dock(widget.finetune.use_button)
    settle(app)
    viewer.screenshot(str(HERE / "images" / "finetune.png"), canvas_only=False)

    # see what changed: the new version's own output and the change map beside the corrections
    widget.finetune.resegment_button.click()
    wait(app, lambda: any("changes (" in layer.name for layer in viewer.layers))
    wait(app, lambda: not widget.segment.runner.running)
    for layer in viewer.layers:
        layer.visible = layer.name == "nuclei" or "changes (" in layer.name
    settle(app)
    viewer.screenshot(str(HERE / "images" / "changes.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
