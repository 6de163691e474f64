"""Take docs/export.md's screenshots: the Versions list with its Export button, and the dialog.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_export_screenshots.py

Writes docs/images/export_button.png and export_dialog.png. A copy of the bundled nuclei model
stands in for a fine-tuned version, in a temporary model folder (yours is untouched).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
scratch = Path(tempfile.mkdtemp(prefix="napari-unet-export-shots-"))
os.environ["NAPARI_UNET_MODELS_DIR"] = str(scratch / "models")
os.environ["NAPARI_UNET_TRAINING_DIR"] = str(scratch / "training")
os.environ["NAPARI_UNET_SETTINGS"] = str(scratch / "settings.ini")


def settle(app, seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication
    from superqt import QCollapsible

    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.registry import load_bundle
    from napari_unet.gui.export_dialog import ExportDialog
    from napari_unet.gui.main_widget import UnetWidget

    version = load_bundle("nuclei")
    version.config["parent"] = "nuclei"
    version.config["training"]["history"].append(
        {
            "date": "2026-12-01T09:30:00+00:00",
            "parent": "nuclei",
            "settings": {"steps": 100, "seed": 0},
            "samples": 3,
            "steps_run": 100,
            "seconds": 95.0,
            "end": "finished",
            "comparison": {
                "metric": "AP@0.5",
                "base_score": 0.62,
                "new_score": 0.71,
                "n_items": 40,
                "unit": "objects",
                "verdict": "better",
            },
        }
    )
    save_bundle(version, scratch / "models" / "nuclei-ft1.safetensors")

    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="napari-unet")
    widget.tabs.setCurrentWidget(widget.finetune)
    (versions,) = [
        section
        for section in widget.finetune.findChildren(QCollapsible)
        if section.text() == "Versions"
    ]
    versions.expand(animate=False)
    widget.finetune.refresh_models(select="nuclei")
    settle(app)
    widget.finetune.versions.select("nuclei-ft1")
    settle(app)
    versions.grab().save(str(HERE / "images" / "export_button.png"))  # the tab page scrolls

    dialog = ExportDialog("nuclei-ft1", "hela_t0", widget)
    dialog.authors_edit.setText("Ada Lovelace")
    dialog.output_edit.setText("/home/ada/nuclei-ft1.zip")
    dialog.show()
    settle(app)
    dialog.grab().save(str(HERE / "images" / "export_dialog.png"))
    dialog.close()
    viewer.close()


if __name__ == "__main__":
    main()
