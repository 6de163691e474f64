"""GUI tests: napari under Xvfb (pytest-xvfb), widgets driven through their methods."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")

from napari_unet.core.bundle import ReplaySet, save_bundle  # noqa: E402
from napari_unet.core.registry import load_bundle  # noqa: E402
from tests.conftest import tiny_bundle  # noqa: E402
from tests.synthetic import disks  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "napari_unet" / "napari.yaml"


def wait_idle(qtbot, panel, timeout=60_000):
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=timeout)


def wait_corrected(qtbot, tracker, planes, timeout=2_000):
    """The tracker reads an edit once napari has written it (the next turn of the event loop)."""
    qtbot.waitUntil(lambda: tracker.corrected_planes() == planes, timeout=timeout)


def test_manifest_python_names_import():
    import importlib

    manifest = yaml.safe_load(MANIFEST.read_text())
    for command in manifest["contributions"]["commands"]:
        module, attribute = command["python_name"].split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command["id"]


def test_npe2_validates():
    from npe2 import PluginManifest

    PluginManifest.from_file(MANIFEST)


def test_reader_writer_round_trip(make_napari_viewer, tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 2, 32, 40), np.uint16),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZCYX", "spacing": 3.0, "unit": "um"},
    )
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-unet")
    assert len(layers) == 2  # channels split
    assert tuple(layers[0].scale) == pytest.approx((3.0, 0.5, 0.5))
    assert layers[0].metadata["napari_unet"]["axes"] == "ZYX"
    from napari_unet.gui.reader import get_reader

    assert get_reader(str(tmp_path / "nope.png")) is None
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(Exception, match="not a readable TIFF"):  # napari shows this message
        viewer.open(str(tmp_path / "junk.tif"), plugin="napari-unet")
    labels = viewer.add_labels(
        np.arange(3 * 32 * 40, dtype=np.uint32).reshape(3, 32, 40) % 7, scale=(3.0, 0.5, 0.5)
    )
    out = tmp_path / "labels.tif"
    labels.save(str(out), plugin="napari-unet")
    from napari_unet.core.io import read_image

    back = read_image(out)
    np.testing.assert_array_equal(back.data, labels.data)
    assert back.scale["Z"] == pytest.approx(3.0) and back.scale["X"] == pytest.approx(0.5)


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei_2d")
    viewer.open_sample("napari-unet", "em_sections")
    assert viewer.layers[0].data.shape == (520, 696)
    assert viewer.layers[1].data.shape == (5, 512, 512) and viewer.layers[1].scale[
        0
    ] == pytest.approx(0.05)


def test_widget_follows_layers_and_asks_for_axes(dock):
    viewer, widget = dock
    assert widget.segment.image_combo.count() == 0
    viewer.add_image(np.zeros((4, 32, 32)), name="unknown")
    assert widget.segment.image_combo.currentText() == "unknown"
    assert (
        widget.segment.axes_edit.text() == ""
        and "no axis information" in widget.segment.axes_hint.text()
    )
    assert widget.segment.run() is None  # refuses to guess
    viewer.add_image(np.zeros((32, 32)), name="flat")
    widget.segment.image_combo.setCurrentText("flat")
    assert widget.segment.axes_edit.text() == "YX"
    viewer.layers.remove("unknown")
    assert [
        widget.segment.image_combo.itemText(i) for i in range(widget.segment.image_combo.count())
    ] == ["flat"]
    assert "tiny" in [
        widget.segment.model_combo.itemText(i) for i in range(widget.segment.model_combo.count())
    ]


def _segment(qtbot, viewer, widget, image, axes):
    layer = viewer.add_image(image, name="cells", scale=(2.0,) * (image.ndim - 2) + (0.5, 0.5))
    return _segment_layer(qtbot, widget, layer, axes)


def _segment_layer(qtbot, widget, layer, axes=None):
    widget.segment.image_combo.setCurrentText(layer.name)
    if axes:
        widget.segment.axes_edit.setText(axes)
    assert widget.segment.run() is not None
    wait_idle(qtbot, widget.segment)
    return widget.viewer.layers[f"{layer.name} labels"]


def test_segment_paint_track_and_save(qtbot, dock):
    viewer, widget = dock
    image = np.stack([disks((96, 96), seed=i)[0] for i in range(3)])
    labels = _segment(qtbot, viewer, widget, image, "ZYX")
    bar = widget.segment.progress_bar
    assert bar.value() == bar.maximum() > 0  # a finished job shows a full bar
    assert labels.data.shape == (3, 96, 96) and labels.data.dtype == np.uint32
    assert tuple(labels.scale) == pytest.approx((2.0, 0.5, 0.5))
    labels.brush_size = 5
    labels.paint((1, 40, 40), 7)  # the layer's own paint API (as the brush does)
    tracker = widget.session.find(labels).tracker
    wait_corrected(qtbot, tracker, [(1,)])
    assert tracker.known_mask((1,))[40, 40] and not tracker.known_mask((1,))[0, 95]
    from napari_unet.core.dataset import TrainingSet
    from napari_unet.gui.session import training_root

    qtbot.waitUntil(
        lambda: (training_root() / "instances" / "manifest.json").is_file(), timeout=10_000
    )  # debounced save

    saved = TrainingSet.open(training_root() / "instances")
    assert [r.index for r in saved.planes.values()] == [(1,)]
    # undo restores the prediction: the plane is no longer corrected
    labels.undo()
    wait_corrected(qtbot, tracker, [])
    # re-running does not overwrite a corrected layer
    labels.paint((2, 10, 10), 9)
    widget.segment.run()
    wait_idle(qtbot, widget.segment)
    assert "cells labels (tiny)" in [layer.name for layer in viewer.layers]
    assert labels.data[2, 10, 10] == 9


def test_cancel_writes_nothing_and_resets_the_panel(qtbot, dock):
    viewer, widget = dock
    stack = np.stack([disks((96, 96), seed=i)[0] for i in range(40)])
    layer = viewer.add_image(stack, name="long")
    widget.segment.image_combo.setCurrentText("long")
    widget.segment.axes_edit.setText("ZYX")
    worker = widget.segment.run()
    progress = []
    worker.yielded.connect(
        lambda p: progress.append(p) or (widget.segment.cancel() if len(progress) == 2 else None)
    )
    wait_idle(qtbot, widget.segment)
    assert [x.name for x in viewer.layers] == [layer.name]  # no labels layer, not even partial
    assert widget.segment.status.text() == "Cancelled; nothing was written."
    assert widget.segment.progress_bar.value() == 0
    assert widget.segment.run_button.isEnabled() and not widget.segment.cancel_button.isEnabled()
    assert progress[-1].done < progress[-1].total
    # the stopped job was closed: its post-processing threads are gone
    import threading

    qtbot.waitUntil(
        lambda: not any(t.name.startswith("napari-unet-labels") for t in threading.enumerate()),
        timeout=5000,
    )


def test_saved_corrections_come_back_and_settings_persist(qtbot, dock):
    from napari_unet.gui.main_widget import UnetWidget
    from napari_unet.gui.session import training_root
    from tests.conftest import small_settings

    viewer, widget = dock
    image = np.stack([disks((96, 96), seed=i)[0] for i in range(2)])
    labels = _segment(qtbot, viewer, widget, image, "ZYX")
    prediction = np.array(labels.data)
    labels.brush_size = 5
    labels.paint((1, 40, 40), 7)
    qtbot.waitUntil(
        lambda: (training_root() / "instances" / "manifest.json").is_file(), timeout=10_000
    )
    # a re-segmentation to compare models shows the model's own output, nothing pasted in
    widget.segment.run(new_layer=True)
    wait_idle(qtbot, widget.segment)
    again = viewer.layers["cells labels (tiny)"]
    np.testing.assert_array_equal(again.data, prediction)
    assert widget.session.find(again).tracker.corrected_planes() == []
    assert widget.finetune.current_layer().name == "cells labels"  # corrections stay current
    # segmenting the same image in a new session (as after reopening it) puts them back, as one
    # undoable edit
    other = UnetWidget(viewer)
    small_settings(other)
    other.segment.image_combo.setCurrentText("cells")
    other.segment.run()
    wait_idle(qtbot, other.segment)
    restored = viewer.layers[-1]
    assert restored.data[1, 40, 40] == 7
    assert other.session.find(restored).tracker.corrected_planes() == [(1,)]
    restored.undo()
    np.testing.assert_array_equal(restored.data, prediction)
    wait_corrected(qtbot, other.session.find(restored).tracker, [])
    other.close_workers()
    # settings chosen in one widget are there in the next one
    widget.segment.tile_spin.setValue(256)
    widget.segment._save_settings()
    third = UnetWidget(viewer)
    assert third.segment.tile_spin.value() == 256
    third.close_workers()


def test_the_schedule_follows_new_defaults_unless_the_user_chose_it(dock):
    from napari_unet.core.options import TrainSettings
    from napari_unet.gui.main_widget import UnetWidget

    viewer, widget = dock
    finetune, defaults = widget.finetune, TrainSettings()
    store = finetune.settings
    # 100 steps saved by an older version, without the default it was saved against
    store.setValue("finetune/steps", 100)
    store.remove("finetune/steps_default")
    finetune._restore_settings()
    assert finetune.steps_spin.value() == defaults.steps
    # 100 steps saved when 100 was the default: the user left it, so today's default applies
    store.setValue("finetune/steps_default", 100)
    finetune._restore_settings()
    assert finetune.steps_spin.value() == defaults.steps
    # what the user changed is kept, what they left follows the defaults
    finetune.steps_spin.setValue(80)
    finetune.lr_spin.setValue(2e-4)
    finetune._save_settings()
    store.sync()
    fresh = UnetWidget(viewer)
    assert fresh.finetune.steps_spin.value() == 80
    assert fresh.finetune.lr_spin.value() == pytest.approx(2e-4)
    assert fresh.finetune.val_spin.value() == pytest.approx(defaults.val_fraction)
    fresh.close_workers()


def test_finetune_creates_version_and_stop_keeps_a_model(qtbot, dock, plugin_dirs):
    viewer, widget = dock
    image, truth = disks((128, 128), n=14, seed=3)
    labels = _segment(qtbot, viewer, widget, image, "YX")
    labels.data = truth.astype(np.uint32)  # a full correction, via set_data
    finetune = widget.finetune
    assert finetune.start() is not None
    wait_idle(qtbot, finetune)
    assert (plugin_dirs / "tiny-ft1.safetensors").is_file()
    assert "tiny-ft1" in [
        widget.segment.model_combo.itemText(i) for i in range(widget.segment.model_combo.count())
    ]
    assert len(finetune.plot.steps) == 6
    # the curve's held-out dots start from the base model and end at the new version's score,
    # the two scores the result line compares
    assert finetune.plot.val_steps[0] == 0
    base, new = finetune.plot.val_scores[0], finetune.plot.val_scores[-1]
    assert f"AP@0.5 tiny {base:.2f} -> tiny-ft1 {new:.2f}" in finetune.result.text()
    from napari_unet.gui.loss_plot import LOSS_COLOR

    assert _has_color(finetune.plot.grab().toImage(), LOSS_COLOR), "no loss curve drawn"
    finetune.steps_spin.setValue(500)
    steps = []
    worker = finetune.start()
    worker.yielded.connect(
        lambda step: steps.append(step) or (finetune.stop() if len(steps) == 3 else None)
    )
    wait_idle(qtbot, finetune)
    assert 3 <= len(steps) < 500
    version = load_bundle(plugin_dirs / "tiny-ft2.safetensors")
    assert "user" in version.config["training"]["history"][-1]["end"]


def _notifications():
    """Messages of the napari notifications shown from now on (a list that fills up)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    return seen


def _click_segment(qtbot, viewer, widget, name):
    """Click Segment and wait, as a user does; returns the newest layer."""
    count = len(viewer.layers)
    widget.segment.run_button.click()
    wait_idle(qtbot, widget.segment)
    assert len(viewer.layers) in (count, count + 1)
    return viewer.layers[name]


def _items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def test_docked_widget_tracks_every_edit_and_resegments_without_copies(qtbot, docked):
    """Through the Plugins menu's viewer proxy: edits tracked as made, no spurious copies."""
    from qtpy.QtCore import Qt

    viewer, widget = docked
    seen = _notifications()
    image = np.stack([disks((96, 96), seed=i)[0] for i in range(3)])
    viewer.add_image(image, name="cells")
    widget.segment.axes_edit.setText("ZYX")
    labels = _click_segment(qtbot, viewer, widget, "cells labels")
    prediction = np.array(labels.data)
    finetune = widget.finetune
    assert _items(finetune.labels_combo) == ["cells labels"]
    # Segment again on the untouched result: the same layer is reused, no copy, no warning
    _click_segment(qtbot, viewer, widget, "cells labels")
    assert [layer.name for layer in viewer.layers] == ["cells", "cells labels"]
    assert not any("holds your corrections" in message for message in seen)
    assert _items(finetune.labels_combo) == ["cells labels"]
    assert finetune.current_layer() is not None
    tracker = widget.session.find(labels).tracker

    # each edit through the Labels API is tracked as soon as napari has written it
    labels.brush_size = 5
    labels.paint((1, 40, 40), 7)
    wait_corrected(qtbot, tracker, [(1,)])
    assert tracker.known_mask((1,))[40, 40] and not tracker.known_mask((1,))[0, 95]
    labels.paint((1, 80, 80), 7, refresh=False)  # how the brush paints inside a stroke
    qtbot.waitUntil(lambda: tracker.known_mask((1,))[80, 80], timeout=2_000)
    labels.fill((2, 10, 10), 99, refresh=False)
    wait_corrected(qtbot, tracker, [(1,), (2,)])
    labels.data_setitem((np.array([0]), np.array([5]), np.array([5])), 55)
    wait_corrected(qtbot, tracker, [(0,), (1,), (2,)])
    qtbot.waitUntil(lambda: finetune.planes.topLevelItemCount() >= 3, timeout=2_000)

    # Ctrl+Z / Ctrl+Shift+Z in the Labels layer update the tracked corrections
    viewer.layers.selection.active = labels
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    wait_corrected(qtbot, tracker, [(1,), (2,)])
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    wait_corrected(qtbot, tracker, [(1,)])
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    wait_corrected(qtbot, tracker, [(1,), (2,)])

    # Segment again now: the corrections keep their layer; the result goes to a new one that
    # holds the model's output only
    again = _click_segment(qtbot, viewer, widget, "cells labels (tiny)")
    assert any("holds your corrections" in message for message in seen)
    np.testing.assert_array_equal(again.data, prediction)
    assert widget.session.find(again).tracker.corrected_planes() == []
    assert labels.data[1, 40, 40] == 7 and labels.data[2, 10, 10] == 99
    assert tracker.corrected_planes() == [(1,), (2,)]
    assert _items(finetune.labels_combo) == ["cells labels", "cells labels (tiny)"]

    # deleted Labels layers leave the Fine-tune panel's picker
    viewer.layers.remove("cells labels (tiny)")
    assert _items(finetune.labels_combo) == ["cells labels"]
    viewer.layers.remove("cells labels")
    assert _items(finetune.labels_combo) == []
    assert finetune.current_layer() is None
    # what was corrected is in the training set
    from napari_unet.core.dataset import TrainingSet
    from napari_unet.gui.session import training_root

    def saved_planes():
        folder = training_root() / "instances"
        if not (folder / "manifest.json").is_file():
            return None
        return sorted(r.index for r in TrainingSet.open(folder).planes.values())

    qtbot.waitUntil(lambda: saved_planes() == [(1,), (2,)], timeout=10_000)


def _as_after_a_finetune(widget, models_dir):
    """The state a finished fine-tune of 'tiny' leaves: a 'tiny-ft1' file, both choices open.

    The weights are tiny's own, so the new version's output is the old one's. The real run
    is test_docked_finetune_then_resegment_and_keep_previous.
    """
    save_bundle(tiny_bundle(), models_dir / "tiny-ft1.safetensors")
    finetune = widget.finetune
    finetune.previous_model, finetune.new_model = finetune.base_combo.currentText(), "tiny-ft1"
    finetune.refresh_models()
    finetune.trained.emit("tiny-ft1", "tiny")
    finetune._show_choice("tiny")  # as when the new version is not better: the old stays


def test_resegment_compares_and_keep_previous_restores_the_model(qtbot, docked, plugin_dirs):
    from napari_unet.gui.main_widget import UnetWidget, plugin_settings
    from napari_unet.gui.session import training_root

    viewer, widget = docked
    seen = _notifications()
    viewer.add_image(np.stack([disks((96, 96), seed=i)[0] for i in range(2)]), name="cells")
    widget.segment.axes_edit.setText("ZYX")
    labels = _click_segment(qtbot, viewer, widget, "cells labels")
    prediction = np.array(labels.data)
    labels.brush_size = 5
    labels.paint((1, 40, 40), 7)
    wait_corrected(qtbot, widget.session.find(labels).tracker, [(1,)])
    qtbot.waitUntil(
        lambda: (training_root() / "instances" / "manifest.json").is_file(), timeout=10_000
    )  # saved: a re-segment could paste them back, and must not
    finetune = widget.finetune
    assert finetune.base_combo.currentText() == "tiny"
    _as_after_a_finetune(widget, plugin_dirs)

    # Re-segment: the new version's own output in a layer of its own; corrections stay put
    finetune.resegment_button.click()
    qtbot.waitUntil(lambda: "cells labels (tiny-ft1)" in viewer.layers, timeout=60_000)
    wait_idle(qtbot, widget.segment)
    compared = viewer.layers["cells labels (tiny-ft1)"]
    np.testing.assert_array_equal(compared.data, prediction)
    # the same weights: a change map with nothing in it
    changes = "cells changes (tiny -> tiny-ft1)"
    qtbot.waitUntil(lambda: changes in viewer.layers, timeout=10_000)
    assert not viewer.layers[changes].data.any()
    assert widget.session.find(compared).tracker.corrected_planes() == []
    assert not any("Restored" in message for message in seen)
    assert labels.data[1, 40, 40] == 7
    assert finetune.current_layer().name == "cells labels"
    # re-segmenting compares; it does not choose: the Segment panel keeps its model
    assert widget.segment.model == "tiny"

    # Use new model, then Keep previous: both pickers and the remembered setting follow
    finetune.use_button.click()
    assert widget.segment.model == "tiny-ft1" and finetune.base_combo.currentText() == "tiny-ft1"
    assert plugin_settings().value("segment/model") == "tiny-ft1"
    assert finetune.keep_button.isEnabled() and not finetune.use_button.isEnabled()
    finetune.keep_button.click()
    assert widget.segment.model == "tiny"
    assert finetune.base_combo.currentText() == "tiny"
    assert plugin_settings().value("segment/model") == "tiny"
    assert not finetune.keep_button.isEnabled() and finetune.use_button.isEnabled()
    next_session = UnetWidget(viewer)
    assert next_session.segment.model == "tiny"
    next_session.close_workers()
    # the next Segment click uses it
    widget.segment.image_combo.setCurrentText("cells")
    _click_segment(qtbot, viewer, widget, "cells labels (tiny)")
    assert widget.session.find(viewer.layers["cells labels (tiny)"]).model == "tiny"


def test_resegment_shows_what_changed_from_the_previous_version(qtbot, docked, plugin_dirs):
    """After Re-segment, a layer shows the objects that appeared, vanished or changed from the
    previous version's own output (not the user's corrections), coloured by kind."""
    import torch
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_unet.core.changes import KINDS, compare_labels
    from napari_unet.gui.change_map import KIND_COLOURS

    bundle = load_bundle("nuclei")
    with torch.no_grad():
        bundle.network.head.bias[2] += 4.0  # more boundary: objects split, shrink and vanish
    save_bundle(bundle, plugin_dirs / "nuclei-ft1.safetensors")
    viewer, widget = docked
    seen = _notifications()
    viewer.add_image(np.stack([disks((128, 128), n=14, seed=i)[0] for i in range(2)]), name="cells")
    widget.segment.axes_edit.setText("ZYX")
    widget.segment.refresh_models(select="nuclei")
    labels = _click_segment(qtbot, viewer, widget, "cells labels")
    prediction = np.array(labels.data)
    labels.data_setitem((np.array([0]), np.array([2]), np.array([2])), 999)  # a correction
    wait_corrected(qtbot, widget.session.find(labels).tracker, [(0,)])
    finetune = widget.finetune
    finetune.previous_model, finetune.new_model = "nuclei", "nuclei-ft1"
    finetune.resegment_button.setEnabled(True)

    finetune.resegment_button.click()
    name = "cells changes (nuclei -> nuclei-ft1)"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=60_000)
    new = np.array(viewer.layers["cells labels (nuclei-ft1)"].data)
    changes = viewer.layers[name]
    expected = compare_labels(prediction, new, axes="ZYX")
    counts = expected.counts()
    assert all(counts[kind] > 0 for kind in KINDS), counts
    np.testing.assert_array_equal(changes.data, expected.labels)
    assert changes.features["index"].tolist() == [c.label for c in expected.changes]
    assert changes.features["kind"].tolist() == [c.kind for c in expected.changes]
    assert changes.features["z"].tolist() == [c.plane[0] for c in expected.changes]
    assert changes.features["old_id"].tolist() == [c.old for c in expected.changes]
    assert changes.features["new_id"].tolist() == [c.new for c in expected.changes]
    for change in expected.changes:
        colour = changes.colormap.map(np.array([change.label]))[0]
        np.testing.assert_allclose(colour, transform_color(KIND_COLOURS[change.kind])[0])
    assert changes.scale.tolist() == labels.scale.tolist()
    message = (
        f"{counts['appeared']} appeared, {counts['vanished']} vanished, {counts['changed']} changed"
    )
    qtbot.waitUntil(lambda: any(message in m for m in seen), timeout=2_000)
    assert labels.data[0, 2, 2] == 999  # the corrections stay, and were not compared
    # re-segmenting again updates the same change layer instead of adding another
    widget.tabs.setCurrentWidget(finetune)
    finetune.resegment_button.click()
    wait_idle(qtbot, widget.segment)
    qtbot.waitUntil(lambda: not widget.changes.runner.running, timeout=10_000)
    assert [layer.name for layer in viewer.layers].count(name) == 1


def _save_version(models_dir, name, parent, verdict="better"):
    """A fine-tuned version's file with the history training writes (see training._record)."""
    bundle = tiny_bundle()
    bundle.config["parent"] = parent
    bundle.config["training"] = {
        "history": [
            {
                "date": "2025-01-02T03:04:05+00:00",
                "parent": parent,
                "settings": {"steps": 8, "seed": 3},
                "samples": ["cells[0]", "cells[1]"],
                "corrected_pixels": 1234,
                "steps_run": 6,
                "seconds": 2.0,
                "comparison": {
                    "metric": "AP@0.5",
                    "base_score": 0.5,
                    "new_score": 0.75,
                    "n_items": 20,
                    "n_wrong": 5,
                    "unit": "objects",
                    "verdict": verdict,
                },
                "end": "finished",
            }
        ]
    }
    return save_bundle(bundle, models_dir / f"{name}.safetensors")


def test_versions_list_their_provenance_and_delete_after_confirmation(qtbot, docked, plugin_dirs):
    from superqt import QCollapsible

    from napari_unet.core.registry import BUNDLED_DIR
    from napari_unet.gui.versions import format_size

    first = _save_version(plugin_dirs, "tiny-ft1", "tiny")
    second = _save_version(plugin_dirs, "tiny-ft2", "tiny-ft1", verdict="too close")
    _save_version(plugin_dirs, "other-ft1", "other")  # another family
    viewer, widget = docked
    seen = _notifications()
    finetune, versions = widget.finetune, widget.finetune.versions
    assert "Versions" in [c.text() for c in finetune.findChildren(QCollapsible)]
    finetune.refresh_models(select="tiny")
    widget.segment.select_model("tiny")

    def rows():
        tree = versions.tree
        return [
            [tree.topLevelItem(i).text(c) for c in range(4)]
            for i in range(tree.topLevelItemCount())
        ]

    qtbot.waitUntil(lambda: len(rows()) == 2, timeout=2_000)
    size = format_size(first.stat().st_size)
    assert rows() == [
        ["tiny-ft2", "2025-01-02", "too close 0.50→0.75", format_size(second.stat().st_size)],
        ["tiny-ft1", "2025-01-02", "better 0.50→0.75", size],
    ]
    tip = versions.tree.topLevelItem(0).toolTip(0)
    for fact in (
        "from tiny-ft1",
        "6 of 8 steps",
        "seed 3",
        "2 corrected plane(s), 1,234 corrected pixels",
        "AP@0.5 0.500 → 0.750 on 20 held-out objects (5 the parent got wrong)",
    ):
        assert fact in tip
    total = sum(p.stat().st_size for p in plugin_dirs.glob("*-ft*.safetensors"))
    assert versions.total.text() == (
        f"tiny: 2 versions, {format_size(first.stat().st_size + second.stat().st_size)} on "
        f"disk. All yours: 3 versions, {format_size(total)}."
    )

    asked = []
    answer = [False]
    versions.confirm = lambda title, text: asked.append(text) or answer[0]
    # the Segment panel's model is refused without asking; bundled models always are
    widget.tabs.setCurrentWidget(widget.segment)
    widget.segment.select_model("tiny-ft2")
    widget.tabs.setCurrentWidget(finetune)
    qtbot.waitUntil(lambda: rows()[0][0] == "tiny-ft2 (in use)", timeout=2_000)
    assert not versions.delete("tiny-ft2") and second.is_file() and not asked
    assert any("tiny-ft2 is in use" in message for message in seen)
    assert not versions.delete("nuclei") and (BUNDLED_DIR / "nuclei.safetensors").is_file()
    assert not asked
    # a No keeps the file; a Yes deletes it, and every model picker forgets it
    versions.select("tiny-ft1")
    assert versions.delete_button.isEnabled()
    versions.delete_button.click()
    assert first.is_file() and len(asked) == 1 and f"Delete tiny-ft1 ({size})" in asked[0]
    answer[0] = True
    versions.delete_button.click()
    assert not first.is_file() and len(asked) == 2
    assert [row[0] for row in rows()] == ["tiny-ft2 (in use)"]
    assert "tiny-ft1" not in _items(widget.segment.model_combo)
    assert "tiny-ft1" not in _items(finetune.base_combo)
    assert any(f"Deleted tiny-ft1 ({size})" in message for message in seen)

    # a finished fine-tune lists its version at once
    _save_version(plugin_dirs, "tiny-ft3", "tiny-ft2")
    finetune.trained.emit("tiny-ft3", "tiny-ft2")
    assert [row[0] for row in rows()] == ["tiny-ft3", "tiny-ft2 (in use)"]
    # the list follows the base model's family
    finetune.base_combo.setCurrentText("nuclei")
    qtbot.waitUntil(lambda: rows() == [], timeout=2_000)
    assert versions.total.text().startswith("No fine-tuned versions of nuclei yet.")


def test_base_model_picker_offers_only_compatible_models(qtbot, docked, plugin_dirs):
    from tests.conftest import tiny_bundle

    save_bundle(
        tiny_bundle("semantic", class_names=["background", "membrane"]),
        plugin_dirs / "tiny-em.safetensors",
    )
    save_bundle(
        tiny_bundle("semantic", class_names=["background", "cell"]),
        plugin_dirs / "tiny-cells.safetensors",
    )
    viewer, widget = docked
    widget.segment.refresh_models(select="tiny")
    finetune = widget.finetune
    viewer.add_image(disks((96, 96), seed=1)[0], name="nuclei")
    _click_segment(qtbot, viewer, widget, "nuclei labels")
    assert _items(finetune.base_combo) == ["nuclei", "tiny"]  # instances, same classes
    assert finetune.base_combo.currentText() == "tiny"
    viewer.add_image(disks((96, 96), seed=2)[0], name="sections")
    widget.segment.image_combo.setCurrentText("sections")
    widget.segment.refresh_models(select="tiny-em")
    _click_segment(qtbot, viewer, widget, "sections labels")
    assert finetune.current_layer().name == "sections labels"
    assert _items(finetune.base_combo) == ["em-membranes", "tiny-em"]
    assert finetune.base_combo.currentText() == "tiny-em"
    # the picker follows the Labels choice
    finetune.labels_combo.setCurrentText("nuclei labels")
    assert _items(finetune.base_combo) == ["nuclei", "tiny"]
    assert finetune.base_combo.currentText() == "tiny"


def test_docked_finetune_then_resegment_and_keep_previous(qtbot, docked, plugin_dirs):
    """The user's whole round through the docked widget's buttons."""
    from napari_unet.gui.main_widget import plugin_settings

    viewer, widget = docked
    tiny = tiny_bundle()  # as the bundled nuclei: patches to rehearse and to check retention
    patches = [disks((64, 64), n=4, seed=seed) for seed in range(4)]
    tiny.replay = ReplaySet(
        np.stack([p[0] for p in patches]).astype(np.float32),
        np.stack([p[1] for p in patches]).astype(np.int16),
        "synthetic disks",
        checks=2,
    )
    save_bundle(tiny, plugin_dirs / "tiny.safetensors", overwrite=True)
    image, truth = disks((128, 128), n=14, seed=3)
    viewer.add_image(image, name="cells")
    labels = _click_segment(qtbot, viewer, widget, "cells labels")
    labels.paint((64, 64), 40)
    labels.fill((20, 20), 41)
    wait_corrected(qtbot, widget.session.find(labels).tracker, [()])
    finetune = widget.finetune
    widget.tabs.setCurrentWidget(finetune)
    finetune.train_button.click()
    assert finetune.runner.running
    wait_idle(qtbot, finetune, timeout=120_000)
    assert finetune.new_model == "tiny-ft1"
    assert (plugin_dirs / "tiny-ft1.safetensors").is_file()
    # the verdict chose: the new version when it scored better, else the old one stays
    better = " is better on " in finetune.result.text()
    assert "on 2 patches of the model's own training data" in finetune.result.text()
    assert widget.segment.model == ("tiny-ft1" if better else "tiny")
    assert finetune.resegment_button.isEnabled()
    assert finetune.keep_button.isEnabled() == better and finetune.use_button.isEnabled() != better
    listed = finetune.versions.tree.topLevelItem(0)  # listed with what training recorded
    assert listed.text(0) == "tiny-ft1" and "from tiny," in listed.toolTip(0)
    assert "of 6 steps" in listed.toolTip(0) and "seed 0" in listed.toolTip(0)
    corrected = np.array(labels.data)
    finetune.resegment_button.click()
    qtbot.waitUntil(lambda: "cells labels (tiny-ft1)" in viewer.layers, timeout=60_000)
    wait_idle(qtbot, widget.segment)
    compared = viewer.layers["cells labels (tiny-ft1)"]
    assert widget.session.find(compared).model == "tiny-ft1"
    assert widget.session.find(compared).tracker.corrected_planes() == []
    np.testing.assert_array_equal(labels.data, corrected)  # corrections untouched
    qtbot.waitUntil(lambda: "cells changes (tiny -> tiny-ft1)" in viewer.layers, timeout=10_000)
    if not better:
        finetune.use_button.click()
        assert widget.segment.model == "tiny-ft1"
    finetune.keep_button.click()
    assert widget.segment.model == "tiny" and finetune.base_combo.currentText() == "tiny"
    assert plugin_settings().value("segment/model") == "tiny"


def test_corrections_made_while_training_join_it(qtbot, docked, plugin_dirs):
    """Paint during a fine-tune: the plane is sent to the running training, which uses it."""
    viewer, widget = docked
    image, _ = disks((128, 128), n=14, seed=3)
    viewer.add_image(image, name="cells")
    labels = _click_segment(qtbot, viewer, widget, "cells labels")
    labels.paint((64, 64), 40)
    wait_corrected(qtbot, widget.session.find(labels).tracker, [()])
    finetune = widget.finetune
    finetune.steps_spin.setValue(100_000)
    steps = []
    worker = finetune.start()
    worker.yielded.connect(lambda item: hasattr(item, "step") and steps.append(item.step))
    qtbot.waitUntil(lambda: any(steps), timeout=60_000)
    labels.paint((20, 100), 41)  # a second correction while it trains
    qtbot.waitUntil(lambda: finetune.planes_sent == 1, timeout=10_000)  # sent with the save
    qtbot.waitUntil(finetune._live.empty, timeout=5_000)  # taken by the job
    sent_at = len(steps)
    qtbot.waitUntil(lambda: len(steps) > sent_at + 10, timeout=60_000)  # optimiser steps
    finetune.stop()
    wait_idle(qtbot, finetune)
    history = load_bundle(plugin_dirs / "tiny-ft1.safetensors").config["training"]["history"][-1]
    assert len(history["samples"]) == 2 and history["samples"][0] == history["samples"][1]


def test_worker_errors_become_notifications(qtbot, dock):
    from napari.utils.notifications import notification_manager

    viewer, widget = dock
    import napari_unet.core.inference as inference

    def broken(*args, **kwargs):
        yield inference.Progress(0, 1, "predicting")
        raise RuntimeError("CUDA out of memory (simulated)")

    patch = pytest.MonkeyPatch()
    patch.setattr(inference, "iter_predict", broken)
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer.add_image(np.zeros((64, 64)), name="cells")
    widget.segment.run()
    wait_idle(qtbot, widget.segment)
    assert any("out of memory" in message for message in seen)
    assert widget.segment.run_button.isEnabled()
    assert "cells labels" not in [layer.name for layer in viewer.layers]
    patch.undo()
    import napari_unet.core.training_process as training_process

    def broken_training(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (simulated)")
        yield

    labels = _segment(qtbot, viewer, widget, np.zeros((64, 64)), "YX")
    labels.paint((30, 30), 3)
    patch.setattr(training_process, "iter_finetune_in_child", broken_training)
    widget.finetune.start()
    wait_idle(qtbot, widget.finetune)
    patch.undo()
    assert any("mat1 and mat2" in message for message in seen)
    assert widget.finetune.train_button.isEnabled()


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ctc_hela").is_dir(), reason="needs ../shared/data")
def test_end_to_end_on_real_data(qtbot, dock, tmp_path, plugin_dirs):
    """Open, segment, correct two planes, fine-tune, re-segment: a held-out plane improves."""
    from qtpy.QtCore import Qt

    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import instance_scores

    frames = ["t75", "t79", "t52"]  # two dense frames to correct, a third held out
    crop = (slice(150, 534), slice(300, 684))
    image = np.stack(
        [read_image(DATA / "ctc_hela" / "images" / f"{f}.tif").data[crop] for f in frames]
    )
    truth = np.stack(
        [read_image(DATA / "ctc_hela" / "labels" / f"{f}.tif").data[crop] for f in frames]
    )
    tifffile.imwrite(tmp_path / "hela.tif", image)
    viewer, widget = dock
    (layer,) = viewer.open(str(tmp_path / "hela.tif"), plugin="napari-unet")
    assert layer.metadata["napari_unet"]["axes"] == "IYX"  # unrelated frames: independent planes
    widget.segment.image_combo.setCurrentText(layer.name)
    widget.segment.run()
    wait_idle(qtbot, widget.segment)
    labels = viewer.layers[f"{layer.name} labels"]
    before = instance_scores(np.asarray(labels.data[2]), truth[2]).at(0.5)
    corrected = np.array(labels.data)
    corrected[:2] = truth[:2]  # the user fixes planes 0 and 1 completely
    labels.data = corrected
    wait_corrected(qtbot, widget.session.find(labels).tracker, [(0,), (1,)])
    finetune = widget.finetune
    finetune.refresh_planes()
    for row in range(finetune.planes.topLevelItemCount()):
        item = finetune.planes.topLevelItem(row)
        if tuple(item.data(0, Qt.ItemDataRole.UserRole)) in [(0,), (1,)]:
            item.setCheckState(2, Qt.CheckState.Checked)  # fully checked
    assert widget.session.find(labels).tracker.selected_planes() == [(0,), (1,)]
    finetune.steps_spin.setValue(150)
    finetune.lr_spin.setValue(5e-3)
    finetune.patch_spin.setValue(128)
    finetune.start()
    wait_idle(qtbot, finetune, timeout=300_000)
    assert finetune.new_model == "tiny-ft1"
    finetune.resegment_button.click()
    qtbot.waitUntil(lambda: f"{layer.name} labels (tiny-ft1)" in viewer.layers, timeout=120_000)
    wait_idle(qtbot, widget.segment)
    after = instance_scores(
        np.asarray(viewer.layers[f"{layer.name} labels (tiny-ft1)"].data[2]), truth[2]
    ).at(0.5)
    print(f"held-out plane AP@0.5: {before:.3f} -> {after:.3f}; {finetune.result.text()}")
    changes = f"{layer.name} changes (tiny -> tiny-ft1)"
    qtbot.waitUntil(lambda: changes in viewer.layers, timeout=30_000)
    assert viewer.layers[changes].data.shape == labels.data.shape
    print(f"change map: {sorted(viewer.layers[changes].features['kind'].value_counts().items())}")
    assert after >= before + 0.2
    np.testing.assert_array_equal(labels.data[:2], truth[:2])  # corrections untouched


def _has_color(image, color) -> bool:
    """True when some pixel of a QImage is (nearly) ``color``."""
    for y in range(0, image.height(), 2):
        for x in range(image.width()):
            pixel = image.pixelColor(x, y)
            if (
                abs(pixel.red() - color.red())
                + abs(pixel.green() - color.green())
                + abs(pixel.blue() - color.blue())
                < 30
            ):
                return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("job", ["segment", "finetune"])
def test_closing_napari_during_a_job(job, tmp_path, plugin_dirs):
    """The job stops, the process ends promptly, and what was saved is whole."""
    import subprocess
    import sys
    import time

    from napari_unet.core.atomic import is_partial
    from napari_unet.core.dataset import TrainingSet

    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "tests.close_during_job", job],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-8000:]
    assert "closing True" in run.stdout  # the job was still running when napari closed
    assert "exited" in run.stdout
    assert time.perf_counter() - start < 60
    assert not [p for p in plugin_dirs.parent.rglob("*") if is_partial(p)]
    models = sorted(p.name for p in plugin_dirs.glob("*.safetensors"))
    assert models == ["tiny.safetensors"]  # a stopped run writes no half version
    if job == "finetune":
        sets = [p.parent for p in (plugin_dirs.parent / "training").rglob("manifest.json")]
        assert len(sets) == 1
        training_set = TrainingSet.open(sets[0])
        assert len(training_set.planes) == 1  # the correction was saved on close
        for record in training_set.planes.values():
            assert training_set.load_plane(record).labels[60, 60] == 8  # the painted label


def test_large_compressed_stack_opens_lazily_and_segments(qtbot, dock, tmp_path, monkeypatch):
    import napari_unet.core.io as io_module

    monkeypatch.setattr(io_module, "LAZY_BYTES", 1024)  # treat this small file as large
    viewer, widget = dock
    data = np.stack([disks((96, 96), seed=i)[0] for i in range(3)])
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    assert not isinstance(layer.data, np.ndarray)  # a dask array over the file's pages
    labels = _segment_layer(qtbot, widget, layer)
    expected = _segment(qtbot, viewer, widget, data, "ZYX")
    np.testing.assert_array_equal(labels.data, expected.data)


def test_demo_segments_the_sample_with_the_bundled_model(qtbot, make_napari_viewer, plugin_dirs):
    """What `napari-unet demo` (the README's main command) shows: the sample, segmented."""
    from napari_unet.gui.demo import open_demo

    viewer = make_napari_viewer()
    lines: list[str] = []
    widget = open_demo(viewer, report=lines.append)
    wait_idle(qtbot, widget.segment, timeout=120_000)
    labels = viewer.layers["nuclei labels"]
    assert labels.data.shape == viewer.layers["nuclei"].data.shape
    found = len(np.unique(labels.data)) - 1
    assert found > 50  # the sample holds well over 50 nuclei
    # the terminal says what is loading, what happened and what to try next
    assert lines[0].startswith("loaded the sample image 'nuclei'")
    assert "segmenting it with the bundled model 'nuclei'" in lines[1]
    assert lines[-1].startswith(f"found {found} nuclei in 'nuclei labels'. Next: fix a few")
    widget.close_workers()


def test_a_request_that_cannot_fit_is_a_notification_in_the_docked_widget(qtbot, docked):
    """The memory refusal through the Segment button, as a user meets it: a notification with
    the estimate, no layer, the panel usable again."""
    from napari.utils.notifications import notification_manager

    from napari_unet.core import resources

    viewer, widget = docked
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer.add_image(np.zeros((256, 256), np.uint8), name="cells")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resources, "available_memory", lambda: 2 * 2**20)
        widget.segment.run_button.click()
        wait_idle(qtbot, widget.segment)
    assert any("of memory but 2.0 MiB is available" in message for message in seen), (
        seen,
        widget.segment.status.text(),
        [layer.name for layer in viewer.layers],
    )
    assert "cells labels" not in [layer.name for layer in viewer.layers]
    assert widget.segment.run_button.isEnabled()


def test_segment_panel_estimates_the_object_size_and_says_so(qtbot, docked):
    """Nuclei 2.5x larger than the model's are shrunk to its size; the status line says so."""
    from skimage.transform import rescale

    from napari_unet.core.metrics import instance_scores
    from napari_unet.gui.sample_data import nuclei_2d

    viewer, widget = docked
    plane = nuclei_2d()[0][0][:200, :240]
    layer = viewer.add_image(
        rescale(plane, 2.5, order=1, preserve_range=True).astype(plane.dtype), name="big"
    )
    widget.segment.model_combo.setCurrentText("nuclei")
    assert widget.segment.diameter_spin.text() == "auto"
    labels = _segment_layer(qtbot, widget, layer)
    big_status = widget.segment.status.text()
    assert "estimated from" in big_status, big_status
    small = viewer.add_image(plane, name="small")
    reference = np.asarray(_segment_layer(qtbot, widget, small).data)
    small_status = widget.segment.status.text()

    def across(status):
        return float(re.search(r"objects about (\d+) px across", status, re.IGNORECASE).group(1))

    assert across(big_status) / across(small_status) == pytest.approx(2.5, rel=0.2)
    shrunk = rescale(np.asarray(labels.data), 0.4, order=0, preserve_range=True).astype(np.uint32)
    assert instance_scores(shrunk, reference).at(0.5) > 0.7  # the same nuclei found


def test_a_colour_image_shows_the_colour_choice_and_says_what_was_used(qtbot, docked):
    """Docked as a user does: on an RGB image the Colour → grey choice shows, Segment says
    which colour input it used, and another choice changes it; a grey image hides it."""
    from tests.test_rgb_input import histology

    viewer, widget = docked
    panel = widget.segment
    colour_label = panel.form.labelForField(panel.colour_combo)
    stained = viewer.add_image(histology()[0], name="stained")
    assert stained.rgb
    panel.image_combo.setCurrentText("stained")
    assert panel.axes_edit.text() == "YXS"
    assert not panel.colour_combo.isHidden() and not colour_label.isHidden()
    assert panel.colour_combo.currentData() is None  # the model's rule (auto for tiny)
    _click_segment(qtbot, viewer, widget, "stained labels")
    status = panel.status.text()
    assert (
        "Colour image: used channel 1 (green, the one with the most contrast), inverted" in status
    ), status
    panel.colour_combo.setCurrentText("luminance")
    assert panel.options().rgb == "luminance"
    _click_segment(qtbot, viewer, widget, "stained labels")
    assert "Colour image: luminance (0.21 R + 0.72 G + 0.07 B)." in panel.status.text()
    panel.colour_combo.setCurrentText("blue")
    assert panel.options().rgb == "channel:2"

    viewer.add_image(histology()[0][..., 1], name="grey")
    panel.image_combo.setCurrentText("grey")
    assert panel.colour_combo.isHidden() and colour_label.isHidden()
    _click_segment(qtbot, viewer, widget, "grey labels")
    assert "grey labels" in panel.status.text() and "Colour" not in panel.status.text()


def test_threshold_auto_seeds_each_plane_and_says_so(qtbot, docked):
    """The Threshold's lowest setting, 'auto', segments with the seed level chosen for the
    plane and the status line says which and why; the foreground stays that of 0.5, so auto
    only moves the seeds: objects part, or lose a seed that never reached the level."""
    from napari_unet.gui.sample_data import nuclei_2d

    viewer, widget = docked
    layer = viewer.add_image(nuclei_2d()[0][0][:256, :256], name="nuclei")
    widget.segment.model_combo.setCurrentText("nuclei")
    assert widget.segment.threshold_spin.value() == pytest.approx(0.5)  # the default
    widget.segment.image_combo.setCurrentText(layer.name)
    fixed = np.asarray(_click_segment(qtbot, viewer, widget, "nuclei labels").data).copy()
    assert "seeded at probability" not in widget.segment.status.text()
    spin = widget.segment.threshold_spin
    spin.setValue(spin.minimum())
    assert spin.text() == "auto" and widget.segment.options().threshold is None
    viewer.layers.remove(f"{layer.name} labels")
    auto = np.asarray(_click_segment(qtbot, viewer, widget, "nuclei labels").data)
    status = widget.segment.status.text()
    found = re.search(r"seeded at probability ([\d.]+): the network is sure of (\d+)%", status)
    assert found, status
    level, sure = float(found.group(1)), int(found.group(2))
    assert level == (0.7 if sure >= 25 else 0.5)
    # seeds move, the foreground does not: nothing outside the 0.5 objects, nearly all of them
    assert np.all(fixed[auto > 0] > 0) and np.mean((auto > 0) == (fixed > 0)) > 0.98
    pairs = np.unique(np.stack([auto.ravel(), fixed.ravel()]), axis=1).shape[1]
    same_objects = pairs == len(np.unique(auto)) == len(np.unique(fixed))
    assert same_objects == (level == 0.5)  # a higher level cut the plane otherwise
