"""napari writer: a Labels layer to TIFF with its scale (ImageJ uint16 or OME uint32)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.io import write_labels as write_label_tiff
from napari_unet.gui.layers import METADATA_KEY

_DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer; napari's save dialog has already confirmed any overwrite."""
    labels = np.asarray(data)
    axes = (meta.get("metadata") or {}).get(METADATA_KEY, {}).get("axes")
    if not axes or len(axes) != labels.ndim:
        axes = _DEFAULT_AXES.get(labels.ndim) or "I" * (labels.ndim - 2) + "YX"
    scale = dict(
        zip(axes, (float(s) for s in meta.get("scale", [1.0] * labels.ndim)), strict=False)
    )
    scale = {a: s for a, s in scale.items() if s != 1.0 or a in "YX"}
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.uint32)
    if labels.dtype.kind == "i":
        labels = np.clip(labels, 0, None)
    write_label_tiff(path, labels, axes=axes, scale=scale, overwrite=True)
    return [path]
