"""The bad-input battery (tests/battery.py) through the CLI and through napari."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from napari_unet.cli import EXIT_USER
from tests.battery import CASES, Case, run_cli, simulated_conditions

PREDICT_CASES = [c for c in CASES if c.command == "predict"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli(case: Case, tmp_path, models_dir):
    from napari_unet.core.inference import predict
    from napari_unet.core.registry import load_bundle

    status, err, out, changed = run_cli(case, tmp_path)
    assert "Traceback" not in err
    assert not changed, f"user files changed: {changed}"
    if case.expect_error:
        assert status == EXIT_USER, err
        assert re.search(case.expect_error, err), err
        errors = [line for line in err.splitlines() if line.startswith("napari-unet")]
        assert len(errors) == 1 and "error:" in errors[0], err  # one line (beside progress)
        assert err.rstrip().splitlines()[-1] == errors[0]
        assert not list(out.glob("*.tif")) if out.exists() else True  # nothing written
        assert not (tmp_path / "trained.safetensors").exists()
    elif case.command == "predict":
        assert status == 0, err
        labels = tifffile.imread(next(out.glob("*.tif")))
        assert labels.shape == case.expect_shape
    else:
        assert status == 0, err
        trained = load_bundle(tmp_path / "trained.safetensors")
        image = tifffile.imread(tmp_path / "train_image.tif")
        axes = "ZYX" if image.ndim == 3 else "YX"
        assert predict(image, trained, axes=axes).labels.shape == image.shape


def _opened_or_error(viewer, path):
    try:
        return viewer.open(str(path), plugin="napari-unet"), None
    except Exception as error:  # napari wraps the reader's error; the message is kept
        return None, f"{error} {error.__cause__ or ''}"


@pytest.mark.gui
@pytest.mark.parametrize("case", PREDICT_CASES, ids=[c.name for c in PREDICT_CASES])
def test_gui(case: Case, tmp_path, qtbot, dock):
    """Open the file in napari with our reader and segment it with the widget."""
    from napari.utils.notifications import notification_manager

    viewer, widget = dock
    inputs = case.make(tmp_path)
    with simulated_conditions(case):
        layers, error = _opened_or_error(viewer, inputs["image"])
    if layers is None:
        assert case.expect_error and re.search(case.expect_error, error), error
        return
    # napari splits channels into layers, so a multichannel file becomes one layer per channel
    assert case.expect_shape or "channel" in case.expect_error
    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    layer = layers[0]
    widget.segment.image_combo.setCurrentText(layer.name)
    assert widget.segment.run() is not None, seen
    qtbot.waitUntil(lambda: widget.segment.worker is None, timeout=60_000)
    labels = viewer.layers[f"{layer.name} labels"]
    image_shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
    assert labels.data.shape == image_shape
    assert not [m for m in seen if "rror" in m], seen
    if case.expect_shape:
        assert labels.data.shape == case.expect_shape
    assert np.asarray(labels.data).max() >= 0


@pytest.mark.gui
def test_gui_refuses_untrusted_model_files(tmp_path, qtbot, dock):
    """A damaged model or a pickle picked in the widget: a notification, no layer, no code run."""
    import pickle

    from napari.utils.notifications import notification_manager

    from tests.test_bundle import _Payload

    viewer, widget = dock
    marker = tmp_path / "pwned"
    files = {
        "random": np.random.default_rng(0).bytes(4096),
        "pickle": pickle.dumps(_Payload(str(marker))),
        "empty": b"",
    }
    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer.add_image(np.zeros((64, 64)), name="cells")
    for name, content in files.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        widget.segment.run(model=str(path))
        qtbot.waitUntil(lambda: widget.segment.worker is None, timeout=60_000)
        assert any(path.name in m and "model bundle" in m for m in seen), seen
        assert widget.segment.run_button.isEnabled()
    assert "cells labels" not in [layer.name for layer in viewer.layers]
    assert not marker.exists()


TRAINING_GUI_CASES = {
    # name: (how the labels layer is edited, expected error or None)
    "no_segmentation": (None, "Nothing to fine-tune on"),
    "no_corrections": (lambda labels: None, "No corrected planes"),
    "single_pixel": (lambda labels: labels.paint((0, 10, 10), 7), None),
    "all_foreground": (lambda labels: labels.fill((0, 5, 5), 3), None),
    "no_objects": (lambda labels: None, None),  # plane 0 erased, then ticked fully checked
}


@pytest.mark.gui
@pytest.mark.parametrize("name", list(TRAINING_GUI_CASES))
def test_gui_training_inputs(name, qtbot, dock, plugin_dirs):
    """Degenerate corrections in napari: a clear notification, or a fine-tune that finishes."""
    from napari.utils.notifications import notification_manager

    from tests.synthetic import disks

    edit, expected_error = TRAINING_GUI_CASES[name]
    viewer, widget = dock
    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    image = np.stack([disks((64, 64), seed=i)[0] for i in range(2)])
    layer = viewer.add_image(image, name="cells")
    if edit is not None:
        widget.segment.image_combo.setCurrentText(layer.name)
        widget.segment.axes_edit.setText("ZYX")
        widget.segment.run()
        qtbot.waitUntil(lambda: widget.segment.worker is None, timeout=60_000)
        labels = viewer.layers["cells labels"]
        if name == "all_foreground":
            labels.data[0] = 0  # one region to fill: the whole plane becomes one object
            labels.refresh()
        edit(labels)
        viewer.layers.selection.active = labels
        if name == "no_objects":
            labels.data[0] = 0
            labels.refresh()
            _tick_fully_checked(widget.finetune, (0,))
    worker = widget.finetune.start()
    if expected_error:
        assert worker is None
        assert any(expected_error in m for m in seen), seen
        return
    qtbot.waitUntil(lambda: widget.finetune.worker is None, timeout=120_000)
    assert not [m for m in seen if "failed" in m.lower()], seen
    assert (plugin_dirs / "tiny-ft1.safetensors").is_file()


def _tick_fully_checked(panel, index) -> None:
    """Tick the 'fully checked' box of a plane in the Fine-tune panel's plane list."""
    from qtpy.QtCore import Qt

    panel.viewer.dims.set_current_step(0, index[0])
    panel.refresh_planes()
    items = [panel.planes.topLevelItem(i) for i in range(panel.planes.topLevelItemCount())]
    (item,) = [i for i in items if tuple(i.data(0, Qt.UserRole)) == index]
    item.setCheckState(2, Qt.Checked)
