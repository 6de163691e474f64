"""The Fine-tune panel's Export button: a dialog's answers, a worker, a notification."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_unet.core.bundle import save_bundle
from napari_unet.core.io import Stack
from napari_unet.gui.export_dialog import ExportChoice, ExportDialog
from tests.conftest import tiny_bundle

pytestmark = pytest.mark.gui


def _version(models_dir):
    bundle = tiny_bundle()
    bundle.config["parent"] = "tiny"
    bundle.config["training"] = {"history": [{"parent": "tiny", "steps_run": 3, "end": "done"}]}
    return save_bundle(bundle, models_dir / "tiny-ft1.safetensors")


def _notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    return seen


def test_export_button_writes_a_package_in_a_worker(qtbot, docked, plugin_dirs, tmp_path):
    _version(plugin_dirs)
    viewer, widget = docked
    finetune, versions = widget.finetune, widget.finetune.versions
    finetune.refresh_models(select="tiny")
    qtbot.waitUntil(lambda: versions.tree.topLevelItemCount() == 1, timeout=5_000)
    assert not versions.export_button.isEnabled()  # nothing selected yet
    seen = _notifications()
    asked = []
    answers = iter(
        [
            None,  # cancelled: nothing happens
            ExportChoice(tmp_path / "bad.zip", ["Ada Lovelace"], "not a licence", False),
            ExportChoice(tmp_path / "tiny-ft1.zip", ["Ada Lovelace"], "CC-BY-4.0", True),
        ]
    )
    versions.ask = lambda name, image_name: asked.append((name, image_name)) or next(answers)
    pixels = np.random.default_rng(0).integers(0, 255, (300, 320), dtype=np.uint8)
    versions.image = lambda: ("my cells", Stack(pixels, "YX"))
    versions.select("tiny-ft1")
    assert versions.export_button.isEnabled()

    versions.export_button.click()
    assert not versions.runner.running and asked == [("tiny-ft1", "my cells")]
    versions.export_button.click()
    qtbot.waitUntil(lambda: not versions.runner.running, timeout=60_000)
    qtbot.waitUntil(lambda: any("Could not export tiny-ft1" in m for m in seen), timeout=5_000)
    assert not list(tmp_path.glob("*.zip"))

    versions.export_button.click()
    assert not versions.export_button.isEnabled()  # one export at a time
    qtbot.waitUntil(lambda: not versions.runner.running, timeout=120_000)
    package = tmp_path / "tiny-ft1.zip"
    qtbot.waitUntil(lambda: any(str(package) in m for m in seen), timeout=5_000)
    assert versions.export_button.isEnabled()
    with zipfile.ZipFile(package) as archive:
        description = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    assert description["parent"] == {"id": "napari-unet/tiny"}
    assert description["authors"] == [{"name": "Ada Lovelace"}]
    assert "user's image my cells" in readme


def test_export_dialog_needs_authors_and_offers_the_image_only_when_there_is_one(qtbot):
    from qtpy.QtWidgets import QDialogButtonBox

    dialog = ExportDialog("nuclei-ft1", "cells", None)
    qtbot.addWidget(dialog)
    ok = dialog.buttons.button(QDialogButtonBox.Ok)
    assert not ok.isEnabled() and dialog.offers_image
    dialog.authors_edit.setText("Ada Lovelace, Alan Turing ")
    dialog.licence_combo.setCurrentText("CC-BY-NC-4.0")
    dialog.share_check.setChecked(True)
    choice = dialog.choice()
    assert ok.isEnabled() and choice.authors == ["Ada Lovelace", "Alan Turing"]
    assert choice.license_id == "CC-BY-NC-4.0" and choice.share_image
    assert choice.output.name == "nuclei-ft1.zip"
    without = ExportDialog("nuclei-ft1", None, None)
    qtbot.addWidget(without)
    without.share_check.setChecked(True)
    assert not without.offers_image and not without.choice().share_image


def test_segment_panel_runs_a_package_chosen_as_model(qtbot, dock, tmp_path):
    from napari_unet.core.bioimageio_export import export_package
    from napari_unet.core.io import read_image
    from napari_unet.core.registry import load_bundle

    package = export_package(
        load_bundle("em-membranes"), tmp_path / "em.zip", authors=["A"], license_id="CC-BY-NC-4.0"
    )
    viewer, widget = dock
    sections = read_image(Path(__file__).resolve().parents[1] / "sample_data" / "em_sections.tif")
    viewer.add_image(np.asarray(sections.data[0, :192, :192]), name="section")
    results = []
    for model in ("em-membranes", str(package)):
        widget.segment.select_model(model)
        assert widget.segment.model == model
        widget.segment.image_combo.setCurrentText("section")
        assert widget.segment.run(new_layer=True) is not None
        qtbot.waitUntil(lambda: not widget.segment.runner.running, timeout=60_000)
        results.append(np.array(viewer.layers[-1].data))
    assert len(np.unique(results[0])) == 2 and np.array_equal(results[0], results[1])
