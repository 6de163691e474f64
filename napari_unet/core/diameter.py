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
which the second look at the working scale corrects.

An enlargement must be confirmed by that second look (:func:`confirms_enlargement`): on a noisy
image the model's first look finds specks of noise, which read as small objects; enlarging the
plane then turns the noise into more and larger specks, and the segmentation into thousands of
false objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.core.wording import value_range

SAMPLE_EDGE = 512  # edge of the window looked at first, in pixels
MIN_OBJECTS = 3  # fewer foreground objects than this give no estimate
NO_RESCALE = (0.8, 1.25)  # scale factors in this band leave the plane as it is
FACTOR_RANGE = (0.125, 4.0)  # objects 8x too large or 4x too small at most
UNDECIDED = (0.2, 0.8)  # foreground probabilities the model has not made up its mind about
MAX_OBJECT_GAIN = 1.5  # an enlarged look may find this many times the first look's objects
MAX_UNDECIDED_RISE = 0.05  # ... and this much more undecided area, or the enlargement is refused


@dataclass(frozen=True)
class DiameterEstimate:
    """Typical object diameter found in a window, in the window's pixels.

    Attributes
    ----------
    diameter : float or None
        Area-weighted median equivalent diameter; None when too few objects were found.
    objects : int
        Foreground objects measured.
    undecided : float
        Fraction of the window whose foreground probability lies in :data:`UNDECIDED`.
    """

    diameter: float | None
    objects: int
    undecided: float = 0.0


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
        :func:`labels_diameter` of the foreground's connected components, and the fraction
        of the window the model is undecided about.
    """
    from scipy import ndimage as ndi

    foreground = 1.0 - probabilities[0]
    found = labels_diameter([ndi.label(foreground > threshold)[0]])
    undecided = float(np.mean((foreground > UNDECIDED[0]) & (foreground < UNDECIDED[1])))
    return DiameterEstimate(found.diameter, found.objects, undecided)


def confirms_enlargement(first: DiameterEstimate, second: DiameterEstimate) -> bool:
    """Whether a look at the enlarged window confirms the small objects the first look found.

    Both looks see the same content, so real objects are found about as often at either
    scale, and the model is surer of them at the scale it was trained on. Specks of noise are
    not: enlarged, they come back as many more objects and more undecided area. Measured with
    the bundled nuclei model (benchmarks/RESULTS.md, issue 13): nuclei shrunk to 0.3-0.4x gave
    89 -> 97 and 93 -> 99 objects with less undecided area, and enlarging helped; photon-starved
    and unevenly lit images gave 1.9x-30x the objects or +0.25 undecided area, and enlarging
    them cut AP@0.5 from 0.42-0.87 to 0.00-0.24.

    Parameters
    ----------
    first : DiameterEstimate
        The look at the model's scale.
    second : DiameterEstimate
        The look at the enlarged window.

    Returns
    -------
    bool
        True when the second look found objects, at most :data:`MAX_OBJECT_GAIN` times as
        many as the first, and at most :data:`MAX_UNDECIDED_RISE` more undecided area.
    """
    return (
        second.diameter is not None
        and second.objects <= MAX_OBJECT_GAIN * first.objects
        and second.undecided <= first.undecided + MAX_UNDECIDED_RISE
    )


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
    source : {"estimated", "given", "model", "unconfirmed"}
        Estimated from the plane, given by the user, the model's own (no estimate possible),
        or the model's own because a closer look did not confirm smaller objects.
    objects : int
        Objects the estimate was measured on (for "unconfirmed": the first look's; 0 for
        "given" and "model").
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
        reason = (
            "what looked like small objects was not confirmed by a closer look (noise?)"
            if any(s.source == "unconfirmed" for s in sizes)
            else "too few objects to estimate their size"
        )
        return f"{reason}: segmented at the model's scale ({trained_diameter:.0f} px)"
    diameters = [s.diameter for s in known]
    factors = [s.factor for s in sizes]
    size = value_range(diameters, "{:.0f}") + " px across"
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
        else "image scaled " + value_range(factors, "{:.2f}") + "x"
    )
    return f"objects about {size} ({origin}; the model expects {trained_diameter:.0f} px): {scaled}"
