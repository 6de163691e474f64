"""What changed between two segmentations of one image (torch-free).

Instances: objects are matched one-to-one per plane by IoU
(:func:`napari_unet.core.metrics.match_objects`, at :data:`MATCH_IOU`, the threshold of the
AP@0.5 that compares model versions). An object of the new labels without a match APPEARED,
one of the old labels without a match VANISHED, and a matched pair whose IoU is below
:data:`CHANGED_IOU` CHANGED shape. Semantic labels: every pixel whose class differs changed,
one entry per plane and (old class, new class) pair.

The change map is a label image with one id per change; a changed object covers its old and
its new pixels. Where changes overlap (a split, a merge, an object replaced by a much bigger or
smaller one), the smaller change is drawn on top (on a tie: appeared, vanished, changed), so
nested changes stay visible. The table lists every change.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.metrics import match_objects
from napari_unet.core.preprocess import plane_key

APPEARED = "appeared"
VANISHED = "vanished"
CHANGED = "changed"
KINDS = (APPEARED, VANISHED, CHANGED)
MATCH_IOU = 0.5  # objects overlapping at least this much are the same object
CHANGED_IOU = 0.8  # a matched object whose IoU is below this changed shape
MODES = ("instances", "semantic")
DEFAULT_PLANE_AXES = "IJKLMNOPQ"  # names of unnamed plane axes (I: independent planes)


@dataclass(frozen=True)
class Change:
    """One entry of a change map.

    Attributes
    ----------
    label : int
        Its value in :attr:`ChangeMap.labels` (1, 2, ...).
    kind : {"appeared", "vanished", "changed"}
    plane : tuple of int
        Index of the plane along the non-YX axes (``()`` for a single image).
    old, new : int
        Instances: the object's id in the old and new labels (0 where it has none).
        Semantic: the pixels' class in the old and new labels.
    iou : float
        IoU of a matched object pair; 0 for appeared and vanished objects, NaN for semantic.
    pixels : int
        Instances: pixels in the old or new object. Semantic: pixels that changed that way.
    """

    label: int
    kind: str
    plane: tuple[int, ...]
    old: int
    new: int
    iou: float
    pixels: int


@dataclass(frozen=True)
class ChangeMap:
    """The changes between two label images and a label image showing them.

    Attributes
    ----------
    labels : ndarray of uint32, same shape as the inputs
        ``Change.label`` where the change is shown, 0 elsewhere.
    changes : tuple of Change
        In plane order, then appeared, vanished, changed, then by id.
    mode : {"instances", "semantic"}
    axes : str
        Axes of the labels.
    """

    labels: np.ndarray
    changes: tuple[Change, ...]
    mode: str
    axes: str

    def counts(self) -> dict[str, int]:
        """Number of changes of each kind (instances) or changed pixels (semantic)."""
        if self.mode == "semantic":
            return {CHANGED: sum(change.pixels for change in self.changes)}
        found = {kind: 0 for kind in KINDS}
        for change in self.changes:
            found[change.kind] += 1
        return found

    def describe(self) -> str:
        """One line for the user, e.g. ``"12 appeared, 3 vanished, 20 changed"``."""
        counts = self.counts()
        if self.mode == "semantic":
            share = counts[CHANGED] / max(self.labels.size, 1)
            return f"{counts[CHANGED]} pixels changed class ({share:.1%})"
        return ", ".join(f"{counts[kind]} {kind}" for kind in KINDS)

    def columns(self) -> dict[str, np.ndarray]:
        """The table as columns, with ``index`` = label value (a napari Labels ``features``).

        Plane positions get one column per non-YX axis, named by its letter in lower case.
        """
        rows = self.changes
        table: dict[str, np.ndarray] = {
            "index": np.array([c.label for c in rows], dtype=np.int64),
            "kind": np.array([c.kind for c in rows], dtype=object),
        }
        for position, axis in enumerate(a for a in self.axes if a not in "YX"):
            table[axis.lower()] = np.array([c.plane[position] for c in rows], dtype=np.int64)
        old_name, new_name = (
            ("old_class", "new_class") if self.mode == "semantic" else ("old_id", "new_id")
        )
        table[old_name] = np.array([c.old for c in rows], dtype=np.int64)
        table[new_name] = np.array([c.new for c in rows], dtype=np.int64)
        table["iou"] = np.array([c.iou for c in rows], dtype=np.float64)
        table["pixels"] = np.array([c.pixels for c in rows], dtype=np.int64)
        return table


def compare_labels(
    old: np.ndarray, new: np.ndarray, *, mode: str = "instances", axes: str | None = None
) -> ChangeMap:
    """The changes from ``old`` to ``new`` labels of the same image, plane by plane.

    Parameters
    ----------
    old, new : ndarray of non-negative integers, same shape
        Label images: object ids (``mode="instances"``) or class indices (``"semantic"``).
    mode : {"instances", "semantic"}
    axes : str, optional
        One letter per axis, including ``Y`` and ``X`` (e.g. ``"ZYX"``). Planes are taken
        along the other axes. Default: the last two axes are Y and X.

    Returns
    -------
    ChangeMap

    Raises
    ------
    InputError
        Shapes, axes, mode or values that cannot be compared.
    """
    return run_to_end(iter_changes(old, new, mode=mode, axes=axes))


def iter_changes(
    old: np.ndarray, new: np.ndarray, *, mode: str = "instances", axes: str | None = None
) -> Generator[tuple[int, int], None, ChangeMap]:
    """:func:`compare_labels`, yielding ``(planes done, planes)`` after every plane.

    A worker running it can stop between two planes.
    """
    old, new, axes = _checked(old, new, mode, axes)
    labels = np.zeros(old.shape, dtype=np.uint32)
    changes: list[Change] = []
    planes = list(_planes(old.shape, axes))
    yield 0, len(planes)
    for done, (index, where) in enumerate(planes, start=1):
        compare = _semantic_plane if mode == "semantic" else _instance_plane
        found, shown = compare(
            old[where].astype(np.int64), new[where].astype(np.int64), index, len(changes)
        )
        changes.extend(found)
        labels[where] = shown
        yield done, len(planes)
    return ChangeMap(labels, tuple(changes), mode, axes)


def _checked(
    old: np.ndarray, new: np.ndarray, mode: str, axes: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    old, new = np.asarray(old), np.asarray(new)
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if old.shape != new.shape:
        raise InputError(f"label images differ in shape: {old.shape} vs {new.shape}")
    if old.ndim < 2:
        raise InputError(f"label images need at least 2 axes (Y, X), got shape {old.shape}")
    if axes is None:
        axes = DEFAULT_PLANE_AXES[: old.ndim - 2] + "YX"
    if (
        len(axes) != old.ndim
        or axes.count("Y") != 1
        or axes.count("X") != 1
        or len(set(axes)) != len(axes)
    ):
        raise InputError(
            f"axes {axes!r} do not fit labels of shape {old.shape}: give one distinct letter "
            "per axis, including Y and X"
        )
    for name, array in (("old", old), ("new", new)):
        if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
            raise InputError(f"{name} labels must be integers, not {array.dtype}")
        if array.size and array.min() < 0:
            raise InputError(f"{name} labels must not be negative")
    return old, new, axes


def _planes(shape: tuple[int, ...], axes: str) -> Iterator[tuple[tuple[int, ...], tuple]]:
    """``(index, key)`` of every YX plane: its index along the other axes, and its key."""
    stack = [n for n, a in zip(shape, axes, strict=True) if a not in "YX"]
    for index in np.ndindex(*stack):
        yield index, plane_key(index, axes)


def _instance_plane(
    old: np.ndarray, new: np.ndarray, index: tuple[int, ...], first: int
) -> tuple[list[Change], np.ndarray]:
    """Changes of one plane of instance labels, numbered from ``first + 1``, and their map."""
    sizes_old = np.bincount(old.ravel()) if old.size else np.zeros(1, np.int64)
    sizes_new = np.bincount(new.ravel()) if new.size else np.zeros(1, np.int64)
    matches = match_objects(old, new, MATCH_IOU)
    matched_old = {a for a, _, _ in matches}
    matched_new = {b for _, b, _ in matches}
    appeared = [int(b) for b in np.flatnonzero(sizes_new) if b and b not in matched_new]
    vanished = [int(a) for a in np.flatnonzero(sizes_old) if a and a not in matched_old]
    changed = sorted((a, b, iou) for a, b, iou in matches if iou < CHANGED_IOU)

    changes: list[Change] = []

    def add(kind: str, a: int, b: int, iou: float, pixels: int) -> int:
        changes.append(Change(first + len(changes) + 1, kind, index, a, b, iou, pixels))
        return len(changes)  # numbered from 1 in this plane until the end

    # look-up tables from object id to change number, one per kind and version
    appeared_new = np.zeros(sizes_new.size, np.uint32)
    vanished_old = np.zeros(sizes_old.size, np.uint32)
    changed_old = np.zeros(sizes_old.size, np.uint32)
    changed_new = np.zeros(sizes_new.size, np.uint32)
    for b in appeared:
        appeared_new[b] = add(APPEARED, 0, b, 0.0, int(sizes_new[b]))
    for a in vanished:
        vanished_old[a] = add(VANISHED, a, 0, 0.0, int(sizes_old[a]))
    for a, b, iou in changed:
        both = int(sizes_old[a] + sizes_new[b])
        union = both - round(iou * both / (1 + iou))  # intersection = iou * union
        changed_old[a] = changed_new[b] = add(CHANGED, a, b, iou, union)

    # every pixel shows the smallest change it belongs to (the first of these on a tie)
    sizes = np.array([np.iinfo(np.uint32).max] + [c.pixels for c in changes], np.uint32)
    shown = appeared_new[new]
    shown_size = sizes[shown]
    for candidate in (vanished_old[old], changed_new[new], changed_old[old]):
        smaller = sizes[candidate] < shown_size
        shown[smaller] = candidate[smaller]
        shown_size[smaller] = sizes[candidate[smaller]]
    shown[shown > 0] += np.uint32(first)
    return changes, shown


def _semantic_plane(
    old: np.ndarray, new: np.ndarray, index: tuple[int, ...], first: int
) -> tuple[list[Change], np.ndarray]:
    """Pixels of one plane whose class changed: one change per (old, new) class pair."""
    shown = np.zeros(old.shape, np.uint32)
    differs = old != new
    if not differs.any():
        return [], shown
    span = int(max(old.max(), new.max())) + 1
    pairs, inverse, counts = np.unique(
        old[differs] * span + new[differs], return_inverse=True, return_counts=True
    )
    shown[differs] = first + 1 + inverse.astype(np.uint32)
    changes = [
        Change(
            first + 1 + k, CHANGED, index, int(pair // span), int(pair % span), float("nan"), int(n)
        )
        for k, (pair, n) in enumerate(zip(pairs, counts, strict=True))
    ]
    return changes, shown
