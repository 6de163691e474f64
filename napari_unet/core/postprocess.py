"""From class probabilities to labels: semantic classes, instances, z-linking."""

from __future__ import annotations

import numpy as np

from napari_unet.core.metrics import overlaps


def semantic_labels(probabilities: np.ndarray) -> np.ndarray:
    """Class index of the most likely class per pixel; (K, Y, X) -> (Y, X) uint8/uint16."""
    dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
    return np.argmax(probabilities, axis=0).astype(dtype)


def default_min_size(object_diameter: float | None) -> int:
    """Smallest object kept, in pixels: 5% of the area of a typical object (at least 4)."""
    if not object_diameter:
        return 10
    return max(4, int(0.05 * np.pi * (object_diameter / 2) ** 2))


SEED_SMOOTHING = 0.1  # sigma of the seeds' smoothing, as a share of the objects' diameter


def seed_smoothing_sigma(object_diameter: float | None, scale: float = 1.0) -> float:
    """Sigma in pixels that smooths the interior before seeding: :data:`SEED_SMOOTHING` of the
    objects' diameter (``object_diameter`` at the model's scale, times ``scale`` from there to
    the plane's pixels); 0 (no smoothing) for a model without a diameter."""
    return SEED_SMOOTHING * object_diameter * scale if object_diameter else 0.0


def instance_labels(
    probabilities: np.ndarray,
    *,
    threshold: float = 0.5,
    seed_level: float | None = None,
    min_size: int = 10,
    seed_sigma: float = 0.0,
) -> np.ndarray:
    """Separate objects from background / interior / boundary probabilities.

    Interior pixels above ``seed_level`` form one seed per object; seeds grow by watershed
    (over the boundary-minus-interior relief) into the foreground (interior + boundary above
    ``threshold``). Objects smaller than ``min_size`` pixels are removed.

    Parameters
    ----------
    probabilities : ndarray of shape (3, Y, X)
        Softmax output: background, interior, boundary.
    threshold : float
        Probability of the foreground.
    seed_level : float or None
        Interior probability of the seeds; None: ``threshold``. A higher level parts touching
        objects joined by a waist of middling interior probability.
    min_size : int
        Smallest object kept, in pixels.
    seed_sigma : float
        Gaussian sigma, in pixels, of a smoothing of the interior before it is cut into seeds,
        which then only cover pixels where the interior beats the boundary (the foreground is
        not smoothed); 0: the interior as it is. In a noisy image a network's interior map is
        speckled, and a speckle that dips under the threshold splits one nucleus into two
        seeds; a sigma of a tenth of the objects' diameter (:func:`seed_smoothing_sigma`) closes such
        dips, while the gap between two touching objects, where the boundary wins, stays.

    Returns
    -------
    ndarray of shape (Y, X), uint32
        0 for background, 1..N for objects.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    interior, boundary = probabilities[1], probabilities[2]
    level = threshold if seed_level is None else seed_level
    if seed_sigma > 0:  # fill speckles inside an object; keep the gaps where boundary wins
        seed_area = (ndi.gaussian_filter(interior, seed_sigma) > level) & (boundary < interior)
    else:
        seed_area = interior > level
    seeds, n_seeds = ndi.label(seed_area)
    if n_seeds == 0:
        return np.zeros(interior.shape, dtype=np.uint32)
    seeded = seeds > 0
    unassigned = ((interior + boundary) > threshold) & ~seeded
    # Only seed pixels next to unassigned foreground can spread, so the flood starts from them
    # alone: the same labels as flooding from every seed pixel, with far fewer heap entries
    # (seeds are most of the foreground).
    front = seeded & ndi.binary_dilation(unassigned)
    grown = watershed(boundary - interior, markers=seeds * front, mask=unassigned | front)
    labels = np.where(seeded, seeds, grown)
    return remove_small(labels, min_size)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and number the rest 1..N (uint32)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    new_ids = np.zeros(sizes.size, dtype=np.uint32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return new_ids[labels]


def link_to_previous(
    previous: np.ndarray, current: np.ndarray, next_id: int, min_cover: float = 0.5
) -> tuple[np.ndarray, int]:
    """Give objects of ``current`` the id of the object they continue in ``previous``.

    Two objects of neighbouring planes are one object when their overlap covers at least
    ``min_cover`` of the smaller of the two. The smaller, not the union: the cap of a round
    object is much smaller than the plane beside it (more so when Z is sampled coarser than
    X and Y), and a test on IoU would start a new object there. Matches are one-to-one,
    largest overlaps first, so an object that goes on is linked before a small neighbour
    that merely lies over it.

    Parameters
    ----------
    previous, current : ndarray of shape (Y, X)
        Labels of two neighbouring planes; ``previous`` already carries final ids.
    next_id : int
        First id free for objects that start in ``current``.
    min_cover : float
        Least share of the smaller object the overlap must cover.

    Returns
    -------
    linked : ndarray of shape (Y, X), uint32
    next_id : int
        The next free id after the new objects.
    """
    ids = np.unique(current)
    ids = ids[ids > 0]
    mapping = np.zeros(int(current.max()) + 1 if current.size else 1, dtype=np.uint32)
    ids_prev, ids_cur, intersection, size_prev, size_cur = overlaps(previous, current)
    covering = intersection >= min_cover * np.minimum(size_prev, size_cur)
    used: set[int] = set()
    for i in np.argsort(-intersection, kind="stable"):
        id_prev, id_cur = int(ids_prev[i]), int(ids_cur[i])
        if covering[i] and id_prev not in used and mapping[id_cur] == 0:
            mapping[id_cur] = id_prev
            used.add(id_prev)
    for i in ids:
        if mapping[i] == 0:
            mapping[i] = next_id
            next_id += 1
    return mapping[current], next_id
