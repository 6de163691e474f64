"""bioimage.io packages in the Segment panel, docked as a user docks it: packages from other
software segment (or open as an image), ask before running code, refuse with a
notification; our own export can be fine-tuned again."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.bioimageio_export import export_package
from napari_unet.core.registry import load_bundle
from tests.foreign_packages import (
    Narrow,
    TwoMaps,
    build_package,
    probability_package,
    weights_by_url,
)

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
]


def _notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    return seen


def _blobs() -> np.ndarray:
    image = np.zeros((100, 134), np.float32)
    image[10:30, 10:30] = image[50:80, 60:100] = 200.0
    return image


def _segment(qtbot, segment, model) -> int:
    """Choose ``model`` and click Segment; the number of layers once the job has ended."""
    segment.select_model(str(model))
    segment.image_combo.setCurrentText("blobs")
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=60_000)
    return len(segment.viewer.layers)


def test_foreign_packages_segment_or_open_as_an_image(qtbot, docked, tmp_path):
    pytest.importorskip("bioimageio.core")
    from napari.layers import Image, Labels

    viewer, widget = docked
    segment = widget.segment
    viewer.add_image(_blobs(), name="blobs")
    probability = probability_package(tmp_path / "p")
    assert not segment.package_note.isVisibleTo(segment)  # the tiny model is ours
    segment.select_model(str(probability))
    assert segment.package_note.isVisibleTo(segment) and segment.code_check.isVisibleTo(segment)
    assert "cannot be fine-tuned" in segment.package_note.text()
    assert "only threshold, minimum size, channel and device apply" in segment.package_note.text()
    assert _segment(qtbot, segment, probability) == 2
    labels = viewer.layers[-1]
    assert isinstance(labels, Labels) and labels.name == "blobs labels (Other tool (test))"
    assert np.array_equal(np.unique(labels.data), [0, 1, 2])
    assert np.array_equal(labels.data > 0, _blobs() > 0)
    assert "2 objects" in segment.status.text()
    assert "cannot be fine-tuned" in segment.status.text()
    assert widget.finetune.labels_combo.findText(labels.name) < 0  # not offered to train on

    maps = build_package(tmp_path / "m", TwoMaps(), ["signal", "complement"])
    assert _segment(qtbot, segment, maps) == 3
    output = viewer.layers[-1]
    assert isinstance(output, Image) and output.data.shape == (2, 100, 134)
    assert np.array_equal(output.data[1], 1 - (_blobs() > 0))


def test_package_code_needs_the_checkbox_and_refusals_are_short(qtbot, docked, tmp_path):
    pytest.importorskip("bioimageio.core")
    viewer, widget = docked
    segment = widget.segment
    viewer.add_image(_blobs(), name="blobs")
    seen = _notifications()
    code = probability_package(tmp_path / "c", code=True)
    assert _segment(qtbot, segment, code) == 1
    qtbot.waitUntil(lambda: any("run the Python code in this package" in m for m in seen))
    assert "executes code from the file" in seen[-1]
    segment.code_check.setChecked(True)
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=60_000)
    assert len(viewer.layers) == 2 and viewer.layers[-1].data.max() == 2
    segment.select_model("tiny")
    segment.select_model(str(code))
    assert not segment.code_check.isChecked()  # consent is not carried to a later choice

    remote = weights_by_url(probability_package(tmp_path / "u"), tmp_path / "u.zip")
    assert _segment(qtbot, segment, remote) == 2
    qtbot.waitUntil(lambda: any("weights are on the internet" in m for m in seen))

    narrow = build_package(tmp_path / "n", Narrow(), ["same"])  # fails inside TorchScript
    assert _segment(qtbot, segment, narrow) == 2
    qtbot.waitUntil(lambda: any("planes wider than 64" in m for m in seen))
    assert "\n" not in seen[-1] and "Traceback" not in seen[-1]


def test_own_package_segments_and_is_offered_as_fine_tune_base(qtbot, docked, tmp_path):
    viewer, widget = docked
    package = export_package(
        load_bundle("tiny"), tmp_path / "tiny.zip", authors=["A"], license_id="MIT"
    )
    viewer.add_image(_blobs(), name="blobs")
    assert not widget.segment.package_note.isVisibleTo(widget.segment)
    widget.segment.select_model(str(package))
    assert not widget.segment.package_note.isVisibleTo(widget.segment)
    assert _segment(qtbot, widget.segment, package) == 2
    qtbot.waitUntil(lambda: widget.finetune.base_combo.currentText() == str(package))
    names = [
        widget.finetune.base_combo.itemText(i) for i in range(widget.finetune.base_combo.count())
    ]
    assert str(package) in names and "tiny" in names
