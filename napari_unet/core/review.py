"""Correct this next: where a segmentation is least sure, most unsure first (torch-free).

Flip test-time augmentation: every reviewed plane is segmented again, flipped left-right,
upside down and both (the same model and :class:`~napari_unet.core.options.PredictOptions` as
the segmentation), and each result is flipped back. Where the model is sure, the flipped
views agree with the segmentation; where they do not, a person should look first.

* An object of the segmentation scores the mean, over the flipped views, of
  ``1 - best IoU`` with their objects. Its reason says what most of the views that disagree
  saw instead: several objects inside it (merged?), one object spanning it and a neighbour
  (split?), nothing (false?), or only another outline.
* A place where flipped views find an object and the segmentation has none (a likely miss)
  scores the mean share of the views that find it, over its pixels (label 0).
* Flipped views tend to repeat a merge the model makes with conviction, so shape is a second
  cue: an object at least as large as the plane's median object whose solidity (area over
  convex hull area) lies ``PINCH`` or more below the plane's median solidity is listed as
  pinched (two objects joined at a waist), scoring ``PINCH_WEIGHT`` times that drop; an
  object both cues list keeps the higher score and its reason. Measured on the tuning
  scenarios of ``benchmarks/finetune_gain.py`` (benchmarks/RESULTS.md).

Only the objects of the plane are compared, so ranks are within a plane; items of several
planes are merged by score. The scoring (:func:`rank_plane`) needs numpy, SciPy and
scikit-image only; the predictions (:func:`iter_review`) import the inference engine (torch)
when they run.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.errors import InputError
from napari_unet.core.metrics import overlap_iou
from napari_unet.core.preprocess import CHANNEL_AXES, iter_planes, labels_axes_of, read_plane

if TYPE_CHECKING:
    from threading import Event

    from napari_unet.core.bundle import Bundle
    from napari_unet.core.inference import Progress
    from napari_unet.core.io import Stack
    from napari_unet.core.options import PredictOptions
    from napari_unet.core.tiling import Predictor

FLIPS: dict[str, tuple[int, ...]] = {"left-right": (1,), "upside down": (0,), "both": (0, 1)}
MIN_SCORE = 0.2  # items scoring less are left out: the flipped views agree well enough
INSIDE = 0.5  # a piece lies inside an object when this share of the piece is in it
COVERS = 0.5  # an object covers another when it holds this share of the other
FOUND = 0.25  # an object is absent from a view that covers less than this share of it
OFF = 0.25  # a view's object is a likely miss when less than this share is on foreground
PINCH = 0.05  # solidity this far under the plane's median lists a large object as pinched
PINCH_WEIGHT = 4.0  # a pinched object's score per unit of solidity drop (PINCH scores 0.2)
MIN_OBJECTS_FOR_SHAPE = 5  # fewer objects in a plane give no typical shape to compare with
STEPS_PER_VIEW = 100  # progress units per flipped prediction

MERGED = "merged? flipped views see several objects"
SPLIT = "split? flipped views see one with a neighbour"
FALSE = "false? flipped views see nothing here"
OUTLINE = "outline unsure"
MISSED = "maybe missed: flipped views see an object"
PINCHED = "merged? its outline pinches in at a waist"


@dataclass(frozen=True)
class Uncertain:
    """A place to check, in the labels of one plane.

    Attributes
    ----------
    label : int
        The object's id in the segmentation; 0 for a place with no object (a likely miss).
    plane : tuple of int
        Index of the plane along the labels' non-YX axes (``()`` for a single image).
    centroid : tuple of float
        (row, column) of its centre in the plane, in pixels.
    bbox : tuple of int
        (min_row, min_col, max_row, max_col) in the plane, the maxima exclusive.
    score : float
        How unsure the model is, 0 (the flipped views agree) to 1.
    reason : str
        What the flipped views saw, for the person checking it.
    """

    label: int
    plane: tuple[int, ...]
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    score: float
    reason: str


def rank_plane(
    labels: np.ndarray,
    views: list[np.ndarray],
    *,
    plane: tuple[int, ...] = (),
    min_score: float = MIN_SCORE,
) -> list[Uncertain]:
    """Rank the objects of one plane, and the places it lacks, by disagreement with ``views``.

    Parameters
    ----------
    labels : ndarray of shape (Y, X)
        The segmentation (object ids, 0 background).
    views : list of ndarray of shape (Y, X)
        Other segmentations of the same plane (flipped predictions, flipped back).
    plane : tuple of int
        Stored in the items.
    min_score : float
        Items scoring less are left out.

    Returns
    -------
    list of Uncertain
        Most unsure first (ties: larger first).
    """
    labels, area, tally, miss_votes = _compare(labels, views)
    n = len(views)
    pinched = _pinch_scores(labels, area)
    items = []
    for k in np.flatnonzero(area[1:]) + 1:
        disagreement = float(tally.disagreement[k] / n)
        if pinched.get(k, 0.0) > disagreement:
            score, reason = pinched[k], PINCHED
        else:
            score, reason = disagreement, tally.reason(k)
        if score >= min_score:
            items.append(_object_item(labels, k, plane, score, reason))
    items += _miss_items(miss_votes / n, plane, min_score)
    area_of = {id(item): _bbox_area(item.bbox) for item in items}
    return sorted(items, key=lambda item: (-item.score, -area_of[id(item)], item.label))


def _compare(
    labels: np.ndarray, views: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, _Tally, np.ndarray]:
    """Check the shapes and tally every view against ``labels``: (labels as int64, object
    areas, the tally, the votes for misses per pixel)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"labels of one plane must be 2D, got shape {labels.shape}")
    if not views:
        raise InputError("comparing with flipped views needs at least one view")
    for view in views:
        if view.shape != labels.shape:
            raise InputError(f"a view has shape {view.shape}, the labels {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    area = np.bincount(labels.ravel())
    tally = _Tally(area.size)
    miss_votes = np.zeros(labels.shape, dtype=np.float64)
    for view in views:
        tally.add(labels, area, np.asarray(view).astype(np.int64, copy=False), miss_votes)
    return labels, area, tally, miss_votes


class _Tally:
    """Per-object sums over the views: disagreement and the votes behind each reason."""

    def __init__(self, size: int) -> None:
        self.disagreement = np.zeros(size)
        self.merged = np.zeros(size, dtype=np.int64)
        self.split = np.zeros(size, dtype=np.int64)
        self.absent = np.zeros(size, dtype=np.int64)

    def add(
        self, labels: np.ndarray, area: np.ndarray, view: np.ndarray, miss_votes: np.ndarray
    ) -> None:
        """Compare one view with the labels; a view's objects off the labels vote for misses."""
        size = area.size
        ids, others, iou = overlap_iou(labels, view)
        view_area = np.bincount(view.ravel())
        shared = np.rint(iou * (area[ids] + view_area[others]) / (1.0 + iou))
        best = np.zeros(size)
        np.maximum.at(best, ids, iou)
        self.disagreement += 1.0 - best
        pieces = np.bincount(ids[shared >= INSIDE * view_area[others]], minlength=size)
        self.merged += pieces >= 2
        spans = shared >= COVERS * area[ids]
        spanning = np.bincount(others[spans], minlength=view_area.size) >= 2
        self.split += np.bincount(ids[spans & spanning[others]], minlength=size) > 0
        covered = np.bincount(ids, weights=shared, minlength=size)
        self.absent += covered < FOUND * np.maximum(area, 1)
        on_labels = np.bincount(others, weights=shared, minlength=view_area.size)
        off = (view_area > 0) & (on_labels < OFF * view_area)
        off[0] = False
        miss_votes += off[view]

    def reason(self, k: int) -> str:
        """The most frequent way the views disagreed about object ``k`` (ties: the first of
        merged, split, absent); an outline when no view saw another number of objects."""
        votes = {MERGED: self.merged[k], SPLIT: self.split[k], FALSE: self.absent[k]}
        reason = max(votes, key=lambda name: votes[name])
        return reason if votes[reason] > 0 else OUTLINE


def _pinch_scores(labels: np.ndarray, area: np.ndarray) -> dict[int, float]:
    """Scores of the large objects whose solidity lies ``PINCH`` or more under the plane's
    median (see the module's docstring); empty for a plane of fewer than
    ``MIN_OBJECTS_FOR_SHAPE`` objects."""
    from skimage.measure import regionprops

    sizes = area[1:][area[1:] > 0]
    if sizes.size < MIN_OBJECTS_FOR_SHAPE:
        return {}
    regions = regionprops(labels)
    solidity = np.array([region.solidity for region in regions])
    typical_solidity, typical_area = np.median(solidity), np.median(sizes)
    return {
        region.label: float(min(1.0, PINCH_WEIGHT * drop))
        for region, drop in zip(regions, typical_solidity - solidity, strict=True)
        if area[region.label] >= typical_area and drop >= PINCH
    }


def _object_item(
    labels: np.ndarray, k: int, plane: tuple[int, ...], score: float, reason: str
) -> Uncertain:
    rows, cols = np.nonzero(labels == k)
    return _item(int(k), plane, rows, cols, score, reason)


def _miss_items(votes: np.ndarray, plane: tuple[int, ...], min_score: float) -> list[Uncertain]:
    """Places the views found and the labels lack: connected regions of their votes."""
    from scipy import ndimage as ndi

    regions, n = ndi.label(votes > 0)
    items = []
    for region, where in enumerate(ndi.find_objects(regions), start=1):
        inside = regions[where] == region
        score = float(votes[where][inside].mean())
        if score < min_score:
            continue
        rows, cols = np.nonzero(inside)
        items.append(_item(0, plane, rows + where[0].start, cols + where[1].start, score, MISSED))
    return items


def _item(
    label: int,
    plane: tuple[int, ...],
    rows: np.ndarray,
    cols: np.ndarray,
    score: float,
    reason: str,
) -> Uncertain:
    return Uncertain(
        label=label,
        plane=tuple(int(i) for i in plane),
        centroid=(float(rows.mean()), float(cols.mean())),
        bbox=(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
        score=round(score, 4),
        reason=reason,
    )


def _bbox_area(bbox: tuple[int, int, int, int]) -> int:
    return (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])


def iter_review(
    image: Stack | np.ndarray,
    labels: np.ndarray,
    bundle: Bundle,
    options: PredictOptions | None = None,
    *,
    axes: str = "YX",
    planes: Iterable[tuple[int, ...]] | None = None,
    flips: Iterable[str] = tuple(FLIPS),
    min_score: float = MIN_SCORE,
    predictor: Predictor | None = None,
    stop: Event | None = None,
) -> Generator[Progress, None, list[Uncertain]]:
    """Rank the places of an instance segmentation a person should check first.

    Parameters
    ----------
    image : Stack or ndarray
        The image that was segmented (a Stack brings its own axes).
    labels : ndarray
        Its instance labels, shaped like the image without channel axes (may hold the
        person's corrections).
    bundle : Bundle
        The model that segmented it.
    options : PredictOptions, optional
        The settings it was segmented with (``link_z`` is ignored: planes are compared alone).
    axes : str
        Axes of an ndarray ``image``, e.g. ``"YX"``, ``"ZYX"``, ``"YXC"``.
    planes : iterable of tuple of int, optional
        Indices (along the labels' non-YX axes) of the planes to review; all when None.
    flips : iterable of str
        Names from :data:`FLIPS`; each is one more prediction of every plane.
    min_score : float
        Items scoring less are left out.
    predictor : callable, optional
        Replaces the network (tests).
    stop : threading.Event, optional
        Set it to stop at the next yield: the plane being reviewed is ranked with the flipped
        views finished so far, and the items found until then are returned.

    Yields
    ------
    Progress
        After every batch of tiles of every flipped prediction, and after every comparison.

    Returns
    -------
    list of Uncertain
        Most unsure first, over all reviewed planes.
    """
    from napari_unet.core.inference import Progress
    from napari_unet.core.options import PredictOptions

    data, axes = (image.data, image.axes) if hasattr(image, "axes") else (image, axes.upper())
    flips = tuple(flips)
    unknown = [f for f in flips if f not in FLIPS]
    if unknown or not flips:
        raise InputError(f"flips {unknown or '()'} are not valid; choose from {', '.join(FLIPS)}")
    labels_axes = labels_axes_of(axes)
    expected = tuple(n for n, a in zip(data.shape, axes, strict=True) if a not in CHANNEL_AXES)
    if labels.shape != expected:
        raise InputError(
            f"labels of shape {labels.shape} do not fit an image of shape {data.shape} "
            f"(axes {axes}): expected {expected}"
        )
    if bundle.mode != "instances" or (options is not None and options.mode == "semantic"):
        raise InputError("finding uncertain objects needs an instance segmentation")
    options = replace(options or PredictOptions(), link_z=False, mode="instances")
    wanted = None if planes is None else [tuple(int(i) for i in p) for p in planes]
    n_planes = len(wanted) if wanted is not None else _plane_total(labels.shape, labels_axes)
    total = n_planes * len(flips) * STEPS_PER_VIEW
    found: list[Uncertain] = []
    done = 0

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    yield Progress(0, total, "checking")
    image_planes = _planes(data, axes, wanted)
    label_planes = _planes(labels, labels_axes, wanted)
    for (index, plane, plane_axes), (_, plane_labels, _) in zip(
        image_planes, label_planes, strict=True
    ):
        views = []
        for view in iter_flipped_views(plane, plane_axes, bundle, options, flips, predictor):
            if isinstance(view, Progress):
                share = min(1.0, view.done / max(view.total, 1))
                yield Progress(
                    done + int(share * (STEPS_PER_VIEW - 1)), total, "checking", view.notice
                )
            else:
                views.append(view)
                done += STEPS_PER_VIEW
            if stopped():
                break
        if views:
            found += rank_plane(plane_labels, views, plane=index, min_score=min_score)
        yield Progress(done, total, "checking")
        if stopped():
            break
    return sorted(found, key=lambda item: -item.score)


def iter_flipped_views(
    plane: np.ndarray,
    plane_axes: str,
    bundle: Bundle,
    options: PredictOptions,
    flips: Iterable[str] = tuple(FLIPS),
    predictor: Predictor | None = None,
) -> Iterator[Progress | np.ndarray]:
    """Segment one plane flipped each way of ``flips`` and flip each result back.

    Yields the prediction's Progress items and, after each flip, its labels (Y, X) in the
    plane's orientation. Closing the iterator stops the prediction under way.
    """
    from napari_unet.core.inference import iter_predict

    for name in flips:
        flipped = np.ascontiguousarray(np.flip(plane, FLIPS[name]))
        run = iter_predict(flipped, bundle, options, axes=plane_axes, predictor=predictor)
        try:
            while True:
                yield next(run)
        except StopIteration as finished:
            yield np.flip(finished.value.labels, FLIPS[name])
        finally:
            run.close()


def certainty_map(labels: np.ndarray, views: list[np.ndarray]) -> np.ndarray:
    """How sure the model is of each pixel of ``labels``, 0 to 1, judged by flipped ``views``.

    A pixel of an object gets ``1 -`` the object's flip disagreement in :func:`rank_plane` (the
    mean over the views of ``1 -`` its best IoU; the shape cue does not enter: it is a doubt
    about the segmentation, not about the model's consistency); a background pixel gets ``1 -``
    the share of views that find an object there that the labels lack. Whole objects share
    one value, so their outlines are not singled out.

    Parameters
    ----------
    labels : ndarray of shape (Y, X)
        Object ids, 0 background.
    views : list of ndarray of shape (Y, X)
        Other segmentations of the same plane, at least one.

    Returns
    -------
    ndarray of shape (Y, X), float32
    """
    labels, _, tally, miss_votes = _compare(labels, views)
    n = len(views)
    per_object = 1.0 - tally.disagreement / n
    certainty = np.where(labels > 0, per_object[labels], 1.0 - miss_votes / n)
    return certainty.astype(np.float32)


def review(*args: Any, **kwargs: Any) -> list[Uncertain]:
    """Run :func:`iter_review` to completion and return its items."""
    from napari_unet.core.generators import run_to_end

    return run_to_end(iter_review(*args, **kwargs))


def _plane_total(shape: tuple[int, ...], axes: str) -> int:
    return int(np.prod([n for n, a in zip(shape, axes, strict=True) if a not in "YX"], dtype=int))


def _planes(
    data: Any, axes: str, wanted: list[tuple[int, ...]] | None
) -> Iterator[tuple[tuple[int, ...], np.ndarray, str]]:
    """``(index, plane, plane_axes)`` of all planes, or of the ``wanted`` ones only."""
    if wanted is None:
        yield from iter_planes(data, axes)
        return
    for index in wanted:
        yield (index, *read_plane(data, axes, index))
