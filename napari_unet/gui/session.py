"""State shared by the Segment and Fine-tune panels of one dock widget (no Qt here).

One :class:`Session` per dock widget, passed explicitly: which Labels layers the plugin
wrote (with their correction trackers and source images) and where training sets live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.dataset import TrainingSet, image_fingerprint
from napari_unet.core.options import PredictOptions
from napari_unet.core.preprocess import labels_axes_of, read_plane
from napari_unet.core.samples import TrainingSample
from napari_unet.gui.corrections import CorrectionTracker, PlaneIndex
from napari_unet.gui.layers import layer_key


def training_root() -> Path:
    """Folder holding the plugin's training sets (``$NAPARI_UNET_TRAINING_DIR`` overrides)."""
    override = os.environ.get("NAPARI_UNET_TRAINING_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False)) / "training"


@dataclass
class Segmentation:
    """A Labels layer the plugin wrote, what it came from, and what the user corrected."""

    image_name: str
    image_data: np.ndarray  # copy of the image as segmented
    image_axes: str  # axes of image_data (channels included)
    model: str
    mode: str
    class_names: list[str]
    options: PredictOptions  # what it was segmented with (fine-tuning judges versions alike)
    tracker: CorrectionTracker
    image_key: str = ""
    source: str = ""
    comparison: bool = False  # a re-segment to compare models: saved corrections stay out

    def __post_init__(self) -> None:
        if not self.image_key:
            self.image_key = image_fingerprint(self.image_data)

    @property
    def labels_axes(self) -> str:
        return labels_axes_of(self.image_axes)

    def plane_pixels(self, index: PlaneIndex) -> tuple[np.ndarray, str]:
        """Raw image pixels of one plane and their axes (``YX`` plus C/S), read directly."""
        return read_plane(self.image_data, self.image_axes, tuple(index))


@dataclass
class Session:
    """Everything the two panels share."""

    segmentations: dict[str, Segmentation] = field(default_factory=dict)  # by layer_key()

    def register(self, layer: Any, segmentation: Segmentation) -> None:
        self.segmentations[layer_key(layer)] = segmentation

    def forget(self, layer: Any) -> None:
        self.segmentations.pop(layer_key(layer), None)

    def find(self, layer: Any | None) -> Segmentation | None:
        """The segmentation the plugin wrote into ``layer``; None for another layer or None."""
        return None if layer is None else self.segmentations.get(layer_key(layer))

    def others_of_image(self, layer: Any) -> list[Segmentation]:
        """Other layers' segmentations of the same image for the same training set."""
        segmentation = self.find(layer)
        if segmentation is None:
            return []
        key = layer_key(layer)
        return [
            other
            for other_key, other in self.segmentations.items()
            if other_key != key
            and other.image_key == segmentation.image_key
            and other.mode == segmentation.mode
            and other.class_names == segmentation.class_names
        ]

    def training_set(self, segmentation: Segmentation) -> TrainingSet:
        """The training set for this model family (mode + class names), opened or created."""
        slug = (
            segmentation.mode
            if segmentation.mode == "instances"
            else "semantic-" + "-".join(segmentation.class_names)
        )
        return TrainingSet.open_or_create(
            training_root() / slug, segmentation.mode, segmentation.class_names
        )


def collect_planes(
    segmentation: Segmentation, labels: np.ndarray
) -> list[tuple[PlaneIndex, np.ndarray, str, np.ndarray, np.ndarray, bool]]:
    """Copies of the selected corrected planes: (index, pixels, plane_axes, labels, known, fully)."""
    tracker = segmentation.tracker
    planes = []
    for index in tracker.selected_planes():
        pixels, plane_axes = segmentation.plane_pixels(index)
        plane_labels = np.array(labels[tracker.plane_slice(index)], copy=True)
        planes.append(
            (
                index,
                pixels.copy(),
                plane_axes,
                plane_labels,
                tracker.known_mask(index).copy(),
                index in tracker.fully_checked,
            )
        )
    return planes


def save_planes(
    training_set: TrainingSet,
    segmentation: Segmentation,
    planes: list[tuple[Any, ...]],
    stale: list[PlaneIndex],
) -> None:
    """Write planes to the training set (run off the main thread) and drop stale ones."""
    training_set.add_image(
        segmentation.image_key,
        source=segmentation.source or segmentation.image_name,
        shape=segmentation.image_data.shape,
        axes=segmentation.image_axes,
    )
    for index, pixels, plane_axes, labels, known, fully in planes:
        training_set.put_plane(
            segmentation.image_key,
            index,
            pixels,
            labels,
            known,
            plane_axes=plane_axes,
            fully_checked=fully,
        )
    for index in stale:
        training_set.remove_plane(segmentation.image_key, index)


def samples_from_planes(planes: list[tuple[Any, ...]], source: str) -> list[TrainingSample]:
    """Training samples from :func:`collect_planes` output."""
    return [
        TrainingSample(pixels, labels, known, plane_axes, f"{source}{list(index)}")
        for index, pixels, plane_axes, labels, known, _ in planes
    ]
