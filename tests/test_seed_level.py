"""The level that cuts a plane into objects, from how sure the network is (core/seed_level.py)."""

import numpy as np
import pytest

from napari_unet.core.postprocess import instance_labels
from napari_unet.core.seed_level import (
    DEFAULT_LEVEL,
    SURE_LEVEL,
    SURE_SHARE,
    PlaneLevel,
    choose_level,
    describe_levels,
    sure_share,
)


def _probabilities(interior: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)


def _pair_with_a_neck(core: float, neck: float) -> np.ndarray:
    """Two touching disks of radius 10 whose interior is ``core`` and whose shared waist (5 px
    wide) reaches only ``neck``: what a network gives for two nuclei an image blurs together."""
    yy, xx = np.mgrid[:40, :60]
    left = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    right = (yy - 20) ** 2 + (xx - 38) ** 2 <= 100
    interior = np.where(left | right, core, 0.0)
    interior[(np.abs(xx - 29) <= 2) & (left | right)] = neck
    boundary = np.where(left | right, 0.98 - interior, 0.0)
    return _probabilities(interior, boundary)


def test_the_share_of_sure_foreground_is_counted_as_defined():
    interior = np.zeros((10, 10))
    interior[:, :4] = 0.95  # sure
    interior[:, 4:6] = 0.6  # foreground, not sure
    boundary = np.zeros((10, 10))
    boundary[:, 6:8] = 0.7  # foreground through the boundary class
    assert sure_share(_probabilities(interior, boundary)) == pytest.approx(4 / 8)
    assert sure_share(_probabilities(np.zeros((5, 5)), np.zeros((5, 5)))) == 0.0


def test_a_sure_plane_is_seeded_higher_and_its_touching_pair_parts_whole():
    """Sure cores joined by a waist of 0.6: seeded at 0.5 they are one object, at the chosen
    level two, and the chosen level is the higher one because most of the foreground is sure;
    the foreground stays at 0.5, so the two keep the pair's whole extent."""
    probabilities = _pair_with_a_neck(core=0.96, neck=0.6)
    chosen = choose_level(probabilities, None)
    assert chosen.sure >= SURE_SHARE and chosen.level == SURE_LEVEL
    assert chosen.foreground == DEFAULT_LEVEL
    assert instance_labels(probabilities, threshold=DEFAULT_LEVEL).max() == 1
    parted = instance_labels(probabilities, threshold=chosen.foreground, seed_level=chosen.level)
    assert parted.max() == 2
    assert np.array_equal(parted > 0, probabilities[1] + probabilities[2] > DEFAULT_LEVEL)


def test_an_unsure_plane_keeps_the_default_and_its_dim_object():
    """A plane whose interior never reaches the sure level (a dim, noisy image) stays at 0.5,
    where its objects exist; at the higher level they would vanish."""
    probabilities = _pair_with_a_neck(core=0.66, neck=0.55)
    chosen = choose_level(probabilities, None)
    assert chosen.sure == 0.0 and chosen.level == DEFAULT_LEVEL
    assert instance_labels(probabilities, threshold=chosen.level).max() >= 1
    assert instance_labels(probabilities, seed_level=SURE_LEVEL).max() == 0


def test_a_given_level_is_kept_and_said_to_be_given():
    probabilities = _pair_with_a_neck(core=0.96, neck=0.6)
    given = choose_level(probabilities, 0.42)
    assert given == PlaneLevel(0.42, None) and given.foreground == 0.42  # seeds and foreground
    assert describe_levels([given]) == ""  # a level the user set needs no explanation


def test_the_sentence_names_the_level_and_why():
    one = describe_levels([PlaneLevel(SURE_LEVEL, 0.46)])
    assert one.startswith(
        f"objects seeded at probability {SURE_LEVEL:g}: the network is sure of 46%"
    )
    stack = describe_levels([PlaneLevel(DEFAULT_LEVEL, 0.1), PlaneLevel(SURE_LEVEL, 0.4)])
    assert f"{DEFAULT_LEVEL:g}-{SURE_LEVEL:g}" in stack and "10-40%" in stack
    assert describe_levels([]) == ""
