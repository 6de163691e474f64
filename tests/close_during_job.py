"""Run by tests/test_gui.py: start a job in napari, then close napari while it runs.

argv: ``segment`` or ``finetune``. Prints ``closing <job running>`` when it closes the viewer
and ``exited`` after napari's event loop has returned.
"""

from __future__ import annotations

import faulthandler
import sys

import napari
import numpy as np
from qtpy.QtCore import QTimer

from napari_unet.gui.main_widget import UnetWidget
from tests.synthetic import disks


def main(job: str) -> None:
    # a hang is reported with every thread's stack (stderr) before the parent's timeout
    faulthandler.dump_traceback_later(90, exit=True)
    viewer = napari.Viewer()
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget)
    segment, finetune = widget.segment, widget.finetune
    segment.device_combo.setCurrentIndex(segment.device_combo.findData("cpu"))
    segment.refresh_models(select="tiny")
    if job == "segment":
        viewer.add_image(np.random.default_rng(0).random((40, 1024, 1024)), name="big")
        segment.axes_edit.setText("ZYX")
        segment.tile_spin.setValue(128)
        segment.run()
        panel = segment
    else:
        viewer.add_image(np.stack([disks((128, 128), seed=i)[0] for i in range(2)]), name="s")
        segment.axes_edit.setText("ZYX")
        segment.tile_spin.setValue(128)
        segment.run()
        while segment.runner.running:
            napari.qt.get_qapp().processEvents()
        labels = viewer.layers["s labels"]
        labels.paint((0, 60, 60), 8)  # paint label 8 in plane 0: a correction
        finetune.steps_spin.setValue(100_000)
        finetune.patch_spin.setValue(64)
        finetune.start()
        panel = finetune

    def close() -> None:
        print("closing", panel.runner.running, flush=True)
        viewer.close()

    QTimer.singleShot(2500, close)
    napari.run()
    print("exited", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
