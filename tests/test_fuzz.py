"""Property tests: tiling is exact for any shape, the reader fails only in documented ways."""

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
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


def mutant(
    original: bytes,
    data: st.DataObject,
    regions: dict[str, tuple[int, int]],
    max_flips: int,
    max_random: int,
) -> bytes:
    """A damaged copy of ``original``: up to ``max_flips`` bytes changed inside one of the
    named ``regions`` (start, end), a truncation, or random bytes instead."""
    raw = bytearray(original)
    kind = data.draw(st.sampled_from([*regions, "truncate", "random"]))
    if kind in regions:
        low, high = regions[kind]
        for _ in range(data.draw(st.integers(1, max_flips))):
            raw[data.draw(st.integers(low, high - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    else:
        raw = bytearray(data.draw(st.binary(min_size=0, max_size=max_random)))
    return bytes(raw)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_reader_mutated_tiffs(tmp_path, real_tiff, data):
    path = tmp_path / "mutant.tif"
    path.write_bytes(mutant(real_tiff, data, {"flip": (0, len(real_tiff))}, 20, 2000))
    try:
        stack = read_image(path)
        assert stack.data.size > 0 and len(stack.axes) == stack.data.ndim
        last_plane = np.asarray(stack.data[(-1,) * (stack.data.ndim - 2)])
    except (ImageReadError, InputError):
        return  # a clear error, now or when a plane is read (large files are read lazily)
    assert last_plane.ndim == 2


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
    threshold=st.floats(0.05, 0.95),
    min_size=st.integers(0, 30),
    smooth=st.booleans(),
)
def test_instance_labels_keep_their_promises(shape, seed, threshold, min_size, smooth):
    """Any probability map gives labels 0..N on the foreground, each object >= min_size."""
    from scipy import ndimage as ndi

    from napari_unet.core.postprocess import instance_labels

    rng = np.random.default_rng(seed)
    raw = rng.random((3, *shape))
    if smooth:
        raw = ndi.gaussian_filter(raw, (0, 2, 2))
    probabilities = (raw / raw.sum(axis=0, keepdims=True)).astype(np.float32)
    labels = instance_labels(probabilities, threshold=threshold, min_size=min_size)
    assert labels.shape == shape and labels.dtype == np.uint32
    foreground = probabilities[1] + probabilities[2] > threshold
    assert not labels[~foreground].any()
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes[sizes > 0] >= min_size).all()


@settings(max_examples=150, deadline=None)
@given(
    ndim=st.integers(2, 5),
    axes=st.text(alphabet="TZCYXSIQ", min_size=0, max_size=6),
)
@example(ndim=4, axes="IIXY")
def test_axes_override_is_used_or_refused_clearly(ndim, axes):
    from napari_unet.core.io import Stack, check_axes

    shape = (2, 3, 4, 5, 6)[-ndim:]
    try:
        check_axes(axes, shape)
    except InputError:
        return
    stack = Stack(np.zeros(shape, np.uint8), axes)
    assert len(stack.axes) == ndim and "Y" in axes and "X" in axes
    named = axes.replace("I", "")  # unnamed axes may repeat; named ones may not
    assert len(set(named)) == len(named)


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory):
    from napari_unet.core.bundle import save_bundle
    from tests.conftest import tiny_bundle

    path = save_bundle(tiny_bundle(), tmp_path_factory.mktemp("b") / "m.safetensors")
    return path.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_bundle_loader_mutated_files(tmp_path, bundle_bytes, data):
    """A damaged model file loads or raises BundleError; never anything else."""
    from napari_unet.core.errors import BundleError
    from napari_unet.core.registry import load_bundle

    header = int.from_bytes(bundle_bytes[:8], "little") + 8
    regions = {"header": (0, header), "body": (header, len(bundle_bytes))}
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(mutant(bundle_bytes, data, regions, 10, 600))
    try:
        bundle = load_bundle(path)
    except BundleError:
        return
    assert bundle.network is not None
