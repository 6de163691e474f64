"""Sample images for File > Open Sample > napari-unet (shipped in napari_unet.sample_data)."""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import Any


def _load(name: str, layer_name: str) -> list[tuple[Any, ...]]:
    from napari_unet.core.io import read_image
    from napari_unet.gui.layers import image_layer_data

    with as_file(files("napari_unet.sample_data") / name) as path:
        return image_layer_data(read_image(path), name=layer_name)


def nuclei_2d() -> list[tuple[Any, ...]]:
    """Fluorescence nuclei, 520 x 696 (DSB 2018, CC0)."""
    return _load("nuclei_2d.tif", "nuclei")


def em_sections() -> list[tuple[Any, ...]]:
    """Five consecutive ISBI 2012 EM sections (non-commercial research use)."""
    return _load("em_sections.tif", "em sections")
