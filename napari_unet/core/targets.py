"""Labels to training targets: class maps, the paper's border weights and the ignore mask."""

from __future__ import annotations

import numpy as np

from napari_unet.core.errors import TrainingDataError

IGNORE = -100  # torch's default ignore_index for cross-entropy
MAX_CLASS_WEIGHT = 10.0  # class_border_weights' balance for a class under 1 / (10 n) of the pixels


def check_labels(labels: np.ndarray, mode: str, n_classes: int) -> None:
    """Raise TrainingDataError when labels cannot be used for a model of this mode.

    Labels must be integers >= 0; semantic labels must be class indices 0..n_classes-1.
    """
    if labels.dtype.kind not in "biu":
        if (
            labels.dtype.kind == "f"
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            return check_labels(labels.astype(np.int64), mode, n_classes)
        raise TrainingDataError(f"labels must be whole numbers, got {labels.dtype} values")
    if labels.size and int(labels.min()) < 0:
        raise TrainingDataError(f"labels must not be negative (found {int(labels.min())})")
    if mode == "semantic":
        found = np.unique(labels)
        bad = found[found >= n_classes]
        if bad.size:
            raise TrainingDataError(
                f"semantic labels must be class indices 0..{n_classes - 1}, found values "
                f"{found[:10].tolist()}{'...' if found.size > 10 else ''} (a 0/255 mask? map it to 0/1)"
            )


def instance_classes(labels: np.ndarray) -> np.ndarray:
    """Instance ids (Y, X) -> classes background 0, interior 1, boundary 2 (uint8).

    The boundary is each object's inner outline, so touching objects stay apart.
    """
    from skimage.segmentation import find_boundaries

    classes = (labels > 0).astype(np.uint8)
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
    return classes


def border_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The U-Net paper's weight map that stresses thin background gaps between objects.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))`` on background pixels, where
    d1, d2 are the distances to the nearest and second-nearest object and ``w_c`` balances the
    class frequencies.

    Parameters
    ----------
    labels : ndarray of shape (Y, X)
        Instance ids.

    Returns
    -------
    ndarray of shape (Y, X), float32
    """
    foreground = labels > 0
    weights = _class_balance(foreground.astype(np.uint8), 2)
    weights[~foreground] += _gap_bonus(labels, w0, sigma)[~foreground]
    return weights


def class_border_weights(
    classes: np.ndarray, n_classes: int, w0: float = 10.0, sigma: float = 5.0
) -> np.ndarray:
    """The paper's weight map for semantic labels: thin gaps between regions of one class.

    Each 4-connected region of a class is an object; a pixel of another class that lies in a
    thin gap between two regions of the same class (cells of an EM section on either side of
    a membrane, two nuclei apart by a line of background) gets the bonus of
    :func:`border_weights`, on top of weights that balance the class frequencies (at most
    :data:`MAX_CLASS_WEIGHT`).

    Parameters
    ----------
    classes : ndarray of shape (Y, X)
        Class indices 0..n_classes-1.
    n_classes : int

    Returns
    -------
    ndarray of shape (Y, X), float32
    """
    from scipy import ndimage as ndi

    # a sparsely painted class would otherwise weigh thousands of times a common one
    weights = np.minimum(_class_balance(classes, n_classes), MAX_CLASS_WEIGHT)
    bonus = np.zeros(classes.shape, np.float32)
    for value in np.unique(classes):
        regions, _ = ndi.label(classes == value)
        elsewhere = classes != value
        bonus[elsewhere] = np.maximum(bonus[elsewhere], _gap_bonus(regions, w0, sigma)[elsewhere])
    return weights + bonus


def _class_balance(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights ``1 / (n * frequency)`` for the n classes present: each class weighs the same."""
    counts = np.bincount(classes.ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    if present.sum() < 2:
        return np.ones(classes.shape, np.float32)
    per_class = np.zeros(counts.size, np.float32)
    per_class[present] = classes.size / (present.sum() * counts[present])
    return per_class[classes]


def _gap_bonus(regions: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` with d1, d2 the distances to the nearest and
    second-nearest region of ``regions`` (ids > 0); 0 where fewer than two are within reach."""
    from scipy import ndimage as ndi

    bonus = np.zeros(regions.shape, np.float32)
    if np.unique(regions[regions > 0]).size < 2:
        return bonus
    nearest = np.full(regions.shape, np.inf, dtype=np.float32)
    second = np.full(regions.shape, np.inf, dtype=np.float32)
    reach = int(np.ceil(3 * sigma))
    for i, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        window = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in box)
        distance = ndi.distance_transform_edt(regions[window] != i).astype(np.float32)
        n, s2 = nearest[window], second[window]
        s2[...] = np.minimum(s2, np.maximum(n, distance))
        n[...] = np.minimum(n, distance)
    finite = np.isfinite(second)
    bonus[finite] = w0 * np.exp(-((nearest[finite] + second[finite]) ** 2) / (2 * sigma**2))
    return bonus


def training_target(labels: np.ndarray, known: np.ndarray | None, mode: str) -> np.ndarray:
    """Class target per pixel with :data:`IGNORE` where the labels are not known.

    Parameters
    ----------
    labels : ndarray of shape (Y, X)
        Instance ids (``mode="instances"``) or class indices (``"semantic"``).
    known : ndarray of shape (Y, X) or None
        Nonzero where the labels are trusted; None means everywhere.
    """
    target = instance_classes(labels) if mode == "instances" else labels
    target = target.astype(np.int64)
    if known is not None:
        if known.shape != labels.shape:
            raise TrainingDataError(
                f"the known-mask shape {known.shape} differs from the labels' {labels.shape}"
            )
        target[known == 0] = IGNORE
    return target
