import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from napari_unet.core.postprocess import instance_labels, remove_small
from napari_unet.core.targets import instance_classes
from tests.synthetic import disks


def _blurred_probabilities(seed: int) -> np.ndarray:
    """Softmax-like maps of touching disks, blurred and noisy like a network's output."""
    _, labels = disks((160, 160), n=30, touching=True, seed=seed)
    classes = instance_classes(labels)
    rng = np.random.default_rng(seed)
    scores = np.stack(
        [ndi.gaussian_filter((classes == k).astype(np.float32), 1.5) for k in range(3)]
    )
    scores += rng.normal(0, 0.05, scores.shape).astype(np.float32)
    exp = np.exp(4 * scores)
    return exp / exp.sum(0)


def _flood_from_every_seed_pixel(probabilities, threshold=0.5, min_size=10):
    interior, boundary = probabilities[1], probabilities[2]
    seeds, _ = ndi.label(interior > threshold)
    mask = ((interior + boundary) > threshold) | (seeds > 0)
    return remove_small(watershed(boundary - interior, markers=seeds, mask=mask), min_size)


@pytest.mark.parametrize("seed", range(6))
def test_instances_equal_the_flood_from_every_seed_pixel(seed):
    probabilities = _blurred_probabilities(seed)
    expected = _flood_from_every_seed_pixel(probabilities)
    assert expected.max() >= 10
    np.testing.assert_array_equal(instance_labels(probabilities), expected)


def _speckled_nucleus(seed: int = 0) -> np.ndarray:
    """Probabilities of one nucleus 20 px across whose interior map is speckled, as a network
    draws it in a photon-starved image: pixel noise pushes some of it under 0.5."""
    rows, cols = np.indices((48, 48))
    inside = np.hypot(rows - 24, cols - 24) < 10
    rng = np.random.default_rng(seed)
    interior = np.where(inside, np.clip(0.62 + rng.normal(0, 0.2, inside.shape), 0, 0.97), 0.0)
    boundary = np.where(inside, 0.02, 0.0)
    return np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_smoothed_seeds_keep_a_speckled_nucleus_whole(seed):
    from napari_unet.core.postprocess import seed_smoothing_sigma

    probabilities = _speckled_nucleus(seed)
    assert instance_labels(probabilities, min_size=1).max() > 1  # speckles split it
    sigma = seed_smoothing_sigma(20.0)
    assert (
        sigma == 2.0
        and seed_smoothing_sigma(None) == 0.0
        and seed_smoothing_sigma(20.0, scale=3.0) == 6.0
    )
    assert instance_labels(probabilities, min_size=1, seed_sigma=sigma).max() == 1


@pytest.mark.parametrize("seed", range(6))
def test_smoothed_seeds_keep_touching_nuclei_apart(seed):
    """The smoothing must not join many nuclei that the boundary class keeps apart: on a field
    of 30 touching disks (about 14 px across, their gaps blurred) at most 2 merge at a tenth of
    the diameter, since no seed grows where the boundary wins."""
    from napari_unet.core.postprocess import seed_smoothing_sigma

    probabilities = _blurred_probabilities(seed)
    plain = int(instance_labels(probabilities).max())
    smoothed = int(instance_labels(probabilities, seed_sigma=seed_smoothing_sigma(14.0)).max())
    assert plain - 2 <= smoothed <= plain + 1
