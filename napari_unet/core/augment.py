"""Data augmentation for 2D patches: flips, 90-degree turns, elastic deformation, intensity.

Every function takes a numpy ``Generator`` so that training is reproducible from a seed.
Images are (C, Y, X) float32; targets (Y, X) int64 and weights (Y, X) float32 are moved with
them (nearest-neighbour for targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Which augmentations to apply and how strongly.

    Attributes
    ----------
    flips : bool
        Random horizontal/vertical flips and 90-degree rotations.
    elastic : bool
        The paper's elastic deformation: random displacements on a coarse grid, smoothly
        interpolated to every pixel.
    elastic_grid : int
        Points per side of the coarse displacement grid (3 as in the paper).
    elastic_sigma : float
        Standard deviation of the displacements, in pixels (10 as in the paper).
    intensity : bool
        Random contrast scale, brightness shift, gamma and Gaussian noise.
    """

    flips: bool = True
    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    intensity: bool = True


def flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Apply the same random flip and 90-degree rotation to the last two axes of each array."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def elastic_fields(
    shape: tuple[int, int], rng: np.random.Generator, grid: int, sigma: float
) -> np.ndarray:
    """Coordinates (2, Y, X) displaced by a smooth random field from a coarse grid."""
    from scipy import ndimage as ndi

    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    field = np.stack([ndi.zoom(c, zoom, order=3, mode="nearest", grid_mode=True) for c in coarse])
    field = field[:, : shape[0], : shape[1]]
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.stack([rows + field[0], cols + field[1]]).astype(np.float32)


def elastic_deform(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None,
    rng: np.random.Generator,
    *,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Warp image (linear), target (nearest) and weights (linear) with one random field."""
    from scipy import ndimage as ndi

    coords = elastic_fields(image.shape[-2:], rng, grid, sigma)
    warped = np.stack([ndi.map_coordinates(c, coords, order=1, mode="mirror") for c in image])
    warped_target = ndi.map_coordinates(target, coords, order=0, mode="mirror")
    warped_weights = (
        None if weights is None else ndi.map_coordinates(weights, coords, order=1, mode="mirror")
    )
    return warped.astype(np.float32), warped_target, warped_weights


def intensity_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random contrast scale (0.7-1.3), shift (+-0.1), gamma (0.7-1.5) and noise on a [0,1]-ish image."""
    scale = rng.uniform(0.7, 1.3)
    shift = rng.uniform(-0.1, 0.1)
    gamma = rng.uniform(0.7, 1.5)
    out = np.clip(image, 0.0, None) ** gamma
    out = out * scale + shift
    if rng.random() < 0.5:
        out = out + rng.normal(0.0, rng.uniform(0.0, 0.05), size=out.shape)
    return out.astype(np.float32)


def augment(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None,
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply the configured augmentations to one patch."""
    if settings.elastic and rng.random() < 0.5:
        image, target, weights = elastic_deform(
            image, target, weights, rng, grid=settings.elastic_grid, sigma=settings.elastic_sigma
        )
    if settings.flips:
        arrays = [image, target] + ([] if weights is None else [weights])
        arrays = flip_rotate(arrays, rng)
        image, target = arrays[0], arrays[1]
        weights = arrays[2] if weights is not None else None
    if settings.intensity:
        image = intensity_jitter(image, rng)
    return image, target, weights
