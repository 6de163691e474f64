import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_unet.core.errors import InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.tiling import (
    count_tiles,
    iter_predict_plane,
    mirror_pad,
    plan_axis,
    round_up,
)
from tests.conftest import tiny_bundle

run = run_to_end


def plus_one(batch):
    return batch + 1.0


def cropping_plus_one(crop):
    def predictor(batch):
        return batch[:, :, crop:-crop, crop:-crop] + 1.0

    return predictor


SHAPES = [(1, 1), (1, 37), (5, 3), (31, 64), (64, 64), (65, 129), (100, 7), (257, 190), (300, 301)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile", [16, 48, 64])
@pytest.mark.parametrize("blending", ["none", "cosine"])
def test_plus_one_is_exact(shape, tile, blending):
    rng = np.random.default_rng(sum(shape) + tile)
    plane = rng.random((2, *shape), dtype=np.float32)
    margin = tile // 8
    rows, cols = plan_axis(shape[0], tile, margin), plan_axis(shape[1], tile, margin)
    out = run(
        iter_predict_plane(
            plane, plus_one, rows, cols, n_classes=2, batch_size=3, blending=blending
        )
    )
    assert out.shape == plane.shape
    if blending == "none":
        np.testing.assert_array_equal(out, plane + 1)
    else:
        np.testing.assert_allclose(out, plane + 1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 9), (40, 90), (131, 77)])
def test_cropping_predictor(shape):
    crop = 6
    plane = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
    rows = plan_axis(shape[0], 32, 4, crop=crop)
    cols = plan_axis(shape[1], 32, 4, crop=crop)
    assert rows.margin >= crop
    out = run(
        iter_predict_plane(plane, cropping_plus_one(crop), rows, cols, n_classes=1, blending="none")
    )
    np.testing.assert_array_equal(out, plane + 1)


def test_plans_cover_plane_and_shrink_small_tiles():
    plan = plan_axis(10, 64, 8, fit=lambda n: -(-n // 16) * 16)
    assert plan.starts == (0,) and plan.tile == 32
    plan = plan_axis(1000, 256, 32)
    assert (
        plan.tile == 231 and len(plan.starts) == 6
    )  # 6 even cores of 167 px, not 6 x 192 with overlap
    cores = [(s, s + plan.tile - 64) for s in plan.starts]
    assert cores[0][0] == 0 and cores[-1][1] == 1000
    assert all(a[1] >= b[0] for a, b in zip(cores, cores[1:], strict=False))
    with pytest.raises(InputError, match="no core"):
        plan_axis(100, 16, 8)


def test_mirror_pad_mirrors():
    plane = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    padded = mirror_pad(plane, plan_axis(3, 16, 2), plan_axis(4, 16, 2))
    np.testing.assert_array_equal(padded[0, 2:5, 2:6], plane[0])
    np.testing.assert_array_equal(padded[0, 2, 1], plane[0, 0, 0])  # mirrored copy


def test_predictor_shape_is_checked():
    rows = cols = plan_axis(20, 32, 4)
    with pytest.raises(InputError, match="predictor returned"):
        run(
            iter_predict_plane(
                np.zeros((1, 20, 20), np.float32), lambda b: b[:, :, :-1], rows, cols, n_classes=1
            )
        )


def _network_predictor(network):
    def predict(batch):
        with torch.no_grad():
            return network(torch.from_numpy(batch)).numpy()

    return predict


def test_real_unet_exact_configuration():
    """Tile origins on multiples of 2**depth, context beyond the receptive field, no blending."""
    network = tiny_bundle(seed=3).network.double().eval()
    predictor = _network_predictor(network.float())
    rng = np.random.default_rng(0)
    shape = (192, 256)  # multiples of the 64-pixel core
    plane = rng.random((1, *shape), dtype=np.float32)
    margin = 32
    rows, cols = plan_axis(shape[0], 128, margin), plan_axis(shape[1], 128, margin)
    assert all(s % 4 == 0 for s in rows.starts + cols.starts)
    tiled = run(iter_predict_plane(plane, predictor, rows, cols, n_classes=3, blending="none"))
    whole_input = mirror_pad(plane, rows, cols)[None]
    whole = predictor(whole_input)[0][:, margin : margin + shape[0], margin : margin + shape[1]]
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_blended_defaults_agree_with_whole_image():
    """Default blending: report max |difference|, labels IoU >= 0.99 against one big tile."""
    from napari_unet.core.metrics import class_iou

    network = tiny_bundle(seed=4).network.eval()
    predictor = _network_predictor(network)
    plane = np.random.default_rng(2).random((1, 300, 280), dtype=np.float32)
    small = [plan_axis(n, 128, 8, fit=network.fit_input_size) for n in plane.shape[1:]]
    big = [plan_axis(n, 512, 8, fit=network.fit_input_size) for n in plane.shape[1:]]
    assert count_tiles(*small) > 4 and count_tiles(*big) == 1
    tiled = run(iter_predict_plane(plane, predictor, *small, n_classes=3))
    whole = run(iter_predict_plane(plane, predictor, *big, n_classes=3))
    difference = float(np.abs(tiled - whole).max())
    print(f"max |tiled - whole| = {difference:.2e}")
    iou = class_iou(tiled.argmax(0), whole.argmax(0), 3)
    assert np.nanmin(iou) >= 0.99, (difference, iou)


@given(
    length=st.integers(1, 3000),
    tile=st.integers(16, 1100),
    margin=st.integers(0, 200),
    stride=st.sampled_from([1, 2, 8, 16, 32]),
)
def test_aligned_plans_cover_the_axis_from_the_grid(length, tile, margin, stride):
    fit = lambda n: -(-n // stride) * stride  # noqa: E731  (a same-padding network's rule)
    tile = fit(tile)
    if tile - 2 * margin < 1:  # no core even off the grid
        with pytest.raises(InputError, match="no core"):
            plan_axis(length, tile, margin, fit=fit, stride=stride)
        return
    plan = plan_axis(length, tile, margin, fit=fit, stride=stride)
    grid = stride if tile - 2 * round_up(margin, stride) >= stride else 1  # else too small
    assert plan.margin >= margin and plan.margin % grid == 0
    # tile inputs start on the plane's grid (padded start minus the mirrored margin)
    assert all((s - plan.margin) % grid == 0 for s in plan.starts)
    assert plan.starts[-1] + plan.tile <= plan.padded and plan.pad_after >= 0
    trusted = [(s, s + plan.tile - 2 * plan.margin) for s in plan.starts]
    assert trusted[0][0] == 0 and trusted[-1][1] >= length
    assert all(a[1] >= b[0] for a, b in zip(trusted, trusted[1:], strict=False))


def test_a_tile_too_small_for_the_grid_keeps_its_margin():
    """Tile 32 of a depth-4 network: a 16-px margin would leave no core, so the tile keeps
    its 1-px margin and starts anywhere (as the GUI's and the memory fallback's small tiles
    did before the grid)."""
    plan = plan_axis(100, 32, 1, fit=lambda n: -(-n // 16) * 16, stride=16)
    assert plan.margin == 1 and plan.tile == 32


def test_aligned_tiles_give_the_same_output_whatever_their_size():
    """A U-Net's output depends on where its input starts modulo 2**depth: tiles on the grid
    give one answer per pixel for any tile size (not only sizes that divide the plane)."""
    network = tiny_bundle(seed=3).network.eval()
    predictor = _network_predictor(network)
    plane = np.random.default_rng(5).random((1, 203, 237), dtype=np.float32)

    def tiled(tile: int) -> np.ndarray:
        rows, cols = (
            plan_axis(n, tile, 32, fit=network.fit_input_size, stride=network.size_multiple)
            for n in plane.shape[1:]
        )
        assert count_tiles(rows, cols) > 1
        return run(iter_predict_plane(plane, predictor, rows, cols, n_classes=3, blending="none"))

    np.testing.assert_allclose(tiled(96), tiled(144), atol=1e-4)
