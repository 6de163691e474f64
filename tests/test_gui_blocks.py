"""Large images in napari: a lazily read OME-Zarr (or any image, given a scheduler address)
is segmented from the Segment panel block by block through the CLI's Dask engine, its labels
on disk and shown as blocks finish, with a Stop between blocks."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_unet.core.distributed import connect, iter_predict_blocks, model_bytes  # noqa: E402
from napari_unet.core.generators import run_to_end  # noqa: E402
from napari_unet.core.io import Stack, read_image  # noqa: E402
from napari_unet.core.registry import load_bundle  # noqa: E402
from napari_unet.gui import block_segment  # noqa: E402
from napari_unet.gui.workers import worker_thread_count  # noqa: E402

pytestmark = pytest.mark.gui

NUCLEI = Path(__file__).parents[1] / "sample_data" / "nuclei_2d.tif"


def _nuclei() -> np.ndarray:
    """256 x 384 pixels of the nuclei sample: 6 blocks of 128 px, 24 of 64."""
    return read_image(NUCLEI).data[:256, :384]


def _ome_zarr(path: Path) -> Path:
    """The nuclei as a multiscale OME-Zarr image (two levels)."""
    import zarr
    from ome_zarr.writer import write_multiscale

    image = _nuclei()
    write_multiscale([image, image[::2, ::2]], zarr.open_group(str(path), mode="w"), axes="yx")
    return path


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _engine(image, options, block_size, tmp_path, scheduler=None):
    """The labels the CLI's engine gives, in this process or on ``scheduler``."""
    here = scheduler is None
    with connect("local" if here else scheduler, workers=1 if here else None, processes=False) as (
        client,
        _,
    ):
        result = run_to_end(
            iter_predict_blocks(
                Stack(image, "YX"),
                model_bytes(load_bundle("nuclei")),
                options,
                client,
                tmp_path / "reference_labels.ome.zarr",
                block_size=block_size,
                torch_threads=worker_thread_count() if here else None,
            )
        )
        return result.labels.compute(scheduler="threads")


def _panel(docked, tmp_path, monkeypatch, block_size):
    viewer, widget = docked
    monkeypatch.setattr(block_segment, "BLOCKS_ABOVE", 0)  # the test image counts as large
    panel = widget.segment
    panel.select_model("nuclei")
    panel.tile_spin.setValue(64)
    panel.blocks.controls.block_spin.setValue(block_size)
    panel.blocks.controls.folder_edit.setText(str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    return viewer, panel


def _spy_blocks(panel):
    """Record, for every block shown, the labelled pixels of the layer and whether the job
    was still running."""
    seen = []
    show = panel.blocks.on_progress

    def spy(progress):
        show(progress)
        if getattr(progress, "labels", None) is not None:
            layer = panel.blocks._layer
            seen.append((int(np.count_nonzero(np.asarray(layer.data))), panel.runner.running))

    panel.blocks.on_progress = spy
    return seen


def test_a_lazy_ome_zarr_is_segmented_in_blocks_shown_as_they_arrive(
    docked, qtbot, tmp_path, monkeypatch
):
    viewer, panel = _panel(docked, tmp_path, monkeypatch, 128)
    (image,) = viewer.open(str(_ome_zarr(tmp_path / "nuclei.ome.zarr")), plugin="napari-unet")
    assert image.multiscale and [level.shape for level in image.data] == [(256, 384), (128, 192)]
    assert not isinstance(image.data[0], np.ndarray)  # napari reads what it shows
    seen = _spy_blocks(panel)
    panel.image_combo.setCurrentText(image.name)
    panel.run_button.click()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
    labels_layer = viewer.layers[f"{image.name} labels"]
    # six blocks arrived one by one, each shown while the job ran
    assert len(seen) == 6 and all(running for _, running in seen)
    counts = [n for n, _ in seen]
    assert counts == sorted(counts) and 0 < counts[0] < counts[-1]
    # the merged labels, on disk, are the engine's (the CLI's) up to relabelling
    assert not isinstance(labels_layer.data, np.ndarray)
    labels = np.asarray(labels_layer.data)
    reference = _engine(_nuclei(), panel.options(), 128, tmp_path)
    assert len(np.unique(reference)) > 20
    assert _same_up_to_relabelling(reference, labels)
    assert "objects, 6 blocks of 128 px" in panel.status.text()
    assert [p.name for p in (tmp_path / "work").iterdir()][0].startswith("napari-unet-labels-")


def test_cancel_stops_between_blocks_and_keeps_those_done(docked, qtbot, tmp_path, monkeypatch):
    viewer, panel = _panel(docked, tmp_path, monkeypatch, 64)
    (image,) = viewer.open(str(_ome_zarr(tmp_path / "nuclei.ome.zarr")), plugin="napari-unet")
    seen = _spy_blocks(panel)
    panel.image_combo.setCurrentText(image.name)
    panel.run_button.click()
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=120_000)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=60_000)
    labels_layer = viewer.layers[f"{image.name} labels"]
    done = len(seen)
    assert 1 <= done < 24
    assert panel.status.text().startswith(f"Stopped after {done} of 24 blocks")
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    kept = np.asarray(labels_layer.data).copy()
    assert np.count_nonzero(kept) == seen[-1][0] > 0
    # nothing arrives after the stop; the engine's work folder and the merged labels' folder
    # are gone, the blocks shown stay on disk for the layer
    qtbot.wait(1000)
    assert len(seen) == done and np.array_equal(np.asarray(labels_layer.data), kept)
    (left,) = (tmp_path / "work").iterdir()
    assert left.name.startswith("napari-unet-shown-")
    # removing the layer removes its folder
    viewer.layers.remove(labels_layer)
    del labels_layer
    qtbot.waitUntil(lambda: _collected(left), timeout=10_000)


def _collected(folder: Path) -> bool:
    """Whether ``folder`` (a glob pattern) is gone once unused objects are collected."""
    import gc

    gc.collect()
    return not list(folder.parent.glob(folder.name))


def test_segment_on_a_scheduler_address(docked, qtbot, tmp_path, monkeypatch):
    """An address typed in the panel: an image in memory is segmented in blocks on that
    cluster, as the engine does there."""
    from distributed import LocalCluster

    viewer, panel = _panel(docked, tmp_path, monkeypatch, 128)
    monkeypatch.undo()  # the image is small and in memory: the address alone sends it
    image = viewer.add_image(_nuclei(), name="nuclei")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        panel.blocks.controls.scheduler_edit.setText(cluster.scheduler_address)
        panel.image_combo.setCurrentText(image.name)
        panel.run_button.click()
        qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
        labels = np.asarray(viewer.layers["nuclei labels"].data)
        reference = _engine(
            _nuclei(), panel.options(), 128, tmp_path, scheduler=cluster.scheduler_address
        )
    assert _same_up_to_relabelling(reference, labels)
    assert "objects, 6 blocks of 128 px" in panel.status.text()


def test_an_unreachable_scheduler_is_a_clear_error_and_leaves_no_layer(
    docked, qtbot, tmp_path, monkeypatch
):
    viewer, panel = _panel(docked, tmp_path, monkeypatch, 128)
    viewer.add_image(_nuclei(), name="nuclei")
    panel.blocks.controls.scheduler_edit.setText("tcp://127.0.0.1:9")
    monkeypatch.setattr("napari_unet.core.distributed.CONNECT_TIMEOUT", "2s")
    panel.run_button.click()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in panel.status.text()
    assert [layer.name for layer in viewer.layers] == ["nuclei"]
    qtbot.waitUntil(lambda: _collected(tmp_path / "work" / "*"), timeout=10_000)


def test_a_large_tiff_opens_memory_mapped_and_is_segmented_in_blocks(
    docked, qtbot, tmp_path, monkeypatch
):
    import tifffile

    viewer, panel = _panel(docked, tmp_path, monkeypatch, 128)
    monkeypatch.setattr("napari_unet.core.io.LAZY_BYTES", 0)  # the test image counts as large
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, _nuclei())  # uncompressed: memory-mapped
    (image,) = viewer.open(str(path), plugin="napari-unet")
    assert isinstance(image.data, np.memmap)  # napari reads what it shows, never the file
    panel.image_combo.setCurrentText(image.name)
    panel.run_button.click()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
    labels = viewer.layers[f"{image.name} labels"].data
    assert not isinstance(labels, np.ndarray) and np.asarray(labels).max() > 20
    assert "objects, 6 blocks of 128 px" in panel.status.text()


def test_which_reader_opens_a_zarr_folder(make_napari_viewer, tmp_path, monkeypatch):
    """Several plugins read Zarr folders (napari's builtins, napari-ome-zarr when installed):
    a folder dropped on napari (no plugin named) opens with napari-unet when the user's
    preference says so, else napari asks (its GUI shows the reader dialog)."""
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    path = str(_ome_zarr(tmp_path / "nuclei.ome.zarr"))
    viewer = make_napari_viewer()
    monkeypatch.setattr(get_settings().plugins, "extension2reader", {})
    with pytest.raises(MultipleReaderError, match="napari-unet"):
        viewer.open(path, plugin=None)
    monkeypatch.setattr(get_settings().plugins, "extension2reader", {"*.zarr/": "napari-unet"})
    (layer,) = viewer.open(path, plugin=None)
    assert layer.metadata["napari_unet"]["axes"] == "YX"
    assert not isinstance(layer.data, np.ndarray)
