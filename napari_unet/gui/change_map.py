"""The change map shown after re-segmenting an image with a new model version.

The previous version's labels (the prediction the plugin wrote into the corrected layer, not
the user's corrections) are compared with the new version's in a worker
(:mod:`napari_unet.core.changes`); the result lands in a Labels layer
``"<image> changes (<old> -> <new>)"`` coloured by kind, with the table as its ``features``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from napari_unet.core.changes import APPEARED, CHANGED, VANISHED
from napari_unet.gui.layers import METADATA_KEY
from napari_unet.gui.session import Session
from napari_unet.gui.workers import Job, JobRunner, Step

KIND_COLOURS = {APPEARED: "#34c759", VANISHED: "#ff3b30", CHANGED: "#ffd60a"}
COLOUR_NAMES = {APPEARED: "green", VANISHED: "red", CHANGED: "yellow"}


@dataclass(frozen=True)
class Previous:
    """The labels a re-segmentation is compared with, taken when it was asked for.

    Attributes
    ----------
    labels : ndarray
        The previous version's own output for the image (never written to in place).
    axes : str
    model : str
        The version that made them.
    mode : {"instances", "semantic"}
    """

    labels: np.ndarray
    axes: str
    model: str
    mode: str


def previous_labels(session: Session, layer: Any, model: str = "") -> Previous | None:
    """What a re-segmentation of ``layer``'s image is compared with.

    The prediction the plugin wrote into the layer (before the user's corrections) when the
    session has it, else a copy of the layer's data; None when neither axes nor mode are known.
    """
    segmentation = session.find(layer)
    if segmentation is not None:
        tracker = segmentation.tracker
        # the tracker replaces its reference when the plugin writes again; it never edits it
        return Previous(tracker.reference, tracker.axes, segmentation.model, segmentation.mode)
    axes = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY, {}).get("axes")
    if not axes or len(axes) != layer.data.ndim:
        return None
    return Previous(np.array(layer.data, copy=True), axes, model, "instances")


class ChangeMapper:
    """Computes a change map in a worker and shows it as a Labels layer.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.runner = JobRunner(
            measure=lambda planes: Step(planes[0], planes[1], "planes compared")
        )

    @staticmethod
    def layer_name(image_name: str, old_model: str, new_model: str) -> str:
        return f"{image_name} changes ({old_model} -> {new_model})"

    def start(
        self, previous: Previous, new_layer: Any, *, image_name: str, new_model: str, mode: str
    ) -> Any:
        """Compare ``previous`` with ``new_layer``'s labels in a worker; returns it (or None)."""
        from napari.utils.notifications import show_info

        from napari_unet.core.changes import iter_changes

        if previous.mode != mode or previous.labels.shape != new_layer.data.shape:
            show_info(
                f"No change map: {previous.model}'s labels ({previous.mode}, "
                f"{'x'.join(map(str, previous.labels.shape))}) and {new_model}'s ({mode}, "
                f"{'x'.join(map(str, new_layer.data.shape))}) cannot be compared."
            )
            return None
        old = previous.labels
        new = np.array(new_layer.data, copy=True)  # the user may paint on it meanwhile
        name = self.layer_name(image_name, previous.model, new_model)
        where = {
            "scale": list(new_layer.scale),
            "translate": list(new_layer.translate),
            "axes": previous.axes,
        }

        def work(_stop: threading.Event) -> Any:
            return (yield from iter_changes(old, new, mode=mode, axes=previous.axes))

        # an older comparison still running is replaced: its result is not wanted any more
        title = f"comparing {previous.model} with {new_model}"
        show = partial(self._show, name=name, where=where)
        return self.runner.start(
            Job(work, title, "Could not compare the versions", show), replace=True
        )

    def _show(self, found: Any, name: str, where: dict[str, Any]) -> None:
        """Add (or update) the change layer and tell the user what changed."""
        from napari.layers import Labels
        from napari.utils.colormaps import DirectLabelColormap
        from napari.utils.notifications import show_info

        colours: dict[int | None, str] = {c.label: KIND_COLOURS[c.kind] for c in found.changes}
        colours[0] = colours[None] = "#00000000"
        colormap = DirectLabelColormap(color_dict=colours)
        existing = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if isinstance(existing, Labels) and existing.data.shape == found.labels.shape:
            layer = existing
            layer.data = found.labels
        else:
            layer = self.viewer.add_labels(
                found.labels,
                name=name,
                scale=where["scale"],
                translate=where["translate"],
                metadata={METADATA_KEY: {"axes": where["axes"]}},
                opacity=1.0,
            )
        layer.colormap = colormap
        layer.features = found.columns()
        legend = ", ".join(
            f"{COLOUR_NAMES[kind]} {kind}"
            for kind in ((CHANGED,) if found.mode == "semantic" else (APPEARED, VANISHED, CHANGED))
        )
        show_info(f"{name}: {found.describe()} ({legend}).")
