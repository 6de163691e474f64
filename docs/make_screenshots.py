"""Take the user guide's screenshots from a real napari window.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [big]

(PyQt6: napari shows a deprecation notice over the canvas under PyQt5.) The window is 1280 x 800,
napari's smallest common size, where the dock shares napari's left column.

Writes docs/images/segment.png (the sample image as it is), then correct_next.png, correct.png,
finetune.png and changes.png (the sample out of focus, where the model makes more mistakes to
correct), then big_image.png (only that one with ``big``). Uses temporary folders for models
and training sets so your own are untouched.
"""

from __future__ import annotations

import os
import sys
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


N_FIXES = 8  # places of the Correct next list the script corrects
BLUR_SIGMA = 3.0  # the out-of-focus copy of the sample the loop is shown on


def fix(labels, item) -> bool:
    """Correct one listed object the way its reason suggests; whether anything changed.

    A merged object is cut in two where the distance to its edge has two peaks (a user erases
    across the neck and fills one half with a new label); a split one is joined with the
    neighbour it touches most; a false one is erased. Outlines are left alone.
    """
    import numpy as np
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    from napari_unet.core.review import FALSE, MERGED, PINCHED, SPLIT

    data = np.asarray(labels.data)
    mask = data == item.label
    if item.reason == FALSE:
        labels.data_setitem(np.nonzero(mask), 0)
        return True
    if item.reason in (MERGED, PINCHED):
        distance = ndi.distance_transform_edt(mask)
        peaks = peak_local_max(distance, min_distance=5, num_peaks=2, labels=mask.astype(int))
        if len(peaks) < 2:
            return False
        markers = np.zeros(mask.shape, int)
        markers[tuple(peaks.T)] = (1, 2)
        halves = watershed(-distance, markers, mask=mask)
        labels.data_setitem(np.nonzero(halves == 2), int(data.max()) + 1)
        return True
    if item.reason == SPLIT:
        ring = ndi.binary_dilation(mask, iterations=2) & ~mask
        neighbours, counts = np.unique(data[ring], return_counts=True)
        counts, neighbours = counts[neighbours > 0], neighbours[neighbours > 0]
        if not len(neighbours):
            return False
        labels.data_setitem(np.nonzero(data == neighbours[np.argmax(counts)]), item.label)
        return True
    return False


def main() -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage as ndi

    from napari_unet.gui.demo import open_demo

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

    # the loop on a harder image: the sample out of focus (a Gaussian blur of BLUR_SIGMA px, as
    # finetune_gain.py's "blurred"), where the model merges and misses more
    image = viewer.layers["nuclei"]
    image.data = ndi.gaussian_filter(image.data.astype(np.float32), BLUR_SIGMA)
    viewer.layers.remove(labels)
    widget.segment.run()
    wait(app, lambda: not widget.segment.runner.running)
    settle(app)
    labels = viewer.layers["nuclei labels"]
    labels.opacity = 0.6

    # Correct next: the places the model is least sure of, the first one shown (key N)
    widget.correct_next_section.expand(animate=False)
    widget.correct_next.find()
    wait(app, lambda: not widget.correct_next.runner.running)
    widget.correct_next.next()
    show_in_dock(widget.correct_next.list)
    settle(app)
    viewer.screenshot(str(HERE / "images" / "correct_next.png"), canvas_only=False)
    viewer.layers.selection.active = labels

    # correct the first places on the list as a user would, with the calls the brush and the
    # eraser make (Labels.data_setitem): split what looks merged, join what looks split,
    # erase what looks false
    fixed = [fix(labels, item) for item in widget.correct_next.items[:N_FIXES]]
    if not any(fixed):
        raise RuntimeError("none of the first places on the Correct next list could be fixed")
    widget.correct_next.go_to(max(i for i, done in enumerate(fixed) if done))
    widget.tabs.setCurrentWidget(widget.finetune)
    settle(app)
    widget.finetune.refresh_planes()
    viewer.screenshot(str(HERE / "images" / "correct.png"), canvas_only=False)

    labels.data = labels.data  # keep the layer as is, mark the plane fully checked for the demo
    widget.finetune.steps_spin.setValue(40)
    widget.finetune.start()
    wait(app, lambda: not widget.finetune.runner.running)
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


def big_image() -> None:
    """An OME-Zarr segmented block by block, taken while the blocks arrive. The image is the
    nuclei sample tiled 4 x 4 (2080 x 2784 pixels, two resolution levels); it stands in for a
    large one (the size above which images go through blocks is lowered for it)."""
    import napari
    import numpy as np
    import zarr
    from ome_zarr.writer import write_multiscale
    from qtpy.QtWidgets import QApplication

    from napari_unet.core.io import read_image
    from napari_unet.gui import block_segment
    from napari_unet.gui.main_widget import UnetWidget

    nuclei = read_image(HERE.parent / "sample_data" / "nuclei_2d.tif").data
    image = np.tile(nuclei, (4, 4))
    path = scratch / "slide.ome.zarr"
    write_multiscale([image, image[::2, ::2]], zarr.open_group(str(path), mode="w"), axes="yx")
    block_segment.BLOCKS_ABOVE = 0  # the stand-in image counts as large
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1280, 800)
    app = QApplication.instance()
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="napari-unet", area="left")
    panel = widget.segment
    panel.select_model("nuclei")
    panel.tile_spin.setValue(256)
    panel.blocks.controls.block_spin.setValue(512)
    panel.blocks.controls.section.expand(animate=False)
    panel.image_combo.setCurrentText(layer.name)
    panel.run()
    wait(app, lambda: panel.progress_bar.value() >= 12)  # of 30 blocks
    viewer.layers[f"{layer.name} labels"].opacity = 0.6
    show_in_dock(panel.blocks.controls.folder_edit)
    settle(app)
    viewer.screenshot(str(HERE / "images" / "big_image.png"), canvas_only=False)
    panel.cancel()
    wait(app, lambda: not panel.runner.running)
    widget.close_workers()
    viewer.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["big"]:
        main()
    big_image()
