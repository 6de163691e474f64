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
