"""napari-unet: segment microscopy stacks with a U-Net and fine-tune it on your corrections.

The public API is small and imported lazily so that ``import napari_unet`` (which napari
does at start-up) pulls in neither torch nor Qt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_unet.core.version import __version__

__all__ = ["__version__", "load_bundle", "save_bundle", "read_image", "predict"]

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.inference import predict
    from napari_unet.core.io import read_image
    from napari_unet.core.registry import load_bundle

_LAZY = {
    "load_bundle": "napari_unet.core.registry",
    "save_bundle": "napari_unet.core.bundle",
    "read_image": "napari_unet.core.io",
    "predict": "napari_unet.core.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
