"""Settings of a prediction, importable without torch (the CLI's and GUI's defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictOptions:
    """Settings of a prediction; the defaults suit most microscopy images.

    Attributes
    ----------
    mode : {"instances", "semantic"} or None
        None uses the bundle's mode. A semantic model cannot produce instances.
    tile_size : int
        Largest tile edge in pixels (rounded up to what the network accepts). The default
        1024 with a 0.0625 overlap (a 32-pixel context margin) processes about 1.2x the
        pixels of a 2048 x 2048 image; 512 tiles with the same margin process 1.37x
        (benchmarks/RESULTS.md).
    overlap : float
        Overlap between neighbouring tiles as a fraction of the tile (context margin is half).
    batch_size : int
        Tiles per forward pass.
    threshold : float
        Probability threshold for instance seeds and foreground.
    min_size : int or None
        Smallest object kept, in pixels; None derives it from the object diameter.
    link_z : bool
        Give an object one id through Z by linking overlapping objects of adjacent planes.
    diameter : float or None
        Typical object diameter in the image, in pixels; the image is rescaled so objects
        match the size the model was trained on.
    channel : int or None
        Channel to segment in a multichannel image.
    blending : {"cosine", "none"}
        How overlapping tiles are combined.
    post_workers : int or None
        Threads turning probabilities into labels while the network predicts the next planes;
        0 post-processes each plane before the next one starts; None chooses from the CPU
        cores and the plane size (:func:`napari_unet.core.label_pipeline.auto_workers`).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    """

    mode: str | None = None
    tile_size: int = 1024
    overlap: float = 0.0625
    batch_size: int = 1
    threshold: float = 0.5
    min_size: int | None = None
    link_z: bool = False
    diameter: float | None = None
    channel: int | None = None
    blending: str = "cosine"
    post_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
