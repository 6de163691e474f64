"""OME-Zarr in and out: round trips with TIFF, NGFF validation, atomic writes, the CLI's
--format and the napari reader."""

import numpy as np
import pytest
import zarr
from ome_zarr_models.v04 import ImageLabel

from napari_unet.cli import main
from napari_unet.core.bundle import save_bundle
from napari_unet.core.errors import InputError
from napari_unet.core.io import read_image, write_labels
from napari_unet.core.zarr_io import read_zarr, read_zarr_pyramid, write_labels_zarr
from tests.conftest import tiny_bundle

UM = "µm"


def _labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 40, shape).astype(np.uint16)


@pytest.mark.parametrize(
    ("axes", "shape", "scale"),
    [
        ("YX", (40, 30), {"Y": 0.5, "X": 0.25}),
        ("ZYX", (3, 40, 30), {"Z": 2.0, "Y": 0.5, "X": 0.5}),
        ("TZYX", (2, 3, 40, 30), {"Z": 1.5, "Y": 0.2, "X": 0.2}),
        ("TYX", (4, 40, 30), {"Y": 0.3, "X": 0.3}),
    ],
)
def test_tiff_to_ome_zarr_to_tiff_keeps_data_axes_and_scale(tmp_path, axes, shape, scale):
    labels = _labels(shape)
    units = {a: UM for a in scale}
    first = write_labels(tmp_path / "a.tif", labels, axes=axes, scale=scale, units=units)
    stack = read_image(first)
    assert stack.axes == axes
    store = write_labels_zarr(
        tmp_path / "a_labels.ome.zarr",
        stack.data,
        axes=stack.axes,
        scale=stack.scale,
        units=stack.units,
        source=first,
    )
    middle = read_zarr(store)
    assert middle.axes == axes
    assert middle.scale == pytest.approx({a: v for a, v in stack.scale.items() if a in axes})
    assert {a: u for a, u in middle.units.items() if a in "ZYX"} == {
        a: UM for a in stack.units if a in "ZYX"
    }
    back = write_labels(
        tmp_path / "b.tif",
        np.asarray(middle.data),
        axes=middle.axes,
        scale=middle.scale,
        units=middle.units,
    )
    last = read_image(back)
    np.testing.assert_array_equal(last.data, labels)
    assert last.axes == axes
    assert last.scale == pytest.approx(stack.scale)


def test_labels_are_a_valid_ngff_label_image_with_a_nearest_pyramid(tmp_path):
    labels = np.zeros((2, 1100, 600), np.uint32)
    labels[:, 100:300, 50:90] = 7
    labels[:, 501, 301] = 9  # at odd coordinates: not in the striding levels
    path = write_labels_zarr(
        tmp_path / "x_labels.ome.zarr",
        labels,
        axes="ZYX",
        scale={"Z": 3.0, "Y": 0.5, "X": 0.5},
        units={"Z": UM, "Y": UM, "X": UM},
        source=tmp_path / "x.tif",
    )
    group = zarr.open_group(str(path), mode="r")
    model = ImageLabel.from_zarr(group)
    assert model.attributes.image_label.source.image == "../x.tif"
    multiscale = group.attrs["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer"] * 3
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[3.0, 0.5, 0.5], [3.0, 1.0, 1.0], [3.0, 2.0, 2.0]]
    stack, levels, is_labels = read_zarr_pyramid(path)
    assert is_labels and len(levels) == 3
    np.testing.assert_array_equal(levels[1], labels[:, ::2, ::2])
    np.testing.assert_array_equal(levels[2], labels[:, ::4, ::4])
    assert set(np.unique(np.asarray(levels[1]))) == {0, 7}  # ids stay ids, never blended


def test_reads_an_ome_zarr_image_with_channels_and_a_plain_array(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    data = np.arange(2 * 2 * 3 * 32 * 24, dtype=np.uint16).reshape(2, 2, 3, 32, 24)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    write_image(
        data,
        group,
        axes="tczyx",
        fmt=FormatV04(),
        scale={"t": 5.0, "c": 1.0, "z": 2.0, "y": 0.4, "x": 0.4},
        axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
        scale_factors=[],
    )
    stack = read_zarr(tmp_path / "img.ome.zarr")
    assert stack.axes == "TCZYX"
    assert stack.scale == pytest.approx({"T": 5.0, "Z": 2.0, "Y": 0.4, "X": 0.4})
    assert stack.units == {"T": "s", "Z": UM, "Y": UM, "X": UM}
    np.testing.assert_array_equal(np.asarray(stack.data), data)
    zarr.save_array(str(tmp_path / "plain.zarr"), data[0, 0])
    plain = read_zarr(tmp_path / "plain.zarr")
    assert plain.axes == "IYX"
    assert read_zarr(tmp_path / "plain.zarr", axes="zyx").axes == "ZYX"


def test_writes_are_atomic_and_never_replace_by_surprise(tmp_path, monkeypatch):
    import ome_zarr.writer

    target = tmp_path / "y_labels.ome.zarr"
    write_labels_zarr(target, np.ones((8, 8), np.uint32), axes="YX")
    with pytest.raises(InputError, match="exists"):
        write_labels_zarr(target, np.zeros((8, 8), np.uint32), axes="YX")
    write_labels_zarr(target, np.full((8, 8), 2, np.uint32), axes="YX", overwrite=True)
    assert int(np.asarray(read_zarr(target).data).max()) == 2

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ome_zarr.writer, "write_multiscales_metadata", broken)
    with pytest.raises(OSError, match="disk full"):
        write_labels_zarr(tmp_path / "z_labels.ome.zarr", np.ones((8, 8), np.uint32), axes="YX")
    with pytest.raises(OSError, match="disk full"):
        write_labels_zarr(target, np.ones((8, 8), np.uint32), axes="YX", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y_labels.ome.zarr"]
    assert int(np.asarray(read_zarr(target).data).max()) == 2  # the old output is intact
    with pytest.raises(InputError, match="--format tif"):
        write_labels_zarr(tmp_path / "i.ome.zarr", np.ones((2, 8, 8), np.uint32), axes="IYX")


@pytest.fixture
def tiny_model(tmp_path):
    return str(save_bundle(tiny_bundle(), tmp_path / "tiny.safetensors"))


def _predict(*args):
    return main(["predict", *map(str, args), "--tile-size", "64", "--device", "cpu"])


def test_cli_format_and_zarr_inputs(tmp_path, tiny_model, capsys):
    image = tmp_path / "cells.tif"
    write_labels(image, _labels((2, 48, 40)), axes="ZYX", scale={"Z": 2.0, "Y": 0.5, "X": 0.5})
    out = tmp_path / "out"
    assert _predict(image, "-o", out, "--model", tiny_model, "--format", "ome-zarr") == 0
    store = out / "cells_labels.ome.zarr"
    ImageLabel.from_zarr(zarr.open_group(str(store), mode="r"))
    assert read_zarr(store).scale == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    # a Zarr input gives OME-Zarr by default ...
    assert _predict(store, "-o", tmp_path / "again", "--model", tiny_model) == 0
    assert (tmp_path / "again" / "cells_labels_labels.ome.zarr").is_dir()
    # ... and TIFF when asked
    assert _predict(store, "-o", tmp_path / "tif", "--model", tiny_model, "--format", "tif") == 0
    assert read_image(tmp_path / "tif" / "cells_labels_labels.tif").axes == "ZYX"
    capsys.readouterr()
    # never into the user's own Zarr, never over an existing output
    assert _predict(store, "-o", store / "inside", "--model", tiny_model) == 2
    assert "never writes into its inputs" in capsys.readouterr().err
    assert _predict(image, "-o", out, "--model", tiny_model, "--format", "ome-zarr") == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--scheduler local"),
        (["--block-size", "512"], "--scheduler"),
    ],
)
def test_cli_cluster_options_need_a_scheduler(tmp_path, tiny_model, capsys, extra, message):
    image = tmp_path / "a.tif"
    write_labels(image, _labels((32, 32)), axes="YX")
    assert _predict(image, "-o", tmp_path / "o", "--model", tiny_model, *extra) == 2
    assert message in capsys.readouterr().err


def test_napari_reader_opens_ome_zarr_lazily_as_multiscale_labels(tmp_path):
    import dask.array as da

    from napari_unet.gui.reader import get_reader

    labels = np.zeros((600, 520), np.uint32)
    labels[10:50, 20:80] = 3
    path = write_labels_zarr(
        tmp_path / "l_labels.ome.zarr", labels, axes="YX", scale={"Y": 2.0, "X": 2.0}
    )
    reader = get_reader(str(path))
    assert reader is not None and get_reader(str(tmp_path)) is None
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "labels" and kwargs["multiscale"] and kwargs["scale"] == [2.0, 2.0]
    assert all(isinstance(level, da.Array) for level in data)
    np.testing.assert_array_equal(data[0], labels)


@pytest.mark.gui
def test_our_ome_zarr_opens_in_napari(make_napari_viewer, tmp_path):
    labels = np.zeros((2, 600, 520), np.uint32)
    labels[:, 10:50, 20:80] = 3
    path = write_labels_zarr(
        tmp_path / "v_labels.ome.zarr",
        labels,
        axes="ZYX",
        scale={"Z": 2.0, "Y": 0.5, "X": 0.5},
        units={"Z": UM, "Y": UM, "X": UM},
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    assert layer._type_string == "labels" and layer.multiscale and len(layer.data) == 2
    assert tuple(layer.scale) == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(layer.data[0]), labels)


def test_labels_pointing_to_an_ome_zarr_image_read_as_the_labels(tmp_path):
    """ome-zarr's reader follows ``image-label.source``; the labels, not their image, come back."""
    from ome_zarr.writer import write_image

    image = (np.arange(64 * 80).reshape(64, 80) % 16).astype(np.uint16)
    write_image(image, zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w"), axes="yx")
    labels = (np.arange(64 * 80).reshape(64, 80) // 7).astype(np.uint32)
    path = write_labels_zarr(
        tmp_path / "out" / "img_labels.ome.zarr",
        labels,
        axes="YX",
        source=tmp_path / "img.ome.zarr",
    )
    np.testing.assert_array_equal(np.asarray(read_zarr(path).data), labels)
