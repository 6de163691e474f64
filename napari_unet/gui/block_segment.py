"""Segment a large image from the Segment panel block by block, through the engine the CLI's
``predict --scheduler`` runs (:func:`~napari_unet.core.distributed.iter_predict_blocks`), in
this process or on a Dask scheduler, with the labels on disk and shown as blocks finish.

An image is large when napari reads it lazily (an OME-Zarr, a memory-mapped or page-by-page
TIFF, any multiscale layer) and its labels would take more than :data:`BLOCKS_ABOVE`; a
scheduler address typed in the panel sends any image there. The Labels layer is created at the
start over an all-zero Zarr array in a temporary folder (the panel's work folder); each finished block's labels come to
the main thread with its progress and are written there (ids unique per block; objects cut by a
block face have one id on each side). When every block is done and merged across faces, the
final labels are written to a second array, chunk by chunk in the worker, and become the
layer's data. A Stop (the panel's Cancel) is honoured between blocks: the layer keeps the
blocks finished so far. Each array's temporary folder lives as long as the array is used.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QLineEdit

from napari_unet.core.io import LAZY_BYTES, Stack
from napari_unet.core.options import PredictOptions
from napari_unet.core.seed_level import describe_levels
from napari_unet.gui.controls import collapsible_form, int_spin
from napari_unet.gui.layers import METADATA_KEY, layer_key
from napari_unet.gui.workers import Job, JobEnd, worker_thread_count

BLOCKS_ABOVE = LAZY_BYTES  # labels of a lazily read image larger than this are made in blocks


def full_resolution(layer: Any) -> Any:
    """The layer's data at full resolution (level 0 of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data


def is_large(layer: Any) -> bool:
    """Whether the image layer is read lazily (not an array in memory) and its labels would
    take more than :data:`BLOCKS_ABOVE` (uint32 per pixel of its planes)."""
    data = full_resolution(layer)
    if type(data) is np.ndarray and not layer.multiscale:
        return False
    pixels = int(np.prod(data.shape[:-1] if layer.rgb else data.shape, dtype=np.int64))
    return 4 * pixels > BLOCKS_ABOVE


@dataclass(frozen=True)
class BlockRequest:
    """A block-by-block segmentation as the panel asked for it (main thread).

    Attributes
    ----------
    stack : Stack
        The full-resolution image (lazy, or in memory) and its axes.
    model : str
    options : PredictOptions
    scheduler : str or None
        A Dask scheduler's address; None segments in this process.
    block_size : int or None
        Block edge in Y/X pixels; None lets the engine choose.
    """

    stack: Stack
    model: str
    options: PredictOptions
    scheduler: str | None
    block_size: int | None


@dataclass(frozen=True)
class BlockOutcome:
    """What the job returns: ``labels`` (the merged Zarr array, None after a Stop), how many
    blocks were done of the total, the objects found and the engine's statistics."""

    labels: Any
    blocks_done: int
    blocks: int
    stats: dict[str, Any]


class BlockControls:
    """The panel's "Big images" section: where the blocks run, their size, their folder."""

    def __init__(self) -> None:
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText("empty: this machine")
        self.scheduler_edit.setToolTip(
            "A Dask scheduler's address (tcp://host:8786) to segment on its cluster, in "
            "blocks; empty segments large images block by block on this machine. The workers "
            "need napari-unet installed in this version, and the work folder."
        )
        self.block_spin = int_spin(0, 16384, 64, special="auto")
        self.block_spin.setToolTip(
            "Block edge in pixels (at least the tile size); auto: the largest that fits the "
            "workers' memory and whose window with its halo is a whole number of tiles, up to "
            "3072 px."
        )
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText(tempfile.gettempdir())
        self.folder_edit.setToolTip(
            "Where the labels of a large image are kept while it is open. On a cluster, a "
            "folder every worker sees under the same path."
        )
        self.section = collapsible_form(
            "Big images (Dask)",
            [
                ("Scheduler", self.scheduler_edit),
                ("Block size (px)", self.block_spin),
                ("Work folder", self.folder_edit),
            ],
        )

    @property
    def scheduler(self) -> str | None:
        return self.scheduler_edit.text().strip() or None

    @property
    def block_size(self) -> int | None:
        return self.block_spin.value() or None

    @property
    def folder(self) -> str | None:
        return self.folder_edit.text().strip() or None


def work(request: BlockRequest, folder: Path) -> Callable[[threading.Event], Generator]:
    """The job's generator (run in the worker's thread): segment in blocks, yield each block's
    progress (with its labels), then write the merged labels into ``folder`` (removed unless
    they were written)."""

    def run(stop: threading.Event) -> Generator[Any, None, BlockOutcome]:
        from napari_unet.core.disk_labels import label_array
        from napari_unet.core.distributed import (
            connect,
            discard_work,
            iter_predict_blocks,
            iter_store,
            model_bytes,
        )
        from napari_unet.core.registry import load_bundle

        here = request.scheduler is None
        output = folder / "labels.zarr"
        written = False
        try:
            model = model_bytes(load_bundle(request.model))
            with connect(
                "local" if here else request.scheduler,
                workers=1 if here else None,
                processes=False,
                as_default=False,  # napari keeps reading its lazy layers itself
            ) as (client, _):
                engine = iter_predict_blocks(
                    request.stack,
                    model,
                    request.options,
                    client,
                    output,
                    block_size=request.block_size,
                    torch_threads=worker_thread_count() if here else None,
                    show_blocks=True,
                )
                done = total = 0
                while True:
                    try:
                        progress = next(engine)
                    except StopIteration as finished:
                        result = finished.value
                        break
                    if progress.stage == "blocks":
                        done, total = progress.done, progress.total
                    yield progress
                    if stop.is_set():
                        engine.close()  # its unfinished blocks are cancelled with the client
                        return BlockOutcome(None, done, total, {})
            labels = label_array(output, result.labels.shape, result.labels.dtype)
            yield from iter_store(result.labels, labels)
            written = True
        finally:
            discard_work(output)
            if not written:
                shutil.rmtree(folder, ignore_errors=True)
        return BlockOutcome(labels, total, total, result.stats)

    return run


def _on_disk(array: Any, folder: Path) -> Any:
    """``array``, with ``folder`` (which holds it) removed once nothing uses the array (its
    layer was deleted, or took other data) or when Python exits."""
    weakref.finalize(array, shutil.rmtree, folder, ignore_errors=True)
    return array


class BlockSegmenter:
    """Runs the Segment panel's block-by-block segmentations: the Labels layer on disk, its
    blocks as they arrive, the merged result.

    Parameters
    ----------
    viewer : napari.Viewer
    status : callable
        Shows a line of text in the panel.
    """

    def __init__(self, viewer: Any, status: Callable[[str], None]) -> None:
        self.viewer = viewer
        self.status = status
        self.controls = BlockControls()
        self._layer: Any = None  # the Labels layer the running job fills
        self._shown: Any = None  # its array on disk
        self._arrived = 0  # blocks written into it

    @property
    def active(self) -> bool:
        """Whether a block-by-block job runs (its progress carries labels)."""
        return self._layer is not None

    def wanted(self, layer: Any) -> bool:
        """Whether ``layer`` is segmented in blocks: a large lazy image, or a scheduler
        address was given."""
        return self.controls.scheduler is not None or is_large(layer)

    def job(
        self, image: Any, stack: Stack, model: str, options: PredictOptions
    ) -> Job[BlockOutcome]:
        """Create the (empty) Labels layer on disk and describe the job that fills it."""
        from napari_unet.core.disk_labels import label_array
        from napari_unet.core.preprocess import labels_axes_of

        axes = labels_axes_of(stack.axes)
        sizes = dict(zip(stack.axes, stack.data.shape, strict=True))
        shown = Path(tempfile.mkdtemp(prefix="napari-unet-shown-", dir=self.controls.folder))
        final = Path(tempfile.mkdtemp(prefix="napari-unet-labels-", dir=self.controls.folder))
        self._shown = _on_disk(
            label_array(shown / "labels.zarr", tuple(sizes[a] for a in axes)), shown
        )
        self._arrived = 0
        spatial = stack.axes.replace("S", "")
        scale = [s for s, a in zip(image.scale, spatial, strict=False) if a != "C"]
        self._layer = self.viewer.add_labels(
            self._shown,
            name=f"{image.name} labels",
            scale=scale or None,
            metadata={METADATA_KEY: {"axes": axes}},
        )
        request = BlockRequest(
            stack, model, options, self.controls.scheduler, self.controls.block_size
        )
        return Job(
            work(request, final),
            f"segmenting {image.name} in blocks on {request.scheduler or 'this machine'}",
            "Segmentation failed",
            partial(self._on_result, final),
        )

    def on_progress(self, progress: Any) -> None:
        """Main thread: write a finished block's labels into the layer; show the dashboard."""
        if progress.notice:
            self.status(f"Segmenting in blocks; {progress.notice}")
        labels = getattr(progress, "labels", None)
        if labels is not None:
            self._shown[progress.where] = labels
            self._arrived += 1
            self._layer.refresh()

    def _on_result(self, folder: Path, outcome: BlockOutcome) -> None:
        layer = self._layer
        if outcome.labels is None:
            self.status(
                f"Stopped after {outcome.blocks_done} of {outcome.blocks} blocks: "
                f"'{layer.name}' holds them, not merged across block faces."
            )
            return
        layer.data = _on_disk(outcome.labels, folder)
        stats = outcome.stats
        found = f"{stats['objects']} objects" if stats["objects"] is not None else "classes"
        levels = describe_levels(stats["levels"])
        self.status(
            f"{layer.name}: {found}, {stats['blocks']} blocks of {stats['block_size']} px "
            f"(+{stats['halo']} px halo), on disk until the layer is removed."
            + (f"\n{levels[0].upper()}{levels[1:]}." if levels else "")
        )

    def finished(self, end: JobEnd) -> None:
        """Main thread: the job ended. A job that failed or was aborted before any block
        arrived leaves no empty layer behind."""
        if end is not JobEnd.DONE and not self._arrived:
            key = layer_key(self._layer)
            empty = next((lyr for lyr in self.viewer.layers if layer_key(lyr) == key), None)
            if empty is not None:
                self.viewer.layers.remove(empty)
        self._layer = self._shown = None
