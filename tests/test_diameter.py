"""The object-size estimate and the per-plane rescale it drives."""

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.diameter import (
    FACTOR_RANGE,
    MIN_OBJECTS,
    DiameterEstimate,
    PlaneSize,
    confirms_enlargement,
    describe_sizes,
    measure_diameter,
    rescale_factor,
    sample_window,
)
from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.metrics import instance_scores
from tests.synthetic import disks

OPTIONS = PredictOptions(tile_size=128, device="cpu", precision="fp32")


def _probabilities(labels: np.ndarray) -> np.ndarray:
    foreground = (labels > 0).astype(np.float32)
    return np.stack([1.0 - foreground, foreground, np.zeros_like(foreground)])


def _bright_is_interior(batch: np.ndarray) -> np.ndarray:
    """A scale-free stand-in for the network: bright pixels are object interiors."""
    interior = np.clip(batch[:, :1], 0.0, 1.0)
    return np.concatenate([1.0 - interior, interior, np.zeros_like(interior)], axis=1)


def _equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    areas = np.bincount(labels.ravel())[1:]
    return np.sqrt(4 * areas[areas > 0] / np.pi)


@pytest.mark.parametrize("radius", [(4, 6), (10, 14), (25, 32)])
def test_measured_diameter_follows_the_objects(radius):
    _, labels = disks((400, 400), n=12, radius=radius, seed=1)
    found = measure_diameter(_probabilities(labels))
    truth = np.median(_equivalent_diameters(labels))
    assert found.objects >= MIN_OBJECTS
    assert found.diameter == pytest.approx(truth, rel=0.2)


def test_fragments_and_specks_do_not_drag_the_estimate_down():
    _, labels = disks((400, 400), n=10, radius=(20, 24), seed=2)
    noisy = labels.copy()
    rng = np.random.default_rng(0)
    for k, (y, x) in enumerate(rng.integers(2, 398, size=(60, 2))):
        if labels[y, x] == 0:
            noisy[y : y + 2, x : x + 2] = 1000 + k  # 60 specks of 4 pixels
    assert measure_diameter(_probabilities(noisy)).diameter == pytest.approx(
        measure_diameter(_probabilities(labels)).diameter, rel=0.1
    )


def test_too_few_objects_give_no_estimate():
    labels = np.zeros((100, 100), np.uint16)
    labels[20:40, 20:40] = 1
    labels[60:80, 60:80] = 2
    found = measure_diameter(_probabilities(labels))
    assert found.diameter is None and found.objects == 2
    assert measure_diameter(_probabilities(np.zeros((50, 50), np.uint16))).objects == 0


def test_objects_cut_by_the_window_edge_are_left_out():
    _, labels = disks((300, 300), n=8, radius=(12, 14), seed=3)
    cut = labels[:, 150:]  # objects on the new edge are cut in half
    found = measure_diameter(_probabilities(cut))
    assert found.diameter == pytest.approx(np.median(_equivalent_diameters(labels)), rel=0.15)


def test_the_sample_window_goes_where_the_objects_are():
    image = np.zeros((1, 2000, 1500), np.float32)
    image[0, 1500:1900, 1000:1400] = disks((400, 400), n=10, seed=4)[0] / 255.0
    rows, cols = sample_window(image, edge=512)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (512, 512)
    assert rows.start <= 1500 and rows.stop >= 1900 - 112  # most of the objects inside
    assert cols.start <= 1000 + 112 and cols.stop >= 1400 - 112
    small = np.zeros((1, 300, 900), np.float32)
    assert sample_window(small, edge=512)[0] == slice(0, 300)  # whole along the short axis


def test_rescale_factor_band_and_bounds():
    assert rescale_factor(20, 22) == 1.0  # within 25%: left alone
    assert rescale_factor(20, 40) == pytest.approx(0.5)
    assert rescale_factor(20, 10) == pytest.approx(2.0)
    assert rescale_factor(20, 1000) == FACTOR_RANGE[0]
    assert rescale_factor(20, 1) == FACTOR_RANGE[1]
    assert rescale_factor(20, 22, band=(0.97, 1.03)) == pytest.approx(20 / 22)


@pytest.mark.parametrize("scale", [1, 3])
def test_large_objects_are_found_at_their_size_and_mapped_back(instance_bundle, scale):
    """Disks 3x the model's size are shrunk to it; labels come back on the original grid."""
    trained = instance_bundle.config["object_diameter"]
    radius = (int(trained * scale / 2) - 1, int(trained * scale / 2) + 1)
    image, truth = disks((150 * scale, 150 * scale), n=10, radius=radius, seed=5)
    result = predict(image, instance_bundle, OPTIONS, predictor=_bright_is_interior)
    (size,) = result.stats["sizes"]
    assert size.source == "estimated" and size.objects >= MIN_OBJECTS
    assert size.diameter == pytest.approx(np.median(_equivalent_diameters(truth)), rel=0.2)
    if scale == 1:
        assert size.factor == 1.0
        assert result.stats["look_pixel_ratio"] == 0.0  # the look was the prediction
    else:
        assert size.factor == pytest.approx(1 / scale, rel=0.2)
    assert result.labels.shape == truth.shape
    assert instance_scores(result.labels, truth).at(0.5) > 0.9


def test_a_given_diameter_overrides_the_estimate(instance_bundle):
    image, _ = disks((200, 200), n=8, radius=(20, 22), seed=6)
    options = replace(OPTIONS, diameter=14.0)  # the tiny model's own size: no rescale
    result = predict(image, instance_bundle, options, predictor=_bright_is_interior)
    assert result.stats["sizes"] == [PlaneSize(1.0, 14.0, "given")]
    assert result.stats["look_pixel_ratio"] == 0.0


def test_each_plane_of_a_series_gets_its_own_size(instance_bundle):
    small, _ = disks((300, 300), n=12, radius=(6, 8), seed=7)
    large, _ = disks((300, 300), n=8, radius=(20, 24), seed=8)
    result = predict(
        np.stack([small, large]),
        instance_bundle,
        OPTIONS,
        axes="TYX",
        predictor=_bright_is_interior,
    )
    first, second = result.stats["sizes"]
    assert first.diameter < 20 < second.diameter
    assert second.factor < 1.0
    text = describe_sizes(result.stats["sizes"], 14.0)
    assert "estimated from" in text and "the model expects 14 px" in text


def test_semantic_models_are_not_rescaled(semantic_bundle):
    image, _ = disks((128, 128), n=6, radius=(20, 22), seed=9)
    result = predict(image, semantic_bundle, OPTIONS)
    assert result.stats["sizes"] == [PlaneSize(1.0, None, "model")]


def test_describe_sizes_says_what_was_done():
    assert describe_sizes([PlaneSize(1.0, None, "model")], 20.0).startswith("too few objects")
    assert describe_sizes([PlaneSize(0.5, 40.0, "given")], 20.0) == (
        "objects about 40 px across (as given; the model expects 20 px): image scaled 0.50x"
    )
    text = describe_sizes(
        [PlaneSize(1.0, 21.0, "estimated", 30), PlaneSize(1.0, None, "model")], 20.0
    )
    assert text == (
        "objects about 21 px across (estimated from 30 objects in 1 of 2 planes; "
        "the model expects 20 px): image not rescaled"
    )


def test_an_enlargement_needs_the_closer_look_to_agree():
    first = DiameterEstimate(8.0, 100, 0.10)
    assert confirms_enlargement(first, DiameterEstimate(19.0, 110, 0.08))  # same objects, surer
    assert not confirms_enlargement(first, DiameterEstimate(19.0, 200, 0.08))  # noise multiplies
    assert not confirms_enlargement(first, DiameterEstimate(19.0, 100, 0.30))  # less sure
    assert not confirms_enlargement(first, DiameterEstimate(None, 1, 0.0))  # nothing found


def test_an_unconfirmed_enlargement_is_explained():
    text = describe_sizes([PlaneSize(1.0, None, "unconfirmed", 600)], 20.0)
    assert "not confirmed" in text and "model's scale (20 px)" in text
