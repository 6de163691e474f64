"""napari reader for TIFF / OME-TIFF / ImageJ hyperstacks and OME-Zarr that keeps axes and
scale; OME-Zarr opens lazily, with every resolution level, as labels when it is a label image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_unet.core.io import TIFF_SUFFIXES


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[tuple[Any, ...]]] | None:
    """Return the reader for TIFF paths (by name) or Zarr folders, else None; never raises.

    Files are not opened here: a damaged or unsupported TIFF then fails in :func:`read_layers`
    with a message that says what is wrong (napari shows it as a notification), rather than
    napari's generic "no reader found".
    """
    from napari_unet.core.zarr_io import is_zarr

    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(isinstance(p, str) for p in paths):
        return None
    if all(is_zarr(p) for p in paths):
        return read_zarr_layers
    if not all(p.lower().endswith(TIFF_SUFFIXES) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple[Any, ...]]:
    """Read each file into image layer data with scale, units and axis names.

    A file holding several images (TIFF series, e.g. the positions of an OME-TIFF) gives one
    layer per image, named ``<file> [series k]``.
    """
    from napari_unet.core.io import read_image
    from napari_unet.gui.layers import image_layer_data

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[tuple[Any, ...]] = []
    for p in paths:
        first = read_image(Path(p))
        layers.extend(image_layer_data(first))
        for series in range(1, first.series_count):
            layers.extend(image_layer_data(read_image(Path(p), series=series)))
    return layers


def read_zarr_layers(path: str | list[str]) -> list[tuple[Any, ...]]:
    """Layer data of OME-Zarr images (or Zarr arrays): multiscale where the file has levels,
    a Labels layer for a label image; nothing is read until napari shows it."""
    from napari_unet.core.zarr_io import read_zarr_pyramid
    from napari_unet.gui.layers import image_layer_data

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[tuple[Any, ...]] = []
    for p in paths:
        stack, levels, is_labels = read_zarr_pyramid(p)
        for data, kwargs, kind in image_layer_data(stack):
            if len(levels) > 1:
                data, kwargs = levels, {**kwargs, "multiscale": True}
            layers.append((data, kwargs, "labels" if is_labels else kind))
    return layers
