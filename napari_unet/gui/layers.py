"""Convert between core Stacks and napari layer data tuples (no Qt here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.io import Stack

METADATA_KEY = "napari_unet"


def image_layer_data(
    stack: Stack, name: str | None = None
) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuple(s) for an image: channels split with ``channel_axis``, RGB kept last.

    The non-channel axes, file path and units are stored in the layer's metadata so the
    plugin knows which axis is Z, T or independent planes.
    """
    data, axes = stack.data, stack.axes
    if not isinstance(data, np.ndarray):  # decoded on demand (large compressed TIFF)
        data = _as_dask(data)
    if "S" in axes and axes[-1] != "S":
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    spatial = axes.replace("C", "").replace("S", "")
    kwargs: dict[str, Any] = {
        "name": name or stack.name,
        "scale": [stack.scale.get(a, 1.0) for a in spatial],
        "axis_labels": [_axis_label(a) for a in spatial],
        "metadata": {
            METADATA_KEY: {"axes": spatial, "path": str(stack.path) if stack.path else None}
        },
    }
    units = [stack.units.get(a, "pixel") for a in spatial]
    if any(u != "pixel" for u in units):
        kwargs["units"] = [_napari_unit(u) for u in units]
    if "S" in axes:
        kwargs["rgb"] = data.shape[-1] in (3, 4)
    if "C" in axes:
        kwargs["channel_axis"] = axes.index("C")
        kwargs["name"] = [f"{kwargs['name']} [ch{k}]" for k in range(data.shape[axes.index("C")])]
    return [(data, kwargs, "image")]


def _as_dask(data: Any) -> Any:
    """A dask array over an array-like, one chunk per plane, so napari reads what it shows."""
    import dask.array as da

    if isinstance(data, da.Array):  # an OME-Zarr level: chunked as stored
        return data
    page = tuple(getattr(data, "page_shape", data.shape[-2:]))
    chunks = (1,) * (data.ndim - len(page)) + page
    return da.from_array(data, chunks=chunks, asarray=True, fancy=False)


def _axis_label(axis: str) -> str:
    return {"T": "t", "Z": "z", "Y": "y", "X": "x", "I": "plane"}.get(axis, axis.lower())


def _napari_unit(unit: str) -> str:
    return {
        "µm": "micrometer",
        "um": "micrometer",
        "micron": "micrometer",
        "nm": "nanometer",
        "s": "second",
        "inch": "inch",
        "cm": "centimeter",
    }.get(unit, "pixel")


def layer_axes(layer: Any) -> str | None:
    """Axes recorded by our reader (or by the user in the widget), or None when unknown."""
    axes = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY, {}).get("axes")
    ndim = layer.data.ndim - (1 if getattr(layer, "rgb", False) else 0)
    if axes and len(axes) == ndim:
        return axes
    if ndim == 2:
        return "YX"
    return None


def layer_key(layer: Any) -> str:
    """A stable key for a napari layer, the same through napari's ``PublicOnlyProxy``.

    A widget docked from the Plugins menu gets the viewer wrapped in a proxy, and every layer
    reached through it is a new proxy object each time, so ``id()`` and ``is`` cannot tell two
    handles of one layer apart; the layer's ``unique_id`` can.
    """
    return str(layer.unique_id)


def shown_plane(viewer: Any, axes: str) -> tuple[int, ...] | None:
    """Index, along ``axes``' non-YX axes, of the plane the viewer shows; None when the viewer
    has fewer dimensions than ``axes``."""
    step = viewer.dims.current_step
    offset = len(step) - len(axes)
    if offset < 0:
        return None
    return tuple(int(step[offset + i]) for i, a in enumerate(axes) if a not in "YX")
