"""Labels made on disk: the same labels as in memory, written out plane by plane, cleaned up."""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.atomic import remove_stale_partials
from napari_unet.core.disk_labels import labels_on_disk, largest_label
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import PredictOptions, iter_predict, predict
from napari_unet.core.io import read_image, write_labels
from napari_unet.core.zarr_io import read_zarr, write_labels_zarr
from tests.synthetic import disks

OPTIONS = PredictOptions(tile_size=64, device="cpu", precision="fp32", diameter=14.0)


def _bright_is_interior(batch: np.ndarray) -> np.ndarray:
    interior = np.clip(batch[:, :1], 0.0, 1.0)
    return np.concatenate([1.0 - interior, interior, np.zeros_like(interior)], axis=1)


def _stack() -> np.ndarray:
    """Two time points of 4 planes; the disks of a time point repeat through Z, so link."""
    return np.stack([np.stack([disks((96, 80), n=7, seed=t)[0]] * 4) for t in range(2)])


@pytest.mark.parametrize("link_z", [True, False])
def test_labels_made_on_disk_equal_those_made_in_memory(tmp_path, instance_bundle, link_z):
    options = replace(OPTIONS, link_z=link_z)
    image = _stack()
    in_memory = predict(image, instance_bundle, options, axes="TZYX", predictor=_bright_is_interior)
    with labels_on_disk(tmp_path / "x_labels.tif") as make_labels:
        on_disk = run_to_end(
            iter_predict(
                image,
                instance_bundle,
                options,
                axes="TZYX",
                predictor=_bright_is_interior,
                make_labels=make_labels,
            )
        )
        assert not isinstance(on_disk.labels, np.ndarray)
        np.testing.assert_array_equal(np.asarray(on_disk.labels[:]), in_memory.labels)
        assert largest_label(on_disk.labels) == in_memory.labels.max() == on_disk.stats["objects"]
        if link_z:  # each time point's 7 disks are one object through its 4 planes
            assert in_memory.stats["objects"] == 14
        write_labels(tmp_path / "x_labels.tif", on_disk.labels, axes="TZYX")
        write_labels_zarr(tmp_path / "x_labels.ome.zarr", on_disk.labels, axes="TZYX")
    assert set(os.listdir(tmp_path)) == {"x_labels.tif", "x_labels.ome.zarr"}  # work folder gone
    np.testing.assert_array_equal(read_image(tmp_path / "x_labels.tif").data, in_memory.labels)
    np.testing.assert_array_equal(read_zarr(tmp_path / "x_labels.ome.zarr").data, in_memory.labels)


def test_the_work_folder_goes_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError), labels_on_disk(tmp_path / "y_labels.tif") as make_labels:
        make_labels((2, 10, 10))[0] = 1
        raise RuntimeError("stopped")
    assert os.listdir(tmp_path) == []


def test_uint32_labels_on_disk_are_written_as_uint32(tmp_path):
    with labels_on_disk(tmp_path / "z_labels.tif") as make_labels:
        labels = make_labels((3, 20, 30))
        labels[1, 5, 5] = 70000  # past uint16
        labels[2, 0, 0] = 3
        write_labels(tmp_path / "z_labels.tif", labels, axes="ZYX")
    back = read_image(tmp_path / "z_labels.tif").data
    assert back.dtype == np.uint32 and back[1, 5, 5] == 70000 and back[2, 0, 0] == 3


def test_a_killed_runs_work_folder_is_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a_labels.tif.work.pid{dead_pid}-ab12cd34.partial"
    (stale / "labels1").mkdir(parents=True)
    (stale / "labels1" / "zarr.json").write_text("{}")
    with labels_on_disk(tmp_path / "b_labels.tif") as make_labels:
        make_labels((1, 4, 4))
        (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".b_labels")]
        assert remove_stale_partials(tmp_path) == [stale]
        assert live.exists() and not stale.exists()


def test_folders_made_for_a_run_that_failed_are_removed(tmp_path):
    target = tmp_path / "new" / "deeper" / "c_labels.tif"
    with pytest.raises(RuntimeError), labels_on_disk(target) as make_labels:
        make_labels((1, 4, 4))
        assert target.parent.is_dir()
        raise RuntimeError("stopped")
    assert os.listdir(tmp_path) == []
