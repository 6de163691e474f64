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


def _two_nuclei_joined_by_a_neck() -> np.ndarray:
    """Probabilities of two round objects whose interiors meet in a neck of middling certainty,
    as a network draws two touching nuclei it is unsure how to part."""
    rows, cols = np.indices((40, 68))
    first = np.hypot(rows - 20, cols - 20) < 12
    second = np.hypot(rows - 20, cols - 47) < 12
    neck = (np.abs(rows - 20) < 4) & (cols > 28) & (cols < 40)
    interior = np.where(first | second, 0.95, np.where(neck, 0.7, 0.0))
    boundary = np.where(interior == 0.0, 0.0, 0.03)
    return np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)


def test_a_seed_level_above_the_threshold_parts_nuclei_joined_by_a_neck():
    probabilities = _two_nuclei_joined_by_a_neck()
    assert instance_labels(probabilities).max() == 1  # one seed at 0.5: merged
    parted = instance_labels(probabilities, seed_threshold=0.85)
    assert parted.max() == 2
    # the neck still belongs to the objects (it is foreground), split between the two
    assert (parted > 0).sum() == (instance_labels(probabilities) > 0).sum()
    # the level never drops below the threshold the user chose
    assert instance_labels(probabilities, threshold=0.96, seed_threshold=0.85).max() == 0


def test_a_bundle_seeds_its_objects_at_its_recorded_level():
    from napari_unet.core.postprocess import seed_level
    from napari_unet.core.registry import load_bundle

    assert seed_level({"mode": "instances"}) is None
    assert seed_level(load_bundle("nuclei").config) == 0.85
