"""Property tests: tiling is exact for any shape, the reader fails only in documented ways."""

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet.core.errors import ImageReadError, InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.io import read_image
from napari_unet.core.tiling import iter_predict_plane, plan_axis

run = run_to_end


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    tile=st.integers(8, 160),
    overlap=st.floats(0.0, 0.45),
    batch=st.integers(1, 5),
    blending=st.sampled_from(["cosine", "none"]),
)
def test_tiling_plus_one_any_shape(rows, cols, tile, overlap, batch, blending):
    margin = int(round(overlap * tile / 2))
    plane = np.random.default_rng(rows * cols).random((1, rows, cols), dtype=np.float32)
    try:
        plans = plan_axis(rows, tile, margin), plan_axis(cols, tile, margin)
    except InputError:
        assert tile - 2 * margin < 1
        return
    out = run(
        iter_predict_plane(
            plane, lambda b: b + 1.0, *plans, n_classes=1, batch_size=batch, blending=blending
        )
    )
    assert out.shape == plane.shape
    np.testing.assert_allclose(out, plane + 1.0, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def real_tiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "real.tif"
    tifffile.imwrite(
        path,
        np.random.default_rng(0).integers(0, 4000, (3, 40, 50), dtype=np.uint16),
        imagej=True,
        metadata={"axes": "ZYX"},
    )
    return path.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_reader_mutated_tiffs(tmp_path, real_tiff, data):
    raw = bytearray(real_tiff)
    kind = data.draw(st.sampled_from(["flip", "truncate", "random"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    else:
        raw = bytearray(data.draw(st.binary(min_size=0, max_size=2000)))
    path = tmp_path / "mutant.tif"
    path.write_bytes(bytes(raw))
    try:
        stack = read_image(path)
        assert stack.data.size > 0 and len(stack.axes) == stack.data.ndim
        last_plane = np.asarray(stack.data[(-1,) * (stack.data.ndim - 2)])
    except (ImageReadError, InputError):
        return  # a clear error, now or when a plane is read (large files are read lazily)
    assert last_plane.ndim == 2
