"""Which planes of a Labels layer the user corrected, and where.

What was corrected = where the layer now differs from the last prediction the plugin wrote
into it. The known-mask of a corrected plane is the bounding boxes of the edits grown by a
margin (so the model also sees the correct surroundings), or the whole plane when the user
marked it fully checked. This module holds no Qt: the widget calls :meth:`update` after the
layer's ``paint`` / ``data`` / ``set_data`` events (deferred: napari emits ``paint`` before it
writes the pixels) and before training.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from napari_unet.core.preprocess import plane_key, stack_axes_of

PlaneIndex = tuple[int, ...]


def edited_regions(difference: np.ndarray, margin: int) -> np.ndarray:
    """Union of the edits' bounding boxes, each grown by ``margin`` pixels (bool, (Y, X))."""
    from scipy import ndimage as ndi

    known = np.zeros(difference.shape, dtype=bool)
    components, _ = ndi.label(difference)
    for box in ndi.find_objects(components):
        if box is None:
            continue
        grown = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(box, difference.shape, strict=True)
        )
        known[grown] = True
    return known


class CorrectionTracker:
    """Tracks the corrections of one Labels layer against the prediction written into it.

    Parameters
    ----------
    reference : ndarray
        The labels as the plugin last wrote them (copied).
    axes : str
        Axes of the labels (e.g. ``"ZYX"``); planes are indexed along the non-YX axes.
    margin : int
        Pixels of context added around each edit.
    """

    def __init__(self, reference: np.ndarray, axes: str, margin: int = 16) -> None:
        self.reference = np.array(reference, copy=True)
        self.axes = axes
        self.margin = int(margin)
        self.edits: dict[PlaneIndex, np.ndarray] = {}
        self.fully_checked: set[PlaneIndex] = set()
        self.excluded: set[PlaneIndex] = set()

    @property
    def stack_axes(self) -> str:
        return stack_axes_of(self.axes)

    def plane_slice(self, index: PlaneIndex) -> tuple[Any, ...]:
        """Index of one plane into the labels array."""
        return plane_key(index, self.axes)

    def all_planes(self) -> Iterable[PlaneIndex]:
        shape = [n for n, a in zip(self.reference.shape, self.axes, strict=True) if a not in "YX"]
        return np.ndindex(*shape)

    def planes_in_paint(self, atoms: Any) -> set[PlaneIndex] | None:
        """Planes touched by a napari paint event's atoms, or None when they cannot be told.

        An atom's first element locates the edit: a tuple with one entry per axis, either
        index arrays (``Labels.data_setitem``) or slices (the bounding box of a brush, fill
        or polygon edit in napari 0.9).
        """
        positions = [i for i, a in enumerate(self.axes) if a not in "YX"]
        if not positions:
            return {()}
        try:
            planes: set[PlaneIndex] = set()
            for atom in atoms:
                key = atom[0]
                if len(key) != len(self.axes):
                    return None
                entries = [key[p] for p in positions]
                if any(isinstance(entry, slice) for entry in entries):
                    ranges = [
                        range(*entry.indices(self.reference.shape[p]))
                        if isinstance(entry, slice)
                        else np.unique(np.asarray(entry)).tolist()
                        for entry, p in zip(entries, positions, strict=True)
                    ]
                    planes.update(
                        tuple(int(v) for v in index) for index in itertools.product(*ranges)
                    )
                    continue
                stacked = np.stack([np.asarray(entry).ravel() for entry in entries], axis=1)
                planes.update(tuple(int(v) for v in row) for row in np.unique(stacked, axis=0))
            return planes
        except (TypeError, IndexError, ValueError):
            return None

    def update(
        self, data: np.ndarray, planes: Iterable[PlaneIndex] | None = None
    ) -> set[PlaneIndex]:
        """Recompute the edits of ``planes`` (all when None); returns the planes that changed."""
        if data.shape != self.reference.shape:
            self.edits.clear()
            return set()
        changed = set()
        for index in self.all_planes() if planes is None else planes:
            where = self.plane_slice(index)
            difference = np.asarray(data[where]) != self.reference[where]
            before = self.edits.get(index)
            if difference.any():
                self.edits[index] = edited_regions(difference, self.margin)
            else:
                self.edits.pop(index, None)
            after = self.edits.get(index)
            if (before is None) != (after is None) or (
                after is not None and not np.array_equal(before, after)
            ):
                changed.add(index)
        return changed

    def corrected_planes(self) -> list[PlaneIndex]:
        """Planes with edits or marked fully checked, in order (excluded ones included)."""
        return sorted(set(self.edits) | self.fully_checked)

    def selected_planes(self) -> list[PlaneIndex]:
        """Corrected planes the user has not unticked."""
        return [p for p in self.corrected_planes() if p not in self.excluded]

    def known_mask(self, index: PlaneIndex) -> np.ndarray:
        """Where the labels of a plane are trusted."""
        shape = tuple(n for n, a in zip(self.reference.shape, self.axes, strict=True) if a in "YX")
        if index in self.fully_checked:
            return np.ones(shape, dtype=bool)
        return self.edits.get(index, np.zeros(shape, dtype=bool))

    def accept(self, data: np.ndarray) -> None:
        """The plugin wrote new labels: they become the reference and edits start afresh."""
        self.reference = np.array(data, copy=True)
        self.edits.clear()
        self.fully_checked.clear()
        self.excluded.clear()
