"""How large are the objects in a plane? An estimate from the model's own first look at it.

A U-Net works at one scale: objects much larger than those it was trained on come out in
pieces, much smaller ones are missed or merged. :func:`iter_predict
<napari_unet.core.inference.iter_predict>` therefore looks at a sample window of each plane at
the model's scale first, measures the objects it finds there, and rescales the plane so that
they arrive at the size the model was trained on.

The measure is the *area-weighted* median of the equivalent diameters of the foreground's
connected components: the size of the object a typical foreground pixel belongs to. Weighting by
area keeps the fragments a model makes of over-large objects, and specks of noise, from
dragging the estimate down; touching objects that merge in the foreground pull it up a little,
which the second look at the working scale corrects (see :func:`refine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_EDGE = 512  # edge of the window looked at first, in pixels
MIN_OBJECTS = 3  # fewer foreground objects than this give no estimate
NO_RESCALE = (0.8, 1.25)  # scale factors in this band leave the plane as it is
FACTOR_RANGE = (0.125, 4.0)  # objects 8x too large or 4x too small at most


@dataclass(frozen=True)
class DiameterEstimate:
    """Typical object diameter found in a window, in the window's pixels.

    Attributes
    ----------
    diameter : float or None
        Area-weighted median equivalent diameter; None when too few objects were found.
    objects : int
        Foreground objects measured.
    """

    diameter: float | None
    objects: int


def sample_window(x: np.ndarray, edge: int = SAMPLE_EDGE) -> tuple[slice, slice]:
    """The ``edge`` x ``edge`` window of a (C, Y, X) plane with the most structure.

    Candidate windows on a grid with a quarter-window step are ranked by the standard
    deviation of their normalised intensity (an empty corner has none), from integral images,
    so the choice costs a few passes over the plane. A plane smaller than ``edge`` along an
    axis is taken whole along it.
    """
    grey = x.mean(axis=0, dtype=np.float64)
    ny, nx = grey.shape
    ey, ex = min(edge, ny), min(edge, nx)
    if (ey, ex) == (ny, nx):
        return slice(0, ny), slice(0, nx)
    ys = _starts(ny, ey)
    xs = _starts(nx, ex)
    total = _integral(grey)
    squares = _integral(grey * grey)
    best, best_spread = (0, 0), -1.0
    for y in ys:
        for x0 in xs:
            s = _box(total, y, x0, ey, ex)
            s2 = _box(squares, y, x0, ey, ex)
            n = ey * ex
            spread = s2 / n - (s / n) ** 2
            if spread > best_spread:
                best, best_spread = (y, x0), spread
    return slice(best[0], best[0] + ey), slice(best[1], best[1] + ex)


def _starts(n: int, edge: int) -> list[int]:
    step = max(1, edge // 4)
    starts = list(range(0, n - edge + 1, step))
    if starts[-1] != n - edge:
        starts.append(n - edge)
    return starts


def _integral(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0), axis=1, out=out[1:, 1:])
    return out


def _box(integral: np.ndarray, y: int, x: int, ey: int, ex: int) -> float:
    return float(
        integral[y + ey, x + ex] - integral[y, x + ex] - integral[y + ey, x] + integral[y, x]
    )


def measure_diameter(probabilities: np.ndarray, threshold: float = 0.5) -> DiameterEstimate:
    """Typical object diameter in a window from its class probabilities.

    Parameters
    ----------
    probabilities : ndarray of shape (n_classes, Y, X)
        Softmax output whose class 0 is the background.
    threshold : float
        Foreground probability above which a pixel belongs to an object.

    Returns
    -------
    DiameterEstimate
        :func:`labels_diameter` of the foreground's connected components.
    """
    from scipy import ndimage as ndi

    return labels_diameter([ndi.label((1.0 - probabilities[0]) > threshold)[0]])


def labels_diameter(label_images: Sequence[np.ndarray]) -> DiameterEstimate:
    """Typical object diameter in instance label images: the same measure as the estimate's.

    The area-weighted median equivalent diameter over the objects of all the images. Objects
    touching an image's edge are cut by it and left out, unless that leaves fewer than
    :data:`MIN_OBJECTS`. The model's trained diameter and the scale of its training planes
    are measured this way, so that an estimate compares like with like.
    """
    inside, cut = [], []
    for labels in label_images:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            continue
        areas = np.bincount(labels.ravel())
        areas[0] = 0
        edge = np.zeros(len(areas), dtype=bool)
        edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
        present = areas > 0
        inside.append(areas[present & ~edge])
        cut.append(areas[present & edge])
    areas = np.concatenate(inside) if inside else np.zeros(0)
    if len(areas) < MIN_OBJECTS:
        areas = np.concatenate([areas, *cut])
    if len(areas) < MIN_OBJECTS:
        return DiameterEstimate(None, len(areas))
    areas = areas.astype(np.float64)
    return DiameterEstimate(_weighted_median(np.sqrt(4.0 * areas / math.pi), areas), len(areas))


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def rescale_factor(
    trained_diameter: float, diameter: float, band: tuple[float, float] = NO_RESCALE
) -> float:
    """Scale that brings objects of ``diameter`` to ``trained_diameter``; 1.0 inside ``band``.

    The factor is bounded by :data:`FACTOR_RANGE`. The default band leaves a plane as it is
    when an *estimate* is within 25% of the model's size (the model copes with that much, and
    the plane is not resampled for nothing); a diameter the user gives is followed closely
    (a band of 3%).
    """
    factor = float(trained_diameter) / float(diameter)
    if band[0] <= factor <= band[1]:
        return 1.0
    return min(max(factor, FACTOR_RANGE[0]), FACTOR_RANGE[1])


GIVEN_BAND = (1 / 1.03, 1.03)


@dataclass(frozen=True)
class PlaneSize:
    """The scale one plane was segmented at, and why.

    Attributes
    ----------
    factor : float
        Rescale factor applied to the plane (1.0: segmented as it is).
    diameter : float or None
        Object diameter in the plane's own pixels that the factor follows.
    source : {"estimated", "given", "model"}
        Estimated from the plane, given by the user, or the model's own (no estimate possible).
    objects : int
        Objects the estimate was measured on (0 unless estimated).
    """

    factor: float
    diameter: float | None
    source: str
    objects: int = 0


def describe_sizes(sizes: list[PlaneSize], trained_diameter: float | None) -> str:
    """One sentence for the user: the object size used and what it did to the image.

    Examples: ``"objects about 41 px across (estimated from 37 objects; the model expects
    20 px): image scaled 0.49x"``; for stacks, the range over planes.
    """
    if not sizes or trained_diameter is None:
        return ""
    known = [s for s in sizes if s.diameter is not None]
    if not known:
        return (
            f"too few objects to estimate their size: segmented at the model's scale "
            f"({trained_diameter:.0f} px)"
        )
    diameters = [s.diameter for s in known]
    factors = [s.factor for s in sizes]
    size = _span(diameters, "{:.0f}") + " px across"
    if known[0].source == "given":
        origin = "as given"
    else:
        objects = sum(s.objects for s in known)
        origin = f"estimated from {objects} objects"
        if len(known) < len(sizes):
            origin += f" in {len(known)} of {len(sizes)} planes"
    scaled = (
        "image not rescaled"
        if all(f == 1.0 for f in factors)
        else "image scaled " + _span(factors, "{:.2f}") + "x"
    )
    return f"objects about {size} ({origin}; the model expects {trained_diameter:.0f} px): {scaled}"


def _span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    if fmt.format(low) == fmt.format(high):
        return fmt.format(float(np.median(values)))
    return f"{fmt.format(low)}-{fmt.format(high)}"
