"""Test-time augmentation over the 8 symmetries of a tile."""

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.tta import SYMMETRIES, DihedralAverage, _view


def _leaning(batch: np.ndarray) -> np.ndarray:
    """An orientation-dependent predictor: each pixel's value shifted one step to the right."""
    shifted = np.roll(batch[:, :1], 1, axis=-1)
    return np.concatenate([shifted, 1.0 - shifted], axis=1)


def _valid(batch: np.ndarray) -> np.ndarray:
    """A valid-padding predictor: the output is the input cropped by 3 pixels per side."""
    inner = batch[:, :1, 3:-3, 3:-3]
    return np.concatenate([inner, 1.0 - inner], axis=1)


def test_the_average_does_not_depend_on_the_tile_orientation():
    rng = np.random.default_rng(0)
    batch = rng.random((2, 1, 12, 20)).astype(np.float32)  # not square
    average = DihedralAverage(_leaning)
    plain = average(batch)
    assert plain.shape == (2, 2, 12, 20)
    for turns, mirror in SYMMETRIES:
        turned = average(_view(batch, turns, mirror))
        np.testing.assert_allclose(turned, _view(plain, turns, mirror), atol=1e-6)
    assert not np.allclose(plain, _leaning(batch))  # it did average something


def test_an_equivariant_predictor_is_unchanged_also_with_valid_padding():
    rng = np.random.default_rng(1)
    batch = rng.random((1, 1, 16, 22)).astype(np.float32)
    np.testing.assert_allclose(DihedralAverage(_valid)(batch), _valid(batch), atol=1e-6)


def test_the_cpu_fallback_is_wrapped_too():
    class OnGpu:
        def __call__(self, batch):
            return _valid(batch)

        def on_cpu(self):
            return _leaning

    assert DihedralAverage(_valid).on_cpu is None
    fallback = DihedralAverage(OnGpu()).on_cpu()
    assert isinstance(fallback, DihedralAverage) and fallback.predictor is _leaning


@pytest.mark.parametrize("bundle_name", ["instance_bundle", "semantic_bundle"])
def test_segmenting_with_tta_runs_the_network_eight_times(request, bundle_name):
    bundle = request.getfixturevalue(bundle_name)
    calls = []

    def counting(batch):
        calls.append(batch.shape)
        interior = np.clip(batch[:, :1], 0, 1)
        return np.concatenate([1 - interior, interior, np.zeros_like(interior)], axis=1)[
            :, : len(bundle.class_names)
        ]

    image = np.random.default_rng(2).random((70, 90)).astype(np.float32)
    options = PredictOptions(tile_size=64, device="cpu", precision="fp32", diameter=14.0)
    plain = predict(image, bundle, options, predictor=counting)
    once = len(calls)
    augmented = predict(image, bundle, replace(options, tta=True), predictor=counting)
    assert len(calls) - once == 8 * once
    assert augmented.labels.shape == plain.labels.shape == image.shape
