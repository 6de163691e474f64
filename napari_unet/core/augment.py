"""Data augmentation for 2D patches: zoom, flips, 90-degree turns, elastic deformation, intensity.

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
    zoom : tuple of float
        Range of a random zoom (log-uniform; 2.0 shows objects twice as large), so that the
        network learns more than one object size. (1.0, 1.0) is off.
    invert : float
        Chance of inverting the contrast (dark objects on a bright background, as in
        brightfield and histology images).
    blur : float
        Chance of a Gaussian blur (sigma 0.5-1.5 px), as out-of-focus or low-NA images look.
    """

    flips: bool = True
    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    intensity: bool = True
    zoom: tuple[float, float] = (1.0, 1.0)
    invert: float = 0.0
    blur: float = 0.0


def draw_zoom(settings: AugmentSettings, rng: np.random.Generator) -> float:
    """A random zoom factor from ``settings.zoom`` (log-uniform); 1.0 when zoom is off."""
    low, high = settings.zoom
    if low == high == 1.0:
        return 1.0
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def zoom_patch(
    image: np.ndarray, labels: np.ndarray, weights: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize a square patch to ``size``: image and weights linearly, labels by nearest pixel.

    Labels (instance ids or classes) are resized rather than the class target, so that the
    target built from them afterwards has boundaries of the usual width at every zoom.
    """
    from skimage.transform import resize

    shape = (size, size)
    shrinking = image.shape[-1] > size
    zoomed = np.stack(
        [resize(c, shape, order=1, anti_aliasing=shrinking, preserve_range=True) for c in image]
    )
    zoomed_labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True)
    zoomed_weights = resize(weights, shape, order=1, anti_aliasing=False, preserve_range=True)
    return (
        zoomed.astype(np.float32),
        zoomed_labels.astype(labels.dtype),
        zoomed_weights.astype(np.float32),
    )


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
    if settings.blur and rng.random() < settings.blur:
        from scipy import ndimage as ndi

        sigma = rng.uniform(0.5, 1.5)
        image = np.stack([ndi.gaussian_filter(c, sigma) for c in image]).astype(np.float32)
    if settings.intensity:
        image = intensity_jitter(image, rng)
    if settings.invert and rng.random() < settings.invert:
        image = (1.0 - image).astype(np.float32)
    return image, target, weights
