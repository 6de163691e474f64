import numpy as np
import pytest
import tifffile

from napari_unet.core.errors import ImageReadError, InputError
from napari_unet.core.io import read_image, strip_image_suffix, write_labels


def test_plain_stack_axes_are_independent(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((5, 16, 16), np.uint16))
    assert read_image(tmp_path / "a.tif").axes == "IYX"
    tifffile.imwrite(
        tmp_path / "b.tif",
        np.zeros((3, 16, 16), np.uint16),
        photometric="rgb",
        planarconfig="separate",
    )
    assert read_image(tmp_path / "b.tif").axes == "IYX"
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((5, 16, 16), np.uint16), imagej=True)
    assert read_image(tmp_path / "c.tif").axes == "IYX"
    assert read_image(tmp_path / "c.tif", axes="zyx").axes == "ZYX"


def test_imagej_hyperstack_scale(tmp_path):
    path = tmp_path / "h.tif"
    data = np.zeros((4, 2, 16, 16), np.uint16)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"},
    )
    stack = read_image(path)
    assert stack.axes == "ZCYX"
    assert stack.scale == pytest.approx({"Z": 1.5, "Y": 0.5, "X": 0.5})
    assert stack.units["X"] == "µm"


def test_ome_scale(tmp_path):
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((2, 3, 16, 16), np.uint8),
        ome=True,
        metadata={"axes": "TZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 2.0},
    )
    stack = read_image(path)
    assert stack.axes == "TZYX"
    assert stack.scale == pytest.approx({"X": 0.2, "Y": 0.2, "Z": 2.0})
    assert stack.name == "o"


def test_rgb_and_png(tmp_path):
    import imageio.v3 as iio

    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8))
    assert read_image(tmp_path / "rgb.tif").axes == "YXS"
    iio.imwrite(tmp_path / "g.png", np.zeros((16, 20), np.uint8))
    stack = read_image(tmp_path / "g.png")
    assert stack.axes == "YX" and stack.data.shape == (16, 20)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (b"\x00" * 10 + b"random bytes" * 50, "not a readable TIFF")],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=match):
        read_image(path)


def test_truncated_and_renamed(tmp_path):
    import imageio.v3 as iio

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.ones((4, 64, 64), np.uint16))
    (tmp_path / "cut.tif").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "cut.tif")
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    iio.imwrite(tmp_path / "p.png", pixels)
    (tmp_path / "p.png").rename(tmp_path / "p.tif")  # a PNG with a .tif name is read as PNG
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif").data, pixels)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ImageReadError, match="unsupported"):
        read_image(tmp_path / "x.bmp")


def test_wrong_axes_override(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((5, 16, 16), np.uint16))
    with pytest.raises(InputError, match="has 3"):
        read_image(tmp_path / "a.tif", axes="TZYX")
    with pytest.raises(InputError, match="Y and X"):
        read_image(tmp_path / "a.tif", axes="ZYC")


def test_labels_uint16_imagej_round_trip(tmp_path):
    labels = np.arange(2 * 3 * 8 * 8, dtype=np.uint32).reshape(2, 3, 8, 8) % 500
    path = write_labels(
        tmp_path / "l.tif",
        labels,
        axes="TZYX",
        scale={"X": 0.5, "Y": 0.5, "Z": 2.0},
        units={"X": "µm"},
    )
    back = read_image(path)
    assert back.data.dtype == np.uint16 and back.axes == "TZYX"
    np.testing.assert_array_equal(back.data, labels)
    assert back.scale == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    with pytest.raises(InputError, match="exists"):
        write_labels(path, labels, axes="TZYX")


def test_labels_uint32_ome_round_trip(tmp_path):
    labels = np.zeros((3, 300, 300), np.uint32)
    labels.reshape(-1)[:70000] = np.arange(1, 70001)
    path = write_labels(tmp_path / "big.tif", labels, axes="IYX", scale={"X": 0.3, "Y": 0.3})
    back = read_image(path)
    assert back.data.dtype == np.uint32 and back.axes == "IYX"
    np.testing.assert_array_equal(back.data, labels)
    assert back.scale["X"] == pytest.approx(0.3)


def test_labels_must_be_nonnegative_integers(tmp_path):
    with pytest.raises(InputError, match="negative"):
        write_labels(tmp_path / "n.tif", np.array([[-1, 0]], np.int32), axes="YX")
    with pytest.raises(InputError, match="integers"):
        write_labels(tmp_path / "f.tif", np.zeros((2, 2), np.float32), axes="YX")


def test_strip_suffix():
    assert strip_image_suffix("a.b.OME.TIF") == "a.b"
    assert strip_image_suffix("x.png") == "x"


@pytest.fixture
def lazy_above_1kib(monkeypatch):
    """Treat every file over 1 KiB as large, so the lazy paths run on small test files."""
    import napari_unet.core.io as io_module

    monkeypatch.setattr(io_module, "LAZY_BYTES", 1024)


def test_large_compressed_hyperstack_is_read_plane_by_plane(tmp_path, lazy_above_1kib):
    from napari_unet.core.preprocess import iter_planes
    from napari_unet.core.tiff_pages import TiffPages

    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 4, 2, 24, 20), dtype=np.uint16)  # T Z C Y X
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"}, compression="zlib")
    stack = read_image(path)
    assert isinstance(stack.data, TiffPages) and stack.axes == "TZCYX"
    assert stack.data.shape == data.shape and stack.data.dtype == data.dtype
    np.testing.assert_array_equal(stack.data[1, 2], data[1, 2])
    np.testing.assert_array_equal(stack.data[2, :, 1, 5:9, -3:], data[2, :, 1, 5:9, -3:])
    np.testing.assert_array_equal(stack.data[..., 0, :], data[..., 0, :])
    np.testing.assert_array_equal(np.asarray(stack.data), data)
    planes = list(iter_planes(stack.data, stack.axes))
    expected = list(iter_planes(data, "TZCYX"))
    assert len(planes) == 12
    for (index, plane, plane_axes), (index2, plane2, axes2) in zip(planes, expected, strict=True):
        assert index == index2 and plane_axes == axes2 == "YXC"
        np.testing.assert_array_equal(plane, plane2)
    with pytest.raises(IndexError):
        stack.data[[0, 1]]
    stack.data.close()


def test_large_uncompressed_file_is_memory_mapped(tmp_path, lazy_above_1kib):
    data = np.arange(6 * 32 * 32, dtype=np.uint16).reshape(6, 32, 32)
    tifffile.imwrite(tmp_path / "raw.tif", data, metadata={"axes": "ZYX"})
    stack = read_image(tmp_path / "raw.tif")
    assert isinstance(stack.data, np.memmap)
    np.testing.assert_array_equal(stack.data, data)


def test_prediction_on_a_lazy_stack_matches_in_memory(tmp_path, lazy_above_1kib, instance_bundle):
    from napari_unet.core.inference import predict
    from tests.synthetic import disks

    data = np.stack([disks((64, 64), seed=s)[0] for s in range(3)])
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    lazy = read_image(path)
    assert not isinstance(lazy.data, np.ndarray)
    np.testing.assert_array_equal(
        predict(lazy, instance_bundle).labels, predict(data, instance_bundle, axes="ZYX").labels
    )


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_header_claiming_more_pixels_than_the_file_holds_is_refused(tmp_path, compression):
    """Found by fuzzing: widths inflated in every page once gave a lazy stack whose planes
    failed only when segmentation reached them."""
    import struct

    path = tmp_path / "real.tif"
    data = np.random.default_rng(0).integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"}, compression=compression)
    raw = bytearray(path.read_bytes())
    width_tag = struct.pack("<HHII", 256, 4, 1, 50)  # ImageWidth, LONG, 1 value: 50
    found = [i for i in range(len(raw) - 11) if raw[i : i + 12] == width_tag]
    assert len(found) == 3  # one per page
    for at in found:
        raw[at + 11] = 3  # width 50 -> 50331698
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="page 0"):
        read_image(path)


def test_stack_labels_written_plane_by_plane_round_trip(tmp_path):
    labels = np.zeros((5, 40, 30), np.uint32)
    labels[:, 5:10, 5:10] = np.arange(1, 6)[:, None, None]
    labels[4, 20:30, 3:7] = 60_000
    write_labels(tmp_path / "l.tif", labels, axes="ZYX")
    back = tifffile.imread(tmp_path / "l.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    labels[0, 0, 0] = 70_000  # no longer fits uint16: uint32 OME
    write_labels(tmp_path / "l32.tif", labels, axes="ZYX")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l32.tif"), labels)


@pytest.mark.parametrize("axes", ["YX", "ZYX", "TYX", "TZYX", "IYX"])
@pytest.mark.parametrize("largest", [300, 70000])  # ImageJ uint16 and OME uint32
def test_written_labels_read_back_with_their_axes(tmp_path, axes, largest):
    sizes = {"T": 2, "Z": 3, "I": 4, "Y": 24, "X": 20}
    shape = tuple(sizes[a] for a in axes)
    labels = (np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) * 97) % (largest + 1)
    path = write_labels(tmp_path / "l.tif", labels, axes=axes, scale={"X": 0.5, "Y": 0.5})
    back = read_image(path)
    assert back.axes == axes
    np.testing.assert_array_equal(back.data, labels)
    assert back.scale.get("X") == pytest.approx(0.5)


def _two_series(path):
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            np.full((3, 20, 30), 7, np.uint16), metadata={"axes": "ZYX", "PhysicalSizeX": 0.5}
        )
        tif.write(np.full((40, 50), 9, np.uint8), metadata={"axes": "YX", "PhysicalSizeX": 2.0})


def test_a_multi_series_file_says_so_and_each_series_can_be_chosen(tmp_path):
    path = tmp_path / "positions.ome.tif"
    _two_series(path)
    first = read_image(path)
    assert first.series_count == 2 and first.series == 0 and first.axes == "ZYX"
    assert "holds 2 images" in first.series_notice and first.name == "positions [series 0]"
    second = read_image(path, series=1)
    assert second.axes == "YX" and second.data.shape == (40, 50) and int(second.data[0, 0]) == 9
    assert second.scale["X"] == pytest.approx(2.0) and first.scale["X"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="series 2 does not exist"):
        read_image(path, series=2)
    assert read_image(tmp_path / "positions.ome.tif", series=0).series_notice


def test_the_reader_opens_every_series_as_a_layer(tmp_path):
    from napari_unet.gui.reader import read_layers

    path = tmp_path / "positions.ome.tif"
    _two_series(path)
    layers = read_layers(str(path))
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "positions [series 0]",
        "positions [series 1]",
    ]


def test_predict_names_the_series_it_used(tmp_path, capsys):
    from napari_unet.cli import main

    path = tmp_path / "positions.ome.tif"
    _two_series(path)
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--series", "1"]) == 0
    assert (tmp_path / "out" / "positions_series1_labels.tif").is_file()
    assert main(["info", str(path)]) == 0
    assert "series 0 of 0-1" in capsys.readouterr().out


_MATRIX_SHAPES = {
    "YX": (16, 20),
    "ZYX": (3, 16, 20),
    "CYX": (2, 16, 20),
    "TZCYX": (2, 3, 2, 16, 20),
    "YXS": (16, 20, 3),
}
# what each kind of file can say about its axes: OME and ImageJ name them (an ImageJ
# grey-mode "channels" stack is also what tifffile writes for any stack without axes, so it is
# read as unknown planes: segmenting each one separately is safe, picking a channel is not);
# plain and shaped files know only Y, X and RGB samples, other axes are unknown (I)
_MATRIX_EXPECTED = {
    "plain": {"YX": "YX", "ZYX": "IYX", "CYX": "IYX", "TZCYX": "IYX", "YXS": "YXS"},
    "imagej": {"YX": "YX", "ZYX": "ZYX", "CYX": "IYX", "TZCYX": "TZCYX", "YXS": "YXS"},
    "ome": {axes: axes for axes in _MATRIX_SHAPES},
    "shaped": {"YX": "YX", "ZYX": "IYX", "CYX": "IYX", "TZCYX": "IIIYX", "YXS": "YXS"},
}


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("axes", list(_MATRIX_SHAPES))
@pytest.mark.parametrize("flavour", list(_MATRIX_EXPECTED))
def test_axes_of_every_kind_of_tiff(tmp_path, flavour, axes, compression):
    shape = _MATRIX_SHAPES[axes]
    data = (np.arange(np.prod(shape)) % 200).astype(np.uint8).reshape(shape)
    options: dict = {"compression": compression}
    if flavour in ("imagej", "ome"):
        options.update({flavour: True, "metadata": {"axes": axes}})
    else:
        options["shaped"] = flavour == "shaped"
    if axes == "YXS":
        options["photometric"] = "rgb"
    elif flavour != "imagej":
        options["photometric"] = "minisblack"
    path = tmp_path / f"{flavour}.tif"
    tifffile.imwrite(path, data, **options)
    stack = read_image(path)
    assert stack.axes == _MATRIX_EXPECTED[flavour][axes]
    # a plain file flattens what it cannot name into pages: same pixels, page by page
    np.testing.assert_array_equal(np.asarray(stack.data).reshape(-1), data.reshape(-1))
