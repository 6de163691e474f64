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
    iio.imwrite(tmp_path / "p.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "p.png").rename(tmp_path / "p.tif")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "p.tif")
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
